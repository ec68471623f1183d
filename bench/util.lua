-- bench/util.lua -- what the Lua benchmarks share: the table row of bench/bench_core.c
-- (same columns, see bench/README.md) and the median of timing samples.
local sn = require "seqnn"

local util = {}

local ROW = "%-18s %-22s %-7s %-7s %-9s %-8s %-7s %-6s %s"

-- The first line of a script's table: its name and the configuration it ran with.
function util.banner(script)
  local cfg = sn.config()
  print()
  print(("# %s  %s   %s   threads: %d   simd: %s   blas core: %s"):format(script, _VERSION, sn._VERSION,
    cfg.threads, cfg.simd, cfg.blas_core))
end

function util.header()
  print(ROW:format("kernel", "shape", "threads", "simd", "ms", "GFLOP/s", "GB/s", "x_ref", "ref"))
end

-- One row: seconds per call, optional flops per call (for GFLOP/s), optional ratio.
function util.row(kernel, shape, seconds, flops, x_ref, ref)
  local cfg = sn.config()
  print(ROW:format(kernel, shape, tostring(cfg.threads), cfg.simd, ("%.4g"):format(seconds * 1e3),
                   flops and ("%.1f"):format(flops / seconds * 1e-9) or "-", "-",
                   x_ref and ("%.2f"):format(x_ref) or "-", ref))
end

function util.median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

return util
