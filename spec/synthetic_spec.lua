-- sn.data.SelectiveCopying and sn.data.InductionHeads: the synthetic tasks of the Mamba paper
-- (section 4.1). Every property is checked on the generated tensors in plain Lua.
local sn = require "seqnn"
local D = sn.data

local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local raises = helpers.raises_in("synthetic_spec.lua")
local err_of = helpers.err_of

local IGNORE = -100

local function rows_of(t) return t:totable() end

-- One-hot logits (B, T, V) that predict y wherever y is scored (zeros elsewhere).
local function perfect_logits(y, V)
  local B, T = y:size(1), y:size(2)
  local yt = y:totable()
  local logits = sn.zeros(B, T, V)
  for b = 1, B do
    for t = 1, T do
      if yt[b][t] ~= IGNORE then logits[b][t][yt[b][t] + 1] = 1 end
    end
  end
  return logits, yt
end

local function count_scored(yt)
  local n = 0
  for _, row in ipairs(yt) do for _, v in ipairs(row) do if v ~= IGNORE then n = n + 1 end end end
  return n
end

describe("seqnn.data.SelectiveCopying", function()
  it("has the documented defaults and id scheme", function()
    local ds = D.SelectiveCopying()
    assert.are.equal(256, ds.length)
    assert.are.equal(16, ds.n_tokens)
    assert.are.equal(16, ds.vocab)
    assert.are.equal(18, ds.vocab_size)
    assert.are.equal(0, ds.noise)
    assert.are.equal(17, ds.marker)
    assert.are.equal(256 + 16, ds.seq)
    assert.are.equal(1 / 16, ds.chance)
    assert.is_true(sn.class.is_instance(ds, D.Dataset))
    local custom = D.SelectiveCopying{ length = 100, n_tokens = 5, vocab = 7 }
    assert.are.equal(9, custom.vocab_size)
    assert.are.equal(8, custom.marker)
    assert.are.equal(105, custom.seq)
    assert.are.equal("string", type(custom:describe()))
    assert.is_nil(custom:describe():find("\n"))
    assert.is_truthy(custom:describe():find("vocab_size 9", 1, true))
    assert.is_truthy(tostring(custom):find("seqnn.data.SelectiveCopying", 1, true))
  end)

  it("gives (B, length + n_tokens) i64 x and y, with batch(B) or batch(split, B)", function()
    local ds = D.SelectiveCopying{ length = 40, n_tokens = 6, vocab = 5 }
    for _, args in ipairs({ { 3 }, { "train", 3 }, { "val", 3 } }) do
      local x, y, positions = ds:batch(table.unpack(args))
      assert.are.same({ 3, 46 }, x:shape())
      assert.are.same({ 3, 46 }, y:shape())
      assert.are.equal("i64", x:dtype())
      assert.are.equal("i64", y:dtype())
      assert.are.equal(3, #positions)
    end
    local x, y = ds:batch(1)
    assert.are.same({ 1, 46 }, x:shape())
    assert.are.same({ 1, 46 }, y:shape())
  end)

  it("hides the data tokens among noise and asks for them, in order, at the markers", function()
    local L, n, V = 50, 7, 6
    local ds = D.SelectiveCopying{ length = L, n_tokens = n, vocab = V }
    sn.manual_seed(3)
    local x, y, positions = ds:batch(32)
    local xt, yt = rows_of(x), rows_of(y)
    local seen = {}
    for b = 1, 32 do
      local data, where = {}, {}
      for t = 1, L do
        local v = xt[b][t]
        assert.is_true(v >= 0 and v <= V) -- noise or a data symbol, never a marker
        if v ~= 0 then data[#data + 1], where[#where + 1] = v, t; seen[v] = true end
        assert.are.equal(IGNORE, yt[b][t]) -- nothing scored in the data region
      end
      assert.are.equal(n, #data)
      assert.are.same(where, positions[b]) -- the claimed positions, sorted
      for k = 1, n do
        assert.are.equal(ds.marker, xt[b][L + k])
        assert.are.equal(data[k], yt[b][L + k]) -- the k-th marker answers the k-th token
      end
    end
    for v = 1, V do assert.is_true(seen[v], "symbol " .. v .. " never drawn") end
  end)

  it("places the tokens at random positions, different per row and uniform", function()
    local ds = D.SelectiveCopying{ length = 64, n_tokens = 4 }
    sn.manual_seed(11)
    local _, _, positions = ds:batch(16)
    local distinct = {}
    for b = 1, 16 do distinct[table.concat(positions[b], ",")] = true end
    local count = 0
    for _ in pairs(distinct) do count = count + 1 end
    assert.is_true(count >= 15, "rows share their positions: " .. count .. " distinct of 16")

    -- Every position of the region is equally likely: 3 of 8 positions, 4000 rows.
    local small = D.SelectiveCopying{ length = 8, n_tokens = 3, vocab = 2 }
    local hits, pairs_seen = {}, {}
    for t = 1, 8 do hits[t] = 0 end
    for _ = 1, 4 do
      local _, _, pos = small:batch(1000)
      for _, p in ipairs(pos) do
        assert.is_true(p[1] < p[2] and p[2] < p[3]) -- distinct and sorted
        for _, t in ipairs(p) do hits[t] = hits[t] + 1 end
        pairs_seen[table.concat(p, ",")] = true
      end
    end
    for t = 1, 8 do
      assert.is_true(math.abs(hits[t] - 1500) < 150, ("position %d drawn %d times, expected ~1500"):format(t, hits[t]))
    end
    local subsets = 0
    for _ in pairs(pairs_seen) do subsets = subsets + 1 end
    assert.are.equal(56, subsets) -- all C(8,3) subsets occur

    -- n_tokens = length: every position holds a data token (the dense path).
    local full = D.SelectiveCopying{ length = 12, n_tokens = 12, vocab = 3 }
    local x, _, pos = full:batch(2)
    for b = 1, 2 do
      assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, pos[b])
      for t = 1, 12 do assert.is_true(x[b][t] >= 1) end
    end
  end)

  it("is reproducible with sn.manual_seed and differs across seeds", function()
    local ds = D.SelectiveCopying{ length = 30, n_tokens = 5 }
    sn.manual_seed(42)
    local x1, y1 = ds:batch(4)
    sn.manual_seed(42)
    local x2, y2 = ds:batch(4)
    assert.are.same(x1:totable(), x2:totable())
    assert.are.same(y1:totable(), y2:totable())
    sn.manual_seed(43)
    local x3 = ds:batch(4)
    assert.are_not.same(x1:totable(), x3:totable())
  end)

  it("generates a 64 x 4096 batch well under a second", function()
    local ds = D.SelectiveCopying{ length = 4096 }
    local t0 = sn.clock()
    local x = ds:batch(64)
    assert.is_true(sn.clock() - t0 < 0.5)
    assert.are.same({ 64, 4096 + 16 }, x:shape())
  end)

  it("scores per-token accuracy of the copied tokens", function()
    local ds = D.SelectiveCopying{ length = 20, n_tokens = 4, vocab = 6 }
    sn.manual_seed(5)
    local _, y = ds:batch(8)
    local logits, yt = perfect_logits(y, ds.vocab_size)
    local acc, count = ds:accuracy(logits, y)
    assert.are.equal(1, acc)
    assert.are.equal("float", math.type(acc))
    assert.are.equal(32, count)
    -- One copied token wrong: 31 / 32.
    local T = ds.seq
    local wrong = (yt[1][T] + 1) % ds.vocab_size
    logits[1][T]:zero_()
    logits[1][T][wrong + 1] = 1
    assert.are.equal(31 / 32, (ds:accuracy(logits, y)))
    -- Flat (N, V) logits with (N) targets.
    assert.are.equal(31 / 32, (ds:accuracy(logits:view(8 * T, ds.vocab_size), y:view(8 * T))))
    -- Logits that require grad are fine.
    assert.are.equal(31 / 32, (ds:accuracy(logits:clone():requires_grad(), y)))
  end)

  it("gives about chance accuracy for random logits", function()
    local ds = D.SelectiveCopying{ length = 32, n_tokens = 16 }
    sn.manual_seed(9)
    local _, y = ds:batch(256)
    local acc, count = ds:accuracy(sn.randn(256, ds.seq, ds.vocab_size), y)
    assert.are.equal(4096, count)
    -- argmax is uniform over vocab_size ids: 1/18 (standard deviation 0.0036 here)
    assert.is_true(math.abs(acc - 1 / ds.vocab_size) < 0.02, "accuracy " .. acc)
  end)

  it("rejects bad options and arguments with clear errors", function()
    local fn = "seqnn.data.SelectiveCopying"
    raises(function() local _ = D.SelectiveCopying{ n_tokens = 0 } end,
      fn .. ": n_tokens must be a positive integer <= length (256), got 0")
    raises(function() local _ = D.SelectiveCopying{ length = 10, n_tokens = 11 } end,
      fn .. ": n_tokens must be a positive integer <= length (10), got 11")
    raises(function() local _ = D.SelectiveCopying{ n_tokens = 2.5 } end,
      fn .. ": n_tokens must be a positive integer <= length (256), got 2.5")
    raises(function() local _ = D.SelectiveCopying{ length = 0 } end,
      fn .. ": length must be a positive integer, got 0")
    raises(function() local _ = D.SelectiveCopying{ length = "big" } end,
      fn .. ": length must be a positive integer, got big")
    raises(function() local _ = D.SelectiveCopying{ vocab = -1 } end,
      fn .. ": vocab must be a positive integer, got -1")
    raises(function() local _ = D.SelectiveCopying{ lenght = 100 } end,
      fn .. ": unknown option lenght (options: length, n_tokens, vocab)")
    raises(function() local _ = D.SelectiveCopying(100) end,
      fn .. ": expected a table of options {length =, n_tokens =, vocab =}, got number")
    local ds = D.SelectiveCopying{ length = 10, n_tokens = 2 }
    raises(function() local _ = ds:batch(0) end, fn .. ":batch: B must be a positive integer, got 0")
    raises(function() local _ = ds:batch() end, fn .. ":batch: B must be a positive integer, got nil")
    raises(function() local _ = ds:batch("test", 2) end,
      fn .. ":batch: split must be \"train\" or \"val\", got test")
    local _, y = ds:batch(2)
    raises(function() local _ = ds:accuracy(sn.randn(2, 11, 4), y) end,
      fn .. ":accuracy: logits must be (B, T, V) for y (B, T) or (N, V) for y (N), got logits 2x11x4 and y 2x12")
    raises(function() local _ = ds:accuracy(sn.randn(2, 12, 4), y:float()) end,
      fn .. ":accuracy: y must be an i64 tensor, got f32")
    raises(function() local _ = ds:accuracy(nil, y) end, fn .. ":accuracy: logits must be a tensor, got nil")
    raises(function() local _ = ds:accuracy(sn.randn(2, 12, 4), sn.full({ 2, 12 }, -100, "i64")) end,
      fn .. ":accuracy: y has no scored positions (every target is -100)")
  end)
end)

describe("seqnn.data.InductionHeads", function()
  it("has the documented defaults and id scheme", function()
    local ds = D.InductionHeads()
    assert.are.equal(256, ds.length)
    assert.are.equal(16, ds.vocab)
    assert.are.equal(16, ds.trigger)
    assert.are.equal(17, ds.vocab_size)
    assert.are.equal(256, ds.seq)
    assert.are.equal(1 / 16, ds.chance)
    assert.is_true(sn.class.is_instance(ds, D.Dataset))
    local custom = D.InductionHeads{ length = 3, vocab = 2 }
    assert.are.equal(3, custom.vocab_size)
    assert.is_nil(custom:describe():find("\n"))
    assert.is_truthy(custom:describe():find("vocab_size 3", 1, true))
    assert.is_truthy(tostring(custom):find("seqnn.data.InductionHeads", 1, true))
  end)

  it("gives (B, length) i64 x and y, with batch(B) or batch(split, B)", function()
    local ds = D.InductionHeads{ length = 20 }
    for _, args in ipairs({ { 5 }, { "train", 5 }, { "val", 5 } }) do
      local x, y, positions = ds:batch(table.unpack(args))
      assert.are.same({ 5, 20 }, x:shape())
      assert.are.same({ 5, 20 }, y:shape())
      assert.are.equal("i64", x:dtype())
      assert.are.equal("i64", y:dtype())
      assert.are.equal(5, #positions)
    end
  end)

  it("asks at the final trigger for the token after the first one", function()
    local L, V = 24, 5
    local ds = D.InductionHeads{ length = L, vocab = V }
    sn.manual_seed(8)
    local x, y, positions = ds:batch(64)
    local xt, yt = rows_of(x), rows_of(y)
    local distinct = {}
    for b = 1, 64 do
      local p, triggers = positions[b], {}
      assert.is_true(math.type(p) == "integer" and p >= 1 and p <= L - 2)
      distinct[p] = true
      for t = 1, L do
        local v = xt[b][t]
        assert.is_true(v >= 0 and v <= V)
        if v == ds.trigger then triggers[#triggers + 1] = t end
        if t < L then assert.are.equal(IGNORE, yt[b][t]) end
      end
      assert.are.same({ p, L }, triggers) -- exactly twice: where claimed, and last
      assert.are.equal(xt[b][p + 1], yt[b][L])
      assert.is_true(yt[b][L] >= 0 and yt[b][L] < V)
    end
    local count = 0
    for _ in pairs(distinct) do count = count + 1 end
    assert.is_true(count >= 12, "the first trigger is not at random positions")

    -- The smallest length: trigger, answer, trigger.
    local tiny = D.InductionHeads{ length = 3, vocab = 4 }
    local tx, ty, tp = tiny:batch(10)
    for b = 1, 10 do
      assert.are.equal(1, tp[b])
      assert.are.equal(4, tx[b][1])
      assert.are.equal(4, tx[b][3])
      assert.are.equal(tx[b][2], ty[b][3])
    end
  end)

  it("works at 16 times the training length", function()
    local ds = D.InductionHeads{ length = 4096 }
    sn.manual_seed(2)
    local t0 = sn.clock()
    local x, y, positions = ds:batch(64)
    assert.is_true(sn.clock() - t0 < 0.5)
    assert.are.same({ 64, 4096 }, x:shape())
    local far = false
    for b = 1, 64 do
      assert.are.equal(ds.trigger, x[b][positions[b]])
      assert.are.equal(ds.trigger, x[b][4096])
      assert.are.equal(x[b][positions[b] + 1], y[b][4096])
      far = far or positions[b] > 2048
    end
    assert.is_true(far)
  end)

  it("is reproducible with sn.manual_seed and differs across seeds", function()
    local ds = D.InductionHeads{ length = 30 }
    sn.manual_seed(42)
    local x1, y1, p1 = ds:batch(4)
    sn.manual_seed(42)
    local x2, y2, p2 = ds:batch(4)
    assert.are.same(x1:totable(), x2:totable())
    assert.are.same(y1:totable(), y2:totable())
    assert.are.same(p1, p2)
    sn.manual_seed(43)
    local x3 = ds:batch(4)
    assert.are_not.same(x1:totable(), x3:totable())
  end)

  it("scores the accuracy at the final position", function()
    local ds = D.InductionHeads{ length = 12, vocab = 6 }
    sn.manual_seed(4)
    local _, y = ds:batch(10)
    local logits, yt = perfect_logits(y, ds.vocab_size)
    assert.are.equal(10, count_scored(yt))
    local acc, count = ds:accuracy(logits, y)
    assert.are.equal(1, acc)
    assert.are.equal(10, count)
    -- Wrong predictions elsewhere do not count; a wrong final answer does.
    logits[3][1][1] = 100
    assert.are.equal(1, (ds:accuracy(logits, y)))
    logits[3][12]:zero_()
    logits[3][12][(yt[3][12] + 1) % ds.vocab_size + 1] = 1
    assert.are.equal(0.9, (ds:accuracy(logits, y)))
  end)

  it("gives about chance accuracy for random logits", function()
    local ds = D.InductionHeads{ length = 16 }
    sn.manual_seed(10)
    local _, y = ds:batch(4096)
    local acc, count = ds:accuracy(sn.randn(4096, 16, ds.vocab_size), y)
    assert.are.equal(4096, count)
    -- argmax is uniform over vocab_size ids: 1/17 (standard deviation 0.0037 here)
    assert.is_true(math.abs(acc - 1 / ds.vocab_size) < 0.02, "accuracy " .. acc)
  end)

  it("rejects bad options and arguments with clear errors", function()
    local fn = "seqnn.data.InductionHeads"
    raises(function() local _ = D.InductionHeads{ length = 2 } end,
      fn .. ": length must be an integer >= 3 (trigger, answer, trigger), got 2")
    raises(function() local _ = D.InductionHeads{ length = 256.0 } end,
      fn .. ": length must be an integer >= 3 (trigger, answer, trigger), got 256.0")
    raises(function() local _ = D.InductionHeads{ vocab = 0 } end,
      fn .. ": vocab must be a positive integer, got 0")
    raises(function() local _ = D.InductionHeads{ n_tokens = 4 } end,
      fn .. ": unknown option n_tokens (options: length, vocab)")
    raises(function() local _ = D.InductionHeads("x") end,
      fn .. ": expected a table of options {length =, vocab =}, got string")
    local ds = D.InductionHeads{ length = 8 }
    raises(function() local _ = ds:batch(-3) end, fn .. ":batch: B must be a positive integer, got -3")
    raises(function() local _ = ds:batch("train") end, fn .. ":batch: B must be a positive integer, got nil")
    raises(function() local _ = ds:batch("eval", 1) end,
      fn .. ":batch: split must be \"train\" or \"val\", got eval")
    local _, y = ds:batch(2)
    raises(function() local _ = ds:accuracy(sn.randn(2, 17), y) end,
      fn .. ":accuracy: logits must be (B, T, V) for y (B, T) or (N, V) for y (N), got logits 2x17 and y 2x8")
    assert.is_truthy(err_of(function() return ds:accuracy(y, sn.randn(2, 8)) end):find("y must be an i64 tensor"))
  end)
end)

describe("ds:evaluate", function()
  it("averages a model's accuracy over fresh batches, and names a bad count", function()
    sn.manual_seed(2)
    local zeros = function(x) return sn.zeros(x:size(1), x:size(2), 8) end -- always predicts id 0
    -- one symbol: every answer is id 0; selective copying's data ids start at 1
    assert.are.equal(1, D.InductionHeads{ length = 8, vocab = 1 }:evaluate(zeros, 3, 4))
    assert.are.equal(0, D.SelectiveCopying{ length = 8, n_tokens = 2, vocab = 4 }:evaluate(zeros, 2, 4))
    assert.are.equal(0, D.MQAR{ length = 16, pairs = 2, vocab = 8 }:evaluate(zeros, 2, 4))
    raises(function() local _ = D.MQAR{}:evaluate(zeros, 0, 4) end,
      "seqnn.data.MQAR:evaluate: batches must be a positive integer, got 0")
  end)
end)

describe("synthetic tasks with sn.train.fit", function()
  it("serve as samplers: a few steps of training run and the loss is finite", function()
    local ds = D.InductionHeads{ length = 16, vocab = 4 }
    sn.manual_seed(1)
    local model = sn.nn.Sequential(sn.nn.Embedding(ds.vocab_size, 8), sn.nn.Linear(8, ds.vocab_size))
    local summary = sn.train.fit{ model = model, optimizer = sn.optim.AdamW(model:parameters(), { lr = 1e-2 }),
      data = ds, steps = 3, batch = 4, eval_batches = 1, quiet = true }
    assert.are.equal(3, summary.step)
    assert.is_true(summary.loss == summary.loss and summary.val_loss == summary.val_loss)
  end)
end)
