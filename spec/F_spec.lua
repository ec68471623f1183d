-- sn.F: every differentiable function against values computed in Lua and against finite
-- differences, plus the mistakes a user can make.
local sn = require "seqnn"
local F = sn.F
local gradcheck = sn.autograd.gradcheck

local function leaf(...) return sn.randn(...):requires_grad(true) end

local function close(a, b, tol)
  return math.abs(a - b) <= (tol or 1e-5) * (1 + math.abs(b))
end

describe("seqnn.F", function()
  before_each(function() sn.manual_seed(5) end)

  it("linear matches x W^T + b and its gradients", function()
    local x = sn.tensor({ { 1, 2 }, { 3, 4 } })
    local w = sn.tensor({ { 1, 0 }, { 0, 1 }, { 1, 1 } })
    local b = sn.tensor({ 0.5, -0.5, 0 })
    assert.are.same({ { 1.5, 1.5, 3 }, { 3.5, 3.5, 7 } }, F.linear(x, w, b):totable())
    assert.is_true(gradcheck(F.linear, { leaf(2, 3, 4), leaf(5, 4), leaf(5) }))
    assert.is_true(gradcheck(F.linear, { leaf(3, 4), leaf(2, 4) }))
  end)

  it("embedding gathers rows and scatters gradients onto them", function()
    local w = sn.arange(12):view(4, 3):float()
    local ids = sn.tensor({ { 3, 0 }, { 3, 1 } }, "i64")
    local y = F.embedding(ids, w)
    assert.are.same({ 2, 2, 3 }, y:shape())
    assert.are.same({ 9, 10, 11 }, y[1][1]:totable())
    local wl = leaf(5, 3)
    assert.is_true(gradcheck(function(m) return F.embedding(ids, m) end, { wl }))
    local wr = sn.zeros(4, 3):requires_grad()
    F.embedding(ids, wr):sum():backward()
    assert.are.same({ { 1, 1, 1 }, { 1, 1, 1 }, { 0, 0, 0 }, { 2, 2, 2 } }, wr.grad:totable())
  end)

  it("layer_norm and rms_norm normalize the last dim", function()
    local x = sn.tensor({ { 1, 2, 3, 4 } })
    local y = F.layer_norm(x, nil, nil, 0):totable()[1]
    local sd = math.sqrt(1.25)
    for i, v in ipairs({ -1.5, -0.5, 0.5, 1.5 }) do assert.is_true(close(y[i], v / sd, 1e-5)) end
    local r = F.rms_norm(x, nil, 0):totable()[1]
    local rms = math.sqrt((1 + 4 + 9 + 16) / 4)
    for i = 1, 4 do assert.is_true(close(r[i], i / rms, 1e-5)) end
    assert.is_true(gradcheck(function(a, w, b) return F.layer_norm(a, w, b) end, { leaf(3, 7), leaf(7), leaf(7) }))
    assert.is_true(gradcheck(function(a, w) return F.rms_norm(a, w) end, { leaf(2, 3, 5), leaf(5) }))
    assert.is_true(gradcheck(function(a) return F.layer_norm(a) end, { leaf(4, 6) }))
  end)

  it("softmax and log_softmax sum to one along any dim", function()
    local x = sn.randn(3, 5)
    local s = F.softmax(x)
    for _, v in ipairs(s:sum(2):totable()) do assert.is_true(close(v, 1, 1e-6)) end
    local s1 = F.softmax(x, 1)
    for _, v in ipairs(s1:sum(1):totable()) do assert.is_true(close(v, 1, 1e-6)) end
    assert.is_true(sn.allclose(F.log_softmax(x):exp(), s, 1e-5, 1e-6))
    assert.is_true(gradcheck(F.softmax, { leaf(3, 5) }))
    assert.is_true(gradcheck(F.log_softmax, { leaf(3, 5) }))
    assert.is_true(gradcheck(function(a) return F.softmax(a, 1) end, { leaf(4, 3) }))
  end)

  it("cross_entropy is stable, ignores rows and reduces as asked", function()
    local logits = sn.tensor({ { 1e30, 0, -1e30 }, { 0, 0, 0 } })
    local t = sn.tensor({ 0, 2 }, "i64")
    local l = F.cross_entropy(logits, t, { reduction = "none" }):totable()
    assert.is_true(close(l[1], 0, 1e-6))
    assert.is_true(close(l[2], math.log(3), 1e-6))
    local ignored = F.cross_entropy(sn.randn(3, 4), sn.tensor({ 1, -100, 2 }, "i64"), { reduction = "none" })
    assert.are.equal(0, ignored[2])
    local x = sn.randn(4, 6)
    local tt = sn.tensor({ 5, 0, 3, 3 }, "i64")
    local mean = F.cross_entropy(x, tt):item()
    local sum = F.cross_entropy(x, tt, { reduction = "sum" }):item()
    assert.is_true(close(mean * 4, sum, 1e-5))
    -- the reference: -log softmax(x)[target]
    local lsm = F.log_softmax(x):totable()
    local ref = -(lsm[1][6] + lsm[2][1] + lsm[3][4] + lsm[4][4]) / 4
    assert.is_true(close(mean, ref, 1e-5))
    assert.is_true(gradcheck(function(a) return F.cross_entropy(a, tt) end, { leaf(4, 6) }))
    assert.is_true(gradcheck(function(a) return F.cross_entropy(a, sn.tensor({ { 1, 2, -100 } }, "i64")) end,
      { leaf(1, 3, 4) }))
    assert.is_true(gradcheck(function(a) return F.cross_entropy(a, tt, { reduction = "none" }) end, { leaf(4, 6) }))
  end)

  it("activations have fused gradients", function()
    for _, name in ipairs({ "gelu", "silu", "softplus", "tanh", "sigmoid" }) do
      assert.is_true(gradcheck(F[name], { leaf(3, 7) }), name)
    end
    -- gelu(x) = x * Phi(x): gelu(1) = 0.8413447
    assert.is_true(close(F.gelu(sn.tensor({ 1 }))[1], 0.8413447, 1e-5))
  end)

  it("dropout drops with probability p, scales, and is reproducible", function()
    local x = sn.ones(10000)
    sn.manual_seed(3)
    local y = F.dropout(x, 0.25)
    local kept = (y:sum():item()) * 0.75
    assert.is_true(math.abs(kept / 10000 - 0.75) < 0.03)
    sn.manual_seed(3)
    assert.are.same(y:totable(), F.dropout(x, 0.25):totable())
    assert.are.equal(x, F.dropout(x, 0.5, false))
    assert.is_true(gradcheck(function(a) return F.dropout(a, 0.3) end, { leaf(50) }))
  end)

  it("mse_loss reduces as asked", function()
    local a, b = sn.tensor({ 1, 2, 3 }), sn.tensor({ 1, 0, 0 })
    assert.is_true(close(F.mse_loss(a, b):item(), 13 / 3))
    assert.are.equal(13, F.mse_loss(a, b, "sum"):item())
    assert.are.same({ 0, 4, 9 }, F.mse_loss(a, b, "none"):totable())
    assert.is_true(gradcheck(F.mse_loss, { leaf(2, 3), leaf(2, 3) }))
  end)

  it("names the function, argument and shapes on bad input", function()
    assert.has_error(function() F.linear(sn.randn(8, 128), sn.randn(512, 256)) end,
      "seqnn.F.linear: x has 128 features but weight expects 256 (x: 8x128, weight: 512x256)")
    assert.has_error(function() F.rms_norm(sn.randn(4, 6), sn.ones(8)) end,
      "seqnn.F.rms_norm: weight has 8 elements but the last dim of x is 6 (x: 4x6, weight: 8)")
    local ok, msg = pcall(F.embedding, sn.tensor({ 0, 7 }, "i64"), sn.randn(5, 2))
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("seqnn.F.embedding", 1, true) and tostring(msg):find("7", 1, true))
    ok, msg = pcall(F.cross_entropy, sn.randn(2, 3), sn.tensor({ 0, 3 }, "i64"))
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("seqnn.F.cross_entropy", 1, true))
    assert.has_error(function() F.cross_entropy(sn.randn(2, 3), sn.tensor({ 0, 1 })) end)
    assert.has_error(function() F.cross_entropy(sn.randn(2, 3, 4), sn.tensor({ 0, 1 }, "i64")) end)
    assert.has_error(function() F.dropout(sn.ones(2), 1.5) end)
    assert.has_error(function() F.mse_loss(sn.ones(2), sn.ones(2), "avg") end)
    assert.has_error(function() F.linear(nil, sn.ones(2, 2)) end,
      "bad argument #1 'x' to 'seqnn.F.linear' (seqnn.Tensor expected, got nil)")
  end)
end)
