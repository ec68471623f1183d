-- bench/bench_pkm.lua -- product-key memory as an FFN replacement (KERNELS.md 4.3), through
-- the Lua API, beside a dense FFN of the same width, in the same run:
--   pkm   = sn.nn.ProductKeyMemory(512, 512, {n_keys = 256 (65536 value rows), k_dim = 128,
--           heads = 4, knn = 32})            (batchnorm queries, the default)
--   dense = sn.nn.MLP{512, 2048, 512}        (GELU, the usual 4d FFN)
-- on x (4, 1024, 512) = 4096 tokens. Rows:
--   forward + backward (y:backward(g), g fixed): tokens/s in the shape column's note, x_ref =
--     dense time / pkm time (above 1: pkm is faster), per sample pair (alternating, so the
--     drift of a shared machine hits both alike);
--   forward alone, the same way;
--   the optimizer step on the value table: AdamW on the row-sparse gradient the backward
--     left (lazy: only the touched rows), against AdamW on a dense gradient of the same
--     (65536, 512) table; x_ref = dense / sparse. How many rows were touched is printed: with
--     4096 tokens x 128 reads of uniform-ish slots nearly every row is read, so the lazy step
--     only wins at smaller batches, which the last rows show (64 and 512 tokens).
-- GFLOP/s counts the dense FFN's 2*2*d*4d per token (x3 for forward + backward) and for pkm
-- the query projection plus the gather (2*d_in*heads*k_dim + 2*heads*knn*d_out per token).
--
--   LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" LUA_CPATH="build/?.so;;" lua5.4 bench/bench_pkm.lua
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local row = util.row

local D, B, T, SAMPLES = 512, 4, 1024, 5
local NTOK = B * T


util.banner("bench_pkm.lua")
util.header()
sn.manual_seed(1)
local pkm = sn.nn.ProductKeyMemory(D, D, { n_keys = 256, k_dim = 128, heads = 4, knn = 32 })
local dense = sn.nn.MLP { D, 4 * D, D }
local x, g = sn.randn(B, T, D), sn.randn(B, T, D)

local function step_of(m)
  return function()
    local y = m(x)
    y:backward(g)
    m:zero_grad()
  end
end
local function fwd_of(m) return function() sn.no_grad(function() return m(x) end) end end

local pkm_flops = NTOK * (2 * D * 4 * 128 + 2 * 4 * 32 * D)
local dense_flops = NTOK * 2 * 2 * D * 4 * D
local shape = ("%dx%d, d %d"):format(B, T, D)

local td, tp, x_fb = util.paired(step_of(dense), step_of(pkm), SAMPLES)
row("pkm fwd+bwd", shape, tp, 3 * pkm_flops, x_fb, ("mlp 4d (%.0f ms); pkm %.0f tok/s, mlp %.0f tok/s"):format(
  td * 1e3, NTOK / tp, NTOK / td))
local fd, fp, x_f = util.paired(fwd_of(dense), fwd_of(pkm), SAMPLES)
row("pkm fwd", shape, fp, pkm_flops, x_f, ("mlp 4d (%.0f ms); pkm %.0f tok/s, mlp %.0f tok/s"):format(
  fd * 1e3, NTOK / fp, NTOK / fd))

-- The optimizer step on the value table: lazy AdamW on the backward's row-sparse gradient
-- against dense AdamW on a dense gradient of the same table.
local V = pkm.values
for _, ntok in ipairs({ NTOK, 512, 64 }) do
  local xs = ntok == NTOK and x or sn.randn(1, ntok, D)
  local gs = ntok == NTOK and g or sn.randn(1, ntok, D)
  pkm:zero_grad()
  pkm(xs):backward(gs)
  local sparse = V.grad
  assert(sn.autograd.is_sparse(sparse), "the value table's gradient is row-sparse")
  local rows = sparse.rows:numel()
  local Vd = V:clone()
  Vd.grad = sparse:to_dense()
  local opt_s = sn.optim.AdamW({ V }, { lr = 1e-3 })
  local opt_d = sn.optim.AdamW({ Vd }, { lr = 1e-3 })
  local tdn, ts, x_opt = util.paired(function() opt_d:step() end, function() V.grad = sparse; opt_s:step() end,
    SAMPLES)
  row("adamw values", ("%dx%d, %d rows"):format(V:size(1), D, rows), ts, nil, x_opt,
    ("dense adamw (%.1f ms); grad of %d tokens"):format(tdn * 1e3, ntok))
  V.grad, Vd.grad = nil, nil
end
