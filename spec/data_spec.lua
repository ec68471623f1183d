-- sn.data: tokenizers, TextDataset, Dataset/TensorDataset, DataLoader and the embedded
-- corpus. Expected values are built in plain Lua, not with the code under test.
local sn = require "seqnn"
local D = sn.data

-- The message of the error fn raises; fn must not tail-call, so that levels are real.
local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

-- Checks that fn raises, at the caller's line in this file, a message containing each part.
local function raises(fn, ...)
  local msg = err_of(fn)
  if not msg:find("data_spec.lua:%d+: ") then
    error(("message %q does not point at the caller's line"):format(msg), 2)
  end
  for _, part in ipairs({ ... }) do
    if not msg:find(part, 1, true) then error(("message %q lacks %q"):format(msg, part), 2) end
  end
end

local function all_bytes()
  local b = {}
  for i = 0, 255 do b[#b + 1] = string.char(i) end
  return table.concat(b)
end

local UTF8_TEXT = "héllo, wörld: ∑ x² → 日本語 🙂🙂 and\tnewlines\n"

describe("seqnn.data.ByteTokenizer", function()
  local tok = D.ByteTokenizer()

  it("maps each byte to its value, for any bytes", function()
    assert.are.equal(256, tok.vocab_size)
    local ids = tok:encode("Az\0")
    assert.are.equal("i64", ids:dtype())
    assert.are.same({ 65, 122, 0 }, ids:totable())
    local expected = {}
    for i = 0, 255 do expected[i + 1] = i end
    assert.are.same(expected, tok:encode(all_bytes()):totable())
    assert.are.same({ 0 }, tok:encode(""):shape())
  end)

  it("round-trips ASCII, multi-byte UTF-8, all 256 bytes and long texts", function()
    local long = all_bytes():rep(40) -- more than one encoding chunk
    for _, s in ipairs({ "hello, world", UTF8_TEXT, all_bytes(), long, "" }) do
      assert.are.equal(s, tok:decode(tok:encode(s)))
    end
    assert.are.equal(#"日本", tok:encode("日本"):numel())
    assert.are.equal("hi", tok:decode({ 104, 105 }))
  end)

  it("restores from its state", function()
    local state = tok:state()
    for k, v in pairs(state) do assert.are.equal("string", type(k)); assert.are.equal("string", type(v)) end
    local back = D.Tokenizer.from_state(state)
    assert.is_true(sn.class.is_instance(back, D.ByteTokenizer))
    assert.are.equal(UTF8_TEXT, back:decode(tok:encode(UTF8_TEXT)))
    assert.is_true(sn.class.is_instance(D.ByteTokenizer.from_state(state), D.ByteTokenizer))
  end)

  it("rejects ids outside the vocabulary and bad arguments", function()
    raises(function() local _ = tok:decode({ 1, 256 }) end,
      "seqnn.data.ByteTokenizer:decode: id 256 at position 2 is not in [0, 256)")
    raises(function() local _ = tok:decode({ -1 }) end, "id -1")
    raises(function() local _ = tok:decode({ 1.5 }) end, "id 1.5")
    raises(function() local _ = tok:decode(sn.zeros(2, 2, "i64")) end, "1-dim i64", "2x2")
    raises(function() local _ = tok:decode(sn.zeros(2)) end, "1-dim i64", "f32")
    raises(function() local _ = tok:decode("abc") end, "seqnn.data.ByteTokenizer:decode", "got string")
    raises(function() local _ = tok:encode(42) end, "seqnn.data.ByteTokenizer:encode", "got number")
    raises(function() local _ = D.ByteTokenizer.from_state({ type = "CharTokenizer" }) end,
      "seqnn.data.ByteTokenizer.from_state", "CharTokenizer")
  end)
end)

describe("seqnn.data.CharTokenizer", function()
  it("takes the distinct characters of a text, sorted by code point, as 0-based ids", function()
    local tok = D.CharTokenizer.from_text("cabbage")
    assert.are.equal(5, tok.vocab_size)
    assert.are.same({ 2, 0, 1, 1, 0, 4, 3 }, tok:encode("cabbage"):totable())
    local multi = D.CharTokenizer.from_text("🙂é日a")
    assert.are.equal("aé日🙂", multi.vocab)
    assert.are.same({ 3, 1, 2, 0 }, multi:encode("🙂é日a"):totable())
  end)

  it("round-trips ASCII, multi-byte UTF-8 and long texts", function()
    for _, s in ipairs({ "hello, world", UTF8_TEXT, UTF8_TEXT:rep(300) }) do
      local tok = D.CharTokenizer.from_text(s)
      local ids = tok:encode(s)
      assert.are.equal("i64", ids:dtype())
      assert.are.equal(utf8.len(s), ids:numel())
      assert.are.equal(s, tok:decode(ids))
      assert.are.equal(s, tok:decode(ids:totable()))
    end
  end)

  it("restores from its state exactly, with and without unk", function()
    for _, opts in ipairs({ {}, { unk = 3 } }) do
      local tok = D.CharTokenizer.from_text(UTF8_TEXT, opts)
      local state = tok:state()
      for k, v in pairs(state) do assert.are.equal("string", type(k)); assert.are.equal("string", type(v)) end
      for _, back in ipairs({ D.Tokenizer.from_state(state), D.CharTokenizer.from_state(state) }) do
        assert.is_true(sn.class.is_instance(back, D.CharTokenizer))
        assert.are.equal(tok.vocab, back.vocab)
        assert.are.equal(tok.unk, back.unk)
        assert.are.same(tok:encode(UTF8_TEXT):totable(), back:encode(UTF8_TEXT):totable())
      end
    end
  end)

  it("names an unknown character and its position, or maps it to unk", function()
    local tok = D.CharTokenizer.from_text("abc")
    raises(function() local _ = tok:encode("abé") end,
      "seqnn.data.CharTokenizer:encode: character 'é' (U+00E9) at position 3 is not in the vocabulary of 3 characters")
    raises(function() local _ = tok:encode("a\n") end, "character U+000A at position 2")
    local with_unk = D.CharTokenizer("abc", { unk = 0 })
    assert.are.same({ 1, 0, 2, 0 }, with_unk:encode("b日c\n"):totable())
  end)

  it("rejects invalid UTF-8, bad vocabularies and bad unk ids", function()
    raises(function() local _ = D.CharTokenizer.from_text("ab\255") end,
      "seqnn.data.CharTokenizer.from_text: text is not valid UTF-8 (byte 3)")
    raises(function() local _ = D.CharTokenizer.from_text("") end, "from_text", "empty")
    raises(function() local _ = D.CharTokenizer.from_text(nil) end, "from_text", "got nil")
    raises(function() local _ = D.CharTokenizer.from_text("abc"):encode("a\255") end, "encode", "not valid UTF-8")
    raises(function() local _ = D.CharTokenizer("aba") end,
      "seqnn.data.CharTokenizer: character 'a' (U+0061) appears twice in vocab")
    raises(function() local _ = D.CharTokenizer("abc", { unk = 3 }) end, "unk must be an id in [0, 3), got 3")
    raises(function() local _ = D.CharTokenizer.from_state({ type = "CharTokenizer", vocab = "ab", unk = "x" }) end,
      "from_state", "unk", "got x")
    raises(function() local _ = D.Tokenizer.from_state({ type = "BPE" }) end,
      "seqnn.data.Tokenizer.from_state: unknown tokenizer type BPE")
  end)
end)

describe("seqnn.data.default_corpus", function()
  it("is the text of examples/data/tiny.txt", function()
    local root = debug.getinfo(1, "S").source:match("^@(.*)spec/[^/]*$") or ""
    local f = assert(io.open(root .. "examples/data/tiny.txt", "rb"))
    local text = f:read("a")
    f:close()
    assert.are.equal(text, D.default_corpus())
  end)
end)

describe("seqnn.data.TextDataset", function()
  -- With bytes 0..255 as the text, a token's id is its position: windows are easy to check.
  local function byte_dataset(seq)
    return D.TextDataset { text = all_bytes(), tokenizer = D.ByteTokenizer(), split = 0.75, seq = seq }
  end

  it("splits by position and counts tokens", function()
    local ds = byte_dataset(8)
    assert.are.equal(256, ds:num_tokens())
    assert.are.equal(192, ds:num_tokens("train"))
    assert.are.equal(64, ds:num_tokens("val"))
  end)

  it("samples (B,T) i64 windows with y the next token, inside their split", function()
    local T, B = 8, 64
    local ds = byte_dataset(T)
    sn.manual_seed(3)
    for split, range in pairs({ train = { 0, 191 }, val = { 192, 255 } }) do
      local lo, hi = math.huge, -math.huge
      for _ = 1, 20 do
        local x, y = ds:batch(split, B)
        assert.are.same({ B, T }, x:shape())
        assert.are.same({ B, T }, y:shape())
        assert.are.equal("i64", x:dtype())
        assert.are.equal("i64", y:dtype())
        for _, row in ipairs(x:totable()) do
          for t = 2, T do assert.are.equal(row[1] + t - 1, row[t]) end -- a contiguous window
        end
        assert.are.same((x + 1):totable(), y:totable())
        lo, hi = math.min(lo, x:min():item()), math.max(hi, y:max():item())
      end
      -- Never across the boundary, and every start is reachable (1280 draws of 184 or 56).
      assert.are.same(range, { lo, hi })
    end
  end)

  it("encodes with a default CharTokenizer of the text, from text or from a file", function()
    local text = ("the quick brown fox jumps over the lazy dog. "):rep(10)
    local ds = D.TextDataset { text = text, seq = 16 }
    assert.is_true(sn.class.is_instance(ds.tokenizer, D.CharTokenizer))
    assert.are.equal(text, ds.tokenizer:decode(ds.ids))
    local x, y = ds:batch("train", 4)
    local decoded_x, decoded_y = ds.tokenizer:decode(x[1]), ds.tokenizer:decode(y[1])
    assert.truthy(text:find(decoded_x .. decoded_y:sub(-1), 1, true))

    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    local from_file = D.TextDataset { path = path, seq = 16 }
    os.remove(path)
    assert.are.same(ds.ids:totable(), from_file.ids:totable())
  end)

  it("is deterministic for a seed and differs across seeds", function()
    local ds = D.TextDataset { text = D.default_corpus(), seq = 32 }
    sn.manual_seed(11)
    local a = ds:batch("train", 4):totable()
    sn.manual_seed(11)
    local b = ds:batch("train", 4):totable()
    sn.manual_seed(12)
    local c = ds:batch("train", 4):totable()
    assert.are.same(a, b)
    assert.are_not.same(a, c)
  end)

  it("rejects bad arguments, naming the function", function()
    local text = ("abcdefghij"):rep(300) -- 3000 tokens: 2700 train, 300 validation
    raises(function() local _ = D.TextDataset { text = text, seq = 512 } end,
      "seqnn.data.TextDataset: seq 512 is longer than the validation split (300 tokens")
    raises(function() local _ = D.TextDataset { text = text, seq = 3000 } end, "longer than the training split")
    raises(function() local _ = D.TextDataset { seq = 8 } end, "seqnn.data.TextDataset", "text", "path")
    raises(function() local _ = D.TextDataset { text = text, path = "x.txt", seq = 8 } end, "exactly one")
    raises(function() local _ = D.TextDataset { path = "/nonexistent/seqnn.txt", seq = 8 } end,
      "seqnn.data.TextDataset: cannot open /nonexistent/seqnn.txt")
    raises(function() local _ = D.TextDataset { text = text } end, "seq must be a positive integer, got nil")
    raises(function() local _ = D.TextDataset { text = text, seq = 8, split = 1 } end, "split must be a fraction")
    raises(function() local _ = D.TextDataset(text) end, "seqnn.data.TextDataset", "got string")
    local ds = D.TextDataset { text = text, seq = 8 }
    raises(function() local _ = ds:batch("train", 0) end, "seqnn.data.TextDataset:batch: B must be a positive integer, got 0")
    raises(function() local _ = ds:batch("test", 2) end, "seqnn.data.TextDataset:batch", "\"train\" or \"val\"")
    raises(function() local _ = ds:num_tokens("valid") end, "seqnn.data.TextDataset:num_tokens")
    raises(function() local _ = ds:get(1) end, "seqnn.data.TextDataset does not define get")
  end)
end)

describe("seqnn.data.TensorDataset and Dataset", function()
  it("gives rows of x and y, and gathers batches", function()
    local ds = D.TensorDataset(sn.arange(12):view(6, 2), sn.arange(6, "i64"))
    assert.are.equal(6, ds:len())
    assert.are.equal(6, #ds)
    local x, y = ds:get(2)
    assert.are.same({ 2, 3 }, x:totable())
    assert.are.equal(1, y:item())
    local bx, by = ds:collate({ 3, 1 })
    assert.are.same({ { 4, 5 }, { 0, 1 } }, bx:totable())
    assert.are.same({ 2, 0 }, by:totable())
    raises(function() local _ = ds:get(7) end, "seqnn.data.TensorDataset:get: index 7 is not in 1..6")
    raises(function() local _ = D.TensorDataset(sn.zeros(3), sn.zeros(4)) end,
      "seqnn.data.TensorDataset: x has 3 samples but y has 4")
    raises(function() local _ = D.TensorDataset(sn.zeros(3), nil) end, "y must be a seqnn.Tensor, got nil")
  end)

  it("stacks the samples of a subclass that only defines len and get", function()
    local Squares = sn.class("spec.Squares", D.Dataset)
    function Squares:len() return 5 end
    function Squares:get(i) return sn.full({ 2 }, i), sn.tensor(i * i, "i64") end
    local x, y = Squares():collate({ 2, 5 })
    assert.are.same({ { 2, 2 }, { 5, 5 } }, x:totable())
    assert.are.same({ 4, 25 }, y:totable())

    local Ragged = sn.class("spec.Ragged", D.Dataset)
    function Ragged:len() return 3 end
    function Ragged:get(i) return sn.zeros(i), sn.zeros(1) end
    raises(function() local _ = Ragged():collate({ 1, 2 }) end,
      "spec.Ragged:collate: sample 2 has x 2 f32 but sample 1 has 1 f32")
  end)
end)

describe("seqnn.data.DataLoader", function()
  local function ids_dataset(n) return D.TensorDataset(sn.arange(n, "i64"), sn.arange(n, "i64") * 10) end

  -- The sample positions (1-based) of a batch, from y = 10 * (position - 1).
  local function positions(y)
    local out = {}
    for i, v in ipairs(y:totable()) do out[i] = v // 10 + 1 end
    return out
  end

  it("gives every index exactly once per epoch, in a new order each epoch", function()
    local n = 10
    local loader = D.DataLoader(ids_dataset(n), { batch = 3, shuffle = true, seed = 7 })
    assert.are.equal(4, loader:len())
    local orders = {}
    for epoch = 1, 3 do
      local order, sizes = {}, {}
      for x, y in loader:batches() do
        sizes[#sizes + 1] = x:numel()
        assert.are.same((x * 10):totable(), y:totable())
        for _, p in ipairs(positions(y)) do order[#order + 1] = p end
      end
      assert.are.same({ 3, 3, 3, 1 }, sizes)
      local sorted = table.move(order, 1, n, 1, {})
      table.sort(sorted)
      assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, sorted)
      assert.are.equal(epoch, loader:state().epoch)
      orders[epoch] = order
    end
    assert.are_not.same(orders[1], orders[2])
    assert.are_not.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, orders[1])
  end)

  it("keeps order without shuffle and drops the short last batch with drop_last", function()
    local loader = D.DataLoader(ids_dataset(7), { batch = 3 })
    local got = {}
    for _, y in loader:batches() do got[#got + 1] = positions(y) end
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 }, { 7 } }, got)
    local dropping = D.DataLoader(ids_dataset(7), { batch = 3, drop_last = true })
    assert.are.equal(2, dropping:len())
    got = {}
    for _ = 1, 4 do
      local _, y = dropping:next()
      got[#got + 1] = positions(y)
    end
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 }, { 1, 2, 3 }, { 4, 5, 6 } }, got)
  end)

  it("shuffles the same for the same seed, and takes its seed from sn.manual_seed", function()
    local function first(opts)
      local _, y = D.DataLoader(ids_dataset(50), opts):next()
      return positions(y)
    end
    assert.are.same(first({ batch = 50, shuffle = true, seed = 1 }), first({ batch = 50, shuffle = true, seed = 1 }))
    assert.are_not.same(first({ batch = 50, shuffle = true, seed = 1 }), first({ batch = 50, shuffle = true, seed = 2 }))
    sn.manual_seed(5)
    local a = first({ batch = 50, shuffle = true })
    sn.manual_seed(5)
    assert.are.same(a, first({ batch = 50, shuffle = true }))
  end)

  it("resumes from state() with exactly the batches it would have given", function()
    for _, opts in ipairs({ { batch = 4, shuffle = true, seed = 3 }, { batch = 4, shuffle = true, drop_last = true },
                            { batch = 4 } }) do
      local a = D.DataLoader(ids_dataset(10), opts)
      for _ = 1, 5 do a:next() end -- into the second epoch
      local saved = a:state()
      local expected = {}
      for k = 1, 8 do expected[k] = positions(select(2, a:next())) end

      -- As checkpoint metadata would carry it: strings.
      local as_strings = {}
      for k, v in pairs(saved) do as_strings[k] = tostring(v) end
      local b = D.DataLoader(ids_dataset(10), opts)
      b:set_state(as_strings)
      assert.are.same(saved, b:state())
      for k = 1, 8 do assert.are.same(expected[k], positions(select(2, b:next()))) end
    end
  end)

  it("rejects bad arguments and states from another dataset", function()
    raises(function() local _ = D.DataLoader({}, { batch = 2 }) end,
      "seqnn.data.DataLoader: dataset must be a seqnn.data.Dataset")
    raises(function() local _ = D.DataLoader(ids_dataset(3), {}) end, "batch must be a positive integer, got nil")
    raises(function() local _ = D.DataLoader(ids_dataset(3), { batch = 0 }) end, "batch must be a positive integer, got 0")
    raises(function() local _ = D.DataLoader(ids_dataset(3), { batch = 1, shuffle = "yes" }) end, "shuffle must be a boolean")
    raises(function() local _ = D.DataLoader(ids_dataset(3), { batch = 4, drop_last = true }) end,
      "the dataset has 3 samples, too few for one batch of 4 with drop_last")
    local loader = D.DataLoader(ids_dataset(3), { batch = 2, shuffle = true })
    raises(function() loader:set_state({ epoch = 1, cursor = 0, seed = 1, size = 4 }) end,
      "seqnn.data.DataLoader:set_state: the state is for a dataset of 4 samples, this one has 3")
    raises(function() loader:set_state({ epoch = 1, cursor = 5, seed = 1, size = 3 }) end, "cursor 5")
    raises(function() loader:set_state({ epoch = 1, cursor = 0, size = 3 }) end, "needs the seed")
  end)
end)
