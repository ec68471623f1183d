-- sn.nn: the Module contract (registration, traversal, state_dict, printing, modes) and
-- every layer against a hand computation, by finite differences, and for its errors.
-- Expected values are computed in plain Lua from the tensors' values.
local sn = require "seqnn"
local nn = sn.nn
local gradcheck = sn.autograd.gradcheck
local GC = { eps = 1e-2, atol = 2e-3, rtol = 1e-2 } -- f32: a large finite-difference step

-- The message of the error fn raises; fn must not tail-call, so that levels are real.
local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

local raises = helpers.raises_in("nn_spec.lua")

-- Sets a tensor's values from a nested Lua table, outside autograd.
local function set(t, values)
  sn.no_grad(function() t:copy_(sn.tensor(values)) end)
end

local function close(a, b, tol)
  tol = tol or 1e-5
  assert.are.same(a:shape(), b:shape())
  assert.is_true(sn.allclose(a, b, tol, tol), ("not close:\n%s\n%s"):format(tostring(a), tostring(b)))
end

local function flat(t) return t:reshape(-1):totable() end

-- A new module, written as in docs/nn.md: a pre-norm residual feed-forward block.
local Residual = sn.class("Residual", nn.Module)

function Residual:__init(dim, hidden)
  nn.Module.__init(self)
  self:add_module("norm", nn.RMSNorm(dim))
  self:add_module("ff", nn.SwiGLU(dim, hidden))
  self:parameter("gate", sn.zeros(dim))   -- starts as the identity
end

function Residual:forward(x)
  return x + self.ff(self.norm(x)) * self.gate
end

describe("seqnn.nn.Linear", function()
  before_each(function() sn.manual_seed(1) end)

  it("computes x W^T + b over the last dim", function()
    local m = nn.Linear(3, 2)
    set(m.weight, { { 1, 2, 3 }, { -1, 0, 0.5 } })
    set(m.bias, { 0.5, -2 })
    local y = m(sn.tensor({ { 1, 1, 1 }, { 2, 0, -2 } }))
    close(y, sn.tensor({ { 6.5, -2.5 }, { -3.5, -5 } }))
    -- leading dims are kept: (2, 2, 3) -> (2, 2, 2)
    local x3 = sn.tensor({ { { 1, 1, 1 }, { 2, 0, -2 } }, { { 0, 0, 0 }, { 1, 0, 0 } } })
    close(m(x3), sn.tensor({ { { 6.5, -2.5 }, { -3.5, -5 } }, { { 0.5, -2 }, { 1.5, -3 } } }))
  end)

  it("starts U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, and has no bias on request", function()
    local m = nn.Linear(16, 256)
    local bound = 1 / math.sqrt(16)
    for _, t in ipairs({ m.weight, m.bias }) do
      local lo, hi = t:min():item(), t:max():item()
      assert.is_true(lo >= -bound and hi <= bound, "inside the bound")
      assert.is_true(lo < -0.9 * bound and hi > 0.9 * bound, "fills the range")
      assert.is_true(math.abs(t:mean():item()) < 0.1 * bound, "centered")
    end
    assert.is_true(sn.autograd.tracked(m.weight) and sn.autograd.tracked(m.bias))
    local nb = nn.Linear(16, 4, { bias = false })
    assert.is_nil(nb.bias)
    assert.are.equal(64, nb:num_parameters())
    close(nb(sn.ones(1, 16)), sn.ones(1, 16):matmul(nb.weight:t()))
  end)

  it("matches finite differences", function()
    local m = nn.Linear(5, 3)
    local x = sn.randn(4, 5):requires_grad(true)
    assert.is_true(gradcheck(function(a) return m(a) end, { x, m.weight, m.bias }, GC))
  end)

  it("rejects bad sizes and names the class; a shape mismatch names both shapes", function()
    raises(function() local _ = nn.Linear(0, 3) end,
      "seqnn.nn.Linear: in_features must be a positive integer, got 0")
    raises(function() local _ = nn.Linear(3, 2.5) end,
      "seqnn.nn.Linear: out_features must be a positive integer, got 2.5")
    local m = nn.Linear(4, 2)
    assert.is_truthy(err_of(function() local _ = m(sn.randn(3, 5)) end):find(
      "seqnn.F.linear: x has 5 features but weight expects 4 (x: 3x5, weight: 2x4)", 1, true))
  end)
end)

describe("seqnn.nn.Embedding", function()
  before_each(function() sn.manual_seed(2) end)

  it("looks up rows by 0-based id, keeping the ids' shape", function()
    local m = nn.Embedding(4, 2)
    set(m.weight, { { 0, 1 }, { 2, 3 }, { 4, 5 }, { 6, 7 } })
    local y = m(sn.tensor({ { 3, 0 }, { 1, 1 } }, "i64"))
    close(y, sn.tensor({ { { 6, 7 }, { 0, 1 } }, { { 2, 3 }, { 2, 3 } } }))
  end)

  it("starts N(0, 1)", function()
    local w = nn.Embedding(200, 100).weight
    local mean = w:mean():item()
    local var = ((w - mean) * (w - mean)):mean():item()
    assert.is_true(math.abs(mean) < 0.02 and math.abs(var - 1) < 0.03, ("mean %g var %g"):format(mean, var))
  end)

  it("matches finite differences for the weight", function()
    local m = nn.Embedding(5, 3)
    local ids = sn.tensor({ 4, 0, 4, 2 }, "i64")
    assert.is_true(gradcheck(function() return m(ids) end, { m.weight }, GC))
  end)

  it("rejects bad sizes", function()
    raises(function() local _ = nn.Embedding(-1, 3) end,
      "seqnn.nn.Embedding: num_embeddings must be a positive integer, got -1")
    raises(function() local _ = nn.Embedding(3) end,
      "seqnn.nn.Embedding: dim must be a positive integer, got nil")
  end)
end)

describe("seqnn.nn.LayerNorm and RMSNorm", function()
  before_each(function() sn.manual_seed(3) end)

  local rows = { { 1, 2, 3, 6 }, { -1, 0.5, 0.5, 4 } }

  it("LayerNorm normalizes to zero mean and unit variance, then scales and shifts", function()
    local m = nn.LayerNorm(4)
    assert.are.same({ 1, 1, 1, 1 }, m.weight:totable())
    assert.are.same({ 0, 0, 0, 0 }, m.bias:totable())
    set(m.weight, { 1, 2, 0.5, -1 })
    set(m.bias, { 0, 1, 0, 0.25 })
    local expected = {}
    for r, row in ipairs(rows) do
      local mean, var = 0, 0
      for _, v in ipairs(row) do mean = mean + v / 4 end
      for _, v in ipairs(row) do var = var + (v - mean) ^ 2 / 4 end
      local w, b = m.weight:totable(), m.bias:totable()
      expected[r] = {}
      for c, v in ipairs(row) do expected[r][c] = (v - mean) / math.sqrt(var + 1e-5) * w[c] + b[c] end
    end
    close(m(sn.tensor(rows)), sn.tensor(expected), 1e-5)
    local plain = nn.LayerNorm(4, { affine = false, eps = 0.5 })
    assert.is_nil(plain.weight)
    assert.are.equal(0, plain:num_parameters())
    local y = plain(sn.tensor({ { 1, 2, 3, 6 } }))
    local var = (4 + 1 + 0 + 9) / 4 -- deviations from the mean 3: -2, -1, 0, 3
    close(y, sn.tensor({ { -2, -1, 0, 3 } }) / math.sqrt(var + 0.5), 1e-5)
  end)

  it("RMSNorm divides by the root mean square and scales", function()
    local m = nn.RMSNorm(4, { eps = 1e-3 })
    set(m.weight, { 1, 2, 0.5, -1 })
    local expected = {}
    for r, row in ipairs(rows) do
      local ms = 0
      for _, v in ipairs(row) do ms = ms + v * v / 4 end
      expected[r] = {}
      for c, v in ipairs(row) do expected[r][c] = v / math.sqrt(ms + 1e-3) * m.weight:totable()[c] end
    end
    close(m(sn.tensor(rows)), sn.tensor(expected), 1e-5)
    assert.are.equal(1e-6, nn.RMSNorm(4).eps)
  end)

  it("match finite differences", function()
    local x = sn.randn(3, 6):requires_grad(true)
    local ln = nn.LayerNorm(6)
    set(ln.weight, flat(sn.randn(6)))
    set(ln.bias, flat(sn.randn(6)))
    assert.is_true(gradcheck(function(a) return ln(a) end, { x, ln.weight, ln.bias }, GC))
    local rms = nn.RMSNorm(6)
    set(rms.weight, flat(sn.randn(6)))
    assert.is_true(gradcheck(function(a) return rms(a) end, { x, rms.weight }, GC))
  end)

  it("reject bad sizes and mismatched inputs", function()
    raises(function() local _ = nn.LayerNorm(0) end, "seqnn.nn.LayerNorm: dim must be a positive integer, got 0")
    raises(function() local _ = nn.RMSNorm("8") end, "seqnn.nn.RMSNorm: dim must be a positive integer, got 8")
    assert.is_truthy(err_of(function() local _ = nn.RMSNorm(8)(sn.randn(4, 6)) end):find(
      "seqnn.F.rms_norm: weight has 8 elements but the last dim of x is 6 (x: 4x6, weight: 8)", 1, true))
  end)
end)

describe("seqnn.nn.Dropout and the activations", function()
  before_each(function() sn.manual_seed(4) end)

  it("Dropout zeroes about p and scales the rest by 1/(1-p) in training, nothing in eval", function()
    local m = nn.Dropout(0.25)
    assert.is_true(m.training)
    local y = flat(m(sn.ones(100, 100)))
    local zeros, kept = 0, true
    for _, v in ipairs(y) do
      if v == 0 then zeros = zeros + 1 elseif math.abs(v - 1 / 0.75) > 1e-6 then kept = false end
    end
    assert.is_true(kept, "kept values are scaled by 1/(1-p)")
    assert.is_true(math.abs(zeros / 10000 - 0.25) < 0.03, "fraction zeroed " .. zeros / 10000)
    m:eval()
    local x = sn.randn(5, 5)
    assert.are.same(flat(x), flat(m(x)))
    assert.are.equal(0.5, nn.Dropout().p)
  end)

  it("Dropout matches finite differences (the mask is fixed by the seed)", function()
    local x = sn.randn(4, 5):requires_grad(true)
    local m = nn.Dropout(0.5)
    assert.is_true(gradcheck(function(a) return m(a) end, { x }, GC))
  end)

  it("Dropout rejects p outside [0, 1)", function()
    raises(function() local _ = nn.Dropout(1) end, "seqnn.nn.Dropout: p must be a number in [0, 1), got 1")
  end)

  it("GELU, SiLU and Tanh compute their functions", function()
    local x = sn.tensor({ -1, 0, 1, 2 })
    close(nn.GELU()(x), sn.tensor({ -0.15865525, 0, 0.84134475, 1.95449974 }), 1e-5)
    local silu, tanh = {}, {}
    for i, v in ipairs({ -1, 0, 1, 2 }) do
      silu[i] = v / (1 + math.exp(-v))
      tanh[i] = (math.exp(2 * v) - 1) / (math.exp(2 * v) + 1)
    end
    close(nn.SiLU()(x), sn.tensor(silu), 1e-5)
    close(nn.Tanh()(x), sn.tensor(tanh), 1e-5)
    local a = sn.randn(3, 4):requires_grad(true)
    for _, cls in ipairs({ nn.GELU, nn.SiLU, nn.Tanh }) do
      local m = cls()
      assert.is_true(gradcheck(function(v) return m(v) end, { a }, GC))
    end
  end)
end)

describe("seqnn.nn.Sequential, ModuleList, MLP, SwiGLU", function()
  before_each(function() sn.manual_seed(5) end)

  it("Sequential applies its children in order, named 1, 2, ...", function()
    local l1, l2 = nn.Linear(3, 4), nn.Linear(4, 2)
    local seq = nn.Sequential(l1, nn.Tanh(), l2)
    assert.are.equal(3, #seq)
    assert.are.equal(l2, seq[3])
    local x = sn.randn(5, 3)
    close(seq(x), l2(l1(x):tanh()))
    close(seq:forward(x), l2(l1(x):tanh()))
    local names = {}
    for name in seq:named_parameters() do names[#names + 1] = name end
    assert.are.same({ "1.weight", "1.bias", "3.weight", "3.bias" }, names)
    seq:add(nn.SiLU()):add(nn.Linear(2, 1))
    assert.are.same({ 5, 1 }, seq(x):shape())
    assert.is_true(gradcheck(function(a) return seq(a) end, { x:requires_grad(true), l1.weight, l2.bias }, GC))
  end)

  it("Sequential prefixes a child's error with its place, nested too", function()
    local seq = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(16, 2))
    raises(function() local _ = seq(sn.randn(2, 4)) end,
      "Sequential[3] (seqnn.nn.Linear): seqnn.F.linear: x has 8 features but weight expects 16 (x: 2x8, weight: 2x16)")
    local outer = nn.Sequential(nn.Linear(4, 4), seq)
    raises(function() local _ = outer:forward(sn.randn(2, 4)) end,
      "Sequential[2] (seqnn.nn.Sequential): Sequential[3] (seqnn.nn.Linear): seqnn.F.linear: " ..
      "x has 8 features but weight expects 16 (x: 2x8, weight: 2x16)")
    raises(function() local _ = nn.Sequential(nn.Linear(1, 1), 42) end,
      "seqnn.nn.Sequential: argument 2 must be a seqnn.nn.Module, got number")
  end)

  it("ModuleList registers its elements without a forward", function()
    local list = nn.ModuleList({ nn.Linear(2, 2), nn.Linear(2, 3) })
    list:append(nn.RMSNorm(3))
    assert.are.equal(3, #list)
    local x = sn.randn(1, 2)
    for _, m in ipairs(list) do x = m(x) end
    assert.are.same({ 1, 3 }, x:shape())
    assert.are.equal(6 + 9 + 3, list:num_parameters())
    local names = {}
    for name in list:named_parameters() do names[#names + 1] = name end
    assert.are.same({ "1.weight", "1.bias", "2.weight", "2.bias", "3.weight" }, names)
    raises(function() local _ = list(x) end,
      "seqnn.nn.ModuleList: has no forward; call its elements (for i, m in ipairs(list) do ... end)")
  end)

  it("MLP is Linear, activation, [Dropout], ..., Linear", function()
    local mlp = nn.MLP{ 3, 8, 8, 2, activation = "silu", dropout = 0.1 }
    local kinds = {}
    for _, m in ipairs(mlp) do kinds[#kinds + 1] = m.__name:match("[^.]+$") end
    assert.are.same({ "Linear", "SiLU", "Dropout", "Linear", "SiLU", "Dropout", "Linear" }, kinds)
    mlp:eval()
    local x = sn.randn(4, 3)
    close(mlp(x), mlp[7](mlp[4](mlp[1](x):silu()):silu()))
    local plain = nn.MLP({ 2, 5, 1 }, { activation = "tanh" })
    assert.are.equal(3, #plain)
    assert.are.equal(2 * 5 + 5 + 5 + 1, plain:num_parameters())
    assert.is_true(gradcheck(function(a) return plain(a) end, { sn.randn(3, 2):requires_grad(true), plain[1].weight }, GC))
    raises(function() local _ = nn.MLP{ 4 } end,
      "seqnn.nn.MLP: expected a list of at least 2 layer sizes, e.g. MLP{4, 64, 1}")
    raises(function() local _ = nn.MLP{ 4, 2, activation = "relu" } end,
      "seqnn.nn.MLP: activation must be 'gelu', 'silu' or 'tanh', got relu")
    raises(function() local _ = nn.MLP{ 4, 0 } end, "seqnn.nn.MLP: layer size 2 must be a positive integer, got 0")
  end)

  it("SwiGLU computes w2(silu(w1 x) * w3 x) without biases", function()
    local m = nn.SwiGLU(4, 6)
    assert.are.equal(3 * 24, m:num_parameters())
    local x = sn.randn(2, 3, 4)
    local h = x:matmul(m.w1.weight:t()):silu() * x:matmul(m.w3.weight:t())
    close(m(x), h:matmul(m.w2.weight:t()))
    assert.is_true(gradcheck(function(a) return m(a) end,
      { sn.randn(3, 4):requires_grad(true), m.w1.weight, m.w2.weight, m.w3.weight }, GC))
    raises(function() local _ = nn.SwiGLU(4) end, "seqnn.nn.SwiGLU: hidden must be a positive integer, got nil")
  end)
end)

describe("seqnn.nn.Module", function()
  before_each(function() sn.manual_seed(6) end)

  it("lets a new module be written in a dozen lines", function()
    local block = Residual(4, 8)
    local x = sn.randn(2, 4)
    close(block(x), x) -- the gate starts at zero
    set(block.gate, { 1, 1, 1, 1 })
    close(block(x), x + block.ff(block.norm(x)))
    local names = {}
    for name in block:named_parameters() do names[#names + 1] = name end
    assert.are.same({ "gate", "norm.weight", "ff.w1.weight", "ff.w2.weight", "ff.w3.weight" }, names)
    assert.is_true(gradcheck(function(a) return block(a) end,
      { x:requires_grad(true), block.gate, block.norm.weight, block.ff.w2.weight }, GC))
  end)

  it("lists parameters, children and modules in registration order, shared tensors once", function()
    local a, b = nn.Linear(2, 3), nn.Linear(3, 2)
    local seq = nn.Sequential(a, b)
    assert.are.same({ a.weight, a.bias, b.weight, b.bias }, seq:parameters())
    assert.are.same({ a, b }, seq:children())
    assert.are.same({ seq, a, b }, seq:modules())
    assert.are.equal(6 + 3 + 6 + 2, seq:num_parameters())
    local tied = nn.Sequential(a, a)
    assert.are.equal(2, #tied:parameters())
    assert.are.equal(9, tied:num_parameters())
    local sd = tied:state_dict()
    assert.is_not_nil(sd["1.weight"])
    assert.is_not_nil(sd["2.weight"])
  end)

  it("keeps buffers in state_dict but out of parameters", function()
    local m = nn.Linear(2, 2)
    m:buffer("count", sn.zeros({}, "i64"))
    assert.are.equal(2, #m:parameters())
    local sd = m:state_dict()
    assert.are.same({}, sd.count:shape())
    m:load_state_dict({ weight = sn.ones(2, 2), bias = sn.zeros(2), count = sn.tensor(7, "i64") })
    assert.are.equal(7, m.count:item())
  end)

  it("switches training mode recursively", function()
    local mlp = nn.MLP{ 2, 4, 1, dropout = 0.5 }
    assert.is_true(mlp.training and mlp[3].training)
    assert.are.equal(mlp, mlp:eval())
    assert.is_false(mlp.training or mlp[3].training)
    local x = sn.randn(8, 2)
    assert.are.same(flat(mlp(x)), flat(mlp(x)))
    mlp:train()
    assert.is_true(mlp[3].training)
    mlp:train(false)
    assert.is_false(mlp[3].training)
  end)

  it("zero_grad drops every gradient", function()
    local mlp = nn.MLP{ 2, 4, 1 }
    mlp(sn.randn(3, 2)):sum():backward()
    for _, p in ipairs(mlp:parameters()) do assert.is_not_nil(p.grad) end
    mlp:zero_grad()
    for _, p in ipairs(mlp:parameters()) do assert.is_nil(p.grad) end
  end)

  it("round-trips state_dict through load_state_dict and a safetensors file", function()
    local a, b = nn.MLP{ 3, 5, 2 }, nn.MLP{ 3, 5, 2 }
    local x = sn.randn(4, 3)
    assert.is_false(sn.allclose(a(x), b(x)))
    local sd = a:state_dict()
    local keys = {}
    for k in pairs(sd) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.are.same({ "1.bias", "1.weight", "3.bias", "3.weight" }, keys)
    -- detached views of the parameters' memory
    assert.is_false(sn.autograd.tracked(sd["1.weight"]))
    assert.are.same(flat(a[1].weight), flat(sd["1.weight"]))
    local missing, unexpected = b:load_state_dict(sd)
    assert.are.same({}, missing)
    assert.are.same({}, unexpected)
    assert.are.same(flat(a(x)), flat(b(x)))
    assert.is_nil(b[1].weight.grad)
    -- the loaded values are copies: changing a does not change b
    set(a[1].bias, { 0, 0, 0, 0, 0 })
    assert.is_false(sn.allclose(a(x), b(x)))

    local path = os.tmpname()
    sn.save(path, b:state_dict())
    local c = nn.MLP{ 3, 5, 2 }
    c:load_state_dict((sn.load(path)))
    os.remove(path)
    assert.are.same(flat(b(x)), flat(c(x)))
  end)

  it("load_state_dict names missing and unexpected keys and mismatched shapes, and changes nothing then", function()
    local m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    local before = flat(m[1].weight)
    local sd = m:state_dict()
    sd["2.bias"] = nil
    sd["2.b"] = sn.zeros(1)
    sd["1.weight"] = sn.zeros(3, 2)
    raises(function() m:load_state_dict(sd) end,
      "seqnn.nn.Sequential:load_state_dict: missing keys: 2.bias; unexpected keys: 2.b")
    assert.are.same(before, flat(m[1].weight))
    sd = m:state_dict()
    sd["1.bias"] = sn.zeros(1)
    sd["1.weight"] = sn.zeros(3, 2)
    raises(function() m:load_state_dict(sd) end,
      "seqnn.nn.Sequential:load_state_dict: size mismatch for '1.bias': the module has 3, the state dict has 1")
    assert.are.same(before, flat(m[1].weight))
    -- not strict: loads what matches and reports the rest
    local missing, unexpected = m:load_state_dict({ ["1.weight"] = sn.zeros(3, 2), extra = sn.ones(1) }, false)
    assert.are.same({ "1.bias", "2.weight", "2.bias" }, missing)
    assert.are.same({ "extra" }, unexpected)
    assert.are.same({ 0, 0, 0, 0, 0, 0 }, flat(m[1].weight))
    raises(function() m:load_state_dict(nil) end,
      "seqnn.nn.Sequential:load_state_dict: expected a table name -> tensor, got nil")
  end)

  it("prints the module tree with parameter counts", function()
    local m = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Sequential(nn.LayerNorm(8), nn.Dropout(0.1)),
      nn.Linear(8, 1000), nn.Embedding(1000, 1000))
    assert.are.equal(table.concat({
      "seqnn.nn.Sequential (1.0M params)",
      "  (1): seqnn.nn.Linear(4 -> 8) (40 params)",
      "  (2): seqnn.nn.GELU",
      "  (3): seqnn.nn.Sequential (16 params)",
      "    (1): seqnn.nn.LayerNorm(8, eps=1e-05) (16 params)",
      "    (2): seqnn.nn.Dropout(p=0.1)",
      "  (4): seqnn.nn.Linear(8 -> 1000) (9.0K params)",
      "  (5): seqnn.nn.Embedding(1000, 1000) (1.0M params)",
    }, "\n"), tostring(m))
    assert.are.equal("seqnn.nn.RMSNorm(3, eps=1e-06) (3 params)", tostring(nn.RMSNorm(3)))
  end)

  it("rejects bad registrations, naming the class", function()
    local m = nn.Linear(2, 2)
    raises(function() m:parameter("a.b", sn.ones(1)) end,
      "seqnn.nn.Linear:parameter: name must be a non-empty string without '.' or a positive integer, got 'a.b'")
    raises(function() m:parameter("forward", sn.ones(1)) end,
      "seqnn.nn.Linear:parameter: 'forward' is already a field or method of the module")
    raises(function() m:buffer("weight", sn.ones(1)) end,
      "seqnn.nn.Linear:buffer: 'weight' is already registered as another kind of entry")
    raises(function() m:parameter("ids", sn.ones(1, "i64")) end,
      "seqnn.nn.Linear:parameter: 'ids' must be an f32 seqnn.Tensor, got i64")
    raises(function() m:add_module("child", {}) end,
      "seqnn.nn.Linear:add_module: 'child' must be a seqnn.nn.Module, got a table")
    raises(function() nn.Module():forward(1) end, "seqnn.nn.Module: forward is not implemented")
    local Forgetful = sn.class("Forgetful", nn.Module)
    function Forgetful:__init() self:parameter("w", sn.ones(1)) end
    raises(function() local _ = Forgetful() end,
      "Forgetful:parameter: the module is not initialized; call Module.__init(self) first in __init")
    -- registering a name again replaces the tensor
    m:parameter("weight", sn.zeros(2, 2))
    assert.are.same({ 0, 0, 0, 0 }, flat(m.weight))
    assert.are.equal(2, #m:parameters())
  end)
end)
