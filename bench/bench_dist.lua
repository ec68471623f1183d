-- bench/bench_dist.lua -- sn.dist over MPI on this machine (2 ranks, shared memory):
--   * allreduce of a 100 MB gradient set through sn.dist.allreduce (mean, bucketed), as
--     100 tensors of 1 MB and as the char-level GPT's parameter list repeated to 100 MB
--     (many small tensors), in GB/s of algorithm bandwidth (bytes / time), beside the MPI
--     library's own MPI_Allreduce of one 100 MB buffer (build/bench/mpi_allreduce);
--   * scaling: training tokens/s of bench_gpt.lua's char-level GPT (4 layers, d = 128,
--     context 64, batch 12 per rank) through sn.train.fit with dist = true on 1 and on 2
--     ranks of one thread each over the whole run, and at the median step beside it (a
--     step another tenant of the shared machine slowed on either rank moves the mean, not
--     the median); x_ref = 2 ranks over 1 (the target is >= 1.7); and the
--     share of a step that the gradient allreduce takes (what overlapping it with the
--     backward pass could save at most). Beside them, two independent 1-rank runs at once,
--     one per core, with no communication at all: what this machine's two cores deliver
--     together, the ceiling for 2 ranks.
-- Rows use the table format of build/bench/seqnn_bench (bench/README.md).
--
--   make bench                   (last; prints a skip line when the build has no MPI)
--   lua bench/bench_dist.lua     the same, by hand (LUA_PATH/LUA_CPATH to the checkout)
-- Runs itself under mpirun: `bench_dist.lua allreduce|scale` are the per-rank workers.
local sn = require "seqnn"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local util = dofile(here .. "util.lua")

local ROW = "%-18s %-22s %-7s %-7s %-9s %-8s %-7s %-6s %s"
local V, D, LAYERS, HEADS, CONTEXT, BATCH = 65, 128, 4, 4, 64, 12
local MB100 = 100 * 1024 * 1024

local function gpt()
  return sn.models.LM{ vocab_size = V, d = D, layers = LAYERS, heads = HEADS, context = CONTEXT, positions = "learned" }
end

-- ---- workers (under mpirun) ---------------------------------------------------------------
local mode = arg and arg[1]

-- Median seconds of fn() over n runs, each timed between barriers; the slowest rank's time.
local function timed(fn, n)
  fn()
  local t = {}
  for i = 1, n do
    sn.dist.barrier()
    local t0 = sn.clock()
    fn()
    t[i] = sn.clock() - t0
  end
  local slowest = sn.dist.allreduce(sn.tensor(t), "sum") -- mean over ranks, per sample
  return util.median(slowest:totable()) / sn.dist.world_size()
end

if mode == "allreduce" then
  sn.dist.init()
  sn.set_num_threads(1)
  local sets = {}
  local list = {}
  for i = 1, 100 do list[i] = sn.randn(MB100 // 100 // 4) end
  sets[#sets + 1] = { "100 x 1 MiB", list }
  local shapes = {}
  for _, p in ipairs(gpt():parameters()) do shapes[#shapes + 1] = p:shape() end
  local many, bytes = {}, 0
  while bytes < MB100 do
    for _, s in ipairs(shapes) do
      local t = sn.randn(s)
      many[#many + 1], bytes = t, bytes + t:numel() * 4
      if bytes >= MB100 then break end
    end
  end
  sets[#sets + 1] = { ("GPT params x%d (%d)"):format(math.ceil(#many / #shapes), #many), many }
  for _, set in ipairs(sets) do
    local total = 0
    for _, t in ipairs(set[2]) do total = total + t:numel() * 4 end
    local s = timed(function() sn.dist.allreduce(set[2], "mean") end, 7)
    if sn.dist.rank() == 0 then print(("result allreduce %q %d %.6f"):format(set[1], total, s)) end
  end
  sn.dist.finalize()
  return
elseif mode == "scale" then
  local rank, world = sn.dist.init()
  sn.set_num_threads(1)
  local steps, warm = tonumber(arg[2]) or 30, 5
  sn.manual_seed(1)
  local model = gpt()
  local opt = sn.optim.AdamW(model:parameters(), { lr = 1e-3, weight_decay = 0.1 })
  local ds = sn.data.TextDataset{ text = sn.data.default_corpus(), seq = CONTEXT }
  -- Time spent inside fit's allreduce calls once timing starts: the transfer plus waiting
  -- for the slower rank (a step ends when both have finished their backward pass).
  local t_start, in_allreduce, allreduce = nil, 0, sn.dist.allreduce
  sn.dist.allreduce = function(...)
    local t0 = sn.clock()
    local r = allreduce(...)
    if t_start then in_allreduce = in_allreduce + sn.clock() - t0 end
    return r
  end
  -- Each step's end, for the median step: a step that another tenant of this shared machine
  -- slowed (on either rank) moves the mean but not the median.
  local ends = {}
  sn.train.fit{ model = model, optimizer = opt, data = ds, steps = warm + steps, batch = BATCH, quiet = true,
    eval_batches = 0, dist = true, on_step = function(s)
      if s.step >= warm then ends[#ends + 1] = sn.clock() end
      if s.step == warm then t_start = ends[1] end
    end }
  local seconds = sn.clock() - t_start
  local durations = {}
  for i = 2, #ends do durations[i - 1] = ends[i] - ends[i - 1] end
  local median_step = util.median(durations)
  sn.dist.allreduce = allreduce
  local waited = sn.dist.allreduce(sn.tensor({ in_allreduce }), "mean"):item() / steps
  -- The gradient allreduce alone, on this model's gradients.
  local grads = {}
  for i, p in ipairs(model:parameters()) do grads[i] = sn.randn(p:shape()) end
  local ar = timed(function() sn.dist.allreduce(grads, "mean") end, 21)
  local tokens = steps * BATCH * CONTEXT * world
  if rank == 0 then
    print(("result scale %d %.6f %.1f %.6f %.6f %.6f"):format(world, seconds / steps, tokens / seconds, ar, waited,
      median_step))
  end
  sn.dist.finalize()
  return
end

-- ---- the driver ---------------------------------------------------------------------------
util.banner("bench_dist.lua")
local build = os.getenv("BUILD") or "build"
local raw_bin = build .. "/bench/mpi_allreduce"
local function skip(why) print("# skip: " .. why) end
if not sn.dist.available() then return skip("this build has no MPI (make MPI=1 with libopenmpi-dev installed)") end
if not os.execute("command -v mpirun >/dev/null 2>&1") then return skip("mpirun is not installed (openmpi-bin)") end
if not io.open(raw_bin, "rb") then return skip(raw_bin .. " is missing (make bench builds it)") end

local q = function(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local root_env = ""
if io.popen("id -u"):read("l") == "0" then root_env = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " end
local lua = os.getenv("LUA") or "lua5.4"
local function mpirun(np, cmd)
  local pipe = io.popen(("%smpirun --bind-to core -np %d %s 2>&1"):format(root_env, np, cmd))
  local lines = {}
  for line in pipe:lines() do lines[#lines + 1] = line end
  local ok = pipe:close()
  return lines, ok
end
local function results(lines, what)
  local out = {}
  for _, line in ipairs(lines) do
    if line:match("^result " .. what) then out[#out + 1] = line end
  end
  if #out == 0 then io.stderr:write(table.concat(lines, "\n"), "\n") end
  return out
end

print(("# %s; 2 ranks on this host (shared memory), 1 thread each; GB/s = bytes / time (algorithm bandwidth)"):format(
  sn.dist.library()))
print("# x_ref: allreduce GB/s over MPI_Allreduce's on one buffer of the same size;")
print("#   scaling: tokens/s over 1 rank's (B = sequences per rank); 2 jobs = two 1-rank runs at once, no MPI")
print(ROW:format("kernel", "shape", "threads", "simd", "ms", "GFLOP/s", "GB/s", "x_ref", "ref"))
local simd = sn.config().simd
local function row(kernel, shape, threads, ms, gbs, x, ref)
  print(ROW:format(kernel, shape, threads, simd, ms and ("%.4g"):format(ms) or "-", "-",
    gbs and ("%.3f"):format(gbs) or "-", x and ("%.2f"):format(x) or "-", ref))
end

-- The reference and ours, alternated twice so drift of the shared machine shows.
local raw, ours = {}, {}
for _ = 1, 2 do
  local lines = mpirun(2, ("%s %d 9"):format(q(raw_bin), MB100))
  for _, line in ipairs(lines) do
    local s = line:match("^mpi_allreduce bytes %d+ ranks %d+ seconds (%S+)")
    if s then raw[#raw + 1] = tonumber(s) end
    if line:match("MISMATCH") then print("MPI_Allreduce      MISMATCH " .. line) end
  end
  for _, line in ipairs(results(mpirun(2, ("%s %s allreduce"):format(lua, q(here .. "bench_dist.lua"))), "allreduce")) do
    local name, bytes, s = line:match('^result allreduce "(.-)" (%d+) (%S+)')
    ours[name] = ours[name] or { bytes = tonumber(bytes), t = {} }
    table.insert(ours[name].t, tonumber(s))
  end
end
if #raw == 0 then return skip("build/bench/mpi_allreduce printed nothing") end
local raw_s = util.median(raw)
row("MPI_Allreduce", "100 MiB, 1 buffer", "1", raw_s * 1e3, MB100 / raw_s / 1e9, nil,
  "(reference) " .. sn.dist.library())
local names = {}
for name in pairs(ours) do names[#names + 1] = name end
table.sort(names)
for _, name in ipairs(names) do
  local s = util.median(ours[name].t)
  local gbs = ours[name].bytes / s / 1e9
  row("dist allreduce", name, "1", s * 1e3, gbs, gbs / (MB100 / raw_s / 1e9), "MPI_Allreduce, 1 buffer")
end

-- Scaling: 1 rank, two independent 1-rank runs at once (plain lua: MPI's singleton mode,
-- pinned to cores 0 and 1 when taskset exists), and 2 ranks; alternated, 3 rounds; medians.
local worker = ("%s %s scale 30"):format(lua, q(here .. "bench_dist.lua"))
local pin = os.execute("command -v taskset >/dev/null 2>&1") and "taskset -c %d " or ""
local per = { [1] = {}, [2] = {}, pair = {} }
local function parse(lines, into)
  for _, line in ipairs(results(lines, "scale")) do
    local world, step_s, rate, ar, waited, mstep = line:match("^result scale (%d+) (%S+) (%S+) (%S+) (%S+) (%S+)")
    table.insert(into, { step = tonumber(step_s), rate = tonumber(rate), ar = tonumber(ar), waited = tonumber(waited),
      mrate = tonumber(world) * BATCH * CONTEXT / tonumber(mstep) })
  end
end
for _ = 1, 3 do
  parse(mpirun(1, worker), per[1])
  local pipe = io.popen(("(%s%s%s & %s%s%s; wait) 2>&1"):format(root_env, pin:format(0), worker, root_env,
    pin:format(1), worker))
  local lines, pair = {}, {}
  for line in pipe:lines() do lines[#lines + 1] = line end
  pipe:close()
  parse(lines, pair)
  if #pair == 2 then
    table.insert(per.pair, { rate = pair[1].rate + pair[2].rate, step = (pair[1].step + pair[2].step) / 2,
      mrate = pair[1].mrate + pair[2].mrate })
  end
  parse(mpirun(2, worker), per[2])
end
if #per[1] == 0 or #per[2] == 0 or #per.pair == 0 then return skip("the scaling runs printed nothing") end
local function med(list, key)
  local v = {}
  for i, r in ipairs(list) do v[i] = r[key] end
  return util.median(v)
end
local shape = ("L%d H%d d%d T%d B%d"):format(LAYERS, HEADS, D, CONTEXT, BATCH)
local r1, r2, rp = med(per[1], "rate"), med(per[2], "rate"), med(per.pair, "rate")
local m1, m2, mp = med(per[1], "mrate"), med(per[2], "mrate"), med(per.pair, "mrate")
row("gpt train 1 rank", shape, "1", med(per[1], "step") * 1e3, nil, nil,
  ("%.0f tokens/s, %.0f at the median step (reference)"):format(r1, m1))
row("gpt train 2 jobs", shape, "1+1", med(per.pair, "step") * 1e3, nil, rp / r1,
  ("%.0f tokens/s: 2 independent 1-rank runs at once, the cores' ceiling; at the median step x%.2f"):format(rp,
    mp / m1))
local ar2, step2, wait2 = med(per[2], "ar"), med(per[2], "step"), med(per[2], "waited")
row("gpt train 2 ranks", shape, "1+1", step2 * 1e3, nil, r2 / r1,
  ("%.0f tokens/s, x%.2f of the ceiling; at the median step x%.2f; allreduce %.2f ms alone (%.1f%% of a step), %.1f ms with the wait for the slower rank; target x1.7"):format(
    r2, r2 / rp, m2 / m1, ar2 * 1e3, 100 * ar2 / step2, wait2 * 1e3))
