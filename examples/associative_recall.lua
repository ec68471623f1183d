-- examples/associative_recall.lua -- multi-query associative recall (MQAR, the Zoology
-- benchmark that the DeltaNet paper reports) at CPU scale: equal-size 2-layer models of
-- several token mixers are trained on a mix of 4 to 16 key-value pairs per sequence and
-- tested on each number of pairs. Recall of many bindings at once is where fixed-size
-- recurrent states differ: the delta rule overwrites a key's old value instead of adding to
-- it, so DeltaNet should lead the linear-time mixers (attention keeps every pair verbatim).
-- Nine models of ~100K parameters, 1500 steps each: about 10 minutes on one thread.
--
--   lua examples/associative_recall.lua                       the default comparison
--   lua examples/associative_recall.lua --models deltanet,gla --steps 500
--   lua examples/associative_recall.lua --help
local sn = require "seqnn"

local PROG = "examples/associative_recall.lua"
local FLAGS = {
  { "steps", "integer", 1500, "optimizer steps per model" },
  { "batch", "integer", 32, "sequences per step" },
  { "length", "integer", 64, "sequence length" },
  { "vocab", "integer", 64, "ids: blank, keys, values" },
  { "pairs", "string", "4,8,16", "key-value pairs per sequence, trained as a mix and tested one by one" },
  { "d", "integer", 64, "model width" },
  { "heads", "integer", 2, "heads (the recurrent mixers' head dim is d / heads)" },
  { "conv", "integer", 4, "short convolution width of the mixers that have one (deltanet, gla, mamba2, mamba)" },
  { "lr", "number", 3e-3, "peak learning rate (AdamW, warmup then cosine)" },
  { "eval", "integer", 8, "test batches per number of pairs" },
  { "models", "string", "attention,deltanet,gla,retnet,mamba2,linear,transnormer,liger,mamba",
    "token mixers, comma-separated" },
  { "seed", "integer", 1, "random seed" },
  { "threads", "integer", nil, "threads (default: all cores)" },
}
local opts = sn.cli.parse(PROG, FLAGS, arg or {})
if opts.threads then sn.set_num_threads(opts.threads) end
local counts = {}
for m in opts.pairs:gmatch("[^,]+") do
  local n = math.tointeger(tonumber(m))
  if not n or n < 1 or 4 * n > opts.length then
    sn.cli.fail(PROG, ("--pairs needs integers in 1 .. length / 4 = %d, got '%s'"):format(opts.length // 4, m))
  end
  counts[#counts + 1] = n
end

local train = sn.data.MQAR{ length = opts.length, pairs = counts, vocab = opts.vocab }
print(train:describe())

local function run(mixer)
  sn.manual_seed(opts.seed)
  local model = sn.models.LM{ vocab = train.vocab_size, d = opts.d, layers = 2, heads = opts.heads,
    context = opts.length, mixer = mixer, mlp = mixer == "mamba" and "none" or "gelu", norm = "rmsnorm",
    d_conv = opts.conv }
  local opt = sn.optim.AdamW(model:parameters(), { lr = opts.lr, weight_decay = 0.0 })
  local schedule = sn.optim.schedule.warmup_cosine{ lr = opts.lr, warmup = opts.steps // 20, total = opts.steps,
    min_lr = opts.lr / 10 }
  print(("== %s"):format(mixer))
  local summary = sn.train.fit{ model = model, optimizer = opt, schedule = schedule, data = train, steps = opts.steps,
    batch = opts.batch, clip = 1.0, eval_batches = 2 }
  local row = { name = mixer, params = model:num_parameters(), seconds = summary.total_time, acc = {} }
  for i, n in ipairs(counts) do
    local test = sn.data.MQAR{ length = opts.length, pairs = n, vocab = opts.vocab }
    row.acc[i] = test:evaluate(model, opts.eval, opts.batch)
  end
  return row
end

local rows = {}
for name in opts.models:gmatch("[^,]+") do rows[#rows + 1] = run(name) end
print()
local head = ("%-12s %8s %7s"):format("model", "params", "time")
for _, n in ipairs(counts) do head = head .. ("  %8s"):format(("%d pairs"):format(n)) end
print(head)
for _, r in ipairs(rows) do
  local line = ("%-12s %8d %6.0fs"):format(r.name, r.params, r.seconds)
  for i = 1, #counts do line = line .. ("  %7.1f%%"):format(100 * r.acc[i]) end
  print(line)
end
print(("chance: %.1f%%"):format(100 * train.chance))
