-- sn.F.hash_linear, sn.nn.MemoryLayer and sn.nn.MemoryAttention (MemoryFormer): the forward
-- against a reference written with plain Lua numbers, gradients against finite
-- differences, the layer as a drop-in for Linear, the packed inference copy, the
-- MemoryFormer LM (training and decoding), and bad input.
local sn = require "seqnn"
local F = sn.F
local gradcheck = sn.autograd.gradcheck
local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
-- fn raises exactly msg (after the position, for errors raised from Lua; the binding's
-- errors raised in C carry none).
local function raises(fn, msg)
  local err = helpers.err_of(fn)
  assert.are.equal(msg, (err:gsub("^[^\n]-:%d+: ", "", 1)))
end

local function leaf(t) return t:requires_grad(true) end
local function max_diff(a, b) return (a - b):abs():max():item() end

-- y for x (N, d_in) as Lua tables: code bit i = [z_i >= 0] LSB first, score as documented.
local function reference(x, tables, bias, bits, score)
  local xt, tt = x:totable(), tables:totable()
  local bt = bias and bias:totable()
  local K, dout = x:size(2) // bits, tables:size(2)
  local y = {}
  for n = 1, #xt do
    local row = {}
    for c = 1, dout do row[c] = bt and bt[c] or 0 end
    for k = 0, K - 1 do
      local code, prod, S = 0, 1, 0
      for i = 0, bits - 1 do
        local z = xt[n][k * bits + i + 1]
        if z >= 0 then code = code | (1 << i) end
        prod = prod / (1 + math.exp(-2 * math.abs(z)))
        S = S + math.abs(z)
      end
      local p = score == "paper" and prod or S * prod
      for c = 1, dout do row[c] = row[c] + p * tt[k * (1 << bits) + code + 1][c] end
    end
    y[n] = row
  end
  return sn.tensor(y)
end

describe("seqnn.F.hash_linear", function()
  it("matches a reference with LSB-first codes, for both scores and several bit widths", function()
    sn.manual_seed(1)
    for _, case in ipairs({ { 3, 1, 5 }, { 12, 3, 7 }, { 16, 8, 65 }, { 20, 10, 3 } }) do
      local din, bits, dout = case[1], case[2], case[3]
      local x, t, b = sn.randn(6, din), sn.randn((din // bits) * (1 << bits), dout), sn.randn(dout)
      for _, score in ipairs({ "code", "paper" }) do
        local y = F.hash_linear(x, t, b, { bits = bits, score = score })
        assert.is_true(max_diff(y, reference(x, t, b, bits, score)) < 1e-4, ("bits %d %s"):format(bits, score))
      end
      assert.is_true(max_diff(F.hash_linear(x, t, { bits = bits }), reference(x, t, nil, bits, "code")) < 1e-4)
    end
  end)

  it("reads chunk k's table at the code of features k*bits+1 .. (k+1)*bits", function()
    -- x = (+, -, +, +) with bits 2: chunk 1 has code 1 (bit 0 set), chunk 2 code 3
    local x = sn.tensor({ { 1, -1, 2, 0 } })
    -- table 1, code 1: 1-based row 2; table 2, code 3: row 4 + 3 + 1
    local t = sn.tensor({ { 0 }, { 10 }, { 0 }, { 0 }, { 0 }, { 0 }, { 0 }, { 100 } })
    local y = F.hash_linear(x, t, { bits = 2, score = "paper" })
    local s = function(z) return 1 / (1 + math.exp(-2 * math.abs(z))) end
    local want = 10 * s(1) * s(-1) + 100 * s(2) * s(0)
    assert.is_true(math.abs(y:totable()[1][1] - want) < 1e-4)
  end)

  it("keeps x's leading dims", function()
    local y = F.hash_linear(sn.randn(2, 3, 4, 16), sn.randn(2 * 256, 5))
    assert.are.same({ 2, 3, 4, 5 }, y:shape())
    local v = F.hash_linear(sn.randn(16), sn.randn(2 * 256, 5))
    assert.are.same({ 5 }, v:shape())
  end)

  it("passes gradcheck in x, tables and bias for both scores", function()
    sn.manual_seed(2)
    for _, score in ipairs({ "code", "paper" }) do
      local x, t, b = leaf(sn.randn(3, 2, 8)), leaf(sn.randn(2 * 16, 5) * 0.5), leaf(sn.randn(5))
      assert.is_true(gradcheck(function(a, tt, bb) return F.hash_linear(a, tt, bb, { bits = 4, score = score }) end,
        { x, t, b }, { eps = 1e-3, atol = 1e-2, rtol = 1e-2 }))
    end
  end)

  it("gives the gradient of a non-contiguous input and upstream gradient", function()
    sn.manual_seed(3)
    local base = leaf(sn.randn(8, 5))
    local t = sn.randn(2 * 16, 3)
    local y = F.hash_linear(base:t(), t, { bits = 4 }) -- (5, 8) view
    local g = sn.randn(3, 5):t() -- a transposed upstream gradient
    y:backward(g)
    local x2 = leaf(base:t():contiguous():detach())
    F.hash_linear(x2, t, { bits = 4 }):backward(g:contiguous())
    assert.is_true(max_diff(base.grad, x2.grad:t()) < 1e-6)
  end)

  it("gives tables a dense gradient: p dy at the rows read, zero elsewhere", function()
    local x = sn.tensor({ { 1, 1 } })
    local t = leaf(sn.ones(4, 2))
    F.hash_linear(x, t, { bits = 2, score = "paper" }):sum():backward()
    local p = (1 / (1 + math.exp(-2))) ^ 2
    local g = t.grad:totable()
    assert.is_true(math.abs(g[4][1] - p) < 1e-6 and math.abs(g[4][2] - p) < 1e-6)
    for r = 1, 3 do assert.are.same({ 0, 0 }, g[r]) end
  end)

  it("names the function, the argument and the shapes on bad input", function()
    local x, t = sn.randn(2, 5, 30), sn.randn(1024, 4)
    raises(function() F.hash_linear(x, t) end,
      "seqnn.F.hash_linear: x has 30 features, not a multiple of bits 8 (x: 2x5x30)")
    raises(function() F.hash_linear(sn.randn(2, 32), sn.randn(100, 4)) end,
      "seqnn.F.hash_linear: tables has 100 rows, not K * 2^bits = 4 * 256 = 1024 for x's 32 features and bits 8 "
      .. "(x: 2x32, tables: 100x4)")
    raises(function() F.hash_linear(sn.randn(2, 32), t, sn.randn(7)) end,
      "seqnn.F.hash_linear: bias has shape 7 but tables have d_out = 4 columns (bias: 7, tables: 1024x4)")
    raises(function() F.hash_linear(sn.randn(2, 32), sn.randn(1024)) end,
      "seqnn.F.hash_linear: tables must be (K * 2^bits, d_out) = (4 * 256, d_out), got 1024")
    raises(function() F.hash_linear(sn.randn(2, 32), t, nil, { bits = 0 }) end,
      "seqnn.F.hash_linear: bits must be an integer in 1..16, got 0")
    raises(function() F.hash_linear(sn.randn(2, 32), t, nil, { bits = 17 }) end,
      "seqnn.F.hash_linear: bits must be an integer in 1..16, got 17")
    raises(function() F.hash_linear(sn.randn(2, 32), t, nil, { bits = 2.5 }) end,
      "seqnn.F.hash_linear: bits must be an integer in 1..16, got 2.5")
    raises(function() F.hash_linear(sn.randn(2, 32), t, nil, { score = "l2" }) end,
      "seqnn.F.hash_linear: score must be 'code' or 'paper', got l2")
    raises(function() F.hash_linear(sn.randn(2, 32), t, nil, { bitz = 8 }) end,
      "seqnn.F.hash_linear: unknown option 'bitz'")
    raises(function() F.hash_linear(sn.randn(2, 32), t, nil, 8) end,
      "seqnn.F.hash_linear: opts must be a table {bits =, score =}, got number")
    raises(function() F.hash_linear("x", t) end,
      "bad argument #1 'x' to 'seqnn.F.hash_linear' (seqnn.Tensor expected, got string)")
    raises(function() F.hash_linear(sn.randn(2, 32), nil) end,
      "bad argument #2 'tables' to 'seqnn.F.hash_linear' (seqnn.Tensor expected, got nil)")
    raises(function() F.hash_linear(sn.zeros({ 2, 32 }, "i64"), t) end,
      "seqnn.F.hash_linear: argument 'x' must be f32, got i64 (2x32)")
    raises(function() F.hash_linear(sn.randn(2, 32), sn.zeros({ 1024, 4 }, "i64")) end,
      "seqnn.F.hash_linear: argument 'tables' must be f32, got i64 (1024x4)")
    raises(function() F.hash_linear(sn.tensor(1.5), t) end,
      "seqnn.F.hash_linear: x must have at least one dim (..., d_in), got a scalar")
    -- a packed copy of other tables, or in another layout (bf16 panels are 32 columns wide)
    local t70 = sn.randn(1024, 70)
    raises(function() F.hash_linear(sn.randn(2, 32), t70, nil, { packed = sn.randn(3, 3) }) end,
      "seqnn.F.hash_linear: packed must be a contiguous f32 tensor of shape 2x1024x64 or i64 of 3x1024x8 (bf16), "
      .. "the tables packed by sn_hash_linear_pack; got f32 3x3")
    raises(function() F.hash_linear(sn.randn(2, 32), t70, nil, { packed = sn.zeros({ 2, 1024, 16 }, "i64") }) end,
      "seqnn.F.hash_linear: packed must be a contiguous f32 tensor of shape 2x1024x64 or i64 of 3x1024x8 (bf16), "
      .. "the tables packed by sn_hash_linear_pack; got i64 2x1024x16")
    raises(function() F.hash_linear(sn.randn(2, 32), t70, nil, { packed = "x" }) end,
      "bad argument #4 'opts.packed' to 'seqnn.F.hash_linear' (seqnn.Tensor expected, got string)")
    -- sizes whose product overflows: rejected before anything is allocated
    raises(function() F.hash_linear(sn.zeros(1 << 31, 1 << 31, 0), sn.zeros(0, 4), nil, { bits = 1 }) end,
      "seqnn.F.hash_linear: 2147483648x2147483648x4 elements overflow (max 2^60 f32 elements)")
    local freed = sn.randn(2, 32)
    freed:free()
    raises(function() F.hash_linear(freed, t) end, "seqnn.F.hash_linear: argument 'x': tensor was freed")
  end)

  it("rejects a corrupt saved code in the kernel call", function()
    local x, t = sn.randn(2, 8), sn.randn(256, 3)
    local codes = sn.tensor({ { 3 }, { 256 } }, "i64")
    local ok, err = pcall(sn.core.k_hash_linear_bwd, sn.randn(2, 3), x, t, codes, sn.ones(2, 1), 8, false, true,
      true, true)
    assert.is_false(ok)
    assert.matches("codes%[1%] = 256 is out of range 0..255", err)
  end)
end)

describe("seqnn.nn.MemoryLayer", function()
  it("is a drop-in for Linear: shapes, parameters, output scale and printing", function()
    sn.manual_seed(4)
    local m, lin = sn.nn.MemoryLayer(64, 48), sn.nn.Linear(64, 48)
    local x = sn.randn(16, 10, 64)
    local y = m(x)
    assert.are.same({ 16, 10, 48 }, y:shape())
    assert.are.same({ 8 * 256, 48 }, m.tables:shape())
    local names = {}
    for name in pairs(m:state_dict()) do names[#names + 1] = name end
    table.sort(names)
    assert.are.same({ "bias", "tables" }, names)
    local rms = function(t) return (t * t):mean():sqrt():item() end
    local ratio = rms(y) / rms(lin(x))
    assert.is_true(ratio > 0.8 and ratio < 1.25, "output scale ratio " .. ratio)
    assert.are.equal("seqnn.nn.MemoryLayer(64 -> 48, bits=8, chunks=8) (98.4K params)", tostring(m))
    assert.are.equal(2 * 8 * 48 + 5 * 64, m:flops_per_token())
    assert.are.equal(8 * 256 * 48 * 4, m:table_bytes())
  end)

  it("inserts a projection when chunks * bits differs from d_in", function()
    local m = sn.nn.MemoryLayer(30, 5, { bits = 4, chunks = 6, bias = false, score = "paper" })
    assert.is_not_nil(m.proj)
    assert.are.same({ 24, 30 }, m.proj.weight:shape())
    assert.are.same({ 6 * 16, 5 }, m.tables:shape())
    assert.are.same({ 3, 5 }, m(sn.randn(3, 30)):shape())
    assert.are.equal("seqnn.nn.MemoryLayer(30 -> 5, bits=4, chunks=6, proj, score=paper, bias=false) (1.2K params)\n"
      .. "  (proj): seqnn.nn.Linear(30 -> 24, bias=false) (720 params)", tostring(m))
    assert.is_nil(sn.nn.MemoryLayer(32, 5, { bits = 4, chunks = 8 }).proj)
  end)

  it("trains: gradients reach tables, bias and the projection", function()
    sn.manual_seed(5)
    local m = sn.nn.MemoryLayer(12, 4, { bits = 3, chunks = 2 })
    local x, target = sn.randn(32, 12), sn.randn(32, 4)
    local opt = sn.optim.AdamW(m:parameters(), { lr = 1e-2 })
    local first
    for step = 1, 30 do
      local loss = F.mse_loss(m(x), target)
      first = first or loss:item()
      loss:backward(); opt:step(); opt:zero_grad()
    end
    assert.is_true(F.mse_loss(m(x), target):item() < first)
    F.mse_loss(m(x), target):backward()
    for _, p in ipairs(m:parameters()) do assert.is_not_nil(p.grad) end
  end)

  it("packs its tables for inference: the same output, dropped by train()", function()
    sn.manual_seed(6)
    local m = sn.nn.MemoryLayer(16, 70)
    local x = sn.randn(5, 16)
    local y = sn.no_grad(function() return m(x) end)
    m:eval():pack()
    assert.matches("packed", tostring(m))
    assert.are.equal(0, max_diff(sn.no_grad(function() return m(x) end), y))
    -- with gradients recorded the tables are read, so their gradient is right
    local xg = leaf(x:clone())
    m(xg):sum():backward()
    assert.is_not_nil(m.tables.grad)
    m:train()
    assert.is_nil(m._packed)
    -- bf16: the tables rounded, the sums in f32
    m:eval():pack_bf16()
    assert.matches("packed bf16", tostring(m))
    local y16 = sn.no_grad(function() return m(x) end)
    assert.is_true(max_diff(y16, y) <= 1e-2 * y:abs():max():item())
    assert.is_true(max_diff(y16, y) > 0)
    m:unpack()
    assert.is_nil(m._packed)
  end)

  it("checks its arguments", function()
    raises(function() sn.nn.MemoryLayer(30, 4) end,
      "seqnn.nn.MemoryLayer: d_in = 30 is not a multiple of bits = 8; give chunks to project the input to chunks * "
      .. "bits features first")
    raises(function() sn.nn.MemoryLayer(0, 4) end, "seqnn.nn.MemoryLayer: d_in must be a positive integer, got 0")
    raises(function() sn.nn.MemoryLayer(16, 4, { bits = 20 }) end,
      "seqnn.nn.MemoryLayer: bits must be an integer in 1..16, got 20")
    raises(function() sn.nn.MemoryLayer(16, 4, { chunks = 0 }) end,
      "seqnn.nn.MemoryLayer: chunks must be a positive integer or nil, got 0")
    raises(function() sn.nn.MemoryLayer(16, 4, { score = "x" }) end,
      "seqnn.nn.MemoryLayer: score must be 'code' or 'paper', got x")
    raises(function() sn.nn.MemoryLayer(16, 4, { hidden = 3 }) end, "seqnn.nn.MemoryLayer: unknown option 'hidden'")
    raises(function() sn.nn.MemoryLayer(1 << 20, 1 << 20, { bits = 16 }) end,
      "seqnn.nn.MemoryLayer: the tables would hold K * 2^bits * d_out = 65536 * 65536 * 1048576 values, more than 2^40")
    local m = sn.nn.MemoryLayer(16, 4)
    local ok, err = pcall(m, sn.randn(3, 17))
    assert.is_false(ok)
    assert.matches("seqnn.F.hash_linear: x has 17 features, not a multiple of bits 8 %(x: 3x17%)", err)
  end)
end)

describe("seqnn.nn.MemoryAttention and the MemoryFormer LM", function()
  it("is causal and has no output projection", function()
    sn.manual_seed(7)
    local a = sn.nn.MemoryAttention(32, 4)
    assert.is_nil(a.proj)
    assert.are.same({ 4 * 256, 96 }, a.qkv.tables:shape())
    local x = sn.randn(2, 6, 32)
    local y = a(x)
    assert.are.same({ 2, 6, 32 }, y:shape())
    local x2 = x:clone()
    x2:narrow(2, 6, 1):fill_(3)
    assert.is_true(max_diff(a(x2):narrow(2, 1, 5), y:narrow(2, 1, 5)) < 1e-6)
  end)

  it("passes gradcheck through the mixer", function()
    sn.manual_seed(8)
    local a = sn.nn.MemoryAttention(8, 2, { bits = 4 })
    local x = leaf(sn.randn(1, 3, 8))
    assert.is_true(gradcheck(function(v) return a(v) end, { x }, { eps = 1e-3, atol = 1e-2, rtol = 1e-2 }))
  end)

  it("builds sn.models.LM{mixer = 'memory_attention', mlp = 'memory'}, which trains and decodes", function()
    sn.manual_seed(9)
    local lm = sn.models.LM { vocab = 40, d = 32, layers = 2, heads = 4, mixer = "memory_attention", mlp = "memory",
      memory_bits = 4 }
    local block = lm.blocks[1]
    assert.are.equal("seqnn.nn.MemoryAttention", block.mixer.__name)
    assert.are.same({ 8 * 16, 8 * 6 }, block.mlp[1].tables:shape()) -- K = 32/4 tables, K (4 + 2) outputs
    assert.are.same({ 8 * 64, 32 }, block.mlp[3].tables:shape()) -- 6 bits in the second layer
    local ids = sn.tensor({ { 1, 2, 3, 4, 5 }, { 6, 7, 8, 9, 10 } }, "i64")
    local targets = sn.tensor({ { 2, 3, 4, 5, 6 }, { 7, 8, 9, 10, 11 } }, "i64")
    local opt = sn.optim.AdamW(lm:parameters(), { lr = 3e-3 })
    local first, last
    for step = 1, 15 do
      local loss = F.cross_entropy(lm(ids), targets)
      first = first or loss:item()
      last = loss:item()
      loss:backward(); opt:step(); opt:zero_grad()
    end
    assert.is_true(last < first)
    local full = sn.no_grad(function() return lm(ids) end)
    local cache = lm:init_cache(2, 8)
    sn.no_grad(function()
      lm:step(ids:narrow(2, 1, 3), cache)
      local l4 = lm:step(ids:narrow(2, 4, 1), cache)
      assert.is_true(max_diff(l4, full:narrow(2, 4, 1)) < 1e-4)
    end)
  end)

  it("checks its options", function()
    raises(function() sn.nn.MemoryAttention(30, 3) end, "seqnn.nn.MemoryAttention: d = 30 is not a multiple of bits = 8")
    raises(function() sn.nn.MemoryAttention(32, 5) end, "seqnn.nn.MemoryAttention: d = 32 is not divisible by heads = 5")
    raises(function() sn.nn.TransformerBlock(30, 3, { mlp = "memory" }) end,
      "seqnn.nn.TransformerBlock: mlp 'memory' needs memory_bits, an integer in 1..14 dividing d = 30, got 8")
    raises(function() sn.nn.TransformerBlock(32, 4, { mlp = "memoryy" }) end,
      "seqnn.nn.TransformerBlock: mlp must be 'gelu', 'swiglu', 'memory', 'pkm' or 'none', got memoryy")
  end)
end)
