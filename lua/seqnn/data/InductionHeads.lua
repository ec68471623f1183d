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
local InductionHeads = sn.class("seqnn.data.InductionHeads", Dataset)

local NAME = "seqnn.data.InductionHeads"
local IGNORE = -100
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
  local fn = NAME .. ":batch"
  if B == nil and type(split) ~= "string" then split, B = nil, split end
  if split ~= nil and split ~= "train" and split ~= "val" then
    error(("%s: split must be \"train\" or \"val\", got %s"):format(fn, tostring(split)), 2)
  end
  if not is_positive_integer(B) then
    error(("%s: B must be a positive integer, got %s"):format(fn, tostring(B)), 2)
  end
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
  local fn = NAME .. ":accuracy"
  if not sn.is_tensor(logits) then
    error(("%s: logits must be a tensor, got %s"):format(fn, type(logits)), 2)
  end
  if not sn.is_tensor(y) or y:dtype() ~= "i64" then
    error(("%s: y must be an i64 tensor, got %s"):format(fn, sn.is_tensor(y) and y:dtype() or type(y)), 2)
  end
  local ls, ys = logits:shape(), y:shape()
  local ok = (#ys == 1 or #ys == 2) and #ls == #ys + 1
  for i = 1, #ys do ok = ok and ls[i] == ys[i] end
  if not ok then
    error(("%s: logits must be (B, T, V) for y (B, T) or (N, V) for y (N), got logits %s and y %s")
      :format(fn, table.concat(ls, "x"), table.concat(ys, "x")), 2)
  end
  local pred = logits:detach():argmax(#ls):view(-1):totable()
  local target = y:contiguous():view(-1):totable()
  local hits, count = 0, 0
  for i = 1, #target do
    local t = target[i]
    if t ~= IGNORE then
      count = count + 1
      if pred[i] == t then hits = hits + 1 end
    end
  end
  if count == 0 then error(("%s: y has no scored positions (every target is -100)"):format(fn), 2) end
  return hits / count, count
end

function InductionHeads:describe()
  return ("Induction Heads: %d random tokens from %d symbols, trigger id %d, answer at the last position (vocab_size %d)")
    :format(self.length, self.vocab, self.trigger, self.vocab_size)
end

function InductionHeads:__tostring()
  return ("seqnn.data.InductionHeads(length %d, vocab %d; vocab_size %d)")
    :format(self.length, self.vocab, self.vocab_size)
end

return InductionHeads
