-- seqnn.data.TextDataset{text = str | path = file, seq = T [, tokenizer = tok] [, split = 0.9]}:
-- a text encoded once into ids, split by position into "train" (the first split fraction)
-- and "val" (the rest). A sampler: batch(split, B) draws B random windows of T + 1 ids from
-- one split, as inputs x (B,T) and next-token targets y (B,T). tokenizer defaults to a
-- CharTokenizer of the text.
local sn = require "seqnn"
local Dataset = require "seqnn.data.Dataset"
local CharTokenizer = require "seqnn.data.CharTokenizer"
local TextDataset = sn.class("seqnn.data.TextDataset", Dataset)

local SPLIT_NAMES = { train = "training", val = "validation" }

local function read_file(path, fn)
  local f, err = io.open(path, "rb")
  if not f then error(("%s: cannot open %s"):format(fn, err), 4) end
  local text = f:read("a")
  f:close()
  return text
end

function TextDataset:__init(opts)
  local fn = "seqnn.data.TextDataset"
  if type(opts) ~= "table" then
    error(("%s: expected a table {text = ... or path = ..., seq = T}, got %s"):format(fn, type(opts)), 3)
  end
  if (opts.text == nil) == (opts.path == nil) then
    error(("%s: give exactly one of text = string and path = file"):format(fn), 3)
  end
  if opts.path ~= nil and type(opts.path) ~= "string" then
    error(("%s: path must be a string, got %s"):format(fn, type(opts.path)), 3)
  end
  local text = opts.text or read_file(opts.path, fn)
  if type(text) ~= "string" then error(("%s: text must be a string, got %s"):format(fn, type(text)), 3) end
  local T, split = opts.seq, opts.split or 0.9
  if math.type(T) ~= "integer" or T < 1 then
    error(("%s: seq must be a positive integer, got %s"):format(fn, tostring(T)), 3)
  end
  if type(split) ~= "number" or not (split > 0 and split < 1) then
    error(("%s: split must be a fraction in (0, 1), got %s"):format(fn, tostring(split)), 3)
  end
  local tok = opts.tokenizer
  if tok == nil then
    tok = CharTokenizer.from_text(text)
  elseif type(tok) ~= "table" or type(tok.encode) ~= "function" then
    error(("%s: tokenizer must have an encode method, got %s"):format(fn, tostring(tok)), 3)
  end

  local ids = tok:encode(text)
  local n = ids:numel()
  local sizes = { train = math.floor(n * split) }
  sizes.val = n - sizes.train
  for _, name in ipairs({ "train", "val" }) do
    if sizes[name] < T + 1 then
      error(("%s: seq %d is longer than the %s split (%d tokens; a window needs seq + 1 = %d)")
        :format(fn, T, SPLIT_NAMES[name], sizes[name], T + 1), 3)
    end
  end
  self.tokenizer, self.seq, self.ids = tok, T, ids
  self.splits = { train = ids:narrow(1, 1, sizes.train), val = ids:narrow(1, sizes.train + 1, sizes.val) }
end

local function split_ids(self, split, fn)
  local ids = self.splits[split]
  if not ids then
    error(("%s: split must be \"train\" or \"val\", got %s"):format(fn, tostring(split)), 3)
  end
  return ids
end

-- batch(split, B): x, y (B,T) i64 with y[b][t] the token after x[b][t]. The window starts
-- are uniform over the split (seqnn's generator), and windows never leave their split.
function TextDataset:batch(split, B)
  local fn = "seqnn.data.TextDataset:batch"
  local ids = split_ids(self, split, fn)
  if math.type(B) ~= "integer" or B < 1 then
    error(("%s: B must be a positive integer, got %s"):format(fn, tostring(B)), 2)
  end
  local T = self.seq
  -- Gather all B x (T+1) ids at once: (starts (B,1) + 0..T) flattened indexes the split.
  local starts = sn.randint(0, ids:numel() - T, B, 1)
  local windows = ids:index_select(1, (starts + sn.arange(T + 1, "i64")):view(B * (T + 1)))
    :view(B, T + 1)
  return windows:narrow(2, 1, T):contiguous(), windows:narrow(2, 2, T):contiguous()
end

-- num_tokens([split]): the number of ids in a split, or in the whole text.
function TextDataset:num_tokens(split)
  if split == nil then return self.ids:numel() end
  return split_ids(self, split, "seqnn.data.TextDataset:num_tokens"):numel()
end

function TextDataset:__tostring()
  return ("seqnn.data.TextDataset(%d tokens: train %d, val %d; seq %d; %s)"):format(self.ids:numel(),
    self.splits.train:numel(), self.splits.val:numel(), self.seq, tostring(self.tokenizer))
end

return TextDataset
