-- bench/bench_lua.lua -- what the binding costs, seen from Lua: time per call of tiny ops
-- (1-element tensors, ~1e6 calls each), and sn.matmul 1024^3 against the C bench's
-- sn_matmul row of the same `make bench` run (read from results.tsv beside seqnn_bench).
-- Rows use the table format of build/bench/seqnn_bench (bench/README.md).
--
--   make bench    (runs it with LUA_PATH/LUA_CPATH set to this checkout)
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local row, median = util.row, util.median

local now = sn.clock
local REPS, WARMUP = 11, 2

-- Median seconds per call of fn over REPS samples of `calls` calls, after WARMUP samples.
local function time_calls(fn, calls)
  local samples = {}
  for rep = 1, WARMUP + REPS do
    local t0 = now()
    for _ = 1, calls do fn() end
    if rep > WARMUP then samples[#samples + 1] = (now() - t0) / calls end
  end
  return median(samples)
end

util.banner("bench_lua.lua")
print("# lua rows: ms per call (x1e6 = ns); x_ref: speed relative to an empty Lua function call")
util.header()

-- ---- tiny ops: the fixed cost of crossing into C, checking and allocating -------------
local CALLS = 100000 -- per sample: 1.1e6 timed calls per op
local a, b = sn.ones(1), sn.ones(1)
local a2, b2 = sn.ones(1, 1), sn.ones(1, 1)
local function id(x) return x end
local base = time_calls(function() return id(a) end, CALLS)
row("lua f(x)", "-", base, nil, nil, ("(reference; %.0f ns/call)"):format(base * 1e9))

local ops = {
  { "lua a + b", "1 elem", function() return a + b end, function() return (a + b):item() == 2 end },
  { "lua t:size(1)", "1 elem", function() return a:size(1) end, function() return a:size(1) == 1 end },
  { "lua sn.zeros(1)", "1 elem", function() return sn.zeros(1) end,
    function() return sn.zeros(1):item() == 0 end },
  { "lua t:exp()", "1 elem", function() return a:exp() end,
    function() return math.abs(a:exp():item() - math.exp(1)) < 1e-6 end },
  { "lua sn.matmul", "1x1x1", function() return sn.matmul(a2, b2) end,
    function() return sn.matmul(a2, b2):item() == 1 end },
}
for _, op in ipairs(ops) do
  local kernel, shape, fn, check = op[1], op[2], op[3], op[4]
  if not check() then
    print(("%-18s %-22s MISMATCH"):format(kernel, shape))
  else
    local t = time_calls(fn, CALLS)
    row(kernel, shape, t, nil, base / t, ("lua f(x); %.0f ns/call"):format(t * 1e9))
  end
end

-- ---- a large matmul from Lua against the C row -----------------------------------------
-- The C bench wrote results.tsv beside itself, in the build dir whose core.so we loaded.
local function c_matmul_ms()
  local so = package.searchpath("seqnn.core", package.cpath)
  local dir = so and so:match("^(.*)/seqnn/core%.so$")
  local f = dir and io.open(dir .. "/bench/results.tsv")
  if not f then return nil end
  for line in f:lines() do
    local kernel, shape, ref, ms = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
    if kernel == "matmul" and shape == "1024x1024x1024" and ref == "cblas_sgemm" then
      f:close()
      return tonumber(ms)
    end
  end
  f:close()
  return nil
end

local n = 1024
local x, y = sn.randn(n, n), sn.randn(n, n)
local probe = sn.matmul(x, y)
-- Check one entry against a dot product in Lua before timing.
local i, j, want = 17, 911, 0
for k = 1, n do want = want + x[i][k] * y[k][j] end
if math.abs(probe[i][j] - want) > 1e-3 * (1 + math.abs(want)) then
  print(("%-18s %-22s MISMATCH: entry (%d,%d) is %g, want %g"):format("lua sn.matmul", "1024x1024x1024",
                                                                      i, j, probe[i][j], want))
else
  probe = nil
  local t = time_calls(function() local c <close> = sn.matmul(x, y) end, 1)
  local c_ms = c_matmul_ms()
  row("lua sn.matmul", "1024x1024x1024", t, 2.0 * n * n * n, c_ms and c_ms * 1e-3 / t,
      c_ms and ("C sn_matmul row, %.4g ms"):format(c_ms) or "C row: none in results.tsv (run seqnn_bench first)")
end
