-- sn.optim: SGD and AdamW against plain-Lua updates, options and their errors, schedules,
-- clip_grad_norm, gradient accumulation, optimizer state round trips, and a small training
-- run whose loss must fall.
local sn = require "seqnn"
local optim, nn = sn.optim, sn.nn

local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

local raises = helpers.raises_in("optim_spec.lua")

local function flat(t) return t:reshape(-1):totable() end

-- |a[i] - b[i]| <= tol * (1 + |b[i]|) for Lua lists
local function near(a, b, tol)
  assert.are.equal(#b, #a)
  for i = 1, #a do
    if math.abs(a[i] - b[i]) > tol * (1 + math.abs(b[i])) then
      error(("element %d: %.9g vs %.9g"):format(i, a[i], b[i]), 2)
    end
  end
end

-- The gradient of step k (a fixed, varied sequence), as a Lua list and a tensor.
local function grad_at(k, n)
  local g = {}
  for i = 1, n do g[i] = math.sin(i * 1.3 + k * 0.7) * (1 + i % 3) end
  return g, sn.tensor(g)
end

describe("seqnn.optim.SGD", function()
  -- PyTorch's SGD in plain Lua over lists.
  local function reference(p, steps, o)
    local buf
    for k = 1, steps do
      local g = grad_at(k, #p)
      for i = 1, #p do
        local gi = g[i] + (o.weight_decay or 0) * p[i]
        if (o.momentum or 0) ~= 0 then
          buf = buf or {}
          buf[i] = k == 1 and gi or o.momentum * buf[i] + (1 - (o.dampening or 0)) * gi
          gi = o.nesterov and gi + o.momentum * buf[i] or buf[i]
        end
        p[i] = p[i] - o.lr * gi
      end
    end
    return p
  end

  for _, o in ipairs({
    { lr = 0.1 },
    { lr = 0.05, momentum = 0.9 },
    { lr = 0.05, momentum = 0.9, dampening = 0.3, weight_decay = 0.01 },
    { lr = 0.02, momentum = 0.8, nesterov = true, weight_decay = 0.1 },
  }) do
    it(("matches the plain-Lua update (momentum %g, nesterov %s)"):format(o.momentum or 0, tostring(o.nesterov)), function()
      local init = { 0.5, -1, 2, 0.25, -0.75, 1.5 }
      local p = sn.tensor(init):requires_grad(true)
      local opt = optim.SGD({ p }, o)
      for k = 1, 4 do
        local _, g = grad_at(k, #init)
        p.grad = g
        opt:step()
        opt:zero_grad()
        assert.is_nil(p.grad)
      end
      near(flat(p), reference({ table.unpack(init) }, 4, o), 1e-6)
    end)
  end

  it("skips parameters without a gradient and rejects bad options", function()
    local a, b = sn.ones(2):requires_grad(true), sn.ones(2):requires_grad(true)
    local opt = optim.SGD({ a, b }, { lr = 0.5 })
    a.grad = sn.ones(2)
    opt:step()
    assert.are.same({ 0.5, 0.5 }, flat(a))
    assert.are.same({ 1, 1 }, flat(b))
    raises(function() local _ = optim.SGD({ a }, { lr = -1 }) end,
      "seqnn.optim.SGD: lr must be a number in [0, inf), got -1")
    raises(function() local _ = optim.SGD({ a }, { lr = 0.1, nesterov = true }) end,
      "seqnn.optim.SGD: nesterov needs momentum > 0 and dampening 0, got momentum 0, dampening 0")
    raises(function() local _ = optim.SGD({ a }, { learning_rate = 0.1 }) end,
      "seqnn.optim.SGD: unknown option 'learning_rate'")
    raises(function() local _ = optim.SGD({}) end,
      "seqnn.optim.SGD: params must be a non-empty list of tensors or of groups {params = {...}}, got an empty table")
    raises(function() local _ = optim.SGD({ a, a }) end, "seqnn.optim.SGD: parameter 2 appears more than once")
    raises(function() local _ = optim.SGD({ a, "b" }) end,
      "seqnn.optim.SGD: parameter 2 must be an f32 seqnn.Tensor, got string")
  end)
end)

describe("seqnn.optim.AdamW", function()
  -- PyTorch's AdamW in plain Lua (double precision).
  local function reference(p, steps, o)
    local b1, b2 = o.betas[1], o.betas[2]
    local m, v = {}, {}
    for i = 1, #p do m[i], v[i] = 0, 0 end
    for t = 1, steps do
      local g = grad_at(t, #p)
      for i = 1, #p do
        p[i] = p[i] * (1 - o.lr * o.weight_decay)
        m[i] = b1 * m[i] + (1 - b1) * g[i]
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
        local mhat, vhat = m[i] / (1 - b1 ^ t), v[i] / (1 - b2 ^ t)
        p[i] = p[i] - o.lr * mhat / (math.sqrt(vhat) + o.eps)
      end
    end
    return p
  end

  it("matches a plain-Lua AdamW over several steps, defaults and custom options", function()
    for _, o in ipairs({ {}, { lr = 0.01, betas = { 0.8, 0.99 }, eps = 1e-6, weight_decay = 0.1 } }) do
      local init = { 0.5, -1, 2, 0.25, -0.75, 1.5, 3, -2 }
      local p = sn.tensor(init):view(2, 4):requires_grad(true)
      local opt = optim.AdamW({ p }, o)
      for k = 1, 6 do
        local _, g = grad_at(k, #init)
        p.grad = g:view(2, 4)
        opt:step()
      end
      local full = {
        lr = o.lr or 1e-3, betas = o.betas or { 0.9, 0.999 }, eps = o.eps or 1e-8,
        weight_decay = o.weight_decay or 1e-2,
      }
      near(flat(p), reference({ table.unpack(init) }, 6, full), 2e-6)
      assert.are.equal(6, opt.state[p].step)
    end
  end)

  it("creates state lazily and applies per-group options", function()
    local decayed, plain = sn.ones(3):requires_grad(true), sn.ones(3):requires_grad(true)
    local opt = optim.AdamW({ { params = { decayed } }, { params = { plain }, weight_decay = 0 } },
      { lr = 0.1, weight_decay = 0.5 })
    assert.is_nil(opt.state[decayed])
    assert.are.equal(0.5, opt.param_groups[1].weight_decay)
    assert.are.equal(0, opt.param_groups[2].weight_decay)
    decayed.grad, plain.grad = sn.zeros(3), sn.zeros(3)
    opt:step()
    -- zero gradients: only the decoupled decay moves a parameter
    near(flat(decayed), { 0.95, 0.95, 0.95 }, 1e-7)
    assert.are.same({ 1, 1, 1 }, flat(plain))
    opt:set_lr(0.2)
    assert.are.equal(0.2, opt.param_groups[2].lr)
    assert.are.equal(0.2, opt:get_lr())
  end)

  it("rejects bad options, naming the group", function()
    local p = sn.ones(2):requires_grad(true)
    raises(function() local _ = optim.AdamW({ p }, { betas = { 0.9, 1 } }) end,
      "seqnn.optim.AdamW: beta2 must be a number in [0, 1), got 1")
    raises(function() local _ = optim.AdamW({ p }, { betas = 0.9 }) end,
      "seqnn.optim.AdamW: betas must be a pair {beta1, beta2}, got 0.9")
    raises(function() local _ = optim.AdamW({ { params = { p } }, { params = { sn.ones(1) }, eps = -1 } }) end,
      "seqnn.optim.AdamW: eps must be a number in [0, inf), got -1 (group 2)")
    raises(function() optim.AdamW({ p }):set_lr("x") end,
      "seqnn.optim.AdamW:set_lr: lr must be a number >= 0, got x")
    p.grad = sn.ones(3)
    assert.is_truthy(err_of(function() optim.AdamW({ p }):step() end):find(
      "seqnn.optim.AdamW: grad has 3 elements but param has 2", 1, true))
  end)
end)

describe("seqnn.optim.schedule", function()
  local S = optim.schedule

  it("warmup_cosine ramps linearly, then follows a half cosine to min_lr", function()
    local s = S.warmup_cosine{ lr = 1.0, warmup = 10, total = 110, min_lr = 0.1 }
    near({ s:lr_at(1), s:lr_at(5), s:lr_at(10) }, { 0.1, 0.5, 1.0 }, 1e-12)
    near({ s:lr_at(60), s:lr_at(110), s:lr_at(500) }, { 0.55, 0.1, 0.1 }, 1e-12)
    near({ s:lr_at(35) }, { 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)) }, 1e-12)
    local no_warmup = S.warmup_cosine{ lr = 2, total = 4 }
    near({ no_warmup:lr_at(1), no_warmup:lr_at(2), no_warmup:lr_at(4) }, { 1 + math.cos(math.pi / 4), 1, 0 }, 1e-12)
  end)

  it("warmup_linear and the pieces compose", function()
    local s = S.warmup_linear{ lr = 1.0, warmup = 4, total = 12 }
    near({ s:lr_at(2), s:lr_at(4), s:lr_at(8), s:lr_at(12), s:lr_at(13) }, { 0.5, 1, 0.5, 0, 0 }, 1e-12)
    local three = S.sequence({ S.constant(0.3), S.linear{ from = 0.3, to = 0.1, steps = 2 },
      S.cosine{ from = 0.1, to = 0, steps = 2 } }, { 5, 7 })
    near({ three:lr_at(5), three:lr_at(6), three:lr_at(7), three:lr_at(8), three:lr_at(9) },
      { 0.3, 0.2, 0.1, 0.05, 0 }, 1e-12)
    local custom = S.from_function(function(step) return 1 / step end)
    local nested = S.sequence({ custom, three }, { 2 })
    near({ nested:lr_at(2), nested:lr_at(3) }, { 0.5, 0.3 }, 1e-12)
  end)

  it("sets the optimizer's learning rate each step", function()
    local p = sn.ones(1):requires_grad(true)
    local opt = optim.SGD({ p }, { lr = 1 })
    local s = S.warmup_linear{ lr = 0.4, warmup = 2, total = 4 }
    assert.are.equal(0.2, s:apply(opt, 1))
    assert.are.equal(0.2, opt:get_lr())
    p.grad = sn.ones(1)
    opt:step()
    near(flat(p), { 0.8 }, 1e-7)
  end)

  it("rejects bad arguments", function()
    raises(function() S.warmup_cosine{ lr = 1, warmup = 10, total = 5 } end,
      "seqnn.optim.schedule.warmup_cosine: total (5) must be >= warmup (10)")
    raises(function() S.cosine{ from = 1, to = 0, steps = 1.5 } end,
      "seqnn.optim.schedule.cosine: steps must be an integer >= 0, got 1.5")
    raises(function() S.linear{ from = -1, to = 0, steps = 1 } end,
      "seqnn.optim.schedule.linear: from must be a number >= 0, got -1")
    raises(function() S.sequence({ S.constant(1), S.constant(2) }, { 3, 4 }) end,
      "seqnn.optim.schedule.sequence: expected a list of k schedules and a list of k - 1 milestones")
    raises(function() S.constant(1):lr_at("1") end,
      "seqnn.optim.schedule.constant:lr_at: step must be a number, got string")
  end)
end)

describe("seqnn.optim.clip_grad_norm", function()
  it("returns the total L2 norm and scales gradients above max_norm", function()
    local a, b, c = sn.zeros(2):requires_grad(true), sn.zeros(2, 2):requires_grad(true), sn.zeros(1):requires_grad(true)
    a.grad = sn.tensor({ 3, 0 })
    b.grad = sn.tensor({ { 0, 4 }, { 0, 12 } })
    local norm = optim.clip_grad_norm({ a, b, c }, 100) -- c has no gradient
    assert.is_true(math.abs(norm - 13) < 1e-5)
    assert.are.same({ 3, 0 }, flat(a.grad))
    norm = optim.clip_grad_norm({ a, b, c }, 1.3)
    assert.is_true(math.abs(norm - 13) < 1e-5)
    near(flat(a.grad), { 0.3, 0 }, 1e-5)
    near(flat(b.grad), { 0, 0.4, 0, 1.2 }, 1e-5)
    assert.is_true(math.abs(optim.clip_grad_norm({ a, b }, 10) - 1.3) < 1e-5)
    raises(function() optim.clip_grad_norm({ a }, -1) end,
      "seqnn.optim.clip_grad_norm: max_norm must be a number >= 0, got -1")
  end)
end)

describe("training with seqnn.optim", function()
  before_each(function() sn.manual_seed(7) end)

  it("accumulating k micro-batches with loss / k equals one big batch", function()
    local a = nn.MLP{ 3, 16, 2 }
    local b = nn.MLP{ 3, 16, 2 }
    b:load_state_dict(a:state_dict())
    local x, y = sn.randn(8, 3), sn.randn(8, 2)
    local opt_a, opt_b = optim.AdamW(a:parameters(), { lr = 0.01 }), optim.AdamW(b:parameters(), { lr = 0.01 })

    sn.F.mse_loss(a(x), y):backward()
    local k = 4
    for i = 1, k do
      local xi, yi = x:narrow(1, 2 * i - 1, 2), y:narrow(1, 2 * i - 1, 2)
      local loss = sn.F.mse_loss(b(xi), yi) / k
      loss:backward()
    end
    for i, p in ipairs(a:parameters()) do near(flat(b:parameters()[i].grad), flat(p.grad), 1e-5) end
    opt_a:step(); opt_b:step()
    for i, p in ipairs(a:parameters()) do near(flat(b:parameters()[i]), flat(p), 1e-5) end
  end)

  it("resumes bit-identically from a saved model and optimizer state", function()
    local function make()
      local m = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))
      local o = optim.AdamW(m:parameters(), { lr = 0.01, weight_decay = 0.1 })
      local s = optim.schedule.warmup_cosine{ lr = 0.01, warmup = 2, total = 20 }
      return m, o, s
    end
    local x, y = sn.randn(16, 4), sn.randn(16, 1)
    local function train_step(m, o, s, step)
      s:apply(o, step)
      local loss = sn.F.mse_loss(m(x), y)
      loss:backward()
      optim.clip_grad_norm(m:parameters(), 1.0)
      o:step()
      o:zero_grad()
    end
    local m1, o1, s1 = make()
    for step = 1, 3 do train_step(m1, o1, s1, step) end

    -- save as a training loop would: tensors to safetensors, numbers as metadata strings
    local tensors, numbers = o1:state_dict()
    local all, meta = {}, {}
    for k, t in pairs(m1:state_dict()) do all["model." .. k] = t end
    for k, t in pairs(tensors) do all["optim." .. k] = t end
    for k, v in pairs(numbers) do meta[k] = ("%.17g"):format(v) end
    local path = os.tmpname()
    sn.save(path, all, meta)

    local loaded, meta2 = sn.load(path)
    os.remove(path)
    local msd, osd = {}, {}
    for k, t in pairs(loaded) do
      local kind, rest = k:match("^(%a+)%.(.*)$")
      if kind == "model" then msd[rest] = t else osd[rest] = t end
    end
    local m2, o2, s2 = make()
    m2:load_state_dict(msd)
    o2:load_state_dict(osd, meta2)
    assert.are.equal(3, o2.state[m2[1].weight].step)

    for step = 4, 6 do
      train_step(m1, o1, s1, step)
      train_step(m2, o2, s2, step)
    end
    for i, p in ipairs(m1:parameters()) do assert.are.same(flat(p), flat(m2:parameters()[i])) end
  end)

  it("rejects an optimizer state that does not fit", function()
    local p = sn.ones(2):requires_grad(true)
    local opt = optim.AdamW({ p })
    p.grad = sn.ones(2)
    opt:step()
    local tensors, numbers = opt:state_dict()
    local other = optim.AdamW({ sn.ones(3):requires_grad(true) })
    raises(function() other:load_state_dict(tensors, numbers) end,
      "seqnn.optim.AdamW:load_state_dict: '1.exp_avg' has shape 2 but parameter 1 is 3")
    tensors["2.exp_avg"] = sn.ones(2)
    raises(function() opt:load_state_dict(tensors, numbers) end,
      "seqnn.optim.AdamW:load_state_dict: unexpected key '2.exp_avg' (expected <i>.exp_avg|exp_avg_sq, i in 1..1)")
    tensors["2.exp_avg"] = nil
    numbers.params = 3
    raises(function() opt:load_state_dict(tensors, numbers) end,
      "seqnn.optim.AdamW:load_state_dict: the state is for 3 parameters but this optimizer has 1")
    numbers.params = 1
    numbers["1.step"] = "x"
    raises(function() opt:load_state_dict(tensors, numbers) end,
      "seqnn.optim.AdamW:load_state_dict: '1.step' must be an integer, got x")
  end)

  it("fits y = sin(x) with an MLP: the loss falls far", function()
    local x = sn.rand(256, 1) * 6 - 3
    local v = flat(x)
    for i = 1, #v do v[i] = math.sin(v[i]) end
    local y = sn.tensor(v):view(256, 1)
    local model = nn.MLP{ 1, 64, 64, 1, activation = "tanh" }
    local opt = optim.AdamW(model:parameters(), { lr = 1e-2, weight_decay = 0 })
    local first, last
    for _ = 1, 100 do
      local loss = sn.F.mse_loss(model(x), y)
      first = first or loss:item()
      last = loss:item()
      loss:backward()
      opt:step()
      opt:zero_grad()
    end
    assert.is_true(last < 0.1 * first, ("loss %g -> %g"):format(first, last))
  end)
end)
