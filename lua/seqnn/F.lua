-- sn.F: differentiable functions. Each calls a fused C forward (core.k_*), records one
-- tape node whose backward calls the fused C backward, and releases what it saved once
-- that backward has run. Functions made of GEMMs (linear) or cheap elementwise steps
-- (mse_loss) are compositions of the differentiable tensor methods.
local core = require "seqnn.core"
local autograd = require "seqnn.autograd"

local record, tracked = autograd.record, autograd.tracked
local F = {}

local function shape_str(t)
  local s = t:shape()
  return #s == 0 and "scalar" or table.concat(s, "x")
end

local function check_tensor(fn, name, v, pos)
  if not core.is_tensor(v) then
    error(("bad argument #%d '%s' to 'seqnn.F.%s' (seqnn.Tensor expected, got %s)"):format(
      pos, name, fn, type(v)), 3)
  end
end

-- linear(x, weight [, bias]): x (..., in), weight (out, in), bias (out) -> (..., out).
-- One GEMM over all leading dims (weight:t() is a transposed view, not a copy) and one
-- tape node whose backward produces dW = g^T x directly in weight's layout.
function F.linear(x, weight, bias)
  check_tensor("linear", "x", x, 1)
  check_tensor("linear", "weight", weight, 2)
  if weight:dim() ~= 2 or x:dim() < 1 or x:size(-1) ~= weight:size(2) then
    error(("seqnn.F.linear: x has %d features but weight expects %s (x: %s, weight: %s)"):format(
      x:dim() > 0 and x:size(-1) or 0, weight:dim() == 2 and tostring(weight:size(2)) or "a 2-dim weight",
      shape_str(x), shape_str(weight)), 2)
  end
  if bias ~= nil then
    check_tensor("linear", "bias", bias, 3)
    if bias:dim() ~= 1 or bias:size(1) ~= weight:size(1) then
      error(("seqnn.F.linear: bias has shape %s but weight has %d outputs (weight: %s)"):format(
        shape_str(bias), weight:size(1), shape_str(weight)), 2)
    end
  end
  local y = core.matmul(x, weight:t())
  if bias ~= nil then y:add_(bias) end -- y is new: adding in place saves a temporary
  record("linear", { x, weight, bias, n = 3 }, y, function(g)
    local out, inp = weight:size(1), weight:size(2)
    local g2 = g:reshape(-1, out)
    local gx = tracked(x) and core.matmul(g, weight) or nil
    local gw = tracked(weight) and core.matmul(g2:t(), x:reshape(-1, inp)) or nil
    local gb = tracked(bias) and g2:sum(1) or nil
    return gx, gw, gb
  end)
  return y
end

-- embedding(ids, weight): ids i64 (any shape, 0-based, checked against the vocabulary),
-- weight (V, D) -> ids' shape with D appended. The gradient reaches only the rows read.
function F.embedding(ids, weight)
  local y = core.k_embedding_fwd(weight, ids)
  record("embedding", { weight }, y, function(g)
    local gw = core.k_embedding_bwd(g, ids, weight:size(1))
    ids = nil
    return gw
  end)
  return y
end

-- layer_norm(x, weight, bias [, eps = 1e-5]) over the last dim; weight and bias may be nil.
function F.layer_norm(x, weight, bias, eps)
  local y, mean, rstd = core.k_layer_norm_fwd(x, weight, bias, eps or 1e-5)
  record("layer_norm", { x, weight, bias, n = 3 }, y, function(g)
    local gx, gw, gb = core.k_layer_norm_bwd(g, x, weight, mean, rstd, bias ~= nil)
    mean:free(); rstd:free() -- private to this node: freed now, not at the next collection
    x = nil
    return gx, gw, gb
  end)
  return y
end

-- rms_norm(x, weight [, eps = 1e-6]) over the last dim; weight may be nil.
function F.rms_norm(x, weight, eps)
  local y, rstd = core.k_rms_norm_fwd(x, weight, eps or 1e-6)
  record("rms_norm", { x, weight, n = 2 }, y, function(g)
    local gx, gw = core.k_rms_norm_bwd(g, x, weight, rstd)
    rstd:free()
    x = nil
    return gx, gw
  end)
  return y
end

-- The kernels work on the last dim; another dim is moved there and back (views).
local function along(dim, x, fn)
  if dim == nil or dim == -1 or dim == x:dim() then return fn(x) end
  return fn(x:transpose(dim, -1)):transpose(dim, -1)
end

-- softmax(x [, dim = -1]) and log_softmax(x [, dim = -1]), max-subtracted.
for _, name in ipairs({ "softmax", "log_softmax" }) do
  local fwd, bwd = core["k_" .. name .. "_fwd"], core["k_" .. name .. "_bwd"]
  local function last_dim(x)
    local y = fwd(x)
    record(name, { x }, y, function(g) return bwd(g, y) end)
    return y
  end
  F[name] = function(x, dim) return along(dim, x, last_dim) end
end

-- gelu (exact, erf), silu, softplus, tanh, sigmoid: the tensor methods, with fused backward.
for _, name in ipairs({ "gelu", "silu", "softplus", "tanh", "sigmoid", "exp", "log" }) do
  F[name] = function(x) return x[name](x) end
end

-- elu(x): x for x > 0, exp(x) - 1 otherwise (alpha = 1); its derivative is exp(min(x, 0)).
function F.elu(x)
  check_tensor("elu", "x", x, 1)
  local e = core.exp(core.minimum(x, 0))
  local y = core.maximum(x, 0):add_(e):sub_(1)
  record("elu", { x }, y, function(g) return g * e end)
  return y
end

-- logsigmoid(x) = -softplus(-x), stable for large |x| (GLA's gates: logsigmoid(x) / 16).
function F.logsigmoid(x) return -F.softplus(-x) end

-- l2_normalize(x [, eps = 1e-6]): x / sqrt(sum(x^2) + eps) over the last dim (DeltaNet's q, k).
function F.l2_normalize(x, eps)
  check_tensor("l2_normalize", "x", x, 1)
  return x * ((x * x):sum(-1, true) + (eps or 1e-6)):rsqrt()
end

-- dropout(x, p [, training = true]): zeroes elements with probability p and scales the
-- rest by 1/(1-p); the mask comes from the seqnn generator (sn.manual_seed).
function F.dropout(x, p, training)
  if training == false or p == 0 then return x end
  local y, seed, offset = core.k_dropout_fwd(x, p)
  record("dropout", { x }, y, function(g) return core.k_dropout_bwd(g, p, seed, offset) end)
  return y
end

-- cross_entropy(logits, targets [, {ignore_index = -100, reduction = "mean"}]):
-- logits (N, V) or (B, T, V), targets i64 0-based classes (N) or (B, T). Fused
-- log-softmax + NLL, stable at extreme logits; rows whose target is ignore_index add
-- nothing and are not counted in the mean (all ignored: NaN, as in PyTorch).
function F.cross_entropy(logits, targets, opts)
  opts = opts or {}
  check_tensor("cross_entropy", "logits", logits, 1)
  check_tensor("cross_entropy", "targets", targets, 2)
  local ignore, reduction = opts.ignore_index or -100, opts.reduction or "mean"
  local V = logits:dim() > 0 and logits:size(-1) or 0
  if logits:dim() == 3 then
    if targets:dim() ~= 2 or targets:size(1) ~= logits:size(1) or targets:size(2) ~= logits:size(2) then
      error(("seqnn.F.cross_entropy: targets must be %dx%d for logits %s, got %s"):format(
        logits:size(1), logits:size(2), shape_str(logits), shape_str(targets)), 2)
    end
  elseif logits:dim() ~= 2 then
    error(("seqnn.F.cross_entropy: logits must be (N, V) or (B, T, V), got %s"):format(shape_str(logits)), 2)
  end
  local flat_logits = logits:dim() == 3 and logits:reshape(-1, V) or logits
  local flat_targets = targets:dim() == 2 and logits:dim() == 3 and targets:reshape(-1) or targets
  local loss, lse, count = core.k_cross_entropy_fwd(flat_logits, flat_targets, ignore, reduction)
  if reduction == "none" then loss = loss:view(targets:shape()) end
  record("cross_entropy", { flat_logits }, loss, function(g)
    local gl = core.k_cross_entropy_bwd(g:reshape(-1), flat_logits, flat_targets, lse, ignore, reduction, count)
    lse:free()
    return gl
  end)
  return loss
end

-- mse_loss(input, target [, reduction = "mean" | "sum" | "none"]); shapes broadcast.
-- One node: the backward is 2 (input - target) scaled, in one pass.
function F.mse_loss(input, target, reduction)
  check_tensor("mse_loss", "input", input, 1)
  check_tensor("mse_loss", "target", target, 2)
  reduction = reduction or "mean"
  if reduction ~= "mean" and reduction ~= "sum" and reduction ~= "none" then
    error(("seqnn.F.mse_loss: reduction must be 'mean', 'sum' or 'none', got %s"):format(tostring(reduction)), 2)
  end
  local d = core.sub(input, target)
  local sq = core.mul(d, d)
  local loss = reduction == "mean" and core.mean(sq) or reduction == "sum" and core.sum(sq) or sq
  record("mse_loss", { input, target }, loss, function(g)
    local gi
    if reduction == "none" then
      gi = core.mul(core.mul(d, g), 2)
    else
      gi = core.mul(d, g:item() * (reduction == "mean" and 2 / d:numel() or 2))
    end
    local unbroadcast = autograd.unbroadcast
    return tracked(input) and unbroadcast(gi, input:shape()) or nil,
           tracked(target) and unbroadcast(core.neg(gi), target:shape()) or nil
  end)
  return loss
end

-- rope(x [, {offset = 0, base = 10000}]): rotary position embedding of x (B,T,H,Dh), Dh even,
-- in the GPT-NeoX / HF-LLaMA "rotate_half" pairing: element i of a head rotates with
-- element i + Dh/2 by the angle (offset + t) * base^(-2i/Dh), t the 0-based time index.
-- offset places x later in a sequence (decoding one token at position offset). x may be a
-- view with a contiguous last dim (q or k narrowed from a fused projection): no copy.
function F.rope(x, opts)
  check_tensor("rope", "x", x, 1)
  local offset, base = 0, 10000
  if opts ~= nil then
    if type(opts) ~= "table" then
      error(("seqnn.F.rope: opts must be a table {offset =, base =}, got %s"):format(type(opts)), 2)
    end
    offset, base = opts.offset or offset, opts.base or base
  end
  local y = core.k_rope_fwd(x, offset, base)
  record("rope", { x }, y, function(g) return core.k_rope_bwd(g, offset, base) end)
  return y
end

-- Options of the attention functions: causal (bool), window (w >= 0: query i sees keys
-- i-w .. i, which implies causal; nil = unbounded), scale (nil: the kernel uses 1/sqrt(Dh)).
local function attention_opts(fn, opts)
  if opts == nil then return false, nil, nil end
  if type(opts) ~= "table" then
    error(("seqnn.F.%s: opts must be a table {causal =, window =, scale =}, got %s"):format(fn, type(opts)), 3)
  end
  return opts.causal and true or false, opts.window, opts.scale
end

local function attention_node(name, q, k, v, causal, window, scale, cu_q, cu_k)
  local o, lse = core.k_attention_fwd(q, k, v, causal, window, scale, cu_q, cu_k)
  record(name, { q, k, v }, o, function(g)
    local dq, dk, dv = core.k_attention_bwd(g, q, k, v, o, lse, causal, window, scale, cu_q, cu_k)
    lse:free()
    q, k, v, o, lse = nil, nil, nil, nil, nil
    return dq, dk, dv
  end, true)
  return o
end

-- attention(q, k, v [, {causal = false, window = nil, scale = 1/sqrt(Dh)}]): softmax
-- attention, fused (FlashAttention-style: no T x S matrix is stored). q (B,T,H,Dh), k and
-- v (B,S,Hkv,Dh) with H % Hkv == 0 (head h reads kv head floor(h / (H/Hkv)), 0-based).
-- Causal masks align bottom-right when S ~= T (query i sits at key position i + S - T);
-- a query with no allowed key gets 0. Returns (B,T,H,Dh); one tape node.
function F.attention(q, k, v, opts)
  check_tensor("attention", "q", q, 1)
  check_tensor("attention", "k", k, 2)
  check_tensor("attention", "v", v, 3)
  local causal, window, scale = attention_opts("attention", opts)
  return attention_node("attention", q, k, v, causal, window, scale)
end

-- attention_qkv(qkv, heads, kv_heads [, opts]): self-attention over a packed projection
-- qkv (B,T,heads + 2 kv_heads,Dh): query heads, then key heads, then value heads, as
-- attention(q, k, v, opts) on its three parts. opts as attention's, plus rope = {offset =,
-- base =} to rotate q and k first (as F.rope). One tape node whose backward writes all
-- three gradients into one (B,T,heads + 2 kv_heads,Dh) tensor, instead of one zero-filled
-- full-size gradient per part added together.
function F.attention_qkv(qkv, heads, kv_heads, opts)
  check_tensor("attention_qkv", "qkv", qkv, 1)
  local H, G = heads, kv_heads
  if math.type(H) ~= "integer" or math.type(G) ~= "integer" or H < 1 or G < 1 or H % G ~= 0 then
    error(("seqnn.F.attention_qkv: heads and kv_heads must be positive integers with heads a multiple of kv_heads, got %s and %s")
      :format(tostring(H), tostring(G)), 2)
  end
  if qkv:dim() ~= 4 or qkv:size(3) ~= H + 2 * G then
    error(("seqnn.F.attention_qkv: qkv must be (B,T,%d,Dh) for %d heads and %d kv_heads, got %s")
      :format(H + 2 * G, H, G, shape_str(qkv)), 2)
  end
  local causal, window, scale = attention_opts("attention_qkv", opts)
  local rope = opts and opts.rope
  local offset, base = rope and (rope.offset or 0), rope and (rope.base or 10000)
  local q, k
  if rope then
    local qk = core.k_rope_fwd(qkv:narrow(3, 1, H + G), offset, base)
    q, k = qk:narrow(3, 1, H), qk:narrow(3, H + 1, G)
  else
    q, k = qkv:narrow(3, 1, H), qkv:narrow(3, H + 1, G)
  end
  local v = qkv:narrow(3, H + G + 1, G)
  local o, lse = core.k_attention_fwd(q, k, v, causal, window, scale)
  record("attention_qkv", { qkv }, o, function(g)
    local dqkv = core.empty(qkv:shape())
    core.k_attention_bwd(g, q, k, v, o, lse, causal, window, scale, nil, nil,
      dqkv:narrow(3, 1, H), dqkv:narrow(3, H + 1, G), dqkv:narrow(3, H + G + 1, G))
    if rope then
      local dqk = dqkv:narrow(3, 1, H + G)
      core.k_rope_bwd(dqk, offset, base, dqk)
    end
    lse:free()
    qkv, q, k, v, o, lse = nil, nil, nil, nil, nil, nil
    return dqkv
  end, true)
  return o
end

-- attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k [, opts]): a batch of sequences of
-- different lengths packed without padding: q (1, total_q, H, Dh), k and v (1, total_k,
-- Hkv, Dh); cu_seqlens_* i64 (nseq + 1) prefix sums from 0 (sequence s is rows
-- cu[s] .. cu[s+1]-1, 0-based). Masks are per sequence. Same options as attention.
function F.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, opts)
  check_tensor("attention_varlen", "q", q, 1)
  check_tensor("attention_varlen", "k", k, 2)
  check_tensor("attention_varlen", "v", v, 3)
  check_tensor("attention_varlen", "cu_seqlens_q", cu_seqlens_q, 4)
  check_tensor("attention_varlen", "cu_seqlens_k", cu_seqlens_k, 5)
  local causal, window, scale = attention_opts("attention_varlen", opts)
  return attention_node("attention_varlen", q, k, v, causal, window, scale, cu_seqlens_q, cu_seqlens_k)
end

-- attention_step(q, k_new, v_new, k_cache, v_cache, pos [, {window = nil, scale = nil}]):
-- one decoding step, no autograd. q (B,1,H,Dh), k_new and v_new (B,1,Hkv,Dh); the caches
-- are contiguous (B, Hkv, Tmax, Dh). Writes k_new, v_new into the caches at pos (0-based:
-- the number of tokens already cached) in place, then returns the attention of q over
-- cache positions max(0, pos - window) .. pos, (B,1,H,Dh). Looping pos = 0 .. T-1 gives
-- the causal attention of the whole sequence.
function F.attention_step(q, k_new, v_new, k_cache, v_cache, pos, opts)
  local _, window, scale = attention_opts("attention_step", opts)
  return core.k_attention_step(q, k_new, v_new, k_cache, v_cache, pos, window, scale)
end

-- selective_scan(u, delta, A, B, C [, opts]): Mamba's S6 scan (math in csrc/seqnn.h).
-- u, delta (B,T,D); A (D,N); B, C (B,T,N). opts: D (D) skip, z (B,T,D) gate through silu,
-- delta_bias (D), delta_softplus (bool), initial_state (B,D,N), return_state (bool: the
-- final state (B,D,N) is the second result). Inputs may be views of one projection (unit
-- stride on the last dim). One tape node; its backward recomputes the states chunk by
-- chunk from the states saved at chunk starts, so memory stays linear in T.
local scan_opts = { D = true, z = true, delta_bias = true, delta_softplus = true, initial_state = true,
                    return_state = true }

function F.selective_scan(u, delta, A, B, C, opts)
  for i, a in ipairs({ { "u", u }, { "delta", delta }, { "A", A }, { "B", B }, { "C", C } }) do
    check_tensor("selective_scan", a[1], a[2], i)
  end
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("seqnn.F.selective_scan: opts must be a table, got %s"):format(type(opts)), 2)
  end
  for k in pairs(opts) do
    if not scan_opts[k] then error(("seqnn.F.selective_scan: unknown option '%s'"):format(tostring(k)), 2) end
  end
  for _, k in ipairs({ "D", "z", "delta_bias", "initial_state" }) do
    if opts[k] ~= nil and not core.is_tensor(opts[k]) then
      error(("seqnn.F.selective_scan: opts.%s must be a seqnn.Tensor, got %s"):format(k, type(opts[k])), 2)
    end
  end
  local Dskip, z, bias, h0 = opts.D, opts.z, opts.delta_bias, opts.initial_state
  local softplus, want_state = opts.delta_softplus == true, opts.return_state == true
  local inputs = { u, delta, A, B, C, Dskip, z, bias, h0, n = 9 }
  local grad = false
  if autograd.is_enabled() then
    for i = 1, 9 do grad = grad or tracked(inputs[i]) end
  end
  local y, final, chunks = core.k_selective_scan_fwd(u, delta, A, B, C, Dskip, z, bias, softplus, h0,
    want_state, grad)
  if grad then
    record("selective_scan", inputs, want_state and { y, final } or y, function(gy, gfinal)
      gy = gy or core.zeros(y:shape())
      local du, dd, dA, dB, dC, dDs, dbias, dz, dh0 = core.k_selective_scan_bwd(gy, gfinal, chunks, u, delta, A,
        B, C, Dskip, z, bias, softplus, h0)
      chunks:free()
      u, delta, A, B, C, Dskip, z, bias, h0, chunks = nil, nil, nil, nil, nil, nil, nil, nil, nil, nil
      return du, dd, dA, dB, dC, dDs, dz, dbias, dh0
    end, true)
  end
  if want_state then return y, final end
  return y
end

-- causal_conv1d(x, weight [, bias] [, {silu = false}]): depthwise causal convolution over
-- time, x (B,T,C), weight (C,W) with W <= 8, bias (C): y[t] = bias + sum_k w[:,k] x[t-W+1+k]
-- (zeros before the start), then silu when asked (Mamba's short convolution). One tape node.
function F.causal_conv1d(x, weight, bias, opts)
  check_tensor("causal_conv1d", "x", x, 1)
  check_tensor("causal_conv1d", "weight", weight, 2)
  if bias ~= nil then check_tensor("causal_conv1d", "bias", bias, 3) end
  if opts ~= nil and type(opts) ~= "table" then
    error(("seqnn.F.causal_conv1d: opts must be a table {silu =}, got %s"):format(type(opts)), 2)
  end
  local silu = opts ~= nil and opts.silu == true
  local y = core.k_causal_conv1d_fwd(x, weight, bias, silu)
  record("causal_conv1d", { x, weight, bias, n = 3 }, y, function(g)
    local dx, dw, db = core.k_causal_conv1d_bwd(g, x, weight, bias, silu)
    x, weight, bias = nil, nil, nil
    return dx, dw, db
  end, true)
  return y
end

-- The options of the linear-attention kernels: scale (default 1/sqrt(Dk)), initial_state
-- (B,H,Dk,Dv), return_state (bool).
local linear_opts = { scale = true, initial_state = true, return_state = true }

local function linear_attention_opts(fn, q, opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("seqnn.F.%s: opts must be a table {scale =, initial_state =, return_state =}, got %s"):format(
      fn, type(opts)), 3)
  end
  for key in pairs(opts) do
    if not linear_opts[key] then error(("seqnn.F.%s: unknown option '%s'"):format(fn, tostring(key)), 3) end
  end
  local h0 = opts.initial_state
  if h0 ~= nil and not core.is_tensor(h0) then
    error(("seqnn.F.%s: opts.initial_state must be a seqnn.Tensor, got %s"):format(fn, type(h0)), 3)
  end
  local scale = opts.scale
  if scale == nil then
    scale = q:dim() == 4 and q:size(4) > 0 and 1 / math.sqrt(q:size(4)) or 1
  elseif type(scale) ~= "number" then
    error(("seqnn.F.%s: opts.scale must be a number, got %s"):format(fn, type(scale)), 3)
  end
  return scale, h0, opts.return_state == true
end

-- One tape node over a chunked linear-attention kernel: name's core fwd/bwd with the gate
-- (g or beta) as the fourth input.
local function linear_attention_node(name, q, k, v, gate, opts)
  check_tensor(name, "q", q, 1)
  check_tensor(name, "k", k, 2)
  check_tensor(name, "v", v, 3)
  if gate ~= nil or name == "delta_rule" then check_tensor(name, name == "delta_rule" and "beta" or "g", gate, 4) end
  local scale, h0, want_state = linear_attention_opts(name, q, opts)
  local inputs = { q, k, v, gate, h0, n = 5 }
  local grad = false
  if autograd.is_enabled() then
    for i = 1, 5 do grad = grad or tracked(inputs[i]) end
  end
  local fwd, bwd = core["k_" .. name .. "_fwd"], core["k_" .. name .. "_bwd"]
  local o, final, chunks = fwd(q, k, v, gate, scale, h0, want_state, grad)
  if grad then
    record(name, inputs, want_state and { o, final } or o, function(go, gfinal)
      go = go or core.zeros(o:shape())
      local dq, dk, dv, dgate, dh0 = bwd(go, gfinal, chunks, q, k, v, gate, scale, h0)
      chunks:free()
      q, k, v, gate, h0, chunks = nil, nil, nil, nil, nil, nil
      return dq, dk, dv, dgate, dh0
    end, true)
  end
  if want_state then return o, final end
  return o
end

-- gated_linear_attention(q, k, v [, g] [, opts]): per (batch, head) the recurrence
--   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale q_t)
-- q, k (B,T,H,Dk), v (B,T,H,Dv) -> o (B,T,H,Dv). g: nil (plain linear attention), (B,T,H)
-- one log forget gate per head (RetNet, Mamba-2) or (B,T,H,Dk) one per key dim (GLA); every
-- g <= 0. opts: scale (default 1/sqrt(Dk)), initial_state (B,H,Dk,Dv), return_state (the
-- final state (B,H,Dk,Dv) is the second result). Runs chunk by chunk (intra-chunk products,
-- inter-chunk state passing); inputs may be views of one projection. One tape node.
function F.gated_linear_attention(q, k, v, g, opts)
  if opts == nil and type(g) == "table" and not core.is_tensor(g) then g, opts = nil, g end
  return linear_attention_node("gated_linear_attention", q, k, v, g, opts)
end

-- delta_rule(q, k, v, beta [, opts]): DeltaNet's recurrence per (batch, head)
--   S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,   o_t = S_t^T (scale q_t)
-- q, k (B,T,H,Dk), v (B,T,H,Dv), beta (B,T,H) -> o (B,T,H,Dv); keys are expected
-- L2-normalized (then beta in (0, 2) keeps the state bounded). opts as for
-- gated_linear_attention. Chunked through the WY representation; one tape node.
function F.delta_rule(q, k, v, beta, opts)
  return linear_attention_node("delta_rule", q, k, v, beta, opts)
end

-- gated_linear_attention_step(q, k, v, g, state [, {scale =}]) and
-- delta_rule_step(q, k, v, beta, state [, {scale =}]): one decoding step, q, k (B,1,H,Dk),
-- v (B,1,H,Dv), g (B,1,H[,Dk]) or nil, beta (B,1,H); state (B,H,Dk,Dv) contiguous, updated in
-- place. Returns o (B,1,H,Dv), equal to the chunked forward's row for that token. O(H Dk Dv),
-- not recorded on the tape.
local function step_scale(fn, q, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(("seqnn.F.%s: opts must be a table {scale =}, got %s"):format(fn, type(opts)), 3)
  end
  local scale = opts and opts.scale
  if scale ~= nil and type(scale) ~= "number" then
    error(("seqnn.F.%s: opts.scale must be a number, got %s"):format(fn, type(scale)), 3)
  end
  return scale or (q:dim() == 4 and q:size(4) > 0 and 1 / math.sqrt(q:size(4)) or 1)
end

for _, name in ipairs({ "gated_linear_attention", "delta_rule" }) do
  local fn, kernel = name .. "_step", core["k_" .. name .. "_step"]
  F[fn] = function(q, k, v, gate, state, opts)
    check_tensor(fn, "q", q, 1)
    check_tensor(fn, "state", state, 5)
    return kernel(state, q, k, v, gate, step_scale(fn, q, opts))
  end
end

return F
