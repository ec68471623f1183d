-- Everything a user can get wrong raises a Lua error that names the function, the argument
-- and the shapes; nothing crashes. Messages are matched exactly where they are part of the
-- contract and by their important words elsewhere.
local sn = require "seqnn"

local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

local function has(fn, ...)
  local msg = err_of(fn)
  for _, part in ipairs({ ... }) do
    if not msg:find(part, 1, true) then
      error(("message %q lacks %q"):format(msg, part), 2)
    end
  end
end

describe("bad arguments", function()
  it("rejects non-tensors by name and position", function()
    has(function() return sn.matmul(sn.ones(2, 2), nil) end,
      "bad argument #2 'b' to 'seqnn.matmul' (seqnn.Tensor expected, got nil)")
    has(function() return sn.add({}, sn.ones(1)) end, "seqnn.add", "seqnn.Tensor expected, got table")
    has(function() return sn.ones(2) + "x" end, "seqnn.add", "got string")
    has(function() return sn.sum(42) end, "seqnn.sum", "seqnn.Tensor expected, got number")
  end)

  it("rejects bad shapes, sizes and overflow", function()
    has(function() return sn.zeros(4294967296, 4294967296) end, "seqnn", "4294967296x4294967296", "overflow")
    has(function() return sn.zeros(-1) end, "negative")
    has(function() return sn.zeros(1, 1, 1, 1, 1, 1, 1, 1, 1) end, "at most 8")
    has(function() return sn.zeros(2.5) end, "seqnn.zeros", "integer")
    has(function() return sn.zeros("x") end, "seqnn.zeros", "dtype")
    has(function() return sn.full(3, 1) end, "table expected")
    has(function() return sn.tensor({ { 1, 2 }, { 3 } }) end, "seqnn.tensor", "ragged")
    has(function() return sn.tensor({ 1, "a" }) end, "seqnn.tensor", "[2]", "number")
    has(function() return sn.tensor({ 1.5 }, "i64") end, "seqnn.tensor", "integer")
    has(function() return sn.arange(0, 10, 0) end, "seqnn.arange", "step")
    has(function() return sn.randint(5, 5, 3) end, "seqnn.randint", "empty range")
  end)

  it("rejects shapes that do not broadcast, naming both", function()
    has(function() return sn.ones(4, 6) + sn.ones(8) end, "seqnn.add", "4x6", "8", "broadcast")
    has(function() return sn.ones(2, 3):add_(sn.ones(4, 3)) end, "seqnn.add_", "2x3", "4x3")
    has(function() return sn.ones(2, 3):add_(sn.ones(2, 2, 3)) end, "seqnn.add_")
  end)

  it("rejects bad matmul shapes and dtypes", function()
    has(function() return sn.matmul(sn.ones(2, 3), sn.ones(4, 5)) end,
      "seqnn.matmul: a is 2x3 but b is 4x5 (inner dims 3 and 4 differ)")
    has(function() return sn.matmul(sn.ones(2, 3, "i64"), sn.ones(3, 2)) end, "seqnn.matmul", "'a'", "f32", "i64")
    has(function() return sn.matmul(sn.ones(2, 2, 3), sn.ones(3, 3, 4)) end, "seqnn.matmul", "broadcast")
  end)

  it("rejects out-of-range dims and indices", function()
    local t = sn.ones(2, 3)
    has(function() return t:size(3) end, "seqnn.size", "dim 3", "2 dims", "2x3")
    has(function() return t:sum(-3) end, "seqnn.sum", "dim -3")
    has(function() return t:transpose(1, 5) end, "seqnn.transpose", "dim 5")
    has(function() return t[3] end, "index 3", "size 2", "2x3")
    has(function() return t[0] end, "index 0")
    has(function() return t:select(2, 4) end, "seqnn.select", "index 4", "2x3")
    has(function() return t:narrow(2, 3, 2) end, "seqnn.narrow", "2x3")
    has(function() return t:permute(1, 1) end, "seqnn.permute", "permutation")
    has(function() return t:permute(1) end, "seqnn.permute", "1 dims given")
    has(function() return t:expand(4, 3) end, "seqnn.expand", "2x3", "4x3")
    has(function() return t:index_select(1, sn.tensor({ 2 }, "i64")) end, "seqnn.index_select", "out of range")
    has(function() return t:index_select(1, sn.tensor({ 0 })) end, "seqnn.index_select", "i64")
  end)

  it("rejects views that need a copy and sizes that do not match", function()
    has(function() return sn.ones(2, 3):view(4, 2) end, "seqnn.view", "6")
    has(function() return sn.ones(2, 3):t():view(6) end, "seqnn.view", "reshape")
    has(function() return sn.ones(2, 3):view(-1, -1) end, "seqnn.view", "-1")
    has(function() return sn.ones(2, 3):reshape(4, -1) end, "seqnn.reshape", "infer")
  end)

  it("rejects item() of many elements and freed tensors", function()
    has(function() return sn.ones(2):item() end, "seqnn.item", "2 elements")
    local t = sn.ones(2)
    t:free()
    has(function() return t + 1 end, "tensor was freed")
    has(function() return t[1] end, "tensor was freed")
    assert.are.equal("[seqnn.Tensor (freed)]", tostring(t))
  end)

  it("rejects bad dtypes for the operation", function()
    has(function() return sn.ones(2, "i64"):div_(2) end, "seqnn.div_", "f32", "i64")
    has(function() return sn.ones(1, "i64"):fill_(1e300) end, "seqnn.fill_", "i64")
    has(function() return sn.ones(2):to("f16") end, "dtype", "f16")
  end)

  it("rejects bad settings", function()
    has(function() return sn.set_num_threads(0) end, "seqnn.set_num_threads", "1..1024")
    has(function() return sn.manual_seed("x") end, "seqnn.manual_seed", "seed")
    has(function() return sn.set_memory_limit(-1) end, "seqnn.set_memory_limit")
  end)

  it("refuses to assign methods or odd keys", function()
    local t = sn.ones(2)
    has(function() t.sum = 1 end, "method")
    has(function() t[true] = 1 end, "keys")
    has(function() t[1] = "x" end, "number or a seqnn.Tensor")
  end)

  it("fails cleanly at the memory limit", function()
    local old = sn.memory().limit
    sn.set_memory_limit(sn.memory().live + 1024 * 1024)
    has(function() return sn.zeros(1024, 1024, 4) end, "out of memory", "MiB")
    sn.set_memory_limit(old)
    assert.are.equal(4, sn.zeros(2, 2):numel())
  end)
end)
