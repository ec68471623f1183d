-- sn.train: a training loop with progress, validation, metrics, checkpoints and exact resume.
--
--   local summary = sn.train.fit{model = m, optimizer = opt, data = ds, steps = 1000, batch = 32,
--                                eval_every = 100, checkpoint = "run/ckpt.safetensors",
--                                log = "run/metrics.jsonl", resume = true}
--   sn.train.save_checkpoint(path, {model =, optimizer =, step =, loader =, meta =})
--   sn.train.load_checkpoint(path [, {model =, optimizer =, loader =, rng = true}]) -> ck
--   sn.train.plot({"a.jsonl", "b.jsonl"}, "curves.png")        (gnuplot; bin/seqnn-plot)
--   sn.train.Progress, sn.train.Metrics
--
-- fit is a plain loop (schedule, forward, backward, clip, step) around the things every
-- run needs; a hand-written loop over the same objects remains just as valid.
--
-- Data-parallel (dist = true, or whenever sn.dist is initialized; docs/dist.md): every
-- rank runs fit with the same arguments. Rank 0's parameters, generator and loader
-- position are broadcast at the start; each step every rank draws the same global batch
-- of world x batch rows (a sampler) or walks the same epoch order (a sharded DataLoader)
-- and trains on its own rows r*batch+1 .. (r+1)*batch; the gradients (with the loss) are
-- averaged in one bucketed allreduce before clipping and the optimizer step, so every rank
-- applies the same update. Rank 0 alone prints, logs and writes checkpoints; a checkpoint
-- holds nothing rank-specific and resumes on any number of ranks.
local sn = require "seqnn"
local class = require "seqnn.class"
local checkpoint = require "seqnn.train.checkpoint"
local Progress = require "seqnn.train.Progress"
local Metrics = require "seqnn.train.Metrics"
local now = require("seqnn.core").clock -- monotonic wall-clock seconds

local train = {
  Progress = Progress,
  Metrics = Metrics,
  save_checkpoint = checkpoint.save,
  load_checkpoint = checkpoint.load,
  plot = require("seqnn.train.plot").plot,
}

-- Validation batches are drawn once, from this seed, so every evaluation sees the same
-- batches (comparable curves) and the training stream does not depend on eval_every.
local VAL_SEED = 20240601

local function default_loss(model, x, y) return sn.F.cross_entropy(model(x), y) end

-- ---- data parallelism ------------------------------------------------------------------

-- The rows of this rank's shard of a global batch (a tensor, or a list of tensors).
local function shard_rows(v, rank, batch, what)
  if sn.is_tensor(v) then
    if v:dim() < 1 or v:size(1) < (rank + 1) * batch then
      error(("seqnn.train.fit: the sampler's %s has %s rows, expected the global batch of %d (data-parallel)"):format(
        what, v:dim() < 1 and "no" or tostring(v:size(1)), batch * (rank + 1)), 4)
    end
    return v:narrow(1, rank * batch + 1, batch):contiguous()
  elseif type(v) == "table" then
    local out = {}
    for k, t in pairs(v) do out[k] = shard_rows(t, rank, batch, what) end
    return out
  end
  error(("seqnn.train.fit: data-parallel training shards the sampler's %s by rows: it must be a tensor or a table of tensors, got %s"):format(
    what, type(v)), 4)
end

-- An i64 tensor of Lua integers, for broadcasting numbers.
local function int_tensor(list) return sn.tensor(list, "i64") end

-- splitmix64-style mixing: the per-rank, per-step seed of the model's randomness (dropout).
local function mix(z)
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return z ~ (z >> 31)
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function is_loader(data) return class.is_instance(data, sn.data.DataLoader) end

-- The fixed validation set: a list of {x, y}. From opts.val (a sampler's "val" split or a
-- DataLoader's first batches), else from data's "val" split; nil when there is none.
local function validation_batches(opts, batch, count)
  local source = opts.val or (not is_loader(opts.data) and opts.data) or nil
  if source == nil or count == 0 then return nil end
  local saved = sn.get_rng_state()
  sn.manual_seed(VAL_SEED)
  local list = {}
  for i = 1, count do
    local x, y
    if is_loader(source) then x, y = source:next() else x, y = source:batch("val", batch) end
    list[i] = { x, y }
  end
  sn.set_rng_state(saved)
  return list
end

-- The mean loss over the fixed batches. Data-parallel: rank r evaluates batches r+1,
-- r+1+world, ... and one allreduce sums the losses, so every rank gets the mean over all
-- of them (as one rank would, up to f32 rounding of the sum) in 1/world of the time.
local function evaluate(model, loss_fn, batches, ddp)
  model:eval()
  local rank, world = ddp and ddp.rank or 0, ddp and ddp.world or 1
  local total = sn.no_grad(function()
    local sum = 0
    for i = rank + 1, #batches, world do sum = sum + loss_fn(model, batches[i][1], batches[i][2]):item() end
    return sum
  end)
  model:train()
  if ddp then total = sn.dist.allreduce(sn.tensor({ total }), "sum"):item() end
  return total / #batches
end

local function check(ok, what, got)
  if not ok then error(("seqnn.train.fit: %s, got %s"):format(what, tostring(got)), 3) end
end

local function positive_integer(v) return math.type(v) == "integer" and v >= 1 end

-- fit(opts) -> summary. opts:
--   model, optimizer                  required; schedule (sn.optim.schedule) sets the lr each step
--   data                              a sampler with :batch(split, B) (TextDataset) or a DataLoader
--   steps, batch                      total optimizer steps; batch size (samplers only)
--   loss = fn(model, x, y) -> loss    default: cross_entropy(model(x), y)
--   accumulate = k                    micro-batches per step (gradients summed, loss / k)
--   clip = max_norm                   clip the global gradient norm before each step
--   val, eval_every, eval_batches     validation (default: data's "val" split, 10 batches,
--                                     at the end only)
--   log = path.jsonl, log_every       metrics lines (default every steps/100 steps)
--   checkpoint = path, checkpoint_every, meta = {string -> string}
--   resume = path | true              true: opts.checkpoint if it exists
--   on_step = fn{step, loss, lr}      called after every step (on every rank)
--   quiet = true, output = file       no progress output / where it goes (default stdout)
--   dist = true | false               data-parallel over sn.dist's ranks (default: when
--                                     sn.dist is initialized); batch is per rank
-- summary: {step, loss, val_loss, tokens, time, total_time, tokens_per_s, resumed_from,
--           rank, world_size}; loss, tokens and tokens/s count every rank's rows
function train.fit(opts)
  check(type(opts) == "table", "expected a table of options", type(opts))
  local model, opt, data, schedule = opts.model, opts.optimizer, opts.data, opts.schedule
  check(class.is_instance(model, sn.nn.Module), "model must be a seqnn.nn.Module", model)
  check(type(opt) == "table" and type(opt.step) == "function", "optimizer must be a seqnn.optim optimizer", opt)
  check(is_loader(data) or (type(data) == "table" and type(data.batch) == "function"),
    "data must be a DataLoader or a sampler with :batch(split, B)", data)
  local steps, batch = opts.steps, opts.batch
  check(positive_integer(steps), "steps must be a positive integer", steps)
  check(is_loader(data) or positive_integer(batch), "batch must be a positive integer", batch)
  local accumulate, loss_fn = opts.accumulate or 1, opts.loss or default_loss
  check(positive_integer(accumulate), "accumulate must be a positive integer", accumulate)
  check(type(loss_fn) == "function", "loss must be a function(model, x, y)", loss_fn)
  local eval_every, eval_batches = opts.eval_every, opts.eval_batches or 10
  check(eval_every == nil or positive_integer(eval_every), "eval_every must be a positive integer", eval_every)
  check(math.type(eval_batches) == "integer" and eval_batches >= 0, "eval_batches must be an integer >= 0", eval_batches)
  local log_every = opts.log_every or math.max(1, steps // 100)
  check(positive_integer(log_every), "log_every must be a positive integer", log_every)
  local ckpt_path, ckpt_every = opts.checkpoint, opts.checkpoint_every
  check(ckpt_path == nil or type(ckpt_path) == "string", "checkpoint must be a path", ckpt_path)
  check(ckpt_every == nil or (ckpt_path and positive_integer(ckpt_every)),
    "checkpoint_every needs checkpoint = path and must be a positive integer", ckpt_every)
  check(opts.clip == nil or (type(opts.clip) == "number" and opts.clip > 0), "clip must be a number > 0", opts.clip)
  check(opts.dist == nil or type(opts.dist) == "boolean", "dist must be a boolean", opts.dist)

  -- Data-parallel: ddp = {rank, world} (nil for a plain run).
  local ddp
  if opts.dist or (opts.dist == nil and sn.dist.is_initialized()) then
    if not sn.dist.is_initialized() then
      error("seqnn.train.fit: dist = true needs seqnn.dist.init() first (and seqnn.dist.finalize() at the end)", 2)
    end
    ddp = { rank = sn.dist.rank(), world = sn.dist.world_size() }
  end
  local lead = ddp == nil or ddp.rank == 0 -- the rank that prints, logs and checkpoints

  -- Data-parallel, the fixed batches are global batches (world x batch rows), as one rank
  -- with the global batch would draw them; the ranks evaluate them in turn.
  local val = validation_batches(opts, batch and batch * (ddp and ddp.world or 1), eval_batches)

  -- Resume: model, optimizer, loader position and generator, all from the checkpoint.
  -- Data-parallel, rank 0 decides (resume = true: does the file exist there?) and every
  -- rank loads the same file, so it must be at that path on every host.
  local resume, start, time_before = opts.resume, 1, 0
  check(resume == nil or type(resume) == "boolean" or type(resume) == "string", "resume must be a path or true", resume)
  if resume == true then resume = ckpt_path and file_exists(ckpt_path) and ckpt_path or nil end
  if ddp and opts.resume == true then
    local flag = sn.dist.broadcast(int_tensor({ resume and 1 or 0 }), 0):item()
    if flag == 1 and not resume then
      error(("seqnn.train.fit: rank 0 resumes from %s, which rank %d cannot read: put checkpoints on a file system every host shares"):format(
        tostring(ckpt_path), ddp.rank), 2)
    end
    if flag == 0 then resume = nil end
  end
  local resumed_from
  if resume then
    local ck = checkpoint.load(resume, { model = model, optimizer = opt, rng = true,
                                         loader = is_loader(data) and data or nil })
    start, time_before, resumed_from = ck.step + 1, ck.time, ck.step
  end

  local params = model:parameters()
  if ddp then
    -- Every rank starts from rank 0's parameters, generator (the shared batch draws) and
    -- loader position, whatever each seeded; the step must agree too.
    sn.dist.broadcast(params, 0)
    local rng = sn.get_rng_state()
    local numbers = { rng.seed, rng.offset, start }
    local ls = is_loader(data) and data:state()
    if ls then for _, v in ipairs({ ls.epoch, ls.cursor, ls.seed or -1 }) do numbers[#numbers + 1] = v end end
    local root = sn.dist.broadcast(int_tensor(numbers), 0):totable()
    if root[3] ~= start then
      error(("seqnn.train.fit: rank %d would start at step %d but rank 0 at step %d (different checkpoints?)"):format(
        ddp.rank, start, root[3]), 2)
    end
    sn.set_rng_state({ seed = root[1], offset = root[2] })
    if ls then
      data:set_state({ epoch = root[4], cursor = root[5], seed = root[6] >= 0 and root[6] or nil, size = ls.size })
      data:shard(ddp.rank, ddp.world)
    end
  end
  local log = lead and opts.log and Metrics(opts.log, { resume_step = resumed_from or 0 })
  local progress = lead and not opts.quiet and Progress{ total = steps, start = start - 1, out = opts.output }
  if progress and resumed_from then progress:note(("resumed from %s at step %d"):format(resume, resumed_from)) end

  local t0 = now()
  local function elapsed() return now() - t0 end
  local function save(step)
    checkpoint.save(ckpt_path, { model = model, optimizer = opt, step = step, meta = opts.meta,
      loader = is_loader(data) and data or nil, time = time_before + elapsed() })
  end

  local summary = { step = start - 1, tokens = 0, resumed_from = resumed_from,
                    rank = ddp and ddp.rank or 0, world_size = ddp and ddp.world or 1 }
  local interval_loss, interval_steps = 0, 0
  -- Data-parallel: one allreduce per step carries every gradient, the loss and which
  -- parameters have a gradient on some rank (a rank may leave one unused).
  local world = ddp and ddp.world or 1
  model:train()
  for step = start, steps do
    local lr = schedule and schedule:apply(opt, step) or opt:get_lr()
    local loss, tokens = 0, 0
    for micro = 1, accumulate do
      local x, y
      if is_loader(data) then
        x, y = data:next()
      elseif ddp then
        x, y = data:batch("train", batch * world) -- the same draw on every rank
        x, y = shard_rows(x, ddp.rank, batch, "x"), shard_rows(y, ddp.rank, batch, "y")
      else
        x, y = data:batch("train", batch)
      end
      local shared_rng
      if ddp and world > 1 then
        -- The generator stays in step across ranks for the batch draws; the model's own
        -- randomness (dropout) gets a stream per rank and micro-batch, so ranks do not drop
        -- the same units of different rows, and a resumed run repeats it exactly.
        shared_rng = sn.get_rng_state()
        local stream = (((step - 1) * accumulate + micro) << 20) + ddp.rank + 1
        sn.set_rng_state({ seed = mix(shared_rng.seed ~ mix(stream)), offset = 0 })
      end
      local l = loss_fn(model, x, y)
      if accumulate > 1 then l = l / accumulate end
      l:backward()
      if shared_rng then sn.set_rng_state(shared_rng) end
      loss, tokens = loss + l:item(), tokens + (sn.is_tensor(x) and x:numel() or 0)
    end
    if ddp then
      local list, has = {}, {}
      for i, p in ipairs(params) do
        local g = p.grad
        if sn.autograd.is_sparse(g) then
          -- sn.dist reduces dense buffers: a row-sparse gradient is densified here (its
          -- rows differ across ranks), at the cost of one table-sized buffer per step
          g = g:to_dense()
          p.grad = g
        end
        has[i] = g and 1 or 0
        if g == nil then
          g = sn.zeros(p:shape())
          p.grad = g
        elseif not g:is_contiguous() then
          g = g:contiguous()
          p.grad = g
        end
        list[i] = g
      end
      has[#params + 1] = loss
      local stats = sn.tensor(has)
      list[#params + 1] = stats
      sn.dist.allreduce(list, "mean")
      local s = stats:totable()
      for i, p in ipairs(params) do
        if s[i] == 0 then p.grad = nil end -- no rank had one: leave it to the optimizer to skip
      end
      loss, tokens = s[#params + 1], tokens * world
    end
    if loss ~= loss or loss == math.huge or loss == -math.huge then
      error(("seqnn.train.fit: the loss is %s at step %d (lr %g): lower the learning rate or clip gradients"):format(
        tostring(loss), step, lr), 2)
    end
    local grad_norm = opts.clip and sn.optim.clip_grad_norm(params, opts.clip)
    opt:step()
    opt:zero_grad()
    summary.step, summary.tokens = step, summary.tokens + tokens
    interval_loss, interval_steps = interval_loss + loss, interval_steps + 1
    if progress then progress:update(step, tokens) end

    local evaluate_now = val and (step == steps or (eval_every and step % eval_every == 0))
    if evaluate_now or step % log_every == 0 or step == steps then
      local record = { step = step, loss = interval_loss / interval_steps, lr = lr, grad_norm = grad_norm,
                       tokens = summary.tokens, time = time_before + elapsed() }
      if evaluate_now then
        record.val_loss = evaluate(model, loss_fn, val, ddp)
        summary.val_loss = record.val_loss
      end
      summary.loss = record.loss
      if log then log:write(record) end
      if progress then
        progress:log(step, record)
        if record.val_loss then progress:note(("step %d  validation loss %.4f"):format(step, record.val_loss)) end
      end
      interval_loss, interval_steps = 0, 0
    end
    if lead and ckpt_path and ((ckpt_every and step % ckpt_every == 0) or step == steps) then save(step) end
    if opts.on_step then opts.on_step{ step = step, loss = loss, lr = lr } end
  end
  if progress then progress:finish() end
  if log then log:close() end
  summary.time = elapsed()
  summary.total_time = time_before + summary.time
  summary.tokens_per_s = summary.time > 0 and summary.tokens / summary.time or 0
  return summary
end

return train
