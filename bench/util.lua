-- bench/util.lua -- what the Lua benchmarks share: the table row of bench/bench_core.c
-- (same columns, see bench/README.md), the median of timing samples, timing a function,
-- and reading a PyTorch peer's measurements.
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

-- Median seconds of fn() over `samples` runs after one warm-up.
function util.time(fn, samples)
  fn()
  local t = {}
  for i = 1, samples do
    local t0 = sn.clock()
    fn()
    t[i] = sn.clock() - t0
  end
  return util.median(t)
end

-- fa (the reference) and fb (the row) alternately, sample by sample, after one warm-up of
-- each, so that the drift of a shared machine hits both alike: the medians of each, the
-- median of the per-pair ratios ta / tb (x_ref), the fastest samples' ratio and their
-- times. samples: how many pairs (default: what fits in about a second, 9 to 41). A
-- collection runs between samples, so the previous outputs are freed there, not inside one.
function util.paired(fa, fb, samples)
  fa(); fb()
  if not samples then
    local t0 = sn.clock()
    fa(); fb()
    samples = math.max(9, math.min(41, math.floor(1.0 / math.max(sn.clock() - t0, 1e-6))))
  end
  local ta, tb, ratio = {}, {}, {}
  for i = 1, samples do
    collectgarbage()
    local t1 = sn.clock()
    fa()
    local t2 = sn.clock()
    fb()
    local t3 = sn.clock()
    ta[i], tb[i], ratio[i] = t2 - t1, t3 - t2, (t2 - t1) / (t3 - t2)
  end
  local min_a, min_b = math.min(table.unpack(ta)), math.min(table.unpack(tb))
  return util.median(ta), util.median(tb), util.median(ratio), min_a / min_b, min_a, min_b
end

-- Runs a peer script (`sh bench/peers/run_*.sh ...`) and returns its measurements, the lines
-- `name value ...` whose name ends in _ms or _us_per_token, as name -> number, and the torch
-- version line; or nil and the reason it was skipped (its last line).
function util.peer(command)
  local pipe = io.popen(command .. " 2>&1")
  local values, version, last = {}, nil, nil
  for line in pipe:lines() do
    last = line
    version = version or line:match("^(torch %S+)")
    local name, value = line:match("^([%w_]+_ms) (%S+)")
    if not name then name, value = line:match("^([%w_]+_us_per_token) (%S+)") end
    if name then values[name] = tonumber(value) end
  end
  pipe:close()
  if next(values) == nil then return nil, last or ("skip: no output from " .. command) end
  return values, version or "torch"
end

return util
