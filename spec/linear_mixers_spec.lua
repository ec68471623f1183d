-- The linear-time mixers (LinearAttention, DiagAttention, RetNet, GLA, Liger, Mamba2,
-- DeltaNet) as layers and as sn.models.LM mixers: shapes, gradients for every parameter,
-- decoding through a cache equal to the full forward, gradcheck, bad options; and MQAR.
local sn = require "seqnn"
local gradcheck = sn.autograd.gradcheck

local function leaf(t) return t:requires_grad(true) end
local function max_diff(a, b) return (a - b):abs():max():item() end

local MIXERS = { "linear", "transnormer", "retnet", "gla", "liger", "mamba2", "deltanet", "swa", "deltanet,swa" }

describe("the linear-time mixers in sn.models.LM", function()
  before_each(function() sn.manual_seed(7) end)

  for _, mixer in ipairs(MIXERS) do
    it(mixer .. ": trains (a gradient for every parameter) and decodes like the full forward", function()
      local lm = sn.models.LM{ vocab = 13, d = 16, layers = 2, heads = 2, context = 32, mixer = mixer,
        diag_block = 4, swa_window = 5, d_state = 8, headdim = 8, d_conv = 3 }
      local ids = sn.randint(0, 13, 2, 11)
      local logits = lm(ids)
      assert.are.same({ 2, 11, 13 }, logits:shape())
      sn.F.cross_entropy(logits, sn.randint(0, 13, 2, 11)):backward()
      for name, p in lm:named_parameters() do assert.is_not_nil(p.grad, name) end
      sn.no_grad(function()
        local cache = lm:init_cache(2, 32)
        local a = lm:step(ids:narrow(2, 1, 6), cache) -- a prompt in one pass
        local b = lm:step(ids:narrow(2, 7, 2), cache) -- a short continuation
        assert.is_true(max_diff(logits:narrow(2, 1, 6), a) < 1e-4, mixer)
        assert.is_true(max_diff(logits:narrow(2, 7, 2), b) < 1e-4, mixer)
        for t = 9, 11 do                              -- then token by token
          assert.is_true(max_diff(logits:narrow(2, t, 1), lm:step(ids:narrow(2, t, 1), cache)) < 1e-4, mixer)
        end
      end)
    end)
  end

  it("builds TransNormer as block-local softmax attention first, NormAttention after", function()
    local lm = sn.models.LM{ vocab = 13, d = 16, layers = 4, heads = 2, mixer = "transnormer" }
    assert.are.equal("seqnn.nn.DiagAttention", lm.blocks[2].mixer.__name)
    assert.are.equal("seqnn.nn.LinearAttention", lm.blocks[3].mixer.__name)
    assert.are.equal("output", lm.blocks[3].mixer.normalize)
  end)
end)

describe("the linear-time mixer layers", function()
  before_each(function() sn.manual_seed(8) end)

  local layers = {
    LinearAttention = function() return sn.nn.LinearAttention(4, 2) end,
    NormAttention = function() return sn.nn.LinearAttention(4, 2, { feature_map = "elu", normalize = "output", gate = true }) end,
    DiagAttention = function() return sn.nn.DiagAttention(4, 2, { block = 3 }) end,
    RetNet = function() return sn.nn.RetNet(4, 2) end,
    GLA = function() return sn.nn.GLA(8, 2, { gate_rank = 2, d_conv = 2 }) end,
    Liger = function() return sn.nn.Liger(4, 2, { window = 3 }) end,
    Mamba2 = function() return sn.nn.Mamba2(4, { d_state = 3, headdim = 4 }) end,
    DeltaNet = function() return sn.nn.DeltaNet(4, 2) end,
  }
  for name, make in pairs(layers) do
    it(name .. " passes gradcheck through the whole layer", function()
      local m = make()
      local d = m.d or m.d_model
      assert.is_true(gradcheck(function(x) return m(x) end, { leaf(sn.randn(1, 7, d)) },
        { eps = 1e-2, atol = 3e-3, rtol = 3e-2 }), name)
    end)
  end

  it("DiagAttention attends only inside its block", function()
    local m = sn.nn.DiagAttention(8, 2, { block = 4 })
    local x = sn.randn(1, 10, 8)
    local y = m(x)
    local x2 = x:clone()
    x2:narrow(2, 1, 4):copy_(sn.randn(1, 4, 8)) -- the first block changes, the others must not
    local y2 = m(x2)
    assert.is_true(max_diff(y:narrow(2, 5, 6), y2:narrow(2, 5, 6)) < 1e-6)
    assert.is_true(max_diff(y:narrow(2, 1, 4), y2:narrow(2, 1, 4)) > 1e-3)
  end)

  it("names bad options and inputs", function()
    assert.has_error(function() sn.nn.DeltaNet(10, 3) end, "seqnn.nn.DeltaNet: d = 10 is not divisible by heads = 3")
    assert.has_error(function() sn.nn.LinearAttention(8, 2, { feature_map = "cosine" }) end,
      "seqnn.nn.LinearAttention: feature_map must be 'elu1', 'elu', 'identity' or 'softmax', got cosine")
    assert.has_error(function() sn.nn.LinearAttention(8, 2, { normalize = "yes" }) end,
      "seqnn.nn.LinearAttention: normalize must be 'denominator', 'output' or 'none', got yes")
    assert.has_error(function() sn.nn.Mamba2(8, { headdim = 5 }) end,
      "seqnn.nn.Mamba2: d_inner = 16 is not divisible by headdim = 5")
    assert.has_error(function() sn.nn.GLA(8, 3) end,
      "seqnn.nn.GLA: expand_k d = 4 and expand_v d = 8 must be multiples of heads = 3")
    assert.has_error(function() sn.nn.RetNet(8, 2)(sn.randn(2, 3, 5)) end, "seqnn.nn.RetNet: x must be (B,T,8), got 2x3x5")
    local m = sn.nn.DeltaNet(8, 2)
    assert.has_error(function() m(sn.randn(2, 3, 8), {}) end, "seqnn.nn.DeltaNet: cache must come from init_cache, got table")
    assert.has_error(function() m(sn.randn(2, 3, 8), m:init_cache(3)) end,
      "seqnn.nn.DeltaNet: the cache holds 3 sequences, x has 2")
  end)
end)

describe("seqnn.data.MQAR", function()
  before_each(function() sn.manual_seed(9) end)

  it("binds distinct keys to values and asks for each one once, at its repeat", function()
    local ds = sn.data.MQAR{ length = 40, pairs = { 2, 5 }, vocab = 31 }
    local x, y, counts = ds:batch(6)
    assert.are.same({ 6, 40 }, x:shape())
    local xs, ys = x:totable(), y:totable()
    for b = 1, 6 do
      local n, bound = counts[b], {}
      assert.is_truthy(n == 2 or n == 5)
      for i = 1, n do
        local key, value = xs[b][2 * i - 1], xs[b][2 * i]
        assert.is_truthy(key >= 1 and key <= ds.keys and value > ds.keys and value < 31)
        assert.is_nil(bound[key])
        bound[key] = value
      end
      local asked = 0
      for t = 2 * n + 1, 40 do
        if ys[b][t] ~= -100 then
          asked = asked + 1
          assert.are.equal(bound[xs[b][t]], ys[b][t])
          assert.are.equal(xs[b][t + 1], ys[b][t])
        elseif xs[b][t] ~= 0 then
          assert.are.equal(bound[xs[b][t - 1]], xs[b][t]) -- a value right after its key
        end
      end
      assert.are.equal(n, asked)
    end
    local logits = sn.zeros(6, 40, 31)
    local acc, count = ds:accuracy(logits, y)
    assert.are.equal(0, acc)
    assert.are.equal(counts[1] + counts[2] + counts[3] + counts[4] + counts[5] + counts[6], count)
  end)

  it("names bad options", function()
    assert.has_error(function() sn.data.MQAR{ pairs = 17 } end,
      "seqnn.data.MQAR: pairs must be integers in 1 .. min(length / 4, (vocab - 1) / 2) = 1 .. 16, got 17")
    assert.has_error(function() sn.data.MQAR{ vocab = 4 } end,
      "seqnn.data.MQAR: vocab must be an integer >= 5 (blank, keys, values), got 4")
    assert.has_error(function() sn.data.MQAR{ size = 4 } end,
      "seqnn.data.MQAR: unknown option size (options: length, pairs, vocab)")
  end)
end)
