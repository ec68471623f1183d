-- bench/bench_sparse.lua -- issue 8: block-sparse Linear inference through the Lua API,
-- y = x W^T + b with W 4096 x 1024 (out x in) and x 128 tokens, beside the PyTorch and SciPy
-- peers of bench/peers/run_sparse.sh.
--
-- For each block shape (4x1, 16x1, 4x4) and sparsity (50 .. 95%):
--   sp = sn.nn.SparseLinear.from_dense(lin, {sparsity = s, block = {ro, ri}})
-- (block magnitude: the round((1 - s) * nblocks) blocks of largest L2 norm, the peers' rule)
-- is timed against the dense lin = sn.nn.Linear(1024, 4096) of the same run: OpenBLAS SGEMM
-- with SEQNN_GEMM=blas, as `make bench` runs it, else (AVX-512 CPUs) seqnn's own sgemm; the
-- header names it. Alternately, sample by sample: ms is the sparse layer's median, x_ref the
-- median of the per-pair ratios dense / sparse (above 1: the sparse layer is faster), so the
-- drift of a shared machine cancels. Then 2:4 (from_dense {pattern = "2:4"}) against dense,
-- and the int8 path (sp:quantize()) of 4x1 at every sparsity against the f32 layer of the
-- same sparsity (x_ref = f32 / int8). All under sn.no_grad, bias included. GFLOP/s counts
-- the stored weights only: 2 * 128 * nnz / time (dense: 2 * 128 * 4096 * 1024).
--
-- ref: the reference's ms, the issue's target for that row where it has one (4x1: >= 5x at
-- 90%, >= 2x at 70%; 2:4: > 1x; int8: >= 2x; judged on x_ref), `best xR (a / b ms)` the
-- ratio of the two fastest samples (reference / row; see best() below for why), then the
-- peers' times for the same case from run_sparse.sh (its own process, before seqnn's rows),
-- each with (xR) = the peer's own dense time in that run / its time: torch = PyTorch CSR and
-- COO (2 threads) against torch's F.linear, scipy = scipy BSR (CSR for 2:4; single-threaded)
-- against numpy's x @ W.T. Every layer's output is checked once against the dense product
-- on its own pruned weight (sp:to_dense()) before it is timed; int8 rows report their error
-- against the f32 layer. Rows use the table format of build/bench/seqnn_bench
-- (bench/README.md).
--
--   SEQNN_GEMM=blas LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" LUA_CPATH="build/?.so;;" \
--     lua5.4 bench/bench_sparse.lua
--   (from the checkout's root; `make bench` runs it with its LUA_PATH/LUA_CPATH). Setting
--   SEQNN_BENCH_NO_PEERS=1 skips the peers (~2.5 of the ~3.5 minutes here). On a busy
--   machine run it a second time with OMP_WAIT_POLICY=PASSIVE exported (see best()).
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local row = util.row

local M, K, N = 4096, 1024, 128
local BLOCKS = { { 4, 1 }, { 16, 1 }, { 4, 4 } }
local SPARSITIES = { 50, 60, 70, 80, 90, 95 }
local TARGETS = { ["4x1 90"] = 5, ["4x1 70"] = 2 }
local WORD = { [1] = "one", [4] = "four", [16] = "sixteen", [50] = "fifty", [60] = "sixty", [70] = "seventy",
  [80] = "eighty", [90] = "ninety", [95] = "ninetyfive" }

-- The dense reference is sn.nn.Linear's product, which on AVX-512 CPUs is seqnn's own sgemm
-- unless SEQNN_GEMM=blas was set when the library loaded (simd/dispatch.c): the issue's
-- targets are against OpenBLAS, hence SEQNN_GEMM=blas in `make bench`.
local cfg = sn.config()
local OWN_GEMM = cfg.simd == "avx512" and os.getenv("SEQNN_GEMM") ~= "blas"
local DENSE = OWN_GEMM and "seqnn avx512 sgemm" or ("OpenBLAS sgemm (core " .. cfg.blas_core .. ")")

util.banner("bench_sparse.lua")
print(("# OMP_WAIT_POLICY=%s OPENBLAS_CORETYPE=%s SEQNN_GEMM=%s (from the environment; the peers run both "
  .. "policies)"):format(os.getenv("OMP_WAIT_POLICY") or "(unset)", os.getenv("OPENBLAS_CORETYPE") or "(unset)",
  os.getenv("SEQNN_GEMM") or "(unset)"))
print("# dense reference: sn.nn.Linear(1024, 4096) on " .. DENSE .. (OWN_GEMM and
  "; the issue's targets are against OpenBLAS: run with SEQNN_GEMM=blas" or ""))
print(("# y = x W^T + b, W %dx%d (out x in), x %d tokens, under sn.no_grad; x_ref: the reference's time / "
  .. "the row's (paired samples); (xR) after a peer: its own dense time / its time"):format(M, K, N))

-- ---- the peers: run_sparse.sh's output kept (for its header and skip lines) and parsed by
-- util.peer
local peer, peer_why = nil, "skip: SEQNN_BENCH_NO_PEERS set"
if os.getenv("SEQNN_BENCH_NO_PEERS") ~= "1" then
  local tmp = os.tmpname()
  local out = assert(io.open(tmp, "w"))
  local pipe = io.popen("sh bench/peers/run_sparse.sh 2>&1")
  local notes = {}
  for line in pipe:lines() do
    out:write(line, "\n")
    -- the torch header (with its OpenBLAS core), the check and skips; not the per-policy lines
    if line:match("^torch ") or line:match("^check_ok ") or line:match("^skip") or line:match("^[%w_]+_skip ") then
      notes[#notes + 1] = "# peer: " .. line
    end
  end
  pipe:close()
  out:close()
  peer, peer_why = util.peer("cat " .. tmp)
  os.remove(tmp)
  for _, l in ipairs(notes) do print(l) end
end
if not peer then print("# peers: " .. tostring(peer_why)) end

local function peer_ms(name) return peer and peer[name .. "_ms"] end

-- " torch csr 40.2 (x1.40)" for one peer measurement, or "" when it was not reported.
local function peer_note(label, name, dense_name)
  local v = peer_ms(name)
  if not v then return "" end
  local d = peer_ms(dense_name)
  return (" %s %.3g%s"):format(label, v, d and (" (x%.2f)"):format(d / v) or "")
end

local function peers_for(key) -- key: "four_one_ninety" or "two_four"
  if not peer then return "" end
  local torch = peer_note("csr", "torch_csr_" .. key, "torch_dense") .. peer_note("coo", "torch_coo_" .. key,
    "torch_dense")
  local scipy = key == "two_four" and peer_note("csr", "scipy_csr_" .. key, "numpy_dense") or
      peer_note("bsr", "scipy_bsr_" .. key, "numpy_dense")
  return (torch ~= "" and ("; torch" .. torch) or "") .. (scipy ~= "" and ("; scipy" .. scipy) or "")
end

-- "best x12.3 (17.7 / 1.44 ms)": the ratio of the fastest samples. With other tenants
-- keeping the 2 cores busy (load 4-10 here) and OMP_WAIT_POLICY unset, most calls of both
-- sides took whole multiples of the 4 ms scheduler tick (16.0, 24.0, 36.0 ms for kernels of
-- 1-5 ms: a thread of the 2-thread region waiting for a core), so medians and their ratios
-- said little; the fastest samples showed it less often, runs with OMP_WAIT_POLICY=PASSIVE
-- exported not at all.
local function best(r, a, b) return ("best x%.2f (%.4g / %.4g ms)"):format(r, a * 1e3, b * 1e3) end

-- max |y - ref| / max |ref|
local function rel_err(y, ref)
  return (y - ref):abs():max():item() / ref:abs():max():item()
end

sn.manual_seed(1)
local lin = sn.nn.Linear(K, M)
local x = sn.randn(N, K)
local SparseLinear = sn.nn.SparseLinear
local results = {} -- for the summary lines

local function dense() return lin(x) end

sn.no_grad(function()
  util.header()
  -- the dense reference alone, for the header's record
  local dense_s = util.time(dense, 9)
  row("dense Linear", ("%dx%d N%d"):format(M, K, N), dense_s, 2 * N * M * K, nil,
    "(reference) " .. DENSE .. " + bias" .. (peer and ("; torch F.linear %s, numpy %s, torch int8 dynamic %s ms")
      :format(peer_ms("torch_dense") or "-", peer_ms("numpy_dense") or "-", peer_ms("torch_qint_dense") or "-") or ""))

  if not SparseLinear then
    print("skip: sn.nn.SparseLinear is not available in this build")
    return
  end

  local function checked(label, layer)
    local err = rel_err(layer(x), sn.F.linear(x, layer:to_dense(), layer.bias))
    if not (err <= 1e-4) then
      print(("MISMATCH %s: max |err| %.3g of max |y| against the dense product on its pruned weight"):format(label,
        err))
      return false
    end
    return true
  end

  for _, b in ipairs(BLOCKS) do
    local ro, ri = b[1], b[2]
    for _, s in ipairs(SPARSITIES) do
      local sp = SparseLinear.from_dense(lin, { sparsity = s / 100, block = { ro, ri } })
      local label = ("bsr %dx%d"):format(ro, ri)
      local shape = ("%dx%d N%d s%d"):format(M, K, N, s)
      if checked(label .. " " .. shape, sp) then
        local nnz = sp.values:numel()
        local td, ts, x_ref, rb, da, sb = util.paired(dense, function() return sp(x) end)
        local target = TARGETS[("%dx%d %d"):format(ro, ri, s)]
        local tnote = target and (" target >= %dx: %s"):format(target, x_ref >= target and "met" or "NOT met") or ""
        results[#results + 1] = target and ("%s s%d x%.2f, best x%.2f (target %dx %s)"):format(label, s, x_ref, rb,
          target, x_ref >= target and "met" or "NOT met") or nil
        row(label, shape, ts, 2 * N * nnz, x_ref, ("dense %.4g ms%s; %s%s"):format(td * 1e3, tnote, best(rb, da, sb),
          peers_for(("%s_%s_%s"):format(WORD[ro], WORD[ri], WORD[s]))))
      end
      sp = nil
      collectgarbage()
    end
  end

  -- 2:4 against dense
  local s24 = SparseLinear.from_dense(lin, { pattern = "2:4" })
  if checked("2:4", s24) then
    local td, ts, x_ref, rb, da, sb = util.paired(dense, function() return s24(x) end)
    results[#results + 1] = ("2:4 x%.2f, best x%.2f (target > 1x %s)"):format(x_ref, rb,
      x_ref > 1 and "met" or "NOT met")
    row("2:4", ("%dx%d N%d s50"):format(M, K, N), ts, 2 * N * s24.values:numel(), x_ref,
      ("dense %.4g ms target > 1x: %s; %s%s"):format(td * 1e3, x_ref > 1 and "met" or "NOT met", best(rb, da, sb),
        peers_for("two_four")))
  end
  s24 = nil
  collectgarbage()

  -- int8 BSR 4x1 against the f32 layer of the same sparsity
  for _, s in ipairs(SPARSITIES) do
    local opts = { sparsity = s / 100, block = { 4, 1 } }
    local sp = SparseLinear.from_dense(lin, opts)
    local sq = SparseLinear.from_dense(lin, opts):quantize()
    local shape = ("%dx%d N%d s%d"):format(M, K, N, s)
    local err = rel_err(sq(x), sp(x))
    local tf, tq, x_ref, rb, fa, qb = util.paired(function() return sp(x) end, function() return sq(x) end)
    local td = util.time(dense, 5)
    results[#results + 1] = ("int8 4x1 s%d x%.2f, best x%.2f (target 2x %s)"):format(s, x_ref, rb,
      x_ref >= 2 and "met" or "NOT met")
    row("int8 bsr 4x1", shape, tq, 2 * N * sp.values:numel(), x_ref,
      ("f32 bsr 4x1 %.4g ms target >= 2x: %s; %s; max_err %.2g of max |y|; x%.2f dense (%.4g ms, unpaired)%s"):format(
        tf * 1e3, x_ref >= 2 and "met" or "NOT met", best(rb, fa, qb), err, td / tq, td * 1e3,
        peer and peer_ms("torch_qint_dense") and ("; torch int8 dynamic dense %.3g (x%.2f)"):format(
          peer_ms("torch_qint_dense"), (peer_ms("torch_dense") or 0 / 0) / peer_ms("torch_qint_dense")) or ""))
    sp, sq = nil, nil
    collectgarbage()
  end
end)

if #results > 0 then print("# targets (dense: " .. DENSE .. "): " .. table.concat(results, "; ")) end
