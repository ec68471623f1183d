-- Product-key memory: sn.F.product_key_* against plain-Lua references and finite
-- differences, row-sparse gradients through autograd (accumulation, meeting a dense
-- gradient, clipping), lazy AdamW/SGD on the touched rows and their checkpoint round trip,
-- sn.nn.ProductKeyMemory training, and bad input.
local sn = require "seqnn"
local F, nn, optim = sn.F, sn.nn, sn.optim
local gradcheck = sn.autograd.gradcheck

local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

local function has(msg, want)
  if not msg:find(want, 1, true) then error(("message %q does not contain %q"):format(msg, want), 2) end
end

local function flat(t) return t:reshape(-1):totable() end

local function close(a, b, tol)
  local x, y = flat(a), flat(b)
  assert.are.equal(#y, #x)
  for i = 1, #x do
    if math.abs(x[i] - y[i]) > tol * (1 + math.abs(y[i])) then
      error(("element %d: %.9g vs %.9g"):format(i, x[i], y[i]), 2)
    end
  end
end

describe("seqnn.F.product_key_topk and product_key_select", function()
  it("select picks the best sums of the product set", function()
    sn.manual_seed(3)
    local s1, s2 = sn.randn(2, 7), sn.randn(2, 7)
    local slot, score = F.product_key_select(s1, s2, 5)
    assert.are.equal("i64", slot:dtype())
    local a, b = s1:totable(), s2:totable()
    for r = 1, 2 do
      local all = {}
      for i = 1, 7 do for j = 1, 7 do all[#all + 1] = { a[r][i] + b[r][j], (i - 1) * 7 + (j - 1) } end end
      table.sort(all, function(x, y) return x[1] > y[1] or (x[1] == y[1] and x[2] < y[2]) end)
      for k = 1, 5 do
        assert.are.equal(all[k][2], slot:totable()[r][k])
        assert.is_true(math.abs(all[k][1] - score:totable()[r][k]) < 1e-5)
      end
    end
    local idx, val = F.product_key_topk(s1, 3)
    assert.are.same({ 2, 3 }, idx:shape())
    assert.is_true(val[1][1] >= val[1][2] and val[1][2] >= val[1][3])
  end)

  it("select's score gradient matches finite differences", function()
    sn.manual_seed(5)
    local s1, s2 = (sn.randn(2, 3, 6) * 3):requires_grad(true), (sn.randn(2, 3, 6) * 3):requires_grad(true)
    assert.is_true(gradcheck(function(a, b)
      local _, score = F.product_key_select(a, b, 4)
      return score
    end, { s1, s2 }, { eps = 1e-3, atol = 2e-3, rtol = 1e-2 }))
  end)
end)

describe("seqnn.F.product_key_gather", function()
  it("matches a plain-Lua weighted sum and finite differences", function()
    sn.manual_seed(7)
    local V, w = sn.randn(9, 5):requires_grad(true), sn.randn(3, 4):requires_grad(true)
    local idx = sn.tensor({ { 0, 3, 3, 8 }, { 1, 2, 4, 0 }, { 8, 8, 8, 7 } }, "i64")
    local y = F.product_key_gather(V, idx, w)
    local Vt, wt, it = V:totable(), w:totable(), idx:totable()
    for n = 1, 3 do
      for d = 1, 5 do
        local s = 0
        for j = 1, 4 do s = s + wt[n][j] * Vt[it[n][j] + 1][d] end
        assert.is_true(math.abs(y[n][d] - s) < 1e-5)
      end
    end
    assert.is_true(gradcheck(function(v, ww) return F.product_key_gather(v, idx, ww) end, { V, w },
      { eps = 1e-2, atol = 2e-3, rtol = 1e-2 }))
  end)

  it("gives the values a row-sparse gradient of the rows read, each once", function()
    sn.manual_seed(8)
    local V = sn.randn(20, 3):requires_grad(true)
    local idx = sn.tensor({ { 4, 1, 4 }, { 19, 1, 0 } }, "i64")
    local w, g = sn.randn(2, 3), sn.randn(2, 3)
    F.product_key_gather(V, idx, w):backward(g)
    local grad = V.grad
    assert.is_true(sn.autograd.is_sparse(grad))
    assert.are.same({ 0, 1, 4, 19 }, flat(grad.rows))
    assert.are.same({ 4, 3 }, grad.values:shape())
    -- the dense gradient, by the same function through a dense path (one-hot matmul)
    local onehot = sn.zeros(2, 3, 20)
    for n = 1, 2 do for j = 1, 3 do onehot[n][j][idx[n][j] + 1] = 1 end end
    local want = sn.matmul((onehot * w:reshape(2, 3, 1)):reshape(6, 20):t(), (g:reshape(2, 1, 3) * sn.ones(2, 3, 1)):reshape(6, 3))
    close(grad:to_dense(), want, 1e-5)
  end)

  it("accumulates sparse + sparse (coalesced) and sparse + dense (densified)", function()
    sn.manual_seed(9)
    local V = sn.randn(10, 4):requires_grad(true)
    local i1, i2 = sn.tensor({ { 1, 5 } }, "i64"), sn.tensor({ { 5, 7 } }, "i64")
    local w1, w2 = sn.randn(1, 2), sn.randn(1, 2)
    F.product_key_gather(V, i1, w1):sum():backward()
    local first = V.grad:to_dense()
    F.product_key_gather(V, i2, w2):sum():backward()
    assert.is_true(sn.autograd.is_sparse(V.grad))
    assert.are.same({ 1, 5, 7 }, flat(V.grad.rows))
    V.grad = nil
    F.product_key_gather(V, i2, w2):sum():backward()
    local second = V.grad:to_dense()
    V.grad = nil
    F.product_key_gather(V, i1, w1):sum():backward()
    F.product_key_gather(V, i2, w2):sum():backward()
    close(V.grad:to_dense(), first + second, 1e-6)
    -- meets a dense gradient of the same leaf in one graph
    V.grad = nil
    local loss = F.product_key_gather(V, i1, w1):sum() + (V * V):sum()
    loss:backward()
    assert.is_false(sn.autograd.is_sparse(V.grad))
    close(V.grad, first + V * 2, 1e-5)
  end)
end)

describe("seqnn.F.product_key_lookup", function()
  it("matches finite differences through queries, keys and values", function()
    sn.manual_seed(11)
    local q = sn.randn(3, 2, 4):requires_grad(true)
    local keys = sn.randn(2, 2, 5, 2):requires_grad(true)
    local values = sn.randn(25, 3):requires_grad(true)
    assert.is_true(gradcheck(function(a, b, c) return F.product_key_lookup(a, b, c, 3) end, { q, keys, values },
      { eps = 1e-3, atol = 3e-3, rtol = 2e-2 }))
  end)
end)

describe("seqnn.nn.ProductKeyMemory", function()
  it("maps (B, T, d_in) to (B, T, d_out); the query path matches finite differences", function()
    sn.manual_seed(12)
    for _, norm in ipairs({ "batchnorm", "layernorm", "none" }) do
      local m = nn.ProductKeyMemory(6, 5, { n_keys = 4, k_dim = 4, heads = 2, knn = 2, query_norm = norm })
      local x = sn.randn(2, 3, 6)
      assert.are.same({ 2, 3, 5 }, m(x):shape())
      assert.is_true(gradcheck(function() return m(x) end, { m.query.weight, m.values },
        { eps = 1e-3, atol = 5e-3, rtol = 3e-2, max_checks = 40 }))
    end
  end)

  it("trains: the loss falls with AdamW, the values updated lazily", function()
    sn.manual_seed(13)
    local m = nn.ProductKeyMemory(8, 4, { n_keys = 8, k_dim = 8, heads = 2, knn = 4 })
    local x, target = sn.randn(16, 8), sn.randn(16, 4)
    local opt = optim.AdamW(m:parameters(), { lr = 3e-2, weight_decay = 0 })
    local first, last
    for step = 1, 40 do
      local loss = F.mse_loss(m(x), target)
      if step == 1 then first = loss:item() end
      last = loss:item()
      loss:backward()
      assert.is_true(sn.autograd.is_sparse(m.values.grad))
      opt:step()
      opt:zero_grad()
    end
    assert.is_true(last < 0.6 * first, ("loss %g -> %g"):format(first, last))
    local s = opt.state[m.values]
    assert.are.equal("i64", s.row_step:dtype())
    assert.is_true(s.row_step:max():item() <= 40)
    -- eval mode reads the running statistics the training steps gathered
    assert.are_not.same(flat(sn.ones(16)), flat(m.running_var))
    m:eval()
    local y = m(x)
    assert.are.same({ 16, 4 }, y:shape())
    assert.is_true(F.mse_loss(y, target):item() < first)
  end)
end)

describe("lazy AdamW and SGD on row-sparse gradients", function()
  local function sparse(rows, values, shape)
    return sn.autograd.row_sparse(sn.tensor(rows, "i64"), values, shape)
  end

  it("AdamW: rows touched every step match the dense step; others keep their values and moments", function()
    sn.manual_seed(21)
    local p1, p2 = sn.randn(6, 3), nil
    p2 = p1:clone()
    local a = optim.AdamW({ p1 }, { lr = 0.1, weight_decay = 0.1 })
    local b = optim.AdamW({ p2 }, { lr = 0.1, weight_decay = 0.1 })
    for step = 1, 3 do
      local g = sn.randn(6, 3)
      p1.grad = sparse({ 0, 1, 2, 3, 4, 5 }, g:clone(), { 6, 3 })
      p2.grad = g
      a:step(); b:step()
    end
    close(p1, p2, 1e-6)
    close(a.state[p1].exp_avg_sq, b.state[p2].exp_avg_sq, 1e-6)
    local before, m_before = p1:clone(), a.state[p1].exp_avg:clone()
    p1.grad = sparse({ 4, 1, 4 }, sn.randn(3, 3), { 6, 3 })
    a:step()
    assert.are.same({ 3, 4, 3, 3, 4, 3 }, flat(a.state[p1].row_step)) -- duplicates merged: one step
    for _, r in ipairs({ 1, 3, 4, 6 }) do
      assert.are.same(flat(before[r]), flat(p1[r]))
      assert.are.same(flat(m_before[r]), flat(a.state[p1].exp_avg[r]))
    end
    assert.are_not.same(flat(before[2]), flat(p1[2]))
  end)

  it("SGD with momentum: full rows match the dense step, untouched rows stay", function()
    sn.manual_seed(22)
    local p1 = sn.randn(5, 2)
    local p2 = p1:clone()
    local a = optim.SGD({ p1 }, { lr = 0.1, momentum = 0.9, weight_decay = 0.01 })
    local b = optim.SGD({ p2 }, { lr = 0.1, momentum = 0.9, weight_decay = 0.01 })
    for _ = 1, 3 do
      local g = sn.randn(5, 2)
      p1.grad, p2.grad = sparse({ 0, 1, 2, 3, 4 }, g:clone(), { 5, 2 }), g
      a:step(); b:step()
    end
    close(p1, p2, 1e-6)
    local before = p1:clone()
    p1.grad = sparse({ 2 }, sn.randn(1, 2), { 5, 2 })
    a:step()
    assert.are.same(flat(before[1]), flat(p1[1]))
    assert.are_not.same(flat(before[3]), flat(p1[3]))
    local plain = optim.SGD({ p1 }, { lr = 0.1 })
    p1.grad = sparse({ 0 }, sn.ones(1, 2), { 5, 2 })
    local row = flat(p1[1])
    plain:step()
    close(p1[1], sn.tensor(row) - 0.1, 1e-6)
  end)

  it("clip_grad_norm takes the norm of the sparse values and scales them", function()
    local p, q = sn.zeros(4, 2), sn.zeros(3)
    p.grad = sparse({ 1, 3 }, sn.tensor({ { 3, 0 }, { 0, 4 } }), { 4, 2 })
    q.grad = sn.tensor({ 0, 0, 12 })
    local norm = optim.clip_grad_norm({ p, q }, 6.5)
    assert.is_true(math.abs(norm - 13) < 1e-5)
    close(p.grad.values, sn.tensor({ { 1.5, 0 }, { 0, 2 } }), 1e-5)
  end)

  it("state_dict round-trips the per-row steps through a safetensors file", function()
    sn.manual_seed(23)
    local function run(opt, p, steps)
      for s = 1, steps do
        sn.manual_seed(100 + s)
        p.grad = sparse({ s % 4, (s * 3) % 4 == s % 4 and 0 or (s * 3) % 4 }, sn.randn(2, 3), { 4, 3 })
        opt:step()
      end
    end
    local p = sn.randn(4, 3)
    local opt = optim.AdamW({ p }, { lr = 0.05 })
    run(opt, p, 3)
    local tensors, numbers = opt:state_dict()
    assert.are.equal("i64", tensors["1.row_step"]:dtype())
    local path = os.tmpname()
    local meta = {}
    for k, v in pairs(numbers) do meta[k] = ("%.17g"):format(v) end
    sn.save(path, tensors, meta)
    local t2, m2 = sn.load(path)
    os.remove(path)
    local p2 = p:clone()
    local opt2 = optim.AdamW({ p2 }, { lr = 0.05 })
    opt2:load_state_dict(t2, m2)
    assert.are.same(flat(opt.state[p].row_step), flat(opt2.state[p2].row_step))
    run(opt, p, 2)
    run(opt2, p2, 2)
    assert.are.same(flat(p), flat(p2))
    assert.has_error(function()
      opt2:load_state_dict({ ["1.exp_avg"] = sn.zeros(4, 3), ["1.exp_avg_sq"] = sn.zeros(4, 3),
        ["1.row_step"] = sn.zeros(5, "i64") }, numbers)
    end)
  end)
end)

describe("product-key memory bad input", function()
  it("names the function, the argument and the shapes", function()
    has(err_of(function() nn.ProductKeyMemory(8, 4, { n_keys = 4, knn = 5 }) end), "knn = 5 must be <= n_keys = 4")
    has(err_of(function() nn.ProductKeyMemory(8, 4, { k_dim = 7 }) end), "k_dim must be even")
    has(err_of(function() nn.ProductKeyMemory(8, 4, { heads = 0 }) end), "heads must be a positive integer")
    has(err_of(function() nn.ProductKeyMemory(8, 4, { nkeys = 4 }) end), "unknown option 'nkeys'")
    has(err_of(function() nn.ProductKeyMemory(8, 4, { query_norm = "rms" }) end), "query_norm must be")
    has(err_of(function() nn.ProductKeyMemory(8, 4, { n_keys = 1 << 20, knn = 4 }) end), "too many")
    has(err_of(function() nn.ProductKeyMemory(0, 4) end), "d_in must be a positive integer")
    local m = nn.ProductKeyMemory(8, 4, { n_keys = 4, k_dim = 4, heads = 1, knn = 2 })
    has(err_of(function() m(sn.randn(2, 7)) end), "seqnn.nn.ProductKeyMemory: x must be (..., 8), got 2x7")
    has(err_of(function() m(sn.zeros({ 2, 8 }, "i64")) end), "f32")

    has(err_of(function() F.product_key_select(sn.randn(2, 4), sn.randn(2, 4), 5) end),
      "seqnn.F.product_key_select: knn = 5 must be in [1, 4], the number of sub-keys (s1: 2x4)")
    has(err_of(function() F.product_key_select(sn.randn(2, 4), sn.randn(2, 5), 2) end),
      "s1 and s2 must have the same shape (s1: 2x4, s2: 2x5)")
    has(err_of(function() F.product_key_select(sn.randn(2, 4), nil, 2) end), "bad argument #2 's2'")
    has(err_of(function() F.product_key_topk(sn.randn(3), 0) end), "k = 0 must be in [1, 3]")
    has(err_of(function() F.product_key_topk(sn.zeros({ 3 }, "i64"), 1) end), "scores")

    local V = sn.randn(6, 2)
    has(err_of(function() F.product_key_gather(V, sn.tensor({ { 0, 6 } }, "i64"), sn.ones(1, 2)) end),
      "seqnn.F.product_key_gather: idx[0][1] = 6 is outside the 6 value rows")
    has(err_of(function() F.product_key_gather(V, sn.tensor({ { 0, 1 } }), sn.ones(1, 2)) end), "idx")
    has(err_of(function() F.product_key_gather(V, sn.tensor({ { 0, 1 } }, "i64"), sn.ones(1, 3)) end),
      "idx and w must have the same shape (idx: 1x2, w: 1x3)")
    has(err_of(function() F.product_key_gather(sn.randn(6), sn.tensor({ { 0 } }, "i64"), sn.ones(1, 1)) end),
      "values must be (slots, D), got 6")
    has(err_of(function() F.product_key_lookup(sn.randn(3, 2, 4), sn.randn(2, 2, 5, 3), sn.randn(25, 3), 2) end),
      "keys must be (H, 2, n, k_dim/2) = (2, 2, n, 2)")
    has(err_of(function() F.product_key_lookup(sn.randn(3, 2, 4), sn.randn(2, 2, 5, 2), sn.randn(24, 3), 2) end),
      "values must be (n^2, D) = (25, D)")
    has(err_of(function() F.product_key_lookup(sn.randn(3, 2, 4), sn.randn(2, 2, 5, 2), sn.randn(25, 3), 6) end),
      "knn must be an integer in [1, 5]")

    local p = sn.randn(4, 2)
    local opt = optim.AdamW({ p })
    p.grad = sn.autograd.row_sparse(sn.tensor({ 4 }, "i64"), sn.ones(1, 2), { 4, 2 })
    has(err_of(function() opt:step() end), "seqnn.optim.AdamW: rows[0] = 4 is outside the 4 rows of the parameter")
    p.grad = sn.autograd.row_sparse(sn.tensor({ 1 }, "i64"), sn.ones(1, 3), { 4, 2 })
    has(err_of(function() opt:step() end), "the gradient's values must be 1 rows of 2")
  end)
end)

describe("mlp = 'pkm' in sn.models.LM", function()
  it("puts a product-key memory in each block's FFN, trains with a row-sparse value gradient", function()
    sn.manual_seed(21)
    local lm = sn.models.LM{ vocab = 11, d = 32, layers = 2, heads = 2, context = 32, mlp = "pkm", pkm_keys = 16,
      pkm_heads = 2, pkm_knn = 4, pkm_k_dim = 16 }
    local mem = lm.blocks[1].mlp
    assert.are.equal("seqnn.nn.ProductKeyMemory", mem.__name)
    assert.are.same({ 16, 2, 4, 16 }, { mem.n_keys, mem.heads, mem.knn, mem.k_dim })
    local pattern = {}
    for i = 1, 2 * 24 do pattern[i] = (i * 5) % 11 end
    local ids = sn.tensor(pattern, "i64"):view(2, 24)
    local x, y = ids:narrow(2, 1, 23), ids:narrow(2, 2, 23)
    local opt = optim.AdamW(lm:parameters(), { lr = 1e-2 })
    local first, last
    for step = 1, 30 do
      local loss = F.cross_entropy(lm(x), y)
      loss:backward()
      if step == 1 then
        first = loss:item()
        assert.is_true(sn.autograd.is_sparse(mem.values.grad))
        assert.is_true(mem.values.grad.rows:numel() < 256)
      end
      last = loss:item()
      opt:step()
      opt:zero_grad()
    end
    assert.is_true(last < 0.5 * first, ("loss %g -> %g"):format(first, last))
    assert.has_error(function() sn.models.LM{ vocab = 11, d = 32, layers = 1, mlp = "pkm", pkm_knn = 300 } end,
      "seqnn.nn.ProductKeyMemory: knn = 300 must be <= n_keys = 256")
  end)
end)
