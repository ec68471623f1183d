-- examples/selective_copying.lua -- the Selective Copying task of the Mamba paper (section
-- 4.1.1) at CPU scale: a 2-layer Mamba LM learns to copy the data tokens scattered among
-- noise, while the same network with the selection removed (dt, B and C fixed parameters
-- instead of functions of the input: an LTI state-space model like S4) cannot.
--
--   lua examples/selective_copying.lua                 both models, a table at the end
--   lua examples/selective_copying.lua --steps 4000 --length 512
--   lua examples/selective_copying.lua --help
local sn = require "seqnn"

local PROG = "examples/selective_copying.lua"
local FLAGS = {
  { "steps", "integer", 2000, "optimizer steps per model" },
  { "batch", "integer", 32, "sequences per step" },
  { "length", "integer", 64, "noise positions the data tokens are scattered among" },
  { "tokens", "integer", 4, "data tokens to copy" },
  { "vocab", "integer", 4, "data symbols" },
  { "d", "integer", 64, "model width" },
  { "lr", "number", 3e-3, "peak learning rate (AdamW, warmup then cosine)" },
  { "eval", "integer", 16, "validation batches for the final accuracy" },
  { "seed", "integer", 1, "random seed" },
  { "threads", "integer", nil, "threads (default: all cores)" },
}
local opts = sn.cli.parse(PROG, FLAGS, arg or {})
if opts.threads then sn.set_num_threads(opts.threads) end
if opts.tokens > opts.length then sn.cli.fail(PROG, "--tokens must be at most --length") end

local task = sn.data.SelectiveCopying{ length = opts.length, n_tokens = opts.tokens, vocab = opts.vocab }
print(task:describe())

local function run(name, selective)
  sn.manual_seed(opts.seed)
  local model = sn.models.LM{ vocab = task.vocab_size, d = opts.d, layers = 2, context = task.seq,
    mixer = "mamba", mlp = "none", selective = selective, norm = "rmsnorm" }
  local opt = sn.optim.AdamW(model:parameters(), { lr = opts.lr, weight_decay = 0.0 })
  local schedule = sn.optim.schedule.warmup_cosine{ lr = opts.lr, warmup = opts.steps // 20, total = opts.steps,
    min_lr = opts.lr / 10 }
  print(("== %s"):format(name))
  local summary = sn.train.fit{ model = model, optimizer = opt, schedule = schedule, data = task, steps = opts.steps,
    batch = opts.batch, clip = 1.0, eval_batches = 2 }
  return { name = name, params = model:num_parameters(), loss = summary.loss,
           acc = task:evaluate(model, opts.eval, opts.batch), seconds = summary.total_time }
end

local rows = { run("Mamba (selective)", true), run("Mamba, no selection", false) }
print()
print(("%-22s %8s %10s %10s %8s"):format("model", "params", "train loss", "accuracy", "time"))
for _, r in ipairs(rows) do
  print(("%-22s %8d %10.3f %9.1f%% %7.0fs"):format(r.name, r.params, r.loss, 100 * r.acc, r.seconds))
end
print(("chance: %.1f%%"):format(100 * task.chance))
