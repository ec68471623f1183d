-- sn.F.binary_attention (EcoFormer's causal binary-code attention), its decoding step, the
-- sn.nn.EcoFormer layer and the "ecoformer" mixer of sn.models.LM: against a dense
-- reference built from differentiable tensor ops, finite differences, decoding through a
-- cache, training, and bad input.
local sn = require "seqnn"
local gradcheck = sn.autograd.gradcheck

local function leaf(t) return t:requires_grad(true) end
local function max_diff(a, b) return (a - b):abs():max():item() end

-- sign(y) as a float tensor (+1 for y >= 0), and the straight-through mask 1[|y| < 1].
local function sign_and_mask(y)
  local s, m = {}, {}
  local function walk(t, so, mo)
    for i, x in ipairs(t) do
      if type(x) == "table" then
        so[i], mo[i] = {}, {}
        walk(x, so[i], mo[i])
      else
        so[i], mo[i] = x >= 0 and 1 or -1, math.abs(x) < 1 and 1 or 0
      end
    end
  end
  walk(y:totable(), s, m)
  return sn.tensor(s), sn.tensor(m)
end

-- The definition with h as real features: weights (h_i.h_j + b + 1) for j <= i, normalized.
local function dense(h, v)
  local B, T, H, b = h:size(1), h:size(2), h:size(3), h:size(4)
  local tri = {}
  for i = 1, T do
    tri[i] = {}
    for j = 1, T do tri[i][j] = j <= i and 1 or 0 end
  end
  local mask = sn.tensor(tri)
  local hp, vp = h:permute(1, 3, 2, 4), v:permute(1, 3, 2, 4)                 -- (B,H,T,*)
  local w = (sn.matmul(hp, hp:transpose(3, 4)) + (b + 1)) * mask             -- (B,H,T,T)
  local o = sn.matmul(w, vp) / w:sum(-1, true)
  return o:permute(1, 3, 2, 4)
end

describe("seqnn.F.binary_attention", function()
  before_each(function() sn.manual_seed(11) end)

  for _, case in ipairs({ { 2, 70, 3, 5, 7 }, { 1, 1, 1, 1, 1 }, { 1, 67, 2, 3, 33 }, { 1, 20, 1, 4, 64 } }) do
    local B, T, H, Dv, b = table.unpack(case)
    it(("matches the dense definition, values and gradients (B%d T%d H%d Dv%d b%d)"):format(B, T, H, Dv, b), function()
      local y, v = leaf(sn.randn(B, T, H, b) * 1.5), leaf(sn.randn(B, T, H, Dv))
      local out = sn.F.binary_attention(y, v)
      assert.are.same({ B, T, H, Dv }, out:shape())
      local g = sn.randn(B, T, H, Dv)
      ;(out * g):sum():backward()
      local s, mask = sign_and_mask(y)
      local h, v2 = leaf(s), leaf(v:detach():clone())
      local ref = dense(h, v2)
      assert.is_true(max_diff(out, ref) < 1e-4)
      ;(ref * g):sum():backward()
      assert.is_true(max_diff(v.grad, v2.grad) < 1e-3)
      assert.is_true(max_diff(y.grad, h.grad * mask) < 1e-3)
    end)
  end

  it("passes gradcheck for v and the initial state, the final state returned too", function()
    local B, T, H, Dv, b = 1, 9, 2, 3, 5
    local y = sn.randn(B, T, H, b)
    local s0 = sn.randn(B, H, b + 1, Dv + 1) * 0.3
    s0:select(3, b + 1):select(3, Dv + 1):fill_(4) -- a token count keeps the denominators positive
    assert.is_true(gradcheck(function(v, s)
      local o, fin = sn.F.binary_attention(y, v, { initial_state = s, return_state = true })
      return o, fin
    end, { leaf(sn.randn(B, T, H, Dv)), leaf(s0) }, { eps = 1e-2, atol = 2e-3, rtol = 1e-2 }))
  end)

  it("continues a sequence from its final state, and steps like the forward", function()
    local B, T, H, Dv, b = 2, 150, 3, 7, 16
    local y, v = sn.randn(B, T, H, b), sn.randn(B, T, H, Dv)
    local full, fin = sn.F.binary_attention(y, v, { return_state = true })
    local a, mid = sn.F.binary_attention(y:narrow(2, 1, 77), v:narrow(2, 1, 77), { return_state = true })
    local c, fin2 = sn.F.binary_attention(y:narrow(2, 78, 73), v:narrow(2, 78, 73),
      { initial_state = mid, return_state = true })
    assert.is_true(max_diff(full:narrow(2, 1, 77), a) < 1e-5)
    assert.is_true(max_diff(full:narrow(2, 78, 73), c) < 1e-5)
    assert.is_true(max_diff(fin, fin2) < 1e-3)
    local state = sn.zeros(B, H, b + 1, Dv + 1)
    for t = 1, T do
      local o = sn.F.binary_attention_step(y:narrow(2, t, 1), v:narrow(2, t, 1), state)
      assert.is_true(max_diff(o, full:narrow(2, t, 1)) < 1e-5, t)
    end
    assert.is_true(max_diff(state, fin) == 0)
  end)

  it("takes views (a narrow of one projection) and gives T = 0 an empty result", function()
    local yv = sn.randn(2, 11, 3, 12)
    local y, v = yv:narrow(4, 1, 8), yv:narrow(4, 9, 4)
    assert.is_true(max_diff(sn.F.binary_attention(y, v), sn.F.binary_attention(y:contiguous(), v:contiguous())) == 0)
    local e = sn.F.binary_attention(sn.zeros(2, 0, 3, 4), sn.zeros(2, 0, 3, 5))
    assert.are.same({ 2, 0, 3, 5 }, e:shape())
  end)

  it("names the function, the argument and the shapes on bad input", function()
    local y, v = sn.randn(2, 5, 3, 8), sn.randn(2, 5, 3, 4)
    assert.has_error(function() sn.F.binary_attention(nil, v) end,
      "bad argument #1 'y' to 'seqnn.F.binary_attention' (seqnn.Tensor expected, got nil)")
    assert.has_error(function() sn.F.binary_attention(y, 3) end,
      "bad argument #2 'v' to 'seqnn.F.binary_attention' (seqnn.Tensor expected, got number)")
    assert.has_error(function() sn.F.binary_attention(sn.randn(2, 5, 8), v) end,
      "seqnn.F.binary_attention: y must be (B, T, H, bits), got 2x5x8")
    assert.has_error(function() sn.F.binary_attention(y, sn.randn(2, 5, 4)) end,
      "seqnn.F.binary_attention: v must be (B, T, H, Dv), got 2x5x4")
    assert.has_error(function() sn.F.binary_attention(sn.randn(2, 5, 3, 65), v) end,
      "seqnn.F.binary_attention: y has 65 bits in its last dim, not 1..64 (y: 2x5x3x65)")
    assert.has_error(function() sn.F.binary_attention(sn.randn(2, 5, 3, 0), v) end,
      "seqnn.F.binary_attention: y has 0 bits in its last dim, not 1..64 (y: 2x5x3x0)")
    assert.has_error(function() sn.F.binary_attention(y, sn.randn(2, 6, 3, 4)) end,
      "seqnn.F.binary_attention: y and v must agree in (B, T, H) (y: 2x5x3x8, v: 2x6x3x4)")
    assert.has_error(function() sn.F.binary_attention(y, sn.randn(2, 5, 3, 0)) end,
      "seqnn.F.binary_attention: v must have a head dim >= 1 (v: 2x5x3x0)")
    assert.has_error(function() sn.F.binary_attention(y, sn.zeros({ 2, 5, 3, 4 }, "i64")) end,
      "seqnn.F.binary_attention: argument 'v' must be f32, got i64 (2x5x3x4)")
    assert.has_error(function() sn.F.binary_attention(y, v, 5) end,
      "seqnn.F.binary_attention: opts must be a table {initial_state =, return_state =}, got number")
    assert.has_error(function() sn.F.binary_attention(y, v, { scale = 2 }) end,
      "seqnn.F.binary_attention: unknown option 'scale' (known: initial_state, return_state)")
    assert.has_error(function() sn.F.binary_attention(y, v, { initial_state = {} }) end,
      "seqnn.F.binary_attention: opts.initial_state must be a seqnn.Tensor, got table")
    assert.has_error(function() sn.F.binary_attention(y, v, { initial_state = sn.zeros(2, 3, 8, 5) }) end,
      "seqnn.F.binary_attention: initial_state must be an f32 tensor (B, H, bits+1, Dv+1) = 2x3x9x5, got f32 2x3x8x5")
    local state = sn.zeros(2, 3, 9, 5)
    assert.has_error(function() sn.F.binary_attention_step(y, v, state) end,
      "seqnn.F.binary_attention_step: one token at a time: v must be (B, 1, H, Dv), got 2x5x3x4")
    assert.has_error(function() sn.F.binary_attention_step(y:narrow(2, 1, 1), v:narrow(2, 1, 1), sn.zeros(2, 3, 9, 4)) end,
      "seqnn.F.binary_attention_step: state must be a contiguous f32 tensor of shape 2x3x9x5, got f32 2x3x9x4")
    assert.has_error(function()
      sn.F.binary_attention_step(y:narrow(2, 1, 1), v:narrow(2, 1, 1), sn.zeros(2, 3, 5, 9):transpose(3, 4))
    end, "seqnn.F.binary_attention_step: state must be a contiguous f32 tensor of shape 2x3x9x5, got f32 2x3x9x5 (not contiguous)")
    assert.has_error(function() sn.F.binary_attention_step(y:narrow(2, 1, 1), v:narrow(2, 1, 1), nil) end,
      "bad argument #3 'state' to 'seqnn.F.binary_attention_step' (seqnn.Tensor expected, got nil)")
  end)
end)

describe("seqnn.F.binary_attention on sizes nothing could hold", function()
  it("fails with an error, not a crash, for expanded views of 2^40 tokens", function()
    local y = sn.zeros(1, 1, 1, 4):expand(1, 2 ^ 40, 1, 4)
    local v = sn.zeros(1, 1, 1, 8):expand(1, 2 ^ 40, 1, 8)
    local old = sn.memory().limit -- refused by the limit, never passed to malloc (or ASan)
    sn.set_memory_limit(sn.memory().live + 64 * 1024 * 1024)
    local ok, msg = pcall(sn.F.binary_attention, y, v)
    sn.set_memory_limit(old)
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("seqnn.F.binary_attention: out of memory", 1, true), msg)
    local v2 = sn.zeros(1, 1, 1, 8):expand(2 ^ 31, 2 ^ 31, 1, 8)
    assert.has_error(function() sn.F.binary_attention(y, v2) end,
      "seqnn.F.binary_attention: y and v must agree in (B, T, H) (y: 1x1099511627776x1x4, v: 2147483648x2147483648x1x8)")
  end)
end)

describe("seqnn.nn.EcoFormer", function()
  before_each(function() sn.manual_seed(12) end)

  it("gives every parameter a gradient, the hash projection through the straight-through estimator", function()
    local m = sn.nn.EcoFormer(16, 2, { bits = 7 })
    assert.are.equal("seqnn.nn.EcoFormer(16, heads=2, bits=7)", tostring(m):match("^(.-) %("))
    local x = sn.randn(2, 9, 16)
    local y = m(x)
    assert.are.same({ 2, 9, 16 }, y:shape())
    y:pow(2):sum():backward()
    for name, p in m:named_parameters() do
      assert.is_not_nil(p.grad, name)
      assert.is_true(p.grad:abs():sum():item() > 0, name)
    end
    assert.are.same({ 2, 8, 7 }, m.hash:shape())
  end)

  it("decodes through a cache as the full forward: a prompt, then token by token", function()
    local m = sn.nn.EcoFormer(12, 3, { bits = 16 })
    local x = sn.randn(2, 75, 12)
    sn.no_grad(function()
      local full = m(x)
      local cache = m:init_cache(2, 75)
      assert.is_true(max_diff(full:narrow(2, 1, 70), m(x:narrow(2, 1, 70), cache)) < 1e-4)
      for t = 71, 75 do assert.is_true(max_diff(full:narrow(2, t, 1), m(x:narrow(2, t, 1), cache)) < 1e-4, t) end
      assert.are.equal(75, cache.length)
    end)
  end)

  it("names bad options and inputs", function()
    assert.has_error(function() sn.nn.EcoFormer(10, 3) end, "seqnn.nn.EcoFormer: d = 10 is not divisible by heads = 3")
    assert.has_error(function() sn.nn.EcoFormer(8, 2, { bits = 65 }) end,
      "seqnn.nn.EcoFormer: bits must be an integer in 1..64, got 65")
    assert.has_error(function() sn.nn.EcoFormer(8, 2, { bits = 1.5 }) end,
      "seqnn.nn.EcoFormer: bits must be an integer in 1..64, got 1.5")
    assert.has_error(function() sn.nn.EcoFormer(8, 2, 16) end,
      "seqnn.nn.EcoFormer: opts must be a table {bits =, bias =}, got number")
    local m = sn.nn.EcoFormer(8, 2)
    assert.has_error(function() m(sn.randn(2, 3, 5)) end, "seqnn.nn.EcoFormer: x must be (B,T,8), got 2x3x5")
    assert.has_error(function() m(sn.randn(2, 3, 8), {}) end, "seqnn.nn.EcoFormer: cache must come from init_cache, got table")
    assert.has_error(function() m(sn.randn(2, 3, 8), m:init_cache(3)) end,
      "seqnn.nn.EcoFormer: the cache holds 3 sequences, x has 2")
  end)
end)

describe("the ecoformer mixer in sn.models.LM", function()
  it("trains (the loss falls) and decodes like the full forward", function()
    sn.manual_seed(13)
    local lm = sn.models.LM{ vocab = 11, d = 32, layers = 2, heads = 2, context = 32, mixer = "ecoformer" }
    assert.are.equal("seqnn.nn.EcoFormer", lm.blocks[1].mixer.__name)
    assert.are.equal(16, lm.blocks[1].mixer.bits)
    local lm8 = sn.models.LM{ vocab = 11, d = 32, layers = 1, heads = 2, context = 32, mixer = "ecoformer",
      ecoformer_bits = 8 }
    assert.are.equal(8, lm8.blocks[1].mixer.bits)
    local pattern = {}
    for i = 1, 2 * 24 do pattern[i] = (i * 3) % 11 end
    local ids = sn.tensor(pattern, "i64"):view(2, 24)
    local x, y = ids:narrow(2, 1, 23), ids:narrow(2, 2, 23)
    local opt = sn.optim.AdamW(lm:parameters(), { lr = 1e-2 })
    local first, last
    for step = 1, 30 do
      opt:zero_grad()
      local loss = sn.F.cross_entropy(lm(x), y)
      loss:backward()
      opt:step()
      if step == 1 then first = loss:item() end
      last = loss:item()
    end
    assert.is_true(last < 0.5 * first, ("loss %g -> %g"):format(first, last))
    sn.no_grad(function()
      local logits = lm(x)
      local cache = lm:init_cache(2, 32)
      assert.is_true(max_diff(logits:narrow(2, 1, 20), lm:step(x:narrow(2, 1, 20), cache)) < 1e-4)
      for t = 21, 23 do assert.is_true(max_diff(logits:narrow(2, t, 1), lm:step(x:narrow(2, t, 1), cache)) < 1e-4) end
    end)
  end)
end)
