-- seqnn.data.SelectiveCopying{length = 256, n_tokens = 16, vocab = 16}: the Selective
-- Copying task of the Mamba paper (Gu & Dao 2023, section 4.1, appendix E.1). A sampler:
-- every batch is freshly generated with seqnn's generator (sn.manual_seed makes it repeatable).
--
-- Each row hides n_tokens data tokens, drawn uniformly from the vocab data symbols, at
-- random distinct positions (uniform, different in every row) of a region of `length`
-- noise tokens, then n_tokens marker tokens follow. At the k-th marker the model must
-- output the k-th data token, in the order they appear. Ids:
--   0                  noise (blank)
--   1 .. vocab         data symbols
--   vocab + 1          marker (where the answers go)
-- vocab_size = vocab + 2. The paper uses length 4096, 16 tokens to memorize and a
-- 16-id vocabulary counting noise and marker (its code draws data symbols from 1..14:
-- vocab = 14 reproduces that exactly).
--
--   ds:batch([split,] B) -> x, y, positions
--     x (B, length + n_tokens) i64 inputs; y (B, length + n_tokens) i64 targets, -100
--     (cross_entropy's ignore_index) except at the n_tokens marker positions, which hold
--     the data tokens; positions: a Lua list of B sorted lists of the 1-based columns of
--     the data tokens in x. split ("train" or "val", for sn.train.fit) changes nothing.
--   ds:accuracy(logits, y) -> fraction, count   per-token accuracy of the copied tokens
--   ds:describe() -> one line of the settings
local sn = require "seqnn"
local Dataset = require "seqnn.data.Dataset"
local scored = require "seqnn.data.scored"
local SelectiveCopying = sn.class("seqnn.data.SelectiveCopying", Dataset)

local NAME = "seqnn.data.SelectiveCopying"
local IGNORE = scored.IGNORE
local DEFAULTS = { length = 256, n_tokens = 16, vocab = 16 }

local function is_positive_integer(v) return math.type(v) == "integer" and v >= 1 end

function SelectiveCopying:__init(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(("%s: expected a table of options {length =, n_tokens =, vocab =}, got %s"):format(NAME, type(opts)), 3)
  end
  for k in pairs(opts) do
    if DEFAULTS[k] == nil then
      error(("%s: unknown option %s (options: length, n_tokens, vocab)"):format(NAME, tostring(k)), 3)
    end
  end
  local length, n, vocab = opts.length, opts.n_tokens, opts.vocab
  if length == nil then length = DEFAULTS.length end
  if n == nil then n = DEFAULTS.n_tokens end
  if vocab == nil then vocab = DEFAULTS.vocab end
  if not is_positive_integer(length) then
    error(("%s: length must be a positive integer, got %s"):format(NAME, tostring(length)), 3)
  end
  if not is_positive_integer(vocab) then
    error(("%s: vocab must be a positive integer, got %s"):format(NAME, tostring(vocab)), 3)
  end
  if not is_positive_integer(n) or n > length then
    error(("%s: n_tokens must be a positive integer <= length (%d), got %s"):format(NAME, length, tostring(n)), 3)
  end
  self.length, self.n_tokens, self.vocab = length, n, vocab
  self.seq = length + n              -- the columns of x and y
  self.noise, self.marker = 0, vocab + 1
  self.vocab_size = vocab + 2
  self.chance = 1 / vocab            -- the accuracy of guessing among the data symbols
end

-- batch(B) or batch(split, B).
function SelectiveCopying:batch(split, B)
  B = scored.batch_size(NAME .. ":batch", split, B)
  local L, n, T = self.length, self.n_tokens, self.seq
  local tokens = sn.randint(1, self.vocab + 1, B, n)
  -- n distinct positions out of 1..L per row, uniform over the subsets: Floyd's algorithm
  -- (step j draws r in 1..j; r already taken -> j), then a sort. All draws come from one
  -- randint over [0, 2^62), reduced mod j (a bias below j / 2^62).
  local draws, positions = sn.randint(0, 1 << 62, B, n):totable(), {}
  for b = 1, B do
    local d, set, pos = draws[b], {}, {}
    for k = 1, n do
      local j = L - n + k
      local r = d[k] % j + 1
      if set[r] then r = j end
      set[r], pos[k] = true, r
    end
    table.sort(pos)
    positions[b] = pos
  end
  local x = sn.zeros({ B, T }, "i64")
  x:narrow(2, L + 1, n):fill_(self.marker)
  local tok = tokens:totable()
  if n * 8 <= L then
    -- Few tokens: set them one by one (a few microseconds each).
    for b = 1, B do
      local row, pos, tb = x[b], positions[b], tok[b]
      for k = 1, n do row[pos[k]] = tb[k] end
    end
  else
    -- Dense: build each row's first L ids in Lua and copy them in one go.
    for b = 1, B do
      local ids, pos, tb = {}, positions[b], tok[b]
      for t = 1, L do ids[t] = 0 end
      for k = 1, n do ids[pos[k]] = tb[k] end
      x[b]:narrow(1, 1, L):copy_(sn.tensor(ids, "i64"))
    end
  end
  local y = sn.full({ B, T }, IGNORE, "i64")
  y:narrow(2, L + 1, n):copy_(tokens)
  return x, y, positions
end

-- accuracy(logits, y) -> fraction, count: how often argmax(logits) equals y where
-- y ~= -100 (the copied tokens), and how many positions were scored. logits (B, T, V)
-- with y (B, T), or (N, V) with y (N).
function SelectiveCopying:accuracy(logits, y)
  local fraction, count = scored.accuracy(NAME .. ":accuracy", logits, y) -- not a tail call: errors name the caller
  return fraction, count
end

SelectiveCopying.evaluate = scored.evaluate

function SelectiveCopying:describe()
  return ("Selective Copying: %d tokens from %d symbols at random positions among %d, then %d markers (seq %d, vocab_size %d)")
    :format(self.n_tokens, self.vocab, self.length, self.n_tokens, self.seq, self.vocab_size)
end

function SelectiveCopying:__tostring()
  return ("seqnn.data.SelectiveCopying(length %d, n_tokens %d, vocab %d; vocab_size %d)")
    :format(self.length, self.n_tokens, self.vocab, self.vocab_size)
end

return SelectiveCopying
