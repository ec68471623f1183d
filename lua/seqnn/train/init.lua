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

local function evaluate(model, loss_fn, batches)
  model:eval()
  local total = sn.no_grad(function()
    local sum = 0
    for _, b in ipairs(batches) do sum = sum + loss_fn(model, b[1], b[2]):item() end
    return sum
  end)
  model:train()
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
--   on_step = fn{step, loss, lr}      called after every step
--   quiet = true, output = file       no progress output / where it goes (default stdout)
-- summary: {step, loss, val_loss, tokens, time, total_time, tokens_per_s, resumed_from}
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

  local val = validation_batches(opts, batch, eval_batches)

  -- Resume: model, optimizer, loader position and generator, all from the checkpoint.
  local resume, start, time_before = opts.resume, 1, 0
  if resume == true then resume = ckpt_path and file_exists(ckpt_path) and ckpt_path or nil end
  check(resume == nil or resume == false or type(resume) == "string", "resume must be a path or true", resume)
  local resumed_from
  if resume then
    local ck = checkpoint.load(resume, { model = model, optimizer = opt, rng = true,
                                         loader = is_loader(data) and data or nil })
    start, time_before, resumed_from = ck.step + 1, ck.time, ck.step
  end

  local params = model:parameters()
  local log = opts.log and Metrics(opts.log, { resume_step = resumed_from or 0 })
  local progress = not opts.quiet and Progress{ total = steps, start = start - 1, out = opts.output }
  if progress and resumed_from then progress:note(("resumed from %s at step %d"):format(resume, resumed_from)) end

  local t0 = now()
  local function elapsed() return now() - t0 end
  local function save(step)
    checkpoint.save(ckpt_path, { model = model, optimizer = opt, step = step, meta = opts.meta,
      loader = is_loader(data) and data or nil, time = time_before + elapsed() })
  end

  local summary = { step = start - 1, tokens = 0, resumed_from = resumed_from }
  local interval_loss, interval_steps = 0, 0
  model:train()
  for step = start, steps do
    local lr = schedule and schedule:apply(opt, step) or opt:get_lr()
    local loss, tokens = 0, 0
    for _ = 1, accumulate do
      local x, y
      if is_loader(data) then x, y = data:next() else x, y = data:batch("train", batch) end
      local l = loss_fn(model, x, y)
      if accumulate > 1 then l = l / accumulate end
      l:backward()
      loss, tokens = loss + l:item(), tokens + x:numel()
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
        record.val_loss = evaluate(model, loss_fn, val)
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
    if ckpt_path and ((ckpt_every and step % ckpt_every == 0) or step == steps) then save(step) end
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
