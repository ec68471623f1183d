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

-- hash_linear(x, tables [, bias] [, {bits = 8, score = "code"}]): MemoryFormer's memory
-- layer, a linear map x (..., d_in) -> (..., d_out) made of K = d_in / bits lookup tables.
-- tables (K * 2^bits, d_out): table k is rows k 2^bits .. (k+1) 2^bits - 1 (0-based), read
-- at the code of chunk k = features k bits + 1 .. (k+1) bits (1-based), whose bit i is
-- [z_i >= 0] for the chunk's feature i, least significant first (sgn(0) = +1). Each row is
-- weighted by its chunk's score p: "code" (the released code, default) S * prod
-- sigmoid(2|z_i|) with S = sum |z_i|; "paper" prod sigmoid(2|z_i|). bits in 1..16. One tape
-- node; the gradient of tables is dense (every row a token did not read is zero).
-- opts.packed: a copy of tables made by sn.core.k_hash_linear_pack (sn.nn.MemoryLayer:pack),
-- read instead of tables when no gradient is recorded; the caller keeps it current.
local hash_opts = { bits = true, score = true, packed = true }
function F.hash_linear(x, tables, bias, opts)
  if opts == nil and type(bias) == "table" and not core.is_tensor(bias) then bias, opts = nil, bias end
  check_tensor("hash_linear", "x", x, 1)
  check_tensor("hash_linear", "tables", tables, 2)
  if bias ~= nil then check_tensor("hash_linear", "bias", bias, 3) end
  if opts ~= nil and type(opts) ~= "table" then
    error(("seqnn.F.hash_linear: opts must be a table {bits =, score =}, got %s"):format(type(opts)), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if not hash_opts[k] then error(("seqnn.F.hash_linear: unknown option '%s'"):format(tostring(k)), 2) end
  end
  local bits = opts.bits or 8
  if math.type(bits) ~= "integer" or bits < 1 or bits > 16 then
    error(("seqnn.F.hash_linear: bits must be an integer in 1..16, got %s"):format(tostring(bits)), 2)
  end
  local score = opts.score or "code"
  if score ~= "code" and score ~= "paper" then
    error(("seqnn.F.hash_linear: score must be 'code' or 'paper', got %s"):format(tostring(score)), 2)
  end
  local paper = score == "paper"
  local save = autograd.is_enabled() and (tracked(x) or tracked(tables) or tracked(bias))
  if opts.packed ~= nil then check_tensor("hash_linear", "opts.packed", opts.packed, 4) end
  local y, codes, p = core.k_hash_linear_fwd(x, tables, bias, bits, paper, save, not save and opts.packed or nil)
  if save then
    record("hash_linear", { x, tables, bias, n = 3 }, y, function(g)
      local dx, dt, db = core.k_hash_linear_bwd(g, x, tables, codes, p, bits, paper, tracked(x), tracked(tables),
        tracked(bias))
      codes:free(); p:free()
      x, tables, codes, p = nil, nil, nil, nil
      return dx, dt, db
    end, true)
  end
  return y
end

-- ---- product-key memory (kernels/product_key.c; sn.nn.ProductKeyMemory) ---------------------
-- product_key_topk(scores, k) -> idx (i64), values: the k largest along the last dim,
-- descending, ties to the lower index. Indices only: not recorded on the tape.
function F.product_key_topk(scores, k)
  check_tensor("product_key_topk", "scores", scores, 1)
  return core.k_product_key_topk(scores, k)
end

-- product_key_select(s1, s2, knn) -> slot (i64), score: s1, s2 (..., n) sub-key scores of
-- the two query halves; the knn best of the n^2 sums s1[a] + s2[b] (slot a*n + b, 0-based),
-- descending. score is differentiable (the selection is constant): d s1[a], d s2[b] get the
-- score gradients of the slots they make up.
function F.product_key_select(s1, s2, knn)
  check_tensor("product_key_select", "s1", s1, 1)
  check_tensor("product_key_select", "s2", s2, 2)
  local slot, score = core.k_product_key_select(s1, s2, knn)
  local n = s1:size(-1)
  record("product_key_select", { s1, s2 }, score, function(g)
    local d1, d2 = core.k_product_key_select_bwd(g, slot, n)
    slot = nil
    return d1, d2
  end, true)
  return slot, score
end

-- product_key_gather(values, idx, w) -> y (..., D) = sum_j w[..., j] values[idx[..., j]]:
-- values (S, D), idx i64 (0-based rows) and w of one shape (..., J). The gradient of values
-- is row-sparse (autograd.row_sparse): only the rows read, each once.
function F.product_key_gather(values, idx, w)
  check_tensor("product_key_gather", "values", values, 1)
  check_tensor("product_key_gather", "idx", idx, 2)
  check_tensor("product_key_gather", "w", w, 3)
  local y = core.k_product_key_gather(values, idx, w)
  record("product_key_gather", { values, w }, y, function(g)
    local dw, rows, drows = core.k_product_key_gather_bwd(g, values, idx, w, tracked(w), tracked(values))
    local gv = rows and autograd.row_sparse(rows, drows, values:shape()) or nil
    values, idx, w = nil, nil, nil
    return gv, dw
  end, true)
  return y
end

-- product_key_lookup(q, keys, values, knn) -> (..., D): the product-key memory read.
-- q (..., H, k_dim) queries (already projected and normalized), keys (H, 2, n, k_dim/2)
-- the two sub-key tables of each head, values (n*n, D) shared by the heads. Per head:
-- scores of each half against its n sub-keys (batched GEMMs), knn best slots of the
-- product set, softmax over their scores, weighted sum of the value rows; heads summed.
function F.product_key_lookup(q, keys, values, knn)
  local fn = "seqnn.F.product_key_lookup"
  check_tensor("product_key_lookup", "q", q, 1)
  check_tensor("product_key_lookup", "keys", keys, 2)
  check_tensor("product_key_lookup", "values", values, 3)
  if q:dim() < 2 then error(("%s: q must be (..., H, k_dim), got %s"):format(fn, shape_str(q)), 2) end
  local H, kd = q:size(-2), q:size(-1)
  if keys:dim() ~= 4 or keys:size(1) ~= H or keys:size(2) ~= 2 or keys:size(4) * 2 ~= kd then
    error(("%s: keys must be (H, 2, n, k_dim/2) = (%d, 2, n, %s) for q %s, got %s"):format(fn, H,
      kd % 2 == 0 and tostring(kd // 2) or (kd .. "/2"), shape_str(q), shape_str(keys)), 2)
  end
  local n = keys:size(3)
  if values:dim() ~= 2 or values:size(1) ~= n * n then
    error(("%s: values must be (n^2, D) = (%d, D) for %d sub-keys, got %s"):format(fn, n * n, n, shape_str(values)), 2)
  end
  if math.type(knn) ~= "integer" or knn < 1 or knn > n then
    error(("%s: knn must be an integer in [1, %d] (the sub-keys per half), got %s"):format(fn, n, tostring(knn)), 2)
  end
  local lead = q:shape()
  lead[#lead], lead[#lead - 1] = nil, nil
  local N = q:numel() // math.max(H * kd, 1)
  -- halves first, so that s1 and s2 are contiguous slices of the scores (no copies)
  local q4 = q:reshape(N, H, 2, kd // 2):permute(3, 2, 1, 4)          -- (2, H, N, k_dim/2)
  local s = q4:matmul(keys:permute(2, 1, 4, 3))                        -- (2, H, N, n)
  local slot, score = F.product_key_select(s:select(1, 1), s:select(1, 2), knn) -- (H, N, knn)
  local w = F.softmax(score)
  local idx = slot:permute(2, 1, 3):reshape(N, H * knn)
  local y = F.product_key_gather(values, idx, w:permute(2, 1, 3):reshape(N, H * knn))
  lead[#lead + 1] = values:size(2)
  return y:reshape(lead)
end

-- binary_attention(y, v [, opts]): EcoFormer's causal binary-code attention. y (B,T,H,b)
-- are real hash pre-activations, 1 <= b <= 64, binarized inside as h = sign(y) (sign(0) =
-- +1); v (B,T,H,Dv). Per (batch, head), with c = b + 1 (every weight >= 1):
--   out_i = sum_{j<=i} (h_i.h_j + c) v_j / sum_{j<=i} (h_i.h_j + c)       -> (B,T,H,Dv)
-- in linear time (popcount similarities within 64-token chunks, a (b+1)x(Dv+1) prefix state
-- across them). Gradients reach v, opts.initial_state, and y through the straight-through
-- estimator of sign: dy = dh * 1[|y| < 1]. opts: initial_state (B,H,b+1,Dv+1) (rows n < b:
-- sum h_n v^T and sum h_n; row b: sum v and the token count), return_state (the final state
-- is the second result). One tape node.
function F.binary_attention(y, v, opts)
  check_tensor("binary_attention", "y", y, 1)
  check_tensor("binary_attention", "v", v, 2)
  if opts ~= nil and type(opts) ~= "table" then
    error(("seqnn.F.binary_attention: opts must be a table {initial_state =, return_state =}, got %s"):format(
      type(opts)), 2)
  end
  opts = opts or {}
  for key in pairs(opts) do
    if key ~= "initial_state" and key ~= "return_state" then
      error(("seqnn.F.binary_attention: unknown option '%s' (known: initial_state, return_state)"):format(
        tostring(key)), 2)
    end
  end
  local s0, want_state = opts.initial_state, opts.return_state == true
  if s0 ~= nil and not core.is_tensor(s0) then
    error(("seqnn.F.binary_attention: opts.initial_state must be a seqnn.Tensor, got %s"):format(type(s0)), 2)
  end
  local out, den, codes, final = core.k_binary_attention_fwd(y, v, s0, want_state)
  local recorded = record("binary_attention", { y, v, s0, n = 3 }, want_state and { out, final } or out,
    function(gout, gfinal)
      gout = gout or core.zeros(out:shape())
      local dy, dv, ds0 = core.k_binary_attention_bwd(gout, gfinal, out, den, codes, y, v, s0, tracked(s0))
      den:free(); codes:free()
      y, v, s0, den, codes = nil, nil, nil, nil, nil
      return dy, dv, ds0
    end, true)
  if not recorded then den:free(); codes:free() end
  if want_state then return out, final end
  return out
end

-- binary_attention_step(y, v, state): one decoding step of binary_attention; y (B,1,H,b),
-- v (B,1,H,Dv), state (B,H,b+1,Dv+1) contiguous, updated in place. Returns out (B,1,H,Dv),
-- equal to binary_attention's row for that token. O(H b Dv), not recorded on the tape.
function F.binary_attention_step(y, v, state)
  check_tensor("binary_attention_step", "y", y, 1)
  check_tensor("binary_attention_step", "v", v, 2)
  check_tensor("binary_attention_step", "state", state, 3)
  return core.k_binary_attention_step(state, y, v)
end

return F
