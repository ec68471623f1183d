-- Sequence models: sn.F.rope, sn.nn.MultiheadAttention / TransformerBlock / KVCache,
-- sn.models.LM and its mixer registry, sn.generate. Decoding through the caches must give
-- the logits of the full forward, token by token.
local sn = require "seqnn"
local gradcheck = sn.autograd.gradcheck
local GC = { eps = 1e-2, atol = 3e-3, rtol = 2e-2 } -- f32: a large finite-difference step

local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

local function has(msg, text) assert.is_truthy(msg:find(text, 1, true), ("%q does not contain %q"):format(msg, text)) end

local function max_diff(a, b) return (a - b):abs():max():item() end

describe("seqnn.F.rope", function()
  it("matches the rotate_half formula, position 0 unchanged", function()
    sn.manual_seed(1)
    local x = sn.randn(1, 3, 2, 4)
    local y = sn.F.rope(x, { offset = 5, base = 100 })
    for t = 1, 3 do
      for h = 1, 2 do
        for i = 1, 2 do
          local a = (5 + t - 1) * 100 ^ (-2 * (i - 1) / 4)
          local x1, x2 = x[1][t][h][i], x[1][t][h][i + 2]
          assert.is_near(x1 * math.cos(a) - x2 * math.sin(a), y[1][t][h][i], 1e-5)
          assert.is_near(x1 * math.sin(a) + x2 * math.cos(a), y[1][t][h][i + 2], 1e-5)
        end
      end
    end
    assert.is_true(sn.allclose(sn.F.rope(x):narrow(2, 1, 1), x:narrow(2, 1, 1)))
  end)

  it("matches finite differences", function()
    sn.manual_seed(2)
    local x = sn.randn(2, 3, 2, 6):requires_grad()
    assert.is_true(gradcheck(function(a) return sn.F.rope(a, { offset = 3 }) end, { x }, GC))
  end)

  it("is inverted by its backward (a rotation) and keeps norms", function()
    sn.manual_seed(3)
    local x = sn.randn(2, 7, 3, 8)
    local y = sn.F.rope(x, { offset = 11 })
    assert.is_true(max_diff(sn.core.k_rope_bwd(y, 11, 10000), x) < 1e-5)
    assert.is_near((x * x):sum():item(), (y * y):sum():item(), 1e-3)
  end)

  it("continues a sequence with offset, and reads strided views", function()
    sn.manual_seed(4)
    local x = sn.randn(2, 6, 2, 4)
    local full = sn.F.rope(x)
    assert.is_true(max_diff(sn.F.rope(x:narrow(2, 4, 3), { offset = 3 }), full:narrow(2, 4, 3)) < 1e-6)
    local qkv = sn.randn(2, 6, 5, 4)
    assert.is_true(max_diff(sn.F.rope(qkv:narrow(3, 2, 2)), sn.F.rope(qkv:narrow(3, 2, 2):contiguous())) == 0)
  end)

  it("rejects odd head dims and bad offsets, naming the shapes", function()
    has(err_of(function() sn.F.rope(sn.randn(2, 3, 4, 5)) end),
      "seqnn.F.rope: head dim Dh must be even (element i pairs with i + Dh/2), got 5 (x: 2x3x4x5)")
    has(err_of(function() sn.F.rope(sn.randn(2, 3, 4)) end), "seqnn.F.rope: x must be (B,T,H,Dh), got 2x3x4")
    has(err_of(function() sn.F.rope(sn.randn(1, 1, 1, 2), { offset = -1 }) end), "offset must be >= 0, got -1")
  end)
end)

describe("seqnn.nn.MultiheadAttention", function()
  it("matches finite differences, with GQA", function()
    sn.manual_seed(5)
    local m = sn.nn.MultiheadAttention(8, 4, { kv_heads = 2, bias = true })
    local x = sn.randn(2, 5, 8):requires_grad()
    assert.is_true(gradcheck(function(a, wq, wo) return m(a) end, { x, m.qkv.weight, m.proj.weight }, GC))
  end)

  it("is causal: a later token does not change earlier outputs", function()
    sn.manual_seed(6)
    local m = sn.nn.MultiheadAttention(8, 2)
    local x = sn.randn(1, 6, 8)
    local y1 = m(x)
    x[1][6] = 3
    local y2 = m(x)
    assert.is_true(max_diff(y1:narrow(2, 1, 5), y2:narrow(2, 1, 5)) < 1e-6)
    assert.is_true(max_diff(y1:narrow(2, 6, 1), y2:narrow(2, 6, 1)) > 1e-4)
  end)

  it("decodes through a KVCache as the full forward, with a window", function()
    sn.manual_seed(7)
    local m = sn.nn.MultiheadAttention(16, 4, { kv_heads = 1, window = 3 })
    local x = sn.randn(2, 9, 16)
    local full = m(x)
    local cache = m:init_cache(2, 9)
    sn.no_grad(function()
      assert.is_true(max_diff(m(x:narrow(2, 1, 4), cache), full:narrow(2, 1, 4)) < 1e-5)
      assert.is_true(max_diff(m(x:narrow(2, 5, 3), cache), full:narrow(2, 5, 3)) < 1e-5)
      for t = 8, 9 do assert.is_true(max_diff(m(x:narrow(2, t, 1), cache), full:narrow(2, t, 1)) < 1e-5) end
    end)
    assert.are.equal(9, cache.length)
    has(err_of(function() m(x:narrow(2, 1, 1), cache) end), "seqnn.nn.KVCache: full: 9 positions held, 1 more asked, room for 9")
  end)

  it("rejects bad configurations, naming the class", function()
    has(err_of(function() sn.nn.MultiheadAttention(10, 4) end), "seqnn.nn.MultiheadAttention: d = 10 is not divisible by heads = 4")
    has(err_of(function() sn.nn.MultiheadAttention(12, 4, { kv_heads = 3 }) end),
      "seqnn.nn.MultiheadAttention: heads = 4 is not a multiple of kv_heads = 3")
    has(err_of(function() sn.nn.MultiheadAttention(12, 4) end), "seqnn.nn.MultiheadAttention: rope needs an even head_dim")
    has(err_of(function() sn.nn.MultiheadAttention(8, 2)(sn.randn(2, 3, 4)) end),
      "seqnn.nn.MultiheadAttention: x must be (B,T,8), got 2x3x4")
  end)
end)

describe("seqnn.nn.TransformerBlock", function()
  it("builds swiglu / rmsnorm blocks and takes a mixer by name or as a module", function()
    sn.manual_seed(8)
    local b = sn.nn.TransformerBlock(16, 2, { mlp = "swiglu", norm = "rmsnorm", mixer = "attention", kv_heads = 1 })
    assert.are.equal("seqnn.nn.SwiGLU", b.mlp.__name)
    assert.are.equal("seqnn.nn.RMSNorm", b.norm1.__name)
    assert.are.equal(1, b.mixer.kv_heads)
    assert.are.same({ 2, 5, 16 }, b(sn.randn(2, 5, 16)):shape())
    local lin = sn.nn.Linear(16, 16)
    assert.are.equal(lin, sn.nn.TransformerBlock(16, 2, { mixer = lin }).mixer)
    has(err_of(function() sn.nn.TransformerBlock(16, 2, { mlp = "relu" }) end),
      "seqnn.nn.TransformerBlock: mlp must be 'gelu', 'swiglu', 'memory', 'pkm' or 'none', got relu")
    has(err_of(function() sn.nn.TransformerBlock(16, 2, { mixer = "nope" }) end),
      "seqnn.models.mixers: unknown mixer 'nope' (known: attention")
  end)
end)

describe("seqnn.models.LM", function()
  local function check_decoding(config)
    sn.manual_seed(9)
    local m = sn.models.LM(config):eval()
    local ids = sn.randint(0, config.vocab_size, 2, 10)
    local full = m(ids)
    local cache = m:init_cache(2, 10)
    sn.no_grad(function()
      local worst = max_diff(m:step(ids:narrow(2, 1, 4), cache), full:narrow(2, 1, 4))
      for t = 5, 10 do worst = math.max(worst, max_diff(m:step(ids:narrow(2, t, 1), cache), full:narrow(2, t, 1))) end
      assert.is_true(worst < 1e-4, ("worst logit difference %g"):format(worst))
    end)
    assert.are.equal(10, cache.length)
  end

  it("decodes through its caches as the full forward: rope, learned positions, GQA", function()
    check_decoding({ vocab_size = 13, d = 32, layers = 2, heads = 4, context = 10 })
    check_decoding({ vocab_size = 13, d = 32, layers = 2, heads = 4, kv_heads = 2, context = 10, positions = "learned" })
    check_decoding({ vocab_size = 13, d = 32, layers = 3, heads = 4, kv_heads = 1, context = 10, mlp = "swiglu",
                     norm = "rmsnorm", tie_weights = false, bias = true })
  end)

  it("trains on a tiny repetitive text: the loss falls far", function()
    sn.manual_seed(10)
    local text = ("abcdefgh"):rep(40)
    local ds = sn.data.TextDataset{ text = text, seq = 16 }
    local m = sn.models.LM{ vocab_size = ds.tokenizer.vocab_size, d = 32, layers = 2, heads = 2, context = 16 }
    local opt = sn.optim.AdamW(m:parameters(), { lr = 1e-2 })
    local ids = ds.tokenizer:encode(text)
    local x, y = ids:narrow(1, 1, 64):view(4, 16), ids:narrow(1, 2, 64):view(4, 16)
    local first, last
    for step = 1, 60 do
      m:zero_grad()
      local loss = sn.F.cross_entropy(m(x), y)
      loss:backward()
      opt:step()
      if step == 1 then first = loss:item() end
      last = loss:item()
    end
    assert.is_true(first > 1.5 and last < 0.1, ("loss %g -> %g"):format(first, last))
  end)

  it("round-trips its config through checkpoint metadata, mixer lists too", function()
    local m = sn.models.LM{ vocab_size = 7, d = 16, layers = 2, heads = 2, mixer = { "attention", "attention" }, window = 4 }
    local meta = sn.models.metadata("gpt", m)
    assert.are.equal("attention,attention", meta["model.mixer"])
    local m2, name = sn.models.from_metadata(meta)
    assert.are.equal("gpt", name)
    assert.are.same(m.config, m2.config)
    m2:load_state_dict(m:state_dict())
    local ids = sn.tensor({ { 1, 2, 3, 4, 5, 6 } }, "i64")
    assert.are.equal(0, max_diff(m(ids), m2(ids)))
  end)

  it("names the class, the option and the registry in its errors", function()
    has(err_of(function() sn.models.LM{ vocab_size = 7, d = 16, heads = 2, mixer = "nope" } end),
      "seqnn.models.mixers: unknown mixer 'nope' (known: attention")
    has(err_of(function() sn.models.LM{ vocab_size = 7, layers = 2, mixer = { "attention" } } end),
      "seqnn.models.LM: mixer must be a mixer name or a list of 2 names (one per layer), got 1 names")
    has(err_of(function() sn.models.LM{ vocab_size = 7, colour = "red" } end), "seqnn.models.LM: unknown option 'colour'")
    has(err_of(function() sn.models.LM{ vocab_size = 0 } end), "seqnn.models.LM: vocab_size must be a positive integer, got 0")
    has(err_of(function() sn.models.LM{ vocab_size = 7, positions = "alibi" } end),
      "seqnn.models.LM: positions must be 'rope' or 'learned', got alibi")
    local m = sn.models.LM{ vocab_size = 7, d = 16, heads = 2, layers = 1, context = 4, positions = "learned" }
    has(err_of(function() m(sn.zeros({ 1, 5 }, "i64")) end), "seqnn.models.LM: positions 1..5 exceed the learned context of 4")
    has(err_of(function() m:init_cache(1, 8) end), "learned positions stop at context = 4")
    has(err_of(function() sn.models.mixers.register("x", 3) end), "builder for 'x' must be a function, got number")
  end)

  it("takes new mixers from the registry, per layer", function()
    sn.models.mixers.register("spec_identity", function(cfg, i)
      local m = sn.nn.Linear(cfg.d, cfg.d)
      m.layer_index = i
      return m
    end)
    local m = sn.models.LM{ vocab_size = 7, d = 16, heads = 2, layers = 2, mixer = { "attention", "spec_identity" } }
    assert.are.equal("seqnn.nn.MultiheadAttention", m.blocks[1].mixer.__name)
    assert.are.equal(2, m.blocks[2].mixer.layer_index)
    has(err_of(function() m:init_cache(1, 4) end), "the mixer (seqnn.nn.Linear) has no init_cache")
  end)
end)

describe("seqnn.generate", function()
  local model
  setup(function()
    sn.manual_seed(11)
    model = sn.models.LM{ vocab_size = 9, d = 16, layers = 2, heads = 2, context = 8 }
  end)

  it("is deterministic for a seed and honours max_tokens", function()
    local a = sn.generate(model, { 1, 2 }, { max_tokens = 20, seed = 3 })
    local b = sn.generate(model, { 1, 2 }, { max_tokens = 20, seed = 3 })
    assert.are.equal(20, #a)
    assert.are.same(a, b)
    assert.are.same({}, sn.generate(model, { 1 }, { max_tokens = 0 }))
    for _, id in ipairs(a) do assert.is_true(id >= 0 and id < 9) end
  end)

  it("top_k = 1 is argmax decoding, cached or recomputed, past the window", function()
    local greedy = sn.generate(model, { 3 }, { max_tokens = 20, temperature = 0 })
    assert.are.same(greedy, sn.generate(model, { 3 }, { max_tokens = 20, top_k = 1, seed = 5 }))
    -- Within the window the cache sees what full recomputation sees.
    assert.are.same(sn.generate(model, { 3 }, { max_tokens = 7, temperature = 0, cache = false }),
      table.move(greedy, 1, 7, 1, {}))
    -- By hand: the argmax of the full forward, one token at a time.
    local seq = { 3 }
    for i = 1, 7 do
      local logits = sn.no_grad(function() return model(sn.tensor({ seq }, "i64")) end)
      seq[#seq + 1] = logits[1][-1]:argmax():item()
      assert.are.equal(seq[#seq], greedy[i])
    end
  end)

  it("streams each token through on_token, in order", function()
    local seen = {}
    local out = sn.generate(model, sn.tensor({ 1, 2, 3 }, "i64"),
      { max_tokens = 12, seed = 1, on_token = function(id) seen[#seen + 1] = id end })
    assert.are.same(out, seen)
  end)

  it("falls back to full recomputation for models without step", function()
    local mlp = sn.models.MLPLM{ vocab_size = 9, context = 3 }
    local out = sn.generate(mlp, { 1, 2 }, { max_tokens = 5, seed = 2, top_p = 0.9 })
    assert.are.equal(5, #out)
    assert.is_true(mlp.training, "the training mode is restored")
  end)

  it("checks its arguments", function()
    has(err_of(function() sn.generate(model, {}, { max_tokens = 1 }) end), "seqnn.generate: the prompt must hold at least one token")
    has(err_of(function() sn.generate(model, { 1 }, { max_tokens = -1 }) end),
      "seqnn.generate: max_tokens must be an integer >= 0, got -1")
    has(err_of(function() sn.generate(model, { 1 }, { max_tokens = 1, top_p = 2 }) end),
      "seqnn.generate: top_p must be a number in (0, 1], got 2")
  end)
end)

describe("seqnn.models.LM options", function()
  it("takes the vocabulary as vocab or vocab_size, as the issue writes it", function()
    local m = sn.models.LM{ vocab = 65, d = 16, layers = 1, heads = 2, context = 8, mixer = "attention" }
    assert.are.equal(65, m.config.vocab_size)
    assert.are.same({ 2, 3, 65 }, m(sn.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, "i64")):shape())
    local ok, msg = pcall(function() return sn.models.LM{ vocab = 65, vocab_size = 64, d = 16 } end)
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("vocab 65 and vocab_size 64 disagree", 1, true))
  end)
end)
