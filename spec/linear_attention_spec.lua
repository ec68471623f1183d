-- sn.F.gated_linear_attention and sn.F.delta_rule against their recurrences written with
-- tensor ops, gradients against finite differences, state continuation, the decode steps,
-- and bad input; the helpers they use (sn.cat, F.elu, F.l2_normalize).
local sn = require "seqnn"
local F = sn.F
local gradcheck = sn.autograd.gradcheck

local function leaf(t) return t:requires_grad(true) end
local function max_diff(a, b) return (a - b):abs():max():item() end
local function close(a, b, tol) return max_diff(a, b) <= (tol or 2e-5) * (1 + b:abs():max():item()) end

-- The recurrences one step at a time (no kernel): o (B,T,H,Dv) and the final state.
-- kind "gla": S = diag(exp(g_t)) S + k_t v_t^T; "delta": S = S + beta_t k_t (v_t - S^T k_t)^T.
local function naive(kind, q, k, v, gate, opts)
  opts = opts or {}
  local B, T, H, Dk, Dv = q:size(1), q:size(2), q:size(3), q:size(4), v:size(4)
  local scale = opts.scale or 1 / math.sqrt(Dk)
  local S = opts.initial_state and opts.initial_state:clone() or sn.zeros(B, H, Dk, Dv)
  local os = {}
  for t = 1, T do
    local qt, kt, vt = q:select(2, t) * scale, k:select(2, t), v:select(2, t)
    if kind == "gla" then
      if gate then
        local g = gate:select(2, t)
        S = S * g:exp():view(B, H, g:dim() == 3 and Dk or 1, 1)
      end
      S = S + kt:view(B, H, Dk, 1) * vt:view(B, H, 1, Dv)
    else
      local kv = sn.matmul(kt:view(B, H, 1, Dk), S)
      local vhat = gate:select(2, t):view(B, H, 1, 1) * (vt:view(B, H, 1, Dv) - kv)
      S = S + kt:view(B, H, Dk, 1) * vhat
    end
    os[t] = sn.matmul(qt:view(B, H, 1, Dk), S):view(B, 1, H, Dv)
  end
  return sn.cat(os, 2), S
end

local function inputs(B, T, H, Dk, Dv)
  return sn.randn(B, T, H, Dk), F.l2_normalize(sn.randn(B, T, H, Dk)), sn.randn(B, T, H, Dv)
end

-- The gates of each kind: none, one per head, one per key dim (log forget gates <= 0).
local function gates(B, T, H, Dk)
  return { none = false, head = F.logsigmoid(sn.randn(B, T, H) + 2), key = F.logsigmoid(sn.randn(B, T, H, Dk)) / 4 }
end

describe("seqnn.F.gated_linear_attention", function()
  before_each(function() sn.manual_seed(3) end)

  it("matches the recurrence for every gate, T = 1 and T past the chunk, Dk ~= Dv", function()
    for _, c in ipairs({ { 2, 1, 2, 5, 3 }, { 1, 70, 2, 20, 36 }, { 2, 130, 1, 16, 16 } }) do
      local B, T, H, Dk, Dv = table.unpack(c)
      local q, k, v = inputs(B, T, H, Dk, Dv)
      for kind, g in pairs(gates(B, T, H, Dk)) do
        g = g or nil
        for _, h0 in ipairs({ false, sn.randn(B, H, Dk, Dv) }) do
          h0 = h0 or nil
          local o, S = F.gated_linear_attention(q, k, v, g, { initial_state = h0, return_state = true })
          local ro, rS = naive("gla", q, k, v, g, { initial_state = h0 })
          assert.is_true(close(o, ro), kind)
          assert.is_true(close(S, rS), kind)
        end
      end
    end
  end)

  it("keeps strong decays finite (per-key gates far below 0 across a chunk)", function()
    local q, k, v = inputs(1, 100, 1, 8, 8)
    local g = -(sn.rand(1, 100, 1, 8) * 8)
    local o = F.gated_linear_attention(q, k, v, g)
    assert.is_true(close(o, naive("gla", q, k, v, g), 1e-4))
  end)

  it("passes gradcheck for q, k, v, both gate kinds and the initial state", function()
    local B, T, H, Dk, Dv = 1, 6, 2, 3, 2
    for _, kind in ipairs({ "none", "head", "key" }) do
      local q, k, v = inputs(B, T, H, Dk, Dv)
      local g = gates(B, T, H, Dk)[kind]
      g = g and g - 0.05 -- finite differences of eps = 1e-2 must keep every gate <= 0
      local args = { leaf(q), leaf(k), leaf(v), leaf(sn.randn(B, H, Dk, Dv)) }
      if g then args[5] = leaf(g) end
      assert.is_true(gradcheck(function(a, b, c, h0, gg)
        return F.gated_linear_attention(a, b, c, gg, { initial_state = h0, return_state = true })
      end, args, { eps = 1e-2, atol = 2e-3, rtol = 2e-2 }), kind)
    end
  end)

  it("passes gradcheck across a chunk boundary", function()
    local q, k, v = inputs(1, 67, 1, 2, 2)
    local g = F.logsigmoid(sn.randn(1, 67, 1) + 3) - 0.05
    assert.is_true(gradcheck(function(a, b, c, gg) return F.gated_linear_attention(a, b, c, gg) end,
      { leaf(q), leaf(k), leaf(v), leaf(g) }, { eps = 1e-2, atol = 3e-3, rtol = 2e-2 }))
  end)

  it("continues from a returned state, and decodes one token at a time", function()
    local B, T, H, Dk, Dv = 2, 80, 2, 6, 5
    local q, k, v = inputs(B, T, H, Dk, Dv)
    local g = F.logsigmoid(sn.randn(B, T, H, Dk) + 1)
    local o, S = F.gated_linear_attention(q, k, v, g, { return_state = true })
    local part = function(t, a, n) return t:narrow(2, a, n) end
    local o1, S1 = F.gated_linear_attention(part(q, 1, 33), part(k, 1, 33), part(v, 1, 33), part(g, 1, 33),
      { return_state = true })
    local o2, S2 = F.gated_linear_attention(part(q, 34, 47), part(k, 34, 47), part(v, 34, 47), part(g, 34, 47),
      { return_state = true, initial_state = S1 })
    assert.is_true(close(sn.cat({ o1, o2 }, 2), o))
    assert.is_true(close(S2, S))
    local state = sn.zeros(B, H, Dk, Dv)
    for t = 1, T do
      local ot = F.gated_linear_attention_step(part(q, t, 1), part(k, t, 1), part(v, t, 1), part(g, t, 1), state)
      assert.is_true(close(ot, part(o, t, 1)))
    end
    assert.is_true(close(state, S))
  end)

  it("names what is wrong", function()
    local q, k, v = inputs(1, 4, 2, 3, 3)
    assert.has_error(function() F.gated_linear_attention(q, k, v, nil, { bogus = 1 }) end,
      "seqnn.F.gated_linear_attention: unknown option 'bogus'")
    assert.has_error(function() F.gated_linear_attention(q, k, v, nil, { scale = "x" }) end,
      "seqnn.F.gated_linear_attention: opts.scale must be a number, got string")
    assert.has_error(function() F.gated_linear_attention(q, 1, v) end,
      "bad argument #2 'k' to 'seqnn.F.gated_linear_attention' (seqnn.Tensor expected, got number)")
    for _, bad in ipairs({ { q, k, sn.randn(1, 5, 2, 3) }, { q, sn.randn(1, 4, 2, 4), v },
                           { q, k, v, sn.randn(1, 4, 3) }, { q, k, v, sn.zeros(1, 4, 2) + 0.5 },
                           { sn.randn(4, 2, 3), k, v }, { q, k, v, nil, { initial_state = sn.randn(1, 2, 3, 4) } } }) do
      local ok, err = pcall(F.gated_linear_attention, table.unpack(bad, 1, 5))
      assert.is_false(ok)
      assert.is_truthy(tostring(err):find("seqnn.F.gated_linear_attention", 1, true), tostring(err))
    end
  end)
end)

describe("seqnn.F.delta_rule", function()
  before_each(function() sn.manual_seed(4) end)

  it("matches the recurrence, T = 1 and T past the chunk, Dk ~= Dv, beta up to 2", function()
    for _, c in ipairs({ { 2, 1, 2, 5, 3, 1 }, { 1, 70, 2, 20, 36, 1 }, { 2, 130, 1, 16, 16, 2 } }) do
      local B, T, H, Dk, Dv, bmax = table.unpack(c)
      local q, k, v = inputs(B, T, H, Dk, Dv)
      local beta = sn.rand(B, T, H) * bmax
      for _, h0 in ipairs({ false, sn.randn(B, H, Dk, Dv) }) do
        h0 = h0 or nil
        local o, S = F.delta_rule(q, k, v, beta, { initial_state = h0, return_state = true })
        local ro, rS = naive("delta", q, k, v, beta, { initial_state = h0 })
        assert.is_true(close(o, ro, 5e-5))
        assert.is_true(close(S, rS, 5e-5))
      end
    end
  end)

  it("passes gradcheck for q, k, v, beta and the initial state, also across a chunk boundary", function()
    local q, k, v = inputs(1, 6, 2, 3, 2)
    assert.is_true(gradcheck(function(a, b, c, beta, h0)
      return F.delta_rule(a, b, c, beta, { initial_state = h0, return_state = true })
    end, { leaf(q), leaf(k), leaf(v), leaf(sn.rand(1, 6, 2)), leaf(sn.randn(1, 2, 3, 2)) },
      { eps = 1e-2, atol = 2e-3, rtol = 2e-2 }))
    q, k, v = inputs(1, 67, 1, 2, 2)
    assert.is_true(gradcheck(function(a, b, c, beta) return F.delta_rule(a, b, c, beta) end,
      { leaf(q), leaf(k), leaf(v), leaf(sn.rand(1, 67, 1)) }, { eps = 1e-2, atol = 3e-3, rtol = 2e-2 }))
  end)

  it("continues from a returned state, and decodes one token at a time", function()
    local B, T, H, Dk, Dv = 2, 80, 2, 6, 5
    local q, k, v = inputs(B, T, H, Dk, Dv)
    local beta = sn.rand(B, T, H)
    local o, S = F.delta_rule(q, k, v, beta, { return_state = true })
    local part = function(t, a, n) return t:narrow(2, a, n) end
    local o1, S1 = F.delta_rule(part(q, 1, 33), part(k, 1, 33), part(v, 1, 33), part(beta, 1, 33), { return_state = true })
    local o2, S2 = F.delta_rule(part(q, 34, 47), part(k, 34, 47), part(v, 34, 47), part(beta, 34, 47),
      { return_state = true, initial_state = S1 })
    assert.is_true(close(sn.cat({ o1, o2 }, 2), o, 5e-5))
    assert.is_true(close(S2, S, 5e-5))
    local state = sn.zeros(B, H, Dk, Dv)
    for t = 1, T do
      local ot = F.delta_rule_step(part(q, t, 1), part(k, t, 1), part(v, t, 1), part(beta, t, 1), state)
      assert.is_true(close(ot, part(o, t, 1), 5e-5))
    end
    assert.is_true(close(state, S, 5e-5))
  end)

  it("names what is wrong", function()
    local q, k, v = inputs(1, 4, 2, 3, 3)
    local beta = sn.rand(1, 4, 2)
    assert.has_error(function() F.delta_rule(q, k, v) end,
      "bad argument #4 'beta' to 'seqnn.F.delta_rule' (seqnn.Tensor expected, got nil)")
    assert.has_error(function() F.delta_rule(q, k, v, beta, { initial_state = 1 }) end,
      "seqnn.F.delta_rule: opts.initial_state must be a seqnn.Tensor, got number")
    for _, bad in ipairs({ { q, k, v, sn.rand(1, 4, 3) }, { q, k, v, sn.rand(1, 4, 2, 1) },
                           { q, k:narrow(4, 1, 2), v, beta }, { q, k, sn.randn(2, 4, 2, 3), beta } }) do
      local ok, err = pcall(F.delta_rule, table.unpack(bad))
      assert.is_false(ok)
      assert.is_truthy(tostring(err):find("seqnn.F.delta_rule", 1, true), tostring(err))
    end
    local ok, err = pcall(F.delta_rule_step, q:narrow(2, 1, 1), k:narrow(2, 1, 1), v:narrow(2, 1, 1),
      beta:narrow(2, 1, 1), sn.zeros(1, 2, 3, 4))
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("state", 1, true), tostring(err))
  end)
end)

describe("the helpers of the linear-time mixers", function()
  before_each(function() sn.manual_seed(6) end)

  it("sn.cat joins along a dim and splits the gradient back", function()
    local a, b = sn.randn(2, 3, 2), sn.randn(2, 1, 2)
    local y = sn.cat({ a, b }, 2)
    assert.are.same({ 2, 4, 2 }, y:shape())
    assert.are.equal(0, max_diff(y:narrow(2, 4, 1), b))
    assert.is_true(gradcheck(function(x, z) return sn.cat({ x, z }, -1) end, { leaf(sn.randn(2, 3)), leaf(sn.randn(2, 2)) }))
    assert.has_error(function() sn.cat({ a, sn.randn(3, 1, 2) }, 2) end,
      "seqnn.cat: tensor 2 is 3x1x2 f32 but tensor 1 is 2x3x2 f32 (they may differ only in dim 2)")
    assert.has_error(function() sn.cat({}, 1) end, "seqnn.cat: expected a non-empty list of tensors, got table")
  end)

  it("F.elu, F.logsigmoid and F.l2_normalize have the right values and gradients", function()
    local x = sn.tensor({ -2, -0.5, 0.5, 3 })
    assert.is_true(max_diff(F.elu(x), sn.tensor({ math.exp(-2) - 1, math.exp(-0.5) - 1, 0.5, 3 })) < 1e-6)
    assert.is_true(max_diff(F.logsigmoid(x), sn.tensor({ -2.126928, -0.974077, -0.474077, -0.048587 })) < 1e-5)
    assert.is_true(max_diff(F.l2_normalize(sn.tensor({ { 3, 4 } })), sn.tensor({ { 0.6, 0.8 } })) < 1e-6)
    for _, f in ipairs({ F.elu, F.logsigmoid, F.l2_normalize }) do
      assert.is_true(gradcheck(f, { leaf(sn.randn(3, 4)) }))
    end
  end)
end)
