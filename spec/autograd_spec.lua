-- Reverse-mode autograd: gradients of the differentiable tensor methods against finite
-- differences, accumulation, no_grad, detach, graph reuse and error cases.
local sn = require "seqnn"
local gradcheck = sn.autograd.gradcheck

local function leaf(...)
  return sn.randn(...):requires_grad(true)
end

local function positive(...)
  return (sn.rand(...) + 0.5):requires_grad(true)
end

describe("autograd", function()
  before_each(function() sn.manual_seed(11) end)

  it("differentiates arithmetic with broadcasting and numbers", function()
    local a, b = leaf(3, 4), leaf(4)
    assert.is_true(gradcheck(function(x, y) return x + y end, { a, b }))
    assert.is_true(gradcheck(function(x, y) return x - y * 2 end, { a, b }))
    assert.is_true(gradcheck(function(x, y) return x * y end, { a, b }))
    assert.is_true(gradcheck(function(x, y) return (3 - x) * (y + 1) end, { a, b }))
    local c = positive(3, 1)
    assert.is_true(gradcheck(function(x, y) return x / y end, { a, c }))
    assert.is_true(gradcheck(function(x) return 1 / x end, { c }))
    assert.is_true(gradcheck(function(x) return x ^ 3 end, { a }))
    assert.is_true(gradcheck(function(x, y) return x ^ y end, { c, leaf(3, 1) }))
    assert.is_true(gradcheck(function(x) return 2 ^ x end, { a }))
    assert.is_true(gradcheck(function(x) return -x end, { a }))
  end)

  it("differentiates unary math", function()
    local a, p = leaf(2, 5), positive(2, 5)
    for _, name in ipairs({ "exp", "tanh", "sigmoid", "silu", "softplus", "gelu", "abs" }) do
      assert.is_true(gradcheck(function(x) return x[name](x) end, { a }), name)
    end
    for _, name in ipairs({ "log", "sqrt", "rsqrt" }) do
      assert.is_true(gradcheck(function(x) return x[name](x) end, { p }), name)
    end
  end)

  it("differentiates reductions", function()
    local a = leaf(3, 4, 5)
    assert.is_true(gradcheck(function(x) return x:sum() end, { a }))
    assert.is_true(gradcheck(function(x) return x:sum(2) end, { a }))
    assert.is_true(gradcheck(function(x) return x:sum(3, true) end, { a }))
    assert.is_true(gradcheck(function(x) return x:mean(1) end, { a }))
    assert.is_true(gradcheck(function(x) return x:mean() end, { a }))
    assert.is_true(gradcheck(function(x) return x:logsumexp(3) end, { a }))
    assert.is_true(gradcheck(function(x) return x:logsumexp() end, { a }))
    assert.is_true(gradcheck(function(x) return x:max() end, { a }))
  end)

  it("differentiates matmul, batched and with vectors", function()
    assert.is_true(gradcheck(sn.matmul, { leaf(3, 4), leaf(4, 5) }))
    assert.is_true(gradcheck(sn.matmul, { leaf(2, 3, 4), leaf(4, 5) }))
    assert.is_true(gradcheck(sn.matmul, { leaf(2, 1, 3, 4), leaf(3, 4, 2) }))
    assert.is_true(gradcheck(sn.matmul, { leaf(4), leaf(4, 3) }))
    assert.is_true(gradcheck(sn.matmul, { leaf(3, 4), leaf(4) }))
    assert.is_true(gradcheck(sn.matmul, { leaf(4), leaf(4) }))
    assert.is_true(gradcheck(function(x, y) return sn.matmul(x, y:t()) end, { leaf(3, 4), leaf(5, 4) }))
  end)

  it("differentiates views and copies", function()
    local a = leaf(2, 3, 4)
    local cases = {
      function(x) return x:view(6, 4) end,
      function(x) return x:reshape(4, 6) end,
      function(x) return x:transpose(1, 3) * 1 end,
      function(x) return x:permute(3, 1, 2):contiguous() end,
      function(x) return x:narrow(3, 2, 2) end,
      function(x) return x:select(2, 3) end,
      function(x) return x:unsqueeze(1):squeeze(1) end,
      function(x) return x:sum(3, true):expand(2, 3, 4) end,
      function(x) return x:clone() end,
      function(x) return x:index_select(2, sn.tensor({ 2, 0, 2 }, "i64")) end,
      function(x) return x:index_select(1, sn.tensor({ 1, 1 }, "i64")) end,
      function(x) return x:index_select(3, sn.tensor({ 3, 0, 1, 0, 3 }, "i64")) end,
      function(x) return x:flatten() end,
    }
    for i, f in ipairs(cases) do assert.is_true(gradcheck(f, { a }), "case " .. i) end
  end)

  it("adds the gradients of several narrows of one tensor into one buffer", function()
    local x = sn.randn(6, 3):requires_grad(true)
    local h = x * 1 -- a node output, so the narrows' gradients meet in a slot, not in x.grad
    local a, b = h:narrow(1, 1, 4), h:narrow(1, 3, 4) -- overlapping rows 3 and 4
    local c = h:narrow(1, 1, 3) + h:narrow(1, 1, 3)  -- add hands one gradient to both
    local y = (a * 2):sum() + (b * 3):sum() + c:sum() + h:sum()
    y:backward()
    for r = 1, 6 do
      local want = 1 + (r <= 4 and 2 or 0) + (r >= 3 and 3 or 0) + (r <= 3 and 2 or 0)
      for col = 1, 3 do assert.are.equal(want, x.grad[r][col]) end
    end
    local leaf = sn.randn(5, 2):requires_grad(true) -- slices straight into a leaf's grad
    ;(leaf:narrow(1, 2, 2):sum() + leaf:narrow(1, 3, 3):sum() * 2):backward()
    assert.are.same({ { 0, 0 }, { 1, 1 }, { 3, 3 }, { 2, 2 }, { 2, 2 } }, leaf.grad:totable())
  end)

  it("accumulates gradients across uses and backward calls", function()
    local x = sn.tensor({ 1, 2, 3 }):requires_grad()
    local y = (x * x + x):sum() -- dy/dx = 2x + 1
    y:backward()
    assert.are.same({ 3, 5, 7 }, x.grad:totable())
    ;(x * 2):sum():backward() -- accumulates
    assert.are.same({ 5, 7, 9 }, x.grad:totable())
    x.grad = nil
    ;(x:sum() * 0):backward()
    assert.are.same({ 0, 0, 0 }, x.grad:totable())
  end)

  it("takes an explicit gradient for non-scalar outputs", function()
    local x = sn.tensor({ 1, 2 }):requires_grad()
    local y = x * 3
    y:backward(sn.tensor({ 1, 10 }))
    assert.are.same({ 3, 30 }, x.grad:totable())
    assert.has_error(function() (x * 3):backward() end,
      "seqnn.backward: a gradient is needed for a tensor of 2 elements (2); only scalars default to 1")
  end)

  it("records nothing under no_grad and through detach", function()
    local x = leaf(3)
    local y = sn.no_grad(function() return x * 2 end)
    assert.is_false(sn.autograd.tracked(y))
    local d = x:detach()
    assert.is_false(sn.autograd.tracked(d * 2))
    d[1] = 100 -- shares memory
    assert.are.equal(100, x[1])
    assert.is_true(sn.autograd.is_enabled())
    assert.has_error(function() sn.no_grad(function() error("inside") end) end)
    assert.is_true(sn.autograd.is_enabled(), "no_grad restores recording after an error")
  end)

  it("releases the graph after backward and says so on reuse", function()
    local x = leaf(3)
    local y = (x:exp() * 2):sum()
    y:backward()
    assert.has_error(function() y:backward() end)
    local ok, msg = pcall(function() y:backward() end)
    assert.truthy(tostring(msg):find("already used by an earlier backward", 1, true))
  end)

  it("refuses what cannot work", function()
    assert.has_error(function() sn.ones(2, "i64"):requires_grad() end,
      "seqnn.requires_grad: only f32 tensors can require grad, this one is i64")
    assert.has_error(function() sn.ones(2):backward() end)
    local x = leaf(2)
    assert.has_error(function() x:add_(1) end)
    sn.no_grad(function() x:add_(1) end) -- optimizers update parameters like this
    assert.has_error(function() (x * 2):requires_grad(false) end)
    assert.has_error(function() x:max(1) end)
  end)

  it("handles long chains without recursion limits", function()
    local x = sn.tensor({ 1 }):requires_grad()
    local y = x
    for _ = 1, 20000 do y = y * 1 end
    y:sum():backward()
    assert.are.equal(1, x.grad[1])
  end)

  it("gradcheck catches a wrong gradient", function()
    local c = require("seqnn.core")
    local autograd = sn.autograd
    local function bad_square(x)
      local y = c.mul(x, x)
      autograd.record("bad_square", { x }, y, function(g) return g * x end) -- should be 2 g x
      return y
    end
    assert.has_error(function() gradcheck(bad_square, { leaf(4) }) end)
  end)
end)
