-- seqnn.data.MQAR{length = 64, pairs = 8, vocab = 128}: multi-query associative recall
-- (Arora et al. 2023, "Zoology"; the recall benchmark of the DeltaNet paper). A sampler:
-- every batch is freshly generated with seqnn's generator (sn.manual_seed makes it
-- repeatable).
--
-- Each row starts with `pairs` key-value pairs k1 v1 k2 v2 ... (distinct keys, distinct
-- values); the rest of the row holds every key once more, in a random order at random
-- places, each followed by its value, between blanks. At each repeated key the model must
-- predict its value: recall of what was bound to it, pairs at once. Ids:
--   0                          blank
--   1 .. K                     keys,   K = (vocab - 1) // 2
--   K + 1 .. vocab - 1         values
-- pairs may be a list ({4, 8, 16}): each row then draws its number of pairs from it, for
-- training on a mix; 2 pairs * 2 tokens must fit in length (4 * pairs <= length) and the
-- keys and values in the vocab (pairs <= K).
--
--   ds:batch([split,] B) -> x, y, counts
--     x (B, length) i64; y (B, length) i64 targets, -100 except at the repeated keys, which
--     hold the key's value (the next token); counts: a Lua list of each row's pairs.
--   ds:accuracy(logits, y) -> fraction, count   accuracy over the repeated keys
--   ds:describe() -> one line of the settings
local sn = require "seqnn"
local Dataset = require "seqnn.data.Dataset"
local scored = require "seqnn.data.scored"
local MQAR = sn.class("seqnn.data.MQAR", Dataset)

local NAME = "seqnn.data.MQAR"
local IGNORE = scored.IGNORE
local DEFAULTS = { length = 64, pairs = 8, vocab = 128 }

function MQAR:__init(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(("%s: expected a table of options {length =, pairs =, vocab =}, got %s"):format(NAME, type(opts)), 3)
  end
  for k in pairs(opts) do
    if DEFAULTS[k] == nil then
      error(("%s: unknown option %s (options: length, pairs, vocab)"):format(NAME, tostring(k)), 3)
    end
  end
  local length, vocab, counts = opts.length or DEFAULTS.length, opts.vocab or DEFAULTS.vocab, opts.pairs or DEFAULTS.pairs
  if math.type(vocab) ~= "integer" or vocab < 5 then
    error(("%s: vocab must be an integer >= 5 (blank, keys, values), got %s"):format(NAME, tostring(vocab)), 3)
  end
  if math.type(length) ~= "integer" or length < 4 then
    error(("%s: length must be an integer >= 4, got %s"):format(NAME, tostring(length)), 3)
  end
  if type(counts) ~= "table" then counts = { counts } end
  if #counts == 0 then error(("%s: pairs must be an integer or a non-empty list of integers"):format(NAME), 3) end
  local keys = (vocab - 1) // 2
  for _, n in ipairs(counts) do
    if math.type(n) ~= "integer" or n < 1 or 4 * n > length or n > keys then
      error(("%s: pairs must be integers in 1 .. min(length / 4, (vocab - 1) / 2) = 1 .. %d, got %s"):format(
        NAME, math.min(length // 4, keys), tostring(n)), 3)
    end
  end
  self.length, self.vocab, self.pairs = length, vocab, counts
  self.seq = length
  self.keys = keys
  self.vocab_size = vocab
  self.chance = 1 / (vocab - 1 - keys) -- guessing among the values
end

-- k distinct integers from lo .. hi, in random order (a partial Fisher-Yates shuffle driven
-- by u, a list of uniform [0, 1) numbers consumed from index at).
local function sample_distinct(lo, hi, k, u, at)
  local pool, out = {}, {}
  for i = 1, k do
    local j = i + math.floor(u[at + i] * (hi - lo + 1 - (i - 1)))
    local a, b = pool[i] or (lo + i - 1), pool[j] or (lo + j - 1)
    pool[i], pool[j] = b, a
    out[i] = b
  end
  return out, at + k
end

-- batch(B) or batch(split, B).
function MQAR:batch(split, B)
  B = scored.batch_size(NAME .. ":batch", split, B)
  local L, K, V = self.length, self.keys, self.vocab
  local x, y = {}, {}
  local counts = {}
  local u = sn.rand(B * (1 + L)):totable() -- a row takes 1 + 4 pairs <= 1 + L numbers
  local at = 0
  for b = 1, B do
    local n = self.pairs[1 + math.floor(u[at + 1] * #self.pairs)]
    at = at + 1
    counts[b] = n
    local keys, values, slots, order
    keys, at = sample_distinct(1, K, n, u, at)
    values, at = sample_distinct(K + 1, V - 1, n, u, at)
    -- the queries take n of the (L - 2n) // 2 two-token slots after the context
    slots, at = sample_distinct(0, (L - 2 * n) // 2 - 1, n, u, at)
    order, at = sample_distinct(1, n, n, u, at)
    local row, target = {}, {}
    for t = 1, L do row[t], target[t] = 0, IGNORE end
    for i = 1, n do
      row[2 * i - 1], row[2 * i] = keys[i], values[i]
      local p, j = 2 * n + 2 * slots[i] + 1, order[i]
      row[p], row[p + 1] = keys[j], values[j]
      target[p] = values[j]
    end
    x[b], y[b] = row, target
  end
  return sn.tensor(x, "i64"), sn.tensor(y, "i64"), counts
end

-- accuracy(logits, y) -> fraction, count over the repeated keys (see scored.accuracy).
function MQAR:accuracy(logits, y)
  local fraction, count = scored.accuracy(NAME .. ":accuracy", logits, y) -- not a tail call: errors name the caller
  return fraction, count
end

MQAR.evaluate = scored.evaluate

function MQAR:describe()
  return ("MQAR: %s key-value pairs in %d tokens, %d keys, %d values (vocab_size %d)"):format(
    table.concat(self.pairs, "/"), self.length, self.keys, self.vocab - 1 - self.keys, self.vocab_size)
end

function MQAR:__tostring()
  return ("seqnn.data.MQAR(length %d, pairs %s, vocab %d)"):format(self.length, table.concat(self.pairs, "/"), self.vocab)
end

return MQAR
