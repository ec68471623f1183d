-- sn.F.selective_scan, sn.F.causal_conv1d and sn.nn.Mamba: gradients against finite
-- differences, the scan against a sequential reference written with tensor ops, decoding
-- step by step against the full forward, the LM with Mamba mixers, and bad input.
local sn = require "seqnn"
local F = sn.F
local gradcheck = sn.autograd.gradcheck

local function leaf(t) return t:requires_grad(true) end
local function max_diff(a, b) return (a - b):abs():max():item() end
-- a equals b up to float rounding relative to b's scale (without softplus a negative dt
-- makes states grow, so absolute errors grow with them).
local function close(a, b) return max_diff(a, b) <= 1e-5 * (1 + b:abs():max():item()) end

-- The S6 recurrence one step at a time with tensor ops (no kernel): the list of y[t]
-- (B,1,D) and the final state.
local function naive_scan(u, delta, A, Bm, Cm, opts)
  local B, T, D, N = u:size(1), u:size(2), u:size(3), A:size(2)
  local h = opts.initial_state and opts.initial_state:clone() or sn.zeros(B, D, N)
  local ys = {}
  for t = 1, T do
    local dt = delta:select(2, t)
    if opts.delta_bias then dt = dt + opts.delta_bias end
    if opts.delta_softplus then dt = dt:softplus() end
    local dA = (dt:view(B, D, 1) * A:view(1, D, N)):exp()
    local dBu = dt:view(B, D, 1) * Bm:select(2, t):view(B, 1, N) * u:select(2, t):view(B, D, 1)
    h = dA * h + dBu
    local y = sn.matmul(h, Cm:select(2, t):view(B, N, 1)):view(B, D)
    if opts.D then y = y + opts.D * u:select(2, t) end
    if opts.z then y = y * opts.z:select(2, t):silu() end
    ys[t] = y:view(B, 1, D)
  end
  return ys, h
end

describe("seqnn.F.selective_scan", function()
  before_each(function() sn.manual_seed(5) end)

  local function inputs(B, T, D, N)
    return sn.randn(B, T, D), sn.randn(B, T, D) * 0.5, -(sn.rand(D, N) + 0.5), sn.randn(B, T, N), sn.randn(B, T, N)
  end

  it("matches the recurrence for every option, T = 1 and T past the chunk", function()
    for _, c in ipairs({ { 2, 1, 3, 4 }, { 1, 70, 5, 3 }, { 2, 9, 17, 16 } }) do
      local B, T, D, N = table.unpack(c)
      local u, delta, A, Bm, Cm = inputs(B, T, D, N)
      local full = { D = sn.randn(D), z = sn.randn(B, T, D), delta_bias = sn.randn(D) * 0.1, delta_softplus = true,
                     initial_state = sn.randn(B, D, N) }
      for _, opts in ipairs({ {}, { delta_softplus = true }, full }) do
        local o = {}
        for k, v in pairs(opts) do o[k] = v end
        o.return_state = true
        local y, last = F.selective_scan(u, delta, A, Bm, Cm, o)
        local ys, h = naive_scan(u, delta, A, Bm, Cm, opts)
        for t = 1, T do assert.is_true(close(y:narrow(2, t, 1), ys[t])) end
        assert.is_true(close(last, h))
      end
    end
  end)

  it("passes gradcheck for every input, with and without the options", function()
    local B, T, D, N = 2, 5, 3, 2
    local u, delta, A, Bm, Cm = inputs(B, T, D, N)
    assert.is_true(gradcheck(function(a, b, c, d, e) return F.selective_scan(a, b, c, d, e) end,
      { leaf(u), leaf(delta), leaf(A), leaf(Bm), leaf(Cm) }, { eps = 1e-2, atol = 2e-3, rtol = 2e-2 }))
    assert.is_true(gradcheck(function(a, b, c, d, e, Ds, z, bias, h0)
      return F.selective_scan(a, b, c, d, e, { D = Ds, z = z, delta_bias = bias, delta_softplus = true,
        initial_state = h0, return_state = true })
    end, { leaf(sn.randn(B, T, D)), leaf(sn.randn(B, T, D)), leaf(-(sn.rand(D, N) + 0.5)), leaf(sn.randn(B, T, N)),
      leaf(sn.randn(B, T, N)), leaf(sn.randn(D)), leaf(sn.randn(B, T, D)), leaf(sn.randn(D) * 0.1),
      leaf(sn.randn(B, D, N)) }, { eps = 1e-2, atol = 2e-3, rtol = 2e-2 }))
  end)

  it("continues from a returned state: two halves equal the whole", function()
    local u, delta, A, Bm, Cm = inputs(2, 80, 7, 4)
    local opts = { delta_softplus = true, return_state = true }
    local y, h = F.selective_scan(u, delta, A, Bm, Cm, opts)
    local y1, h1 = F.selective_scan(u:narrow(2, 1, 33), delta:narrow(2, 1, 33), A, Bm:narrow(2, 1, 33),
      Cm:narrow(2, 1, 33), opts)
    local y2, h2 = F.selective_scan(u:narrow(2, 34, 47), delta:narrow(2, 34, 47), A, Bm:narrow(2, 34, 47),
      Cm:narrow(2, 34, 47), { delta_softplus = true, return_state = true, initial_state = h1 })
    assert.is_true(max_diff(y:narrow(2, 1, 33), y1) < 1e-5)
    assert.is_true(max_diff(y:narrow(2, 34, 47), y2) < 1e-4)
    assert.is_true(max_diff(h, h2) < 1e-4)
  end)

  it("names what is wrong", function()
    local u, delta, A, Bm, Cm = inputs(1, 4, 3, 2)
    assert.has_error(function() F.selective_scan(u, delta, A, Bm, Cm, { bogus = 1 }) end,
      "seqnn.F.selective_scan: unknown option 'bogus'")
    assert.has_error(function() F.selective_scan(u, delta, A, Bm, Cm, { D = 3 }) end,
      "seqnn.F.selective_scan: opts.D must be a seqnn.Tensor, got number")
    assert.has_error(function() F.selective_scan(u, 1, A, Bm, Cm) end,
      "bad argument #2 'delta' to 'seqnn.F.selective_scan' (seqnn.Tensor expected, got number)")
    local ok, err = pcall(F.selective_scan, u, delta, sn.randn(4, 2), Bm, Cm)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("seqnn.F.selective_scan", 1, true))
    assert.is_truthy(tostring(err):find("A", 1, true))
    ok, err = pcall(F.selective_scan, u, delta, A, sn.randn(1, 5, 2), Cm)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("1x5x2", 1, true))
  end)
end)

describe("seqnn.F.causal_conv1d", function()
  before_each(function() sn.manual_seed(6) end)

  it("is a causal cross-correlation, and passes gradcheck with silu", function()
    local x, w, b = sn.randn(2, 6, 3), sn.randn(3, 4), sn.randn(3)
    local y = F.causal_conv1d(x, w, b)
    -- y[t, c] = b[c] + sum_k w[c, k] x[t - 3 + k, c]
    local xt, wt, bt, yt = x:totable(), w:totable(), b:totable(), y:totable()
    for bi = 1, 2 do
      for t = 1, 6 do
        for c = 1, 3 do
          local want = bt[c]
          for k = 1, 4 do
            local s = t - 4 + k
            if s >= 1 then want = want + wt[c][k] * xt[bi][s][c] end
          end
          assert.is_true(math.abs(yt[bi][t][c] - want) < 1e-5)
        end
      end
    end
    assert.is_true(gradcheck(function(a, ww, bb) return F.causal_conv1d(a, ww, bb, { silu = true }) end,
      { leaf(sn.randn(2, 7, 5)), leaf(sn.randn(5, 3)), leaf(sn.randn(5)) }, { eps = 1e-2, atol = 2e-3, rtol = 1e-2 }))
  end)

  it("names a weight that does not fit", function()
    local ok, err = pcall(F.causal_conv1d, sn.randn(1, 4, 3), sn.randn(2, 4))
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("seqnn.F.causal_conv1d", 1, true))
    ok, err = pcall(F.causal_conv1d, sn.randn(1, 4, 3), sn.randn(3, 9))
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("3x9", 1, true))
  end)
end)

describe("seqnn.nn.Mamba", function()
  before_each(function() sn.manual_seed(7) end)

  it("has the published defaults and initialisation", function()
    local m = sn.nn.Mamba(48)
    assert.are.equal(96, m.d_inner)
    assert.are.equal(16, m.d_state)
    assert.are.equal(4, m.d_conv)
    assert.are.equal(3, m.dt_rank) -- ceil(48 / 16)
    assert.are.same({ 192, 48 }, m.in_proj.weight:shape())
    assert.are.same({ 3 + 32, 96 }, m.x_proj.weight:shape())
    assert.is_true(math.abs(m.A_log[1][16] - math.log(16)) < 1e-6)
    local dt = m.dt_proj.bias:softplus()
    assert.is_true(dt:min():item() >= 1e-4 * 0.999 and dt:max():item() <= 0.1 * 1.001)
    assert.are.equal(96, m.D:sum():item())
  end)

  it("maps (B,T,d) to (B,T,d) with gradients for every parameter", function()
    for _, opts in ipairs({ {}, { selective = false }, { bidirectional = true } }) do
      local m = sn.nn.Mamba(16, opts)
      local x = sn.randn(2, 9, 16):requires_grad(true)
      local y = m(x)
      assert.are.same({ 2, 9, 16 }, y:shape())
      y:sum():backward()
      assert.is_not_nil(x.grad)
      for name, p in m:named_parameters() do
        assert.is_not_nil(p.grad, name)
      end
    end
  end)

  it("decodes token by token exactly like the full forward", function()
    local m = sn.nn.Mamba(16, { d_state = 4 })
    local x = sn.randn(2, 11, 16)
    local full = m(x)
    local cache = m:init_cache(2)
    local steps = m(x:narrow(2, 1, 5), cache)
    local rest = m(x:narrow(2, 6, 6), cache)
    assert.are.equal(11, cache.length)
    assert.is_true(max_diff(full:narrow(2, 1, 5), steps) < 1e-4) -- the prompt in one pass
    assert.is_true(max_diff(full:narrow(2, 6, 6), rest) < 1e-4)  -- then step by step
    local one = m:init_cache(2)
    for t = 1, 11 do
      assert.is_true(max_diff(full:narrow(2, t, 1), m(x:narrow(2, t, 1), one)) < 1e-4)
    end
    local short = m:init_cache(2) -- a prompt shorter than the convolution's window
    m(x:narrow(2, 1, 2), short)
    assert.is_true(max_diff(full:narrow(2, 3, 9), m(x:narrow(2, 3, 9), short)) < 1e-4)
  end)

  it("passes gradcheck through the whole layer", function()
    local m = sn.nn.Mamba(4, { d_state = 2, expand = 1 })
    assert.is_true(gradcheck(function(x) return m(x) end, { leaf(sn.randn(1, 6, 4)) },
      { eps = 1e-2, atol = 2e-3, rtol = 2e-2 }))
  end)

  it("refuses a cache when bidirectional, and bad options", function()
    assert.has_error(function() sn.nn.Mamba(8, { bidirectional = true }):init_cache(1) end)
    assert.has_error(function() sn.nn.Mamba(8, { d_conv = 9 }) end,
      "seqnn.nn.Mamba: d_conv must be an integer in 1..8, got 9")
    assert.has_error(function() sn.nn.Mamba(0) end, "seqnn.nn.Mamba: d_model must be a positive integer, got 0")
    assert.has_error(function() sn.nn.Mamba(8)(sn.randn(2, 3, 5)) end, "seqnn.nn.Mamba: x must be (B,T,8), got 2x3x5")
  end)

  it("is a mixer of sn.models.LM: a Mamba LM and a hybrid in one line each, decoding through caches", function()
    for _, mixer in ipairs({ "mamba", "mamba,attention" }) do
      local lm = sn.models.LM{ vocab = 11, d = 16, layers = 2, heads = 2, context = 32, mixer = mixer, mlp = "none",
        d_state = 4 }
      local ids = sn.randint(0, 11, 2, 7)
      local logits = lm(ids)
      assert.are.same({ 2, 7, 11 }, logits:shape())
      local cache = lm:init_cache(2, 32)
      local a = lm:step(ids:narrow(2, 1, 4), cache)
      local b = lm:step(ids:narrow(2, 5, 3), cache)
      assert.is_true(max_diff(logits:narrow(2, 1, 4), a) < 1e-4)
      assert.is_true(max_diff(logits:narrow(2, 5, 3), b) < 1e-4)
    end
  end)
end)
