-- sn.nn.SparseLinear, sn.nn.MaskedLinear and sn.sparse (prune, convert, quantize,
-- distill_loss): results against the dense math on the same weights, gradients, masks that
-- stay fixed or move as asked, checkpoints, bad input.
local sn = require "seqnn"
local gradcheck = sn.autograd.gradcheck

local function max_diff(a, b) return (a - b):abs():max():item() end
local function leaf(t) return t:requires_grad(true) end

-- Counts, per group of 4 consecutive inputs of each row, the nonzeros of w (out, in).
local function max_per_group(w)
  local t, worst = w:totable(), 0
  for _, row in ipairs(t) do
    for g = 1, #row, 4 do
      local n = 0
      for j = g, g + 3 do if row[j] ~= 0 then n = n + 1 end end
      worst = math.max(worst, n)
    end
  end
  return worst
end

local function zero_pattern(w)
  local s = {}
  for _, row in ipairs(w:totable()) do
    for _, x in ipairs(row) do s[#s + 1] = x == 0 and "0" or "1" end
  end
  return table.concat(s)
end

local function tiny_lm()
  return sn.models.LM{ vocab = 11, d = 16, layers = 2, heads = 2, context = 16 }
end

describe("sn.nn.SparseLinear", function()
  before_each(function() sn.manual_seed(3) end)

  it("keeps the round((1 - sparsity) * nblocks) blocks and computes x W^T + b", function()
    local layer = sn.nn.SparseLinear(20, 12, { sparsity = 0.75, block = { 4, 2 } })
    assert.are.equal(8, layer.values:size(1)) -- 30 blocks, 7.5 -> 8 kept
    assert.are.same({ 8, 4, 2 }, layer.values:shape())
    local x = sn.randn(3, 5, 20)
    local w = layer:to_dense()
    assert.are.same({ 12, 20 }, w:shape())
    assert.is_true(max_diff(layer(x), sn.F.linear(x, w, layer.bias)) < 1e-5)
  end)

  it("from_dense keeps the blocks of largest norm of a trained Linear, and its bias", function()
    local lin = sn.nn.Linear(8, 8)
    sn.no_grad(function()
      lin.weight:fill_(0.01)
      lin.weight:narrow(1, 5, 4):narrow(2, 1, 4):fill_(-3) -- the one block that matters
    end)
    local sp = sn.nn.SparseLinear.from_dense(lin, { sparsity = 0.75, block = { 4, 4 } })
    local w = sp:to_dense()
    assert.are.equal(-3, w:totable()[5][1])
    assert.are.equal(0, w:totable()[1][1])
    assert.are.equal(0, max_diff(sp.bias, lin.bias))
    local x = sn.randn(6, 8)
    assert.is_true(max_diff(sp(x), sn.F.linear(x, w, lin.bias)) < 1e-5)
  end)

  it("passes gradcheck for x, values and bias", function()
    local layer = sn.nn.SparseLinear(12, 8, { sparsity = 0.5, block = { 4, 1 } })
    local x = leaf(sn.randn(5, 12))
    assert.is_true(gradcheck(function(a, v, b)
      layer.values, layer.bias = v, b
      return layer(a)
    end, { x, layer.values, layer.bias }))
  end)

  it("trains with its mask fixed: the zeros of W stay where they were", function()
    local layer = sn.nn.SparseLinear(16, 8, { sparsity = 0.6, block = { 2, 2 } })
    local before = zero_pattern(layer:to_dense())
    local w0 = layer:to_dense()
    local opt = sn.optim.AdamW(layer:parameters(), { lr = 1e-2 })
    for _ = 1, 5 do
      layer:zero_grad()
      sn.F.mse_loss(layer(sn.randn(4, 16)), sn.randn(4, 8)):backward()
      opt:step()
    end
    assert.are.equal(before, zero_pattern(layer:to_dense()))
    assert.is_true(max_diff(w0, layer:to_dense()) > 1e-3)
  end)

  it("2:4: at most two weights of every four inputs, the same product as dense, inference only", function()
    local lin = sn.nn.Linear(20, 12)
    local sp = sn.nn.SparseLinear.from_dense(lin, { pattern = "2:4" })
    local w = sp:to_dense()
    assert.are.equal(2, max_per_group(w))
    local x = sn.randn(7, 20)
    sn.no_grad(function() assert.is_true(max_diff(sp(x), sn.F.linear(x, w, lin.bias)) < 1e-5) end)
    assert.has_error(function() sp(leaf(x)) end)
    local ok, err = pcall(sp, leaf(x))
    assert.is_false(ok)
    assert.matches("inference%-only", err)
  end)

  it("quantize: int8 outputs within the quantization error of the f32 ones", function()
    local sp = sn.nn.SparseLinear(64, 32, { sparsity = 0.5, block = { 4, 1 } })
    local x = sn.randn(9, 64)
    local f32 = sn.no_grad(function() return sp(x) end)
    sp:quantize()
    assert.matches("int8", tostring(sp))
    local i8 = sn.no_grad(function() return sp(x) end)
    assert.is_true(max_diff(i8, f32) < 0.02 * f32:abs():max():item())
    assert.is_true(max_diff(i8, f32) > 0) -- it really is the int8 path
    sp:dequantize()
    assert.is_true(max_diff(sn.no_grad(function() return sp(x) end), f32) == 0)
  end)

  it("saves and loads through a checkpoint into a layer made with the same arguments", function()
    local a = sn.nn.SparseLinear(16, 8, { sparsity = 0.5, block = { 4, 4 } })
    local b = sn.nn.SparseLinear(16, 8, { sparsity = 0.5, block = { 4, 4 } })
    local path = os.tmpname()
    sn.save(path, a:state_dict())
    b:load_state_dict(sn.load(path))
    os.remove(path)
    local x = sn.randn(3, 16)
    assert.are.equal(0, max_diff(a(x), b(x)))
  end)

  it("a corrupt index from a checkpoint is an error, not a crash", function()
    local a = sn.nn.SparseLinear(16, 8, { sparsity = 0.5, block = { 4, 4 } })
    local sd = a:state_dict()
    sd.bcol = sd.bcol:clone():fill_(99)
    a:load_state_dict(sd)
    assert.has_error(function() a(sn.randn(2, 16)) end)
  end)

  it("rejects bad arguments with the layer's name", function()
    local cases = {
      function() sn.nn.SparseLinear(0, 4) end,
      function() sn.nn.SparseLinear(8, 4, { sparsity = 1.5 }) end,
      function() sn.nn.SparseLinear(8, 4, { sparsity = 0 / 0 }) end,
      function() sn.nn.SparseLinear(8, 4, { block = { 3, 4 } }) end,
      function() sn.nn.SparseLinear(8, 4, { block = "4x4" }) end,
      function() sn.nn.SparseLinear(6, 4, { pattern = "2:4" }) end,
      function() sn.nn.SparseLinear(8, 4, { pattern = "1:4" }) end,
      function() sn.nn.SparseLinear(8, 4, { pattern = "2:4", sparsity = 0.5 }) end,
      function() sn.nn.SparseLinear(8, 4)(sn.randn(2, 9)) end,
      function() sn.nn.SparseLinear(8, 4)("x") end,
      function() sn.nn.SparseLinear.from_dense(sn.nn.Linear(8, 4)) end,
      function() sn.nn.SparseLinear.from_dense({}, { sparsity = 0.5 }) end,
      function() sn.nn.SparseLinear(8, 4, { pattern = "2:4" }):quantize() end,
    }
    for i, f in ipairs(cases) do
      local ok, err = pcall(f)
      assert.is_false(ok, "case " .. i)
      assert.matches("seqnn%.nn%.SparseLinear", err, 1, false, "case " .. i)
    end
  end)
end)

describe("sn.sparse", function()
  before_each(function() sn.manual_seed(5) end)

  it("prune (fixed): masked Linears share the weights, pruned weights stay zero while training", function()
    local lm = tiny_lm()
    local opt = sn.optim.AdamW(lm:parameters(), { lr = 1e-2 })
    local pruner = sn.sparse.prune(lm, { sparsity = 0.5, block = { 4, 4 } })
    assert.is_true(#pruner.layers >= 4)
    local m = pruner.layers[1].module
    assert.are.equal("seqnn.nn.MaskedLinear", m.__name)
    assert.is_true(math.abs(pruner:density() - 0.5) < 0.05)
    local pruned = function() return ((1 - m.mask) * m.weight):abs():max():item() end
    assert.are.equal(0, pruned())
    local ids = sn.randint(0, 11, 2, 8)
    for _ = 1, 3 do
      lm:zero_grad()
      sn.F.cross_entropy(lm(ids), ids):backward()
      opt:step()
      pruner:step()
    end
    assert.are.equal(0, pruned())
    for _, l in ipairs(pruner.layers) do assert.is_nil(l.name:match("head$")) end -- the head stays dense
  end)

  it("MaskedLinear with a fixed mask passes gradcheck (x, weight, bias)", function()
    local lin = sn.nn.Linear(8, 4)
    local mask = sn.tensor({ { 1, 0, 1, 0, 1, 1, 0, 0 }, { 0, 1, 0, 1, 0, 0, 1, 1 },
                             { 1, 1, 0, 0, 1, 0, 1, 0 }, { 0, 0, 1, 1, 0, 1, 0, 1 } })
    local m = sn.nn.MaskedLinear(lin, mask)
    assert.is_true(gradcheck(function(x, w, b)
      m.weight, m.bias = w, b
      return m(x)
    end, { leaf(sn.randn(3, 8)), lin.weight, lin.bias }))
  end)

  it("prune (ast): SR-STE reaches pruned weights, and masks are re-selected every `every` steps", function()
    local lm = tiny_lm()
    local opt = sn.optim.SGD(lm:parameters(), { lr = 0.5 })
    local pruner = sn.sparse.prune(lm, { pattern = "2:4", method = "ast", every = 2, decay = 1e-3, increase_steps = 1 })
    local m = pruner.layers[1].module
    local ids = sn.randint(0, 11, 2, 8)
    lm:zero_grad()
    sn.F.cross_entropy(lm(ids), ids):backward()
    assert.is_true(((1 - m.mask) * m.weight.grad):abs():max():item() > 0)
    opt:step()
    pruner:step()
    lm:zero_grad()
    sn.F.cross_entropy(lm(ids), ids):backward()
    opt:step()
    pruner:step() -- step 2: re-selection
    assert.is_true(pruner.flipped > 0)
    assert.are.equal(2, max_per_group(m.mask))
    assert.are.equal(0.5, pruner:density())
  end)

  it("convert: pruned layers become SparseLinear with the same outputs; quantize: int8 close", function()
    local lm = tiny_lm()
    sn.sparse.prune(lm, { sparsity = 0.5, block = { 4, 1 } })
    lm:eval()
    local ids = sn.randint(0, 11, 2, 8)
    local before = sn.no_grad(function() return lm(ids) end)
    local _, n = sn.sparse.convert(lm)
    assert.is_true(n >= 4)
    assert.are.equal("seqnn.nn.SparseLinear", lm.blocks[1].mlp[1].__name)
    assert.is_true(max_diff(sn.no_grad(function() return lm(ids) end), before) < 1e-4)
    local _, q = sn.sparse.quantize(lm)
    assert.are.equal(n, q)
    assert.is_true(max_diff(sn.no_grad(function() return lm(ids) end), before) < 0.1)
  end)

  it("convert with opts prunes dense Linears by magnitude in one call", function()
    local lm = tiny_lm()
    local _, n = sn.sparse.convert(lm, { pattern = "2:4" })
    assert.is_true(n >= 4)
    assert.are.equal(2, max_per_group(lm.blocks[2].mlp[3]:to_dense()))
  end)

  it("distill_loss: the task loss at alpha 0, and no KL term when student = teacher", function()
    local s, t = leaf(sn.randn(4, 6)), sn.randn(4, 6)
    local y = sn.randint(0, 6, 4)
    local ce = sn.F.cross_entropy(s, y):item()
    assert.is_true(math.abs(sn.sparse.distill_loss(s, t, y, { alpha = 0 }):item() - ce) < 1e-6)
    assert.is_true(math.abs(sn.sparse.distill_loss(s, s, y, { alpha = 1 }):item()) < 1e-5)
    assert.is_true(gradcheck(function(a) return sn.sparse.distill_loss(a, t, y) end, { s }))
  end)

  it("rejects bad options", function()
    local lm = tiny_lm()
    for i, f in ipairs({
      function() sn.sparse.prune(lm, { sparsity = 2 }) end,
      function() sn.sparse.prune(lm, { sparsity = 0.5, method = "magic" }) end,
      function() sn.sparse.prune(lm, { sparsity = 0.5, block = { 0, 1 } }) end,
      function() sn.sparse.prune(lm, { sparsity = 0.5, every = 0 }) end,
      function() sn.sparse.prune(lm, { sparsity = 0.5, filter = function() return false end }) end,
      function() sn.sparse.prune("lm", { sparsity = 0.5 }) end,
      function() sn.sparse.convert(lm, { pattern = "4:8" }) end,
      function() sn.sparse.distill_loss(sn.randn(2, 3), sn.randn(2, 3), sn.randint(0, 3, 2), { temperature = 0 }) end,
    }) do
      local ok, err = pcall(f)
      assert.is_false(ok, "case " .. i)
      assert.matches("seqnn%.sparse%.", err, 1, false, "case " .. i)
    end
  end)
end)
