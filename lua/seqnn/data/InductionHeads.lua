-- seqnn.data.InductionHeads{length = 256, vocab = 16}: the Induction Heads task of the Mamba
-- paper (Gu & Dao 2023, section 4.1, appendix E.1; after Olsson et al. 2022). A sampler:
-- every batch is freshly generated with seqnn's generator (sn.manual_seed makes it repeatable).
--
-- Each row is `length` random tokens (uniform over the vocab symbols) holding a special
-- trigger token twice: once at a random position p in 1 .. length - 2, and at the last
-- position. The model must output, at the last position, the token that followed the first
-- trigger (x[p + 1]). Ids:
--   0 .. vocab - 1     random symbols
--   vocab              the trigger
-- vocab_size = vocab + 1. The paper trains at length 256 with 16 ids and tests at lengths up
-- to 2^20; make another dataset with a longer length to test length generalization.
--
--   ds:batch([split,] B) -> x, y, positions
--     x (B, length) i64 inputs; y (B, length) i64 targets, -100 (cross_entropy's
--     ignore_index) except at the last position, which holds x[p + 1]; positions: a Lua
--     list of the B first-trigger positions p (1-based). split ("train" or "val", for
--     sn.train.fit) changes nothing.
--   ds:accuracy(logits, y) -> fraction, count   accuracy at the last position
--   ds:describe() -> one line of the settings
local sn = require "seqnn"
local Dataset = require "seqnn.data.Dataset"
local scored = require "seqnn.data.scored"
local InductionHeads = sn.class("seqnn.data.InductionHeads", Dataset)

local NAME = "seqnn.data.InductionHeads"
local IGNORE = scored.IGNORE
local DEFAULTS = { length = 256, vocab = 16 }

local function is_positive_integer(v) return math.type(v) == "integer" and v >= 1 end

function InductionHeads:__init(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(("%s: expected a table of options {length =, vocab =}, got %s"):format(NAME, type(opts)), 3)
  end
  for k in pairs(opts) do
    if DEFAULTS[k] == nil then
      error(("%s: unknown option %s (options: length, vocab)"):format(NAME, tostring(k)), 3)
    end
  end
  local length, vocab = opts.length, opts.vocab
  if length == nil then length = DEFAULTS.length end
  if vocab == nil then vocab = DEFAULTS.vocab end
  if math.type(length) ~= "integer" or length < 3 then
    error(("%s: length must be an integer >= 3 (trigger, answer, trigger), got %s"):format(NAME, tostring(length)), 3)
  end
  if not is_positive_integer(vocab) then
    error(("%s: vocab must be a positive integer, got %s"):format(NAME, tostring(vocab)), 3)
  end
  self.length, self.vocab = length, vocab
  self.seq = length                  -- the columns of x and y
  self.trigger = vocab
  self.vocab_size = vocab + 1
  self.chance = 1 / vocab            -- the accuracy of guessing among the symbols
end

-- batch(B) or batch(split, B).
function InductionHeads:batch(split, B)
  B = scored.batch_size(NAME .. ":batch", split, B)
  local L, trigger = self.length, self.trigger
  local x = sn.randint(0, self.vocab, B, L)
  local positions = sn.randint(1, L - 1, B):totable() -- p in 1 .. L - 2
  local answers = {}
  for b = 1, B do
    local row, p = x[b], positions[b]
    row[p], row[L] = trigger, trigger
    answers[b] = row[p + 1]
  end
  local y = sn.full({ B, L }, IGNORE, "i64")
  y:select(2, L):copy_(sn.tensor(answers, "i64"))
  return x, y, positions
end

-- accuracy(logits, y) -> fraction, count: how often argmax(logits) equals y where
-- y ~= -100 (the last position), and how many positions were scored. logits (B, T, V)
-- with y (B, T), or (N, V) with y (N).
function InductionHeads:accuracy(logits, y)
  local fraction, count = scored.accuracy(NAME .. ":accuracy", logits, y) -- not a tail call: errors name the caller
  return fraction, count
end

InductionHeads.evaluate = scored.evaluate

function InductionHeads:describe()
  return ("Induction Heads: %d random tokens from %d symbols, trigger id %d, answer at the last position (vocab_size %d)")
    :format(self.length, self.vocab, self.trigger, self.vocab_size)
end

function InductionHeads:__tostring()
  return ("seqnn.data.InductionHeads(length %d, vocab %d; vocab_size %d)")
    :format(self.length, self.vocab, self.vocab_size)
end

return InductionHeads
