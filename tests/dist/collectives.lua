-- tests/dist/collectives.lua -- mpirun -np 2 (or more): sn.dist.allreduce and broadcast
-- against values computed from every rank's known inputs: odd sizes (1, 7, 1000003
-- elements, bigger than a bucket), 300 small tensors packed into buckets, i64, broadcast
-- from each root; ranks that pass different tensors all raise the same error.
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local rank, world = util.init()
local check, test = util.check, util.test

-- Rank r's tensor i holds f(r, i, e) = r + 1 + (i * 7 + e) % 13 / 16 (exact in f32 sums).
local function filled(r, i, n)
  local v = {}
  for e = 0, n - 1 do v[e + 1] = r + 1 + (i * 7 + e) % 13 / 16 end
  return sn.tensor(v)
end
local function expected(i, n, op)
  local sum = filled(0, i, n) * world + (world * (world - 1) / 2) -- sum over r of (r + 1 + p)
  return op == "mean" and sum / world or sum
end

for _, op in ipairs({ "sum", "mean" }) do
  for _, n in ipairs({ 1, 7, 1000003 }) do
    -- 1000003 f32 is 4 MB: packed into the default 25 MB bucket, by itself under 1 MiB ones.
    for _, bucket in ipairs(n > 1000 and { 25 << 20, 1 << 20 } or { 25 << 20 }) do
      test(("allreduce %s of %d elements, %d KiB buckets"):format(op, n, bucket // 1024), function()
        local t = filled(rank, n % 5, n)
        local r = sn.dist.allreduce(t, op, { bucket_bytes = bucket })
        assert(r == t, "returns its argument")
        local want = expected(n % 5, n, op)
        assert(sn.allclose(t, want, 1e-6, 1e-6), ("max diff %g"):format((t - want):abs():max():item()))
      end)
    end
  end
end

test("allreduce mean of 300 small tensors of odd sizes, in few buckets", function()
  local list, sizes = {}, {}
  for i = 1, 300 do
    sizes[i] = 1 + (i * 37) % 101
    list[i] = filled(rank, i, sizes[i])
  end
  -- 4 KiB buckets: 300 tensors of ~200 B each need about 15 calls, crossing bucket edges.
  sn.dist.allreduce(list, "mean", { bucket_bytes = 4096 })
  for i = 1, 300 do
    local want = expected(i, sizes[i], "mean")
    assert(sn.allclose(list[i], want, 1e-6, 1e-6), ("tensor %d (%d elements) differs"):format(i, sizes[i]))
  end
end)

test("allreduce sum mixes f32 and i64 tensors, small and larger than a bucket", function()
  local a = sn.full({ 3, 5 }, rank + 1)
  local b = sn.tensor({ rank, 10 * rank, 2 ^ 40 }, "i64")
  local c = sn.full({ 40 }, 0.5)
  sn.dist.allreduce({ a, b, c }, "sum", { bucket_bytes = 64 }) -- c (160 B) goes by itself
  local s = world * (world + 1) / 2
  assert(sn.allclose(a, sn.full({ 3, 5 }, s)), "f32 part")
  local bt = b:totable()
  assert(bt[1] == s - world and bt[2] == 10 * (s - world) and bt[3] == world * 2 ^ 40, "i64 part: " .. table.concat(bt, ","))
  assert(sn.allclose(c, sn.full({ 40 }, 0.5 * world)), "large part")
end)

test("broadcast from every root, a list of f32 and i64 tensors", function()
  for root = 0, world - 1 do
    local f = sn.full({ 1000003 }, rank * 10 + 1)
    local small = {}
    for i = 1, 50 do small[i] = sn.full({ i }, rank + i) end
    local ids = sn.tensor({ rank, -rank }, "i64")
    sn.dist.broadcast({ f, ids, table.unpack(small) }, root)
    assert(f:min():item() == root * 10 + 1 and f:max():item() == root * 10 + 1, "big f32")
    assert(ids:totable()[1] == root and ids:totable()[2] == -root, "i64")
    for i = 1, 50 do assert(small[i]:min():item() == root + i and small[i]:max():item() == root + i, "small " .. i) end
  end
end)

test("views: a contiguous narrow is reduced in place, the rest of its storage untouched", function()
  local base = sn.full({ 4, 6 }, rank + 1)
  local rows = base:narrow(1, 2, 2)
  sn.dist.allreduce(rows, "sum")
  local s = world * (world + 1) / 2
  assert(base[1]:min():item() == rank + 1 and base[4]:max():item() == rank + 1, "outside the view changed")
  assert(rows:min():item() == s and rows:max():item() == s, "the view was not reduced")
end)

-- Mismatched arguments: every rank raises (none hangs), naming the problem.
local function raises(fn, pattern)
  local ok, err = pcall(fn)
  assert(not ok, "did not raise")
  assert(tostring(err):find(pattern, 1, true), "message was: " .. tostring(err))
end
test("ranks passing different sizes all raise", function()
  raises(function() sn.dist.allreduce(sn.zeros(10 + rank), "sum") end, "seqnn.dist.allreduce: ranks disagree on the tensors")
end)
test("ranks passing different ops all raise", function()
  raises(function() sn.dist.allreduce(sn.zeros(4), rank == 0 and "sum" or "mean") end, "ranks disagree on the arguments")
end)
test("ranks naming different roots all raise", function()
  raises(function() sn.dist.broadcast(sn.zeros(4), rank == 0 and 0 or world - 1) end,
    world > 1 and "ranks disagree on the arguments" or "")
end)
test("a root outside the world raises", function()
  raises(function() sn.dist.broadcast(sn.zeros(4), world) end, ("seqnn.dist.broadcast: root must be a rank in 0..%d, got %d"):format(world - 1, world))
end)
test("after the errors the collectives still work", function()
  local t = sn.ones(3)
  sn.dist.allreduce(t, "sum")
  assert(t:min():item() == world)
  sn.dist.barrier()
end)

sn.dist.finalize()
