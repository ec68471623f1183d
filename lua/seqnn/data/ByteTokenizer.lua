-- seqnn.data.ByteTokenizer: one token per byte, ids = byte values (vocabulary 256). Works
-- on any string, valid UTF-8 or not, and needs no vocabulary to be saved.
local sn = require "seqnn"
local Tokenizer = require "seqnn.data.Tokenizer"
local ByteTokenizer = sn.class("seqnn.data.ByteTokenizer", Tokenizer)

-- string.byte returns its results on the C stack, so encode converts a bounded slice at a
-- time (which also keeps the Lua tables small for long texts).
local CHUNK = 4096

local PIECES = {}
for b = 0, 255 do PIECES[b + 1] = string.char(b) end

function ByteTokenizer:__init()
  self.vocab_size = 256
  self.pieces = PIECES
end

-- encode(str): the bytes of str as a 1-dim i64 tensor.
function ByteTokenizer:encode(str)
  if type(str) ~= "string" then
    error(("seqnn.data.ByteTokenizer:encode: expected a string, got %s"):format(type(str)), 2)
  end
  local ids = sn.zeros(#str, "i64")
  for i = 1, #str, CHUNK do
    local j = math.min(i + CHUNK - 1, #str)
    ids:narrow(1, i, j - i + 1):copy_(sn.tensor({ str:byte(i, j) }, "i64"))
  end
  return ids
end

function ByteTokenizer:state() return { type = "ByteTokenizer" } end

function ByteTokenizer.from_state(state)
  if type(state) ~= "table" or state.type ~= "ByteTokenizer" then
    error(("seqnn.data.ByteTokenizer.from_state: not a ByteTokenizer state (type %s)")
      :format(tostring(type(state) == "table" and state.type or state)), 2)
  end
  return ByteTokenizer()
end

function ByteTokenizer:__tostring() return "seqnn.data.ByteTokenizer(256)" end

return ByteTokenizer
