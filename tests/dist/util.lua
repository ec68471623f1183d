-- tests/dist/util.lua -- what the multi-rank tests share (run by tests/run-dist under
-- mpirun). Each check prints "ok - name" on rank 0 when every rank passed it, or
-- "not ok - name: why" on each rank that failed it; tests/run-dist counts these lines.
local sn = require "seqnn"

local util = {}

function util.init()
  local rank, world = sn.dist.init()
  util.rank, util.world = rank, world
  return rank, world
end

-- check(name, ok [, why]): every rank must call it, in the same order (it agrees by allreduce).
function util.check(name, ok, why)
  if not ok then print(("not ok - %s: rank %d: %s"):format(name, util.rank, tostring(why))) end
  local failed = sn.dist.allreduce(sn.tensor({ ok and 0 or 1 }, "i64"), "sum"):item()
  if util.rank == 0 and failed == 0 then print("ok - " .. name) end
  io.stdout:flush()
  return ok
end

-- pcall'd check: fn raises on failure.
function util.test(name, fn)
  local ok, err = pcall(fn)
  return util.check(name, ok, err)
end

-- The largest |a - b| / (max |b| + tiny) over a list of tensor pairs.
function util.max_rel_diff(a, b)
  local worst = 0
  for i = 1, #a do
    local d = (a[i] - b[i]):abs():max():item()
    local s = b[i]:abs():max():item()
    worst = math.max(worst, d / (s + 1e-12))
  end
  return worst
end

-- Parameters as copies (snapshots).
function util.snapshot(model)
  local out = {}
  for i, p in ipairs(model:parameters()) do out[i] = p:detach():clone() end
  return out
end

return util
