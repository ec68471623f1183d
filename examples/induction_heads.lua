-- examples/induction_heads.lua -- the Induction Heads task of the Mamba paper (section
-- 4.1.2) at CPU scale: recall the token that followed a trigger when the trigger comes
-- again at the end. A 2-layer Mamba trained at length 256 keeps solving it at 16x that
-- length (about 10 minutes on 2 cores; the induction head forms suddenly, after ~1500 steps).
--
--   lua examples/induction_heads.lua                        Mamba, trained at 256, tested to 4096
--   lua examples/induction_heads.lua --length 64 --steps 1000 --models mamba,attention
--                                                           a quick comparison with attention
--   lua examples/induction_heads.lua --help
local sn = require "seqnn"

local PROG = "examples/induction_heads.lua"
local FLAGS = {
  { "steps", "integer", 2500, "optimizer steps per model" },
  { "batch", "integer", 32, "sequences per step" },
  { "length", "integer", 256, "training length" },
  { "vocab", "integer", 16, "symbols (the trigger is one more id)" },
  { "d", "integer", 64, "model width" },
  { "lr", "number", 3e-3, "peak learning rate (AdamW, warmup then cosine)" },
  { "tests", "string", "1,4,16", "test lengths as multiples of the training length" },
  { "eval", "integer", 8, "test batches per length" },
  { "models", "string", "mamba", "token mixers to train, comma-separated (e.g. mamba,attention)" },
  { "seed", "integer", 1, "random seed" },
  { "threads", "integer", nil, "threads (default: all cores)" },
}
local opts = sn.cli.parse(PROG, FLAGS, arg or {})
if opts.threads then sn.set_num_threads(opts.threads) end
local multiples = {}
for m in opts.tests:gmatch("[^,]+") do
  local k = math.tointeger(tonumber(m))
  if not k or k < 1 then sn.cli.fail(PROG, ("--tests needs positive integers, got '%s'"):format(m)) end
  multiples[#multiples + 1] = k
end

local train = sn.data.InductionHeads{ length = opts.length, vocab = opts.vocab }
print(train:describe())

local function run(mixer)
  sn.manual_seed(opts.seed)
  -- Attention gets 2 heads and the same depth and width; its RoPE has no fixed context.
  local model = sn.models.LM{ vocab = train.vocab_size, d = opts.d, layers = 2, heads = 2,
    context = opts.length, mixer = mixer, mlp = mixer == "mamba" and "none" or "gelu", norm = "rmsnorm" }
  local opt = sn.optim.AdamW(model:parameters(), { lr = opts.lr, weight_decay = 0.0 })
  local schedule = sn.optim.schedule.warmup_cosine{ lr = opts.lr, warmup = opts.steps // 20, total = opts.steps,
    min_lr = opts.lr / 10 }
  print(("== %s"):format(mixer))
  local summary = sn.train.fit{ model = model, optimizer = opt, schedule = schedule, data = train, steps = opts.steps,
    batch = opts.batch, clip = 1.0, eval_batches = 2 }
  local row = { name = mixer, params = model:num_parameters(), seconds = summary.total_time, acc = {} }
  for i, k in ipairs(multiples) do
    local test = sn.data.InductionHeads{ length = k * opts.length, vocab = opts.vocab }
    row.acc[i] = test:evaluate(model, opts.eval, opts.batch)
  end
  return row
end

local rows = {}
for name in opts.models:gmatch("[^,]+") do rows[#rows + 1] = run(name) end
print()
local head = ("%-10s %8s %7s"):format("model", "params", "time")
for _, k in ipairs(multiples) do head = head .. ("  %7s"):format(("T=%d"):format(k * opts.length)) end
print(head)
for _, r in ipairs(rows) do
  local line = ("%-10s %8d %6.0fs"):format(r.name, r.params, r.seconds)
  for i = 1, #multiples do line = line .. ("  %6.1f%%"):format(100 * r.acc[i]) end
  print(line)
end
print(("chance: %.1f%%"):format(100 * train.chance))
