-- tests/dist/equivalence.lua -- mpirun -np 2: two ranks with batch b train to the same
-- parameters as one rank with batch 2b (AdamW, clipping, N steps), for a sampler
-- (TextDataset) and for a shuffling DataLoader; distributed validation gives the one-rank
-- loss. Rank 0 computes the one-rank reference itself (dist = false).
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local rank, world = util.init()
sn.set_num_threads(1)

local B, STEPS, TOL = 4, 8, 1e-5
local ds = sn.data.TextDataset{ text = sn.data.default_corpus(), seq = 16 }
local V = ds.tokenizer.vocab_size

local function gpt()
  sn.manual_seed(7)
  return sn.models.build("gpt", { vocab_size = V, d = 32, layers = 1, heads = 2, context = 16 })
end

local function run(dist, batch, data, extra, sgd)
  local model = gpt()
  -- AdamW and clipping do not see a gradient's scale (sum instead of mean would pass): SGD does.
  local opt = sgd and sn.optim.SGD(model:parameters(), { lr = 0.05, momentum = 0.9 })
              or sn.optim.AdamW(model:parameters(), { lr = 3e-3, weight_decay = 0.1 })
  sn.manual_seed(11) -- the batch stream
  local o = { model = model, optimizer = opt, data = data, steps = STEPS, batch = batch, clip = 0.5,
              quiet = true, dist = dist, eval_batches = 6 }
  for k, v in pairs(extra or {}) do o[k] = v end
  if o.clip == false then o.clip = nil end
  local summary = sn.train.fit(o)
  return util.snapshot(model), summary
end

-- ---- a sampler: each rank draws the global batch and keeps its rows -------------------
local dist_params, dist_summary = run(true, B, ds)
local ref_params, ref_summary
if rank == 0 then ref_params, ref_summary = run(false, B * world, ds) end

util.check("sampler: every rank ends with the same parameters", (function()
  local mine = {}
  for i, p in ipairs(dist_params) do mine[i] = p:clone() end
  sn.dist.broadcast(mine, 0)
  return util.max_rel_diff(dist_params, mine) == 0
end)(), "parameters differ from rank 0's")

local diff = rank == 0 and util.max_rel_diff(dist_params, ref_params) or 0
util.check(("sampler: %d ranks x batch %d == 1 rank x batch %d after %d steps (rel diff %.2g)"):format(
  world, B, B * world, STEPS, diff), diff <= TOL, ("relative difference %.3g > %g"):format(diff, TOL))

local dv = rank == 0 and math.abs(dist_summary.val_loss - ref_summary.val_loss) or 0
util.check("distributed validation loss == one rank's", dv <= 1e-5 * math.abs(ref_summary and ref_summary.val_loss or 1),
  ("val %.7f vs %.7f"):format(dist_summary.val_loss, ref_summary and ref_summary.val_loss or 0))
local dl = rank == 0 and math.abs(dist_summary.loss - ref_summary.loss) or 0
util.check("logged training loss is the global batch's", dl <= 1e-5 * math.abs(ref_summary and ref_summary.loss or 1),
  ("loss %.7f vs %.7f"):format(dist_summary.loss, ref_summary and ref_summary.loss or 0))
util.check("tokens count every rank's rows", dist_summary.tokens == STEPS * B * world * 16 and
  dist_summary.world_size == world and dist_summary.rank == rank, dist_summary.tokens)

local sp = run(true, B, ds, { clip = false }, true)
local sr = rank == 0 and run(false, B * world, ds, { clip = false }, true)
local d1 = rank == 0 and util.max_rel_diff(sp, sr) or 0
util.check(("sampler, SGD without clipping: %d ranks x batch %d == 1 rank x batch %d (rel diff %.2g)"):format(
  world, B, B * world, d1), d1 <= TOL, ("relative difference %.3g > %g"):format(d1, TOL))

-- ---- randomness inside the model: a stream per rank, the batch stream shared -----------
local function draws()
  local seen = {}
  local model = gpt()
  sn.manual_seed(11)
  sn.train.fit{ model = model, optimizer = sn.optim.SGD(model:parameters(), { lr = 0.01 }), data = ds, steps = 3,
    batch = B, quiet = true, eval_batches = 0, accumulate = 2, loss = function(m, x, y)
      seen[#seen + 1] = sn.rand(4) -- as dropout would draw
      return sn.F.cross_entropy(m(x), y)
    end }
  local rng = sn.get_rng_state()
  return sn.cat(seen, 1), sn.tensor({ rng.seed, rng.offset }, "i64")
end
local a, state = draws()
local again = draws()
local other, root_state = a:clone(), state:clone()
sn.dist.broadcast({ other, root_state }, 0)
util.check("model randomness: the same on a rerun, different on each rank and micro-batch",
  sn.allclose(a, again, 0, 0) and (rank == 0 or not sn.allclose(a, other)) and
  not sn.allclose(a:narrow(1, 1, 4), a:narrow(1, 5, 4)), "draws repeated or shared")
util.check("batch randomness: the generator stays in step across ranks",
  state:totable()[1] == root_state:totable()[1] and state:totable()[2] == root_state:totable()[2], "states differ")

-- ---- a shuffling DataLoader: ranks take consecutive slices of the global batch ----------
sn.manual_seed(3)
local N = 4 * B * world + 3 -- a partial global batch at the end of each epoch
local x = sn.randint(0, V, N, 16)
local y = sn.randint(0, V, N, 16)
local tds = sn.data.TensorDataset(x, y)
local function loader(batch) return sn.data.DataLoader(tds, { batch = batch, shuffle = true, seed = 5, drop_last = true }) end
local dl_dist = loader(B)
local dp = run(true, nil, dl_dist, { eval_batches = 0 })
local ref_dl = rank == 0 and loader(B * world)
local rp = rank == 0 and run(false, nil, ref_dl, { eval_batches = 0 })
local d2 = rank == 0 and util.max_rel_diff(dp, rp) or 0
util.check(("DataLoader: %d ranks x batch %d == 1 rank x batch %d, across epochs (rel diff %.2g)"):format(
  world, B, B * world, d2), d2 <= TOL, ("relative difference %.3g > %g"):format(d2, TOL))
local st = dl_dist:state()
util.check("DataLoader: the position is global (same as the one-rank loader's)",
  rank ~= 0 or (st.epoch == ref_dl:state().epoch and st.cursor == ref_dl:state().cursor),
  ("epoch %d cursor %d"):format(st.epoch, st.cursor))

sn.dist.finalize()
