-- bench/bench_ecoformer.lua -- EcoFormer's causal binary-code attention through the Lua API
-- against causal softmax attention, measured in the same run, sample by sample alternately:
--   sn.F.binary_attention(y, v) with y (B,T,H,b) hash pre-activations, b = 16, v (B,T,H,64)
--   sn.F.attention(q, k, v, {causal = true}) with q, k, v (B,T,H,64)
-- at B = 1, H = 8, T = 512 .. 8192 (attention stops there: its fwd+bwd is O(T^2)), forward
-- and forward+backward (gradients for y and v; for q, k and v), then binary attention alone
-- at T = 16384 with its per-token time relative to T = 1024 (flat = linear in T); then one
-- decoding step of sn.nn.EcoFormer (d = 512, 8 heads) beside MultiheadAttention's at a
-- context of 4096. x_ref: attention's time / binary attention's (above 1: binary is faster).
-- FLOPs as in bench/bench_binary_attention.c (attention: 2 T^2 Dh per head forward, 3.5x
-- that forward+backward). Rows use the table format of build/bench/seqnn_bench.
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" lua5.4 bench/bench_ecoformer.lua
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local row = util.row

util.banner("bench_ecoformer.lua")
print("# x_ref: causal sn.F.attention's time / sn.F.binary_attention's, alternating samples")
util.header()

local B, H, D, BITS, C = 1, 8, 64, 16, 64

local function leaf(t) return t:requires_grad(true) end

local function flops_binary(T, bwd)
  local f = C * (D + 1) + 3 * (BITS + 1) * (D + 1) + D
  if bwd then f = f + 2 * C * (D + 1) + 2 * C * BITS + 4 * BITS * (D + 1) + 3 * (BITS + 1) * (D + 1) end
  return f * B * H * T
end

local function flops_attention(T, bwd) return 2 * T * T * D * B * H * (bwd and 3.5 or 1) end


-- One call of binary attention at length T (fwd, or fwd+bwd): a closure over its inputs.
local function binary_call(T, bwd)
  local y, v = leaf(sn.randn(B, T, H, BITS)), leaf(sn.randn(B, T, H, D))
  local g = sn.randn(B, T, H, D)
  return function()
    if bwd then
      y.grad, v.grad = nil, nil
      sn.F.binary_attention(y, v):backward(g)
    else
      sn.no_grad(function() return sn.F.binary_attention(y, v) end)
    end
  end
end

local function attention_call(T, bwd)
  local q, k, v = leaf(sn.randn(B, T, H, D)), leaf(sn.randn(B, T, H, D)), leaf(sn.randn(B, T, H, D))
  local g = sn.randn(B, T, H, D)
  return function()
    if bwd then
      q.grad, k.grad, v.grad = nil, nil, nil
      sn.F.attention(q, k, v, { causal = true }):backward(g)
    else
      sn.no_grad(function() return sn.F.attention(q, k, v, { causal = true }) end)
    end
  end
end

-- "per token x": the time per token relative to T = 1024, both timed alternately in the
-- same samples (1.00: linear in T), so the shared machine's drift cancels.
for _, bwd in ipairs({ false, true }) do
  sn.manual_seed(1)
  local mode = bwd and "fwd+bwd" or "fwd"
  local base = binary_call(1024, bwd)
  for _, T in ipairs({ 512, 1024, 2048, 4096, 8192, 16384 }) do
    local eco = binary_call(T, bwd)
    local with_attn = T <= 8192
    local samples = T <= 2048 and 7 or 3
    local te, ta, x
    if with_attn then ta, te, x = util.paired(attention_call(T, bwd), eco, samples) else te = util.time(eco, samples) end
    local per = ""
    if T ~= 1024 then
      local _, _, r = util.paired(base, eco, samples) -- median of t_1024 / t_T
      per = ("per token x%.2f of T1024"):format(1024 / T / r)
    end
    local ref = with_attn and ("causal attention %.1f ms, %.1f GFLOP/s%s"):format(ta * 1e3,
      flops_attention(T, bwd) / ta * 1e-9, per ~= "" and "; " .. per or "") or per
    row("binary_attn " .. mode, ("B%d H%d T%d Dv%d b%d"):format(B, H, T, D, BITS), te, flops_binary(T, bwd), x, ref)
    collectgarbage()
  end
end

-- Decoding: one token at a context of 4096, EcoFormer's O(1) state against the KV cache.
do
  sn.manual_seed(2)
  local d, ctxlen = 512, 4096
  local eco, mha = sn.nn.EcoFormer(d, 8, { bits = BITS }), sn.nn.MultiheadAttention(d, 8)
  local x = sn.randn(1, 1, d)
  sn.no_grad(function()
    local ce, cm = eco:init_cache(1, ctxlen + 64), mha:init_cache(1, ctxlen + 64)
    eco(sn.randn(1, ctxlen, d), ce)
    mha(sn.randn(1, ctxlen, d), cm)
    local tm, te, xr = util.paired(function() mha(x, cm) end, function() eco(x, ce) end, 31)
    row("EcoFormer step", ("d%d H8 ctx%d b%d"):format(d, ctxlen, BITS), te, nil, xr,
      ("MultiheadAttention step %.3f ms (KV cache)"):format(tm * 1e3))
  end)
end
