-- seqnn.data.Tokenizer: the base of the tokenizers. A tokenizer maps a string to 0-based
-- ids (encode, an i64 tensor) and back (decode). Subclasses set self.pieces (the string of
-- each id, at index id + 1) and self.vocab_size, and define encode, state and from_state.
local sn = require "seqnn"
local Tokenizer = sn.class("seqnn.data.Tokenizer")

-- decode(ids): the text of ids, a 1-dim i64 tensor or a Lua table of integers.
function Tokenizer:decode(ids)
  local fn = getmetatable(self).__name .. ":decode"
  if sn.is_tensor(ids) then
    if ids:dim() ~= 1 or ids:dtype() ~= "i64" then
      local shape = ids:dim() == 0 and "scalar" or table.concat(ids:shape(), "x")
      error(("%s: ids must be a 1-dim i64 tensor, got %s %s"):format(fn, shape, ids:dtype()), 2)
    end
    ids = ids:totable()
  elseif type(ids) ~= "table" then
    error(("%s: ids must be an i64 tensor or a table of integers, got %s"):format(fn, type(ids)), 2)
  end
  local pieces, out = self.pieces, {}
  for i, id in ipairs(ids) do
    local piece = math.type(id) == "integer" and pieces[id + 1]
    if not piece then
      error(("%s: id %s at position %d is not in [0, %d)"):format(fn, tostring(id), i, self.vocab_size), 2)
    end
    out[i] = piece
  end
  return table.concat(out)
end

-- Tokenizer.from_state(state): the tokenizer that state() described, whichever class it is.
local known = { ByteTokenizer = true, CharTokenizer = true }

function Tokenizer.from_state(state)
  local kind = type(state) == "table" and state.type
  if not known[kind] then
    error(("seqnn.data.Tokenizer.from_state: unknown tokenizer type %s (expected ByteTokenizer or CharTokenizer)")
      :format(tostring(kind)), 2)
  end
  -- Required here, not at load time, since the subclasses require this file. A tail call,
  -- so that the subclass's errors point at our caller.
  return require("seqnn.data." .. kind).from_state(state)
end

return Tokenizer
