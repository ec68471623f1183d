-- sn.data: tokenizers, datasets and loaders for training.
--
--   sn.data.ByteTokenizer()  sn.data.CharTokenizer.from_text(text)  sn.data.Tokenizer.from_state(s)
--   sn.data.TextDataset{text = ..., seq = T}      samplers: ds:batch("train", B) -> x, y
--   sn.data.SelectiveCopying{length = L, n_tokens = n, vocab = V}   synthetic tasks (Mamba, 4.1):
--   sn.data.InductionHeads{length = L, vocab = V}    ds:batch(B) -> x, y; ds:accuracy(logits, y)
--   sn.data.MQAR{length = L, pairs = n, vocab = V}   associative recall (Zoology, DeltaNet)
--   sn.data.TensorDataset(x, y)                   index datasets: ds:len(), ds:get(i)
--   sn.data.DataLoader(ds, {batch = B, shuffle = true})
--   sn.data.default_corpus()                      the text of examples/data/tiny.txt
-- See docs/data.md.
local data = {
  Tokenizer = require "seqnn.data.Tokenizer",
  ByteTokenizer = require "seqnn.data.ByteTokenizer",
  CharTokenizer = require "seqnn.data.CharTokenizer",
  Dataset = require "seqnn.data.Dataset",
  TensorDataset = require "seqnn.data.TensorDataset",
  TextDataset = require "seqnn.data.TextDataset",
  SelectiveCopying = require "seqnn.data.SelectiveCopying",
  InductionHeads = require "seqnn.data.InductionHeads",
  MQAR = require "seqnn.data.MQAR",
  DataLoader = require "seqnn.data.DataLoader",
}

-- The embedded default corpus (about 3 KB of English prose), so examples run without files.
function data.default_corpus() return require "seqnn.data.corpus" end

return data
