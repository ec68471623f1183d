-- bench/bench_mamba.lua -- Mamba through the Lua API, beside the PyTorch peers of
-- bench/peers/run_scan.sh (skipped when torch is missing):
--   * sn.F.selective_scan fwd+bwd at B=2, T=1024, D=1536, N=16 (with D, z, delta_bias,
--     softplus, as the block calls it) against PyTorch's Blelloch parallel scan (as in
--     mamba.py; the faster of its (B,D,T,N) and (B,T,D,N) layouts) and its sequential
--     reference;
--   * one sn.nn.Mamba block (d_model 768) fwd+bwd at B=2, T=1024 against the same block in
--     PyTorch on the parallel scan;
--   * decoding: ms per token of a 24-layer d_model 768 Mamba LM at context 1k and 16k, beside
--     an attention LM of the same width and depth (12 heads, GELU MLP) through its KV cache.
--     The caches are filled with values up to the context (every page written) instead of
--     running a 16k-token prompt, which takes minutes: a step's cost depends on the cached
--     length, not on the values.
-- Rows use the table format of build/bench/seqnn_bench (bench/README.md).
--
--   make bench    (runs it after bench_gpt.lua, with LUA_PATH/LUA_CPATH set to this checkout)
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local row, time = util.row, util.time

util.banner("bench_mamba.lua")
print("# x_ref: PyTorch's time / seqnn's (above 1: seqnn is faster); decode rows: ms per token")
util.header()

local torch, torch_name = util.peer("sh bench/peers/run_scan.sh parallel parallel_btdn ref block")
-- the parallel scan at its best: the faster of its two layouts ((B,D,T,N) as mamba.py, or
-- (B,T,D,N), which ran faster here)
local parallel = "scan_parallel_fwdbwd_ms"
if torch and (torch.scan_parallel_btdn_fwdbwd_ms or math.huge) < (torch[parallel] or math.huge) then
  parallel = "scan_parallel_btdn_fwdbwd_ms"
end
local function vs(name, seconds)
  local ms = torch and torch[name]
  if not ms then return nil, torch and (name .. " not reported by the peer") or torch_name end
  return ms / (seconds * 1e3), ("%s %s %.1f ms"):format(torch_name, name:gsub("_ms$", ""), ms)
end

-- ---- scan --------------------------------------------------------------------------------
sn.manual_seed(1)
local B, T, D, N = 2, 1024, 1536, 16
local function leaf(t) return t:requires_grad(true) end
local u, delta, z = leaf(sn.randn(B, T, D)), leaf(sn.randn(B, T, D) - 3), leaf(sn.randn(B, T, D))
local A, Bm, Cm = leaf(-(sn.rand(D, N) * 15 + 1)), leaf(sn.randn(B, T, N)), leaf(sn.randn(B, T, N))
local Ds, bias = leaf(sn.ones(D)), leaf(sn.randn(D) * 0.1)
local g = sn.randn(B, T, D)
local leaves = { u, delta, z, A, Bm, Cm, Ds, bias }
local scan_s = time(function()
  -- fresh gradients each time, as the peer's step (x.grad = None): no accumulation timed
  for _, t in ipairs(leaves) do t.grad = nil end
  local y = sn.F.selective_scan(u, delta, A, Bm, Cm, { D = Ds, z = z, delta_bias = bias, delta_softplus = true })
  y:backward(g)
end, 7)
local shape = ("B%d T%d D%d N%d"):format(B, T, D, N)
local x, ref = vs(parallel, scan_s)
row("selective_scan", shape, scan_s, 21.0 * B * T * D * N, x, "fwd+bwd vs parallel scan (faster layout): " .. ref)
x, ref = vs("scan_ref_fwdbwd_ms", scan_s)
row("selective_scan", shape, scan_s, 21.0 * B * T * D * N, x, "fwd+bwd vs sequential: " .. ref)
u, delta, z, A, Bm, Cm, Ds, bias, g, leaves = nil, nil, nil, nil, nil, nil, nil, nil, nil, nil

-- ---- block -------------------------------------------------------------------------------
local block = sn.nn.Mamba(768)
local h, gh = sn.randn(B, T, 768):requires_grad(true), sn.randn(B, T, 768)
local block_s = time(function()
  block:zero_grad()
  h.grad = nil -- as the peer's x.grad = None
  block(h):backward(gh)
end, 7)
local params = block:num_parameters()
x, ref = vs("mamba_block_fwdbwd_ms", block_s)
row("mamba block", ("B%d T%d d768"):format(B, T), block_s, 6.0 * params * B * T, x, "fwd+bwd: " .. ref)
block, h, gh = nil, nil, nil
collectgarbage()

-- ---- decoding ----------------------------------------------------------------------------
local LAYERS, WIDTH, VOCAB = 24, 768, 256
local function decode_row(kind, context)
  sn.manual_seed(2)
  local lm = sn.models.LM{ vocab = VOCAB, d = WIDTH, layers = LAYERS, heads = 12, context = context + 1,
    mixer = kind, mlp = kind == "mamba" and "none" or "gelu" }
  local cache = lm:init_cache(1, context + 1)
  -- Fill every layer's state up to context - 1 positions, then time the token at `context`.
  for i = 1, LAYERS do
    local c = cache[i]
    if kind == "mamba" then
      c.conv:fill_(0.01); c.ssm:fill_(0.01)
    else
      c.k:fill_(0.01); c.v:fill_(0.01)
    end
    c.length = context - 1
  end
  cache.length = context - 1
  local id = sn.tensor({ { 1 } }, "i64")
  local step = time(function()
    lm:step(id, cache)
    for i = 1, LAYERS do cache[i].length = context - 1 end
    cache.length = context - 1
  end, 5)
  row(kind .. " decode", ("L%d d%d ctx%d"):format(LAYERS, WIDTH, context), step, nil, nil,
    ("%.1f tokens/s; %d params"):format(1 / step, lm:num_parameters()))
  return step
end
local flat = {}
for _, kind in ipairs({ "mamba", "attention" }) do
  for _, context in ipairs({ 1024, 16384 }) do
    flat[kind .. context] = decode_row(kind, context)
    collectgarbage()
  end
end
print(("# decode at 16k over 1k: mamba x%.2f, attention x%.2f"):format(flat.mamba16384 / flat.mamba1024,
  flat.attention16384 / flat.attention1024))
