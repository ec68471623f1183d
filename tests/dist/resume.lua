-- tests/dist/resume.lua MODE DIR -- checkpoints hold nothing rank-specific: a run of 2N
-- steps on 2 ranks equals N steps on 2 ranks, a checkpoint, then N more on 1 rank (same
-- global batch of 8 rows). tests/run-dist runs, in order:
--   mpirun -np 2 resume.lua straight DIR   2N steps; rank 0 saves the parameters
--   mpirun -np 2 resume.lua first DIR      N steps, checkpoint and metrics log (rank 0 only)
--   mpirun -np 1 resume.lua resume DIR     resumes to 2N, compares with "straight"
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local mode, dir = arg[1], arg[2]
assert(mode and dir, "usage: resume.lua straight|first|resume DIR")
local rank, world = util.init()
sn.set_num_threads(1)

local GLOBAL, N = 8, 6
local ds = sn.data.TextDataset{ text = sn.data.default_corpus(), seq = 16 }
sn.manual_seed(21)
local model = sn.models.build("gpt", { vocab_size = ds.tokenizer.vocab_size, d = 32, layers = 1, heads = 2, context = 16 })
local opt = sn.optim.AdamW(model:parameters(), { lr = 3e-3, weight_decay = 0.1 })
local schedule = sn.optim.schedule.warmup_cosine{ lr = 3e-3, warmup = 2, total = 2 * N }
sn.manual_seed(22)
local ckpt, log = dir .. "/ckpt.safetensors", dir .. "/metrics.jsonl"
local opts = { model = model, optimizer = opt, schedule = schedule, data = ds, batch = GLOBAL // world, clip = 1.0,
               quiet = true, eval_batches = 0, dist = true }

local function named(m)
  local out = {}
  for name, p in m:named_parameters() do out[name] = p end
  return out
end

if mode == "straight" then
  opts.steps = 2 * N
  sn.train.fit(opts)
  if rank == 0 then sn.save(dir .. "/straight.safetensors", named(model)) end
  util.check("straight run on " .. world .. " ranks", true)
elseif mode == "first" then
  opts.steps, opts.checkpoint, opts.log, opts.log_every = N, ckpt, log, 1
  sn.train.fit(opts)
  sn.dist.barrier() -- rank 0 has written both files
  local lines = 0
  for _ in io.lines(log) do lines = lines + 1 end
  util.check(("first %d steps on %d ranks: one metrics line per step (rank 0 alone logs)"):format(N, world),
    lines == N, ("%d lines"):format(lines))
elseif mode == "resume" then
  opts.steps, opts.resume = 2 * N, ckpt
  local summary = sn.train.fit(opts)
  local want = sn.load(dir .. "/straight.safetensors")
  local a, b = {}, {}
  for name, p in pairs(named(model)) do a[#a + 1], b[#b + 1] = p, want[name] end
  local d = util.max_rel_diff(a, b)
  util.check(("resumed at step %d on %d rank(s) == straight on 2 ranks (rel diff %.2g)"):format(summary.resumed_from,
    world, d), summary.resumed_from == N and d <= 1e-5, ("resumed_from %s, relative difference %.3g"):format(
    tostring(summary.resumed_from), d))
else
  error("resume.lua: unknown mode " .. tostring(mode))
end
sn.dist.finalize()
