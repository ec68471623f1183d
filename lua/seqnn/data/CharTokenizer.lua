-- seqnn.data.CharTokenizer: one token per UTF-8 character of a fixed vocabulary.
--
--   tok = sn.data.CharTokenizer.from_text(text [, {unk = id}])  -- distinct characters of
--                                                               -- text, by code point
--   tok = sn.data.CharTokenizer(vocab [, {unk = id}])           -- vocab: a string of distinct
--                                                               -- characters, in id order
-- Ids are 0-based. encode raises on a character outside the vocabulary, unless unk is
-- given: then such characters become id unk.
local sn = require "seqnn"
local Tokenizer = require "seqnn.data.Tokenizer"
local CharTokenizer = sn.class("seqnn.data.CharTokenizer", Tokenizer)

local CHUNK = 4096 -- ids move to the tensor this many at a time, so Lua tables stay small

-- 'é' (U+00E9), or just U+000A for control characters, which would garble a message.
local function describe(cp)
  if cp < 32 or cp == 127 then return ("U+%04X"):format(cp) end
  return ("'%s' (U+%04X)"):format(utf8.char(cp), cp)
end

local function check_text(str, fn, what, level)
  if type(str) ~= "string" then
    error(("%s: %s must be a string, got %s"):format(fn, what, type(str)), level + 1)
  end
  local n, bad = utf8.len(str)
  if not n then error(("%s: %s is not valid UTF-8 (byte %d)"):format(fn, what, bad), level + 1) end
  return n
end

-- Fills self from vocab and unk; errors name fn and point `level` frames above setup's caller.
local function setup(self, vocab, unk, fn, level)
  local n = check_text(vocab, fn, "vocab", level + 1)
  if n == 0 then error(("%s: the vocabulary is empty"):format(fn), level + 1) end
  local pieces, id_of = {}, {}
  for _, cp in utf8.codes(vocab) do
    if id_of[cp] then
      error(("%s: character %s appears twice in vocab"):format(fn, describe(cp)), level + 1)
    end
    pieces[#pieces + 1] = utf8.char(cp)
    id_of[cp] = #pieces - 1
  end
  if unk ~= nil and (math.type(unk) ~= "integer" or unk < 0 or unk >= n) then
    error(("%s: unk must be an id in [0, %d), got %s"):format(fn, n, tostring(unk)), level + 1)
  end
  self.vocab, self.pieces, self.id_of, self.unk, self.vocab_size = vocab, pieces, id_of, unk, n
  return self
end

function CharTokenizer:__init(vocab, opts)
  setup(self, vocab, opts and opts.unk, "seqnn.data.CharTokenizer", 3)
end

function CharTokenizer.from_text(text, opts)
  local fn = "seqnn.data.CharTokenizer.from_text"
  check_text(text, fn, "text", 2)
  local seen, cps = {}, {}
  for _, cp in utf8.codes(text) do
    if not seen[cp] then seen[cp], cps[#cps + 1] = true, cp end
  end
  table.sort(cps)
  for i, cp in ipairs(cps) do cps[i] = utf8.char(cp) end
  local tok = setup(setmetatable({}, CharTokenizer), table.concat(cps), opts and opts.unk, fn, 2)
  return tok -- not a tail call, which would make setup's error levels skip our caller
end

-- encode(str): the ids of the characters of str, a 1-dim i64 tensor.
function CharTokenizer:encode(str)
  local fn = "seqnn.data.CharTokenizer:encode"
  local n = check_text(str, fn, "the text", 2)
  local ids = sn.zeros(n, "i64")
  local id_of, unk = self.id_of, self.unk
  local buf, k, pos = {}, 0, 0 -- buf[1..k] holds the ids of characters pos-k+1 .. pos
  for _, cp in utf8.codes(str) do
    pos = pos + 1
    local id = id_of[cp] or unk
    if not id then
      error(("%s: character %s at position %d is not in the vocabulary of %d characters (pass unk to map unknown characters to an id)")
        :format(fn, describe(cp), pos, self.vocab_size), 2)
    end
    k = k + 1
    buf[k] = id
    if k == CHUNK or pos == n then
      ids:narrow(1, pos - k + 1, k):copy_(sn.tensor(buf, "i64"))
      buf, k = {}, 0
    end
  end
  return ids
end

-- state(): strings only, as checkpoint metadata requires: the characters in id order
-- (distinct, so their concatenation is unambiguous) and unk when set.
function CharTokenizer:state()
  return { type = "CharTokenizer", vocab = self.vocab, unk = self.unk and tostring(self.unk) }
end

function CharTokenizer.from_state(state)
  local fn = "seqnn.data.CharTokenizer.from_state"
  if type(state) ~= "table" or state.type ~= "CharTokenizer" then
    error(("%s: not a CharTokenizer state (type %s)")
      :format(fn, tostring(type(state) == "table" and state.type or state)), 2)
  end
  local unk = state.unk
  if unk ~= nil then
    local num = tonumber(unk)
    unk = num and math.tointeger(num) or unk -- anything else is reported by setup
  end
  local tok = setup(setmetatable({}, CharTokenizer), state.vocab, unk, fn, 2)
  return tok
end

function CharTokenizer:__tostring()
  return ("seqnn.data.CharTokenizer(%d characters%s)")
    :format(self.vocab_size, self.unk and (", unk=" .. self.unk) or "")
end

return CharTokenizer
