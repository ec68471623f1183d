-- examples/memory_layers.lua -- the same small character-level LM trained on the default
-- corpus with dense FFNs, with MemoryFormer's memory layers (hash tables in place of the
-- FFN's fully-connected layers, then also in place of the attention's projections), with
-- product-key memory as the FFN, and with EcoFormer's binary-hash attention as the mixer.
-- Prints validation loss, parameters, FLOPs per token and tokens/s of each. About three
-- minutes on 2 cores.
--
--   lua examples/memory_layers.lua
--   lua examples/memory_layers.lua --steps 600 --d 256
--   lua examples/memory_layers.lua --help
local sn = require "seqnn"
local compare = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib/compare.lua")

local PROG = "examples/memory_layers.lua"
local FLAGS = {
  { "steps", "integer", 300, "training steps per model" },
  { "batch", "integer", 32, "sequences per step" },
  { "seq", "integer", 64, "characters per sequence" },
  { "d", "integer", 128, "model width" },
  { "layers", "integer", 2, "transformer blocks" },
  { "lr", "number", 3e-3, "peak learning rate" },
  { "bits", "integer", 8, "hash bits per chunk of the memory layers" },
  { "pkm_keys", "integer", 64, "sub-keys per half of product-key memory (n_keys^2 values)" },
  { "pkm_knn", "integer", 8, "value rows each product-key memory head reads per token" },
  { "threads", "integer", nil, "threads (default: all cores)" },
  { "seed", "integer", 1, "random seed" },
}
local opts = sn.cli.parse(PROG, FLAGS, arg or {})
if opts.threads then sn.set_num_threads(opts.threads) end
if opts.d % opts.bits ~= 0 then
  sn.cli.fail(PROG, ("--d %d must be a multiple of --bits %d (the memory layers hash d in chunks of bits)"):format(
    opts.d, opts.bits))
end

sn.manual_seed(opts.seed)
local ds = sn.data.TextDataset{ text = sn.data.default_corpus(), seq = opts.seq }
local base = { vocab_size = ds.tokenizer.vocab_size, d = opts.d, layers = opts.layers, heads = 4,
  context = opts.seq, norm = "rmsnorm", dropout = 0.1 }
local function config(extra)
  local c = {}
  for k, v in pairs(base) do c[k] = v end
  for k, v in pairs(extra) do c[k] = v end
  return c
end

-- The same validation windows for every model.
local val = compare.Validation(ds, opts.batch)

-- FLOPs per token of the layers that carry the model's arithmetic: 2 per weight of a
-- Linear (the tied output projection included), a module's own count where it has one
-- (memory layers, product-key memory, binary-hash attention), and softmax attention's
-- scores and weighted sums over a full window.
local function flops_per_token(model)
  local total = 2 * model.tok.weight:numel() -- the output projection (tied to the embedding)
  local function walk(m)
    if m.flops_per_token then
      total = total + m:flops_per_token(opts.seq)
      return
    end
    if m.__name == "seqnn.nn.Linear" then total = total + 2 * m.weight:numel() end
    if m.__name == "seqnn.nn.MultiheadAttention" or m.__name == "seqnn.nn.MemoryAttention" then
      total = total + 4 * opts.seq * opts.d
    end
    for _, child in ipairs(m:children()) do walk(child) end
  end
  for _, block in ipairs(model.blocks:children()) do walk(block) end
  return total
end

local runs = {
  { "dense FFN (GELU, 4d)", { mlp = "gelu" } },
  { "memory-layer FFN", { mlp = "memory", memory_bits = opts.bits } },
  { "MemoryFormer (memory QKV + FFN)", { mixer = "memory_attention", mlp = "memory", memory_bits = opts.bits } },
  { ("product-key FFN (%d values)"):format(opts.pkm_keys ^ 2), { mlp = "pkm", pkm_keys = opts.pkm_keys, pkm_knn = opts.pkm_knn } },
  { "EcoFormer attention, dense FFN", { mixer = "ecoformer", mlp = "gelu" } },
}

print(("seqnn memory-layer example | %s, %d threads | %d tokens, vocab %d | LM d=%d, %d layers, %d steps"):format(
  sn.config().simd, sn.get_num_threads(), ds:num_tokens(), ds.tokenizer.vocab_size, opts.d, opts.layers, opts.steps))
local rows = {}
for _, run in ipairs(runs) do
  local name = run[1]
  print(("== %s"):format(name))
  sn.manual_seed(opts.seed)
  local model = sn.models.LM(config(run[2]))
  local optimizer = sn.optim.AdamW(model:parameters(), { lr = opts.lr, weight_decay = 0.1 })
  local summary = sn.train.fit{ model = model, optimizer = optimizer, data = ds, steps = opts.steps,
    batch = opts.batch, clip = 1.0, eval_batches = 0, log_every = math.max(1, opts.steps // 5),
    schedule = sn.optim.schedule.warmup_cosine{ lr = opts.lr, warmup = math.max(1, opts.steps // 20),
      total = opts.steps, min_lr = opts.lr / 10 } }
  rows[#rows + 1] = { name = name, loss = val:loss(model), params = model:num_parameters(),
    flops = flops_per_token(model), train = summary.tokens_per_s, infer = val:tokens_per_s(model) }
end

print()
print(("%-34s %9s %11s %12s %14s %14s"):format("model", "val loss", "parameters", "FLOPs/token", "train tok/s",
  "infer tok/s"))
for _, r in ipairs(rows) do
  print(("%-34s %9.4f %11d %12d %14.0f %14.0f"):format(r.name, r.loss, r.params, r.flops, r.train, r.infer))
end
print(("(FLOPs per token of the blocks and the output projection at context %d; inference: forwards of %d x %d"
  .. " tokens)"):format(opts.seq, opts.batch, opts.seq))
