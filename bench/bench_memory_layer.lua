-- bench/bench_memory_layer.lua -- MemoryFormer's memory layer through the Lua API against
-- the dense layer it replaces, on the issue's shape: sn.nn.MemoryLayer(1024, 1024) (8 bits,
-- K = 128 tables, 128 MiB of f32 tables) vs sn.nn.Linear(1024, 1024), x 4096 tokens,
-- bias on both.
--
-- Rows (each timed alternately with the Linear, sample by sample; x_ref = the Linear's time
-- over the row's, the median of the per-pair ratios, so the drift of a shared machine
-- cancels; "best" the ratio of the fastest samples):
--   fwd        inference under sn.no_grad: f32 tables read in place (the layer packs their
--              column panels per call), the f32 packed copy (layer:pack()) and the bf16
--              packed copy (layer:pack_bf16()); target x_ref >= 4
--   fwd+bwd    y = layer(x) with x and the parameters requiring gradients, then
--              y:backward(g) (dx, dtables dense, dbias); target x_ref > 1
-- The ref column also gives FLOPs per token (layer:flops_per_token() against 2 d_in d_out)
-- and the tables' MiB. Every memory-layer output is first checked against sn.F.hash_linear
-- on the unpacked f32 tables. The Linear is OpenBLAS SGEMM with SEQNN_GEMM=blas (the
-- target's reference), else on AVX-512 CPUs seqnn's own sgemm; the header names it.
--
--   SEQNN_GEMM=blas LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" LUA_CPATH="build/?.so;;" \
--     lua5.4 bench/bench_memory_layer.lua
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")

local D_IN, D_OUT, N, BITS = 1024, 1024, 4096, 8

local cfg = sn.config()
local OWN_GEMM = cfg.simd == "avx512" and os.getenv("SEQNN_GEMM") ~= "blas"
local DENSE = OWN_GEMM and "seqnn avx512 sgemm" or ("OpenBLAS sgemm (core " .. cfg.blas_core .. ")")

util.banner("bench_memory_layer.lua")
print(("# OMP_WAIT_POLICY=%s OPENBLAS_CORETYPE=%s SEQNN_GEMM=%s"):format(os.getenv("OMP_WAIT_POLICY") or "(unset)",
  os.getenv("OPENBLAS_CORETYPE") or "(unset)", os.getenv("SEQNN_GEMM") or "(unset)"))
print("# dense reference: sn.nn.Linear(1024, 1024) on " .. DENSE .. (OWN_GEMM and
  "; the issue's targets are against OpenBLAS: run with SEQNN_GEMM=blas" or ""))


sn.manual_seed(1)
local lin = sn.nn.Linear(D_IN, D_OUT)
local mem = sn.nn.MemoryLayer(D_IN, D_OUT, { bits = BITS })
local x = sn.randn(N, D_IN)
local g = sn.randn(N, D_OUT)
local shape = ("%d->%d N%d b%d"):format(D_IN, D_OUT, N, BITS)
local flops_mem, flops_dense = mem:flops_per_token(), 2 * D_IN * D_OUT
local costs = ("%d vs %d FLOPs/token (x%.1f fewer), tables %.0f MiB vs %.0f MiB"):format(flops_mem, flops_dense,
  flops_dense / flops_mem, mem:table_bytes() / 2 ^ 20, D_IN * D_OUT * 4 / 2 ^ 20)
print("# " .. costs)
util.header()

local results = {}
local want = sn.no_grad(function() return sn.F.hash_linear(x, mem.tables, mem.bias, { bits = BITS }) end)
local function checked(label, tol)
  local y = sn.no_grad(function() return mem(x) end)
  local err = (y - want):abs():max():item() / want:abs():max():item()
  if not (err <= tol) then
    print(("MISMATCH %s: max |err| %.3g of max |y| against sn.F.hash_linear"):format(label, err))
    return false
  end
  return true
end

-- inference
mem:eval()
for _, variant in ipairs({ { "memory fwd f32", nil, 1e-6 }, { "memory fwd packed", "pack", 1e-6 },
                          { "memory fwd bf16", "pack_bf16", 1e-2 } }) do
  local label, method, tol = variant[1], variant[2], variant[3]
  if method then mem[method](mem) end
  if checked(label, tol) then
    local td, tm, x_ref, best = sn.no_grad(function()
      return util.paired(function() return lin(x) end, function() return mem(x) end, 15)
    end)
    results[#results + 1] = ("%s x%.2f (target >= 4x %s)"):format(label, x_ref, x_ref >= 4 and "met" or "NOT met")
    util.row(label, shape, tm, N * flops_mem, x_ref, ("Linear fwd %.4g ms; best x%.2f; %s"):format(td * 1e3, best,
      costs))
  end
  mem:unpack()
end

-- training step: forward and backward
mem:train()
local xg = x:clone():requires_grad(true)
local function step(layer)
  return function()
    local y = layer(xg)
    y:backward(g)
    xg.grad = nil
    layer:zero_grad()
  end
end
local td, tm, x_ref, best = util.paired(step(lin), step(mem), 9)
results[#results + 1] = ("memory fwd+bwd x%.2f (target > 1x %s)"):format(x_ref, x_ref > 1 and "met" or "NOT met")
util.row("memory fwd+bwd", shape, tm, 3 * N * flops_mem, x_ref, ("Linear fwd+bwd %.4g ms; best x%.2f"):format(
  td * 1e3, best))
for _, r in ipairs(results) do print("# " .. r) end
