-- sn.optim.schedule: learning rates as a function of the step, counted from 1 (the first
-- optimizer update is step 1, as in AdamW's bias correction).
--
--   s = sn.optim.schedule.warmup_cosine{lr = 3e-4, warmup = 100, total = 5000, min_lr = 3e-5}
--   s:lr_at(step)        -- the learning rate for update number `step`
--   s:apply(opt, step)   -- opt:set_lr(s:lr_at(step)); returns the rate
--
-- Pieces: constant(lr), linear{from, to, steps}, cosine{from, to, steps} (each goes from
-- `from` at local step 0 to `to` at local step `steps` and stays there), and
-- sequence({s1, s2, ...}, {m1, ...}) which runs s1 for steps 1..m1, then s2 with its steps
-- counted from m1, and so on. warmup_cosine and warmup_linear are sequences of these;
-- from_function(f) wraps any f(step) -> lr.
local class = require "seqnn.class"

local Schedule = class("seqnn.optim.Schedule")

function Schedule:__init(fn, name)
  self.fn, self.name = fn, name or "seqnn.optim.Schedule"
end

function Schedule:lr_at(step)
  if type(step) ~= "number" then
    error(("%s:lr_at: step must be a number, got %s"):format(self.name, type(step)), 2)
  end
  return self.fn(step)
end

function Schedule:apply(opt, step)
  if type(step) ~= "number" then
    error(("%s:apply: step must be a number, got %s"):format(self.name, type(step)), 2)
  end
  local lr = self.fn(step)
  opt:set_lr(lr)
  return lr
end

local schedule = { Schedule = Schedule }

local function need_table(fn, opts)
  if type(opts) ~= "table" then
    error(("seqnn.optim.schedule.%s: expected a table of options, got %s"):format(fn, type(opts)), 3)
  end
end

local function need_rate(fn, key, v)
  if type(v) ~= "number" or not (v >= 0) then
    error(("seqnn.optim.schedule.%s: %s must be a number >= 0, got %s"):format(fn, key, tostring(v)), 3)
  end
end

local function need_steps(fn, key, v)
  if math.type(v) ~= "integer" or v < 0 then
    error(("seqnn.optim.schedule.%s: %s must be an integer >= 0, got %s"):format(fn, key, tostring(v)), 3)
  end
end

function schedule.constant(lr)
  need_rate("constant", "lr", lr)
  return Schedule(function() return lr end, "seqnn.optim.schedule.constant")
end

-- linear{from = a, to = b, steps = n}: a + (b - a) * step / n, then b.
function schedule.linear(opts)
  need_table("linear", opts)
  local a, b, n = opts.from, opts.to, opts.steps
  need_rate("linear", "from", a); need_rate("linear", "to", b); need_steps("linear", "steps", n)
  return Schedule(function(step)
    if step >= n then return b end
    return a + (b - a) * step / n
  end, "seqnn.optim.schedule.linear")
end

-- cosine{from = a, to = b, steps = n}: b + (a - b) * (1 + cos(pi * step / n)) / 2, then b.
function schedule.cosine(opts)
  need_table("cosine", opts)
  local a, b, n = opts.from, opts.to, opts.steps
  need_rate("cosine", "from", a); need_rate("cosine", "to", b); need_steps("cosine", "steps", n)
  return Schedule(function(step)
    if step >= n then return b end
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * step / n))
  end, "seqnn.optim.schedule.cosine")
end

-- sequence({s1, ..., sk}, {m1, ..., m(k-1)}): s1 up to step m1, then s(j+1)(step - mj)
-- for steps in (mj, m(j+1)]; milestones increase.
function schedule.sequence(list, milestones)
  local fn = "seqnn.optim.schedule.sequence"
  if type(list) ~= "table" or #list == 0 or type(milestones) ~= "table" or #milestones ~= #list - 1 then
    error(("%s: expected a list of k schedules and a list of k - 1 milestones"):format(fn), 2)
  end
  for i, s in ipairs(list) do
    if not class.is_instance(s, Schedule) then
      error(("%s: element %d is not a schedule"):format(fn, i), 2)
    end
  end
  for i, m in ipairs(milestones) do
    if math.type(m) ~= "integer" or m < 0 or (i > 1 and m < milestones[i - 1]) then
      error(("%s: milestones must be increasing integers >= 0, got %s at %d"):format(fn, tostring(m), i), 2)
    end
  end
  local fns = {}
  for i, s in ipairs(list) do fns[i] = s.fn end
  return Schedule(function(step)
    local start = 0
    for i = 1, #milestones do
      if step <= milestones[i] then return fns[i](step - start) end
      start = milestones[i]
    end
    return fns[#fns](step - start)
  end, fn)
end

-- Called by tail calls, so that its errors (level 2, and level 3 in the need_* helpers)
-- point at the user's line.
local function warmup_then(name, decay, opts)
  need_table(name, opts)
  local lr, warmup, total, min_lr = opts.lr, opts.warmup or 0, opts.total, opts.min_lr or 0
  need_rate(name, "lr", lr); need_rate(name, "min_lr", min_lr)
  need_steps(name, "warmup", warmup); need_steps(name, "total", total)
  if total < warmup then
    error(("seqnn.optim.schedule.%s: total (%d) must be >= warmup (%d)"):format(name, total, warmup), 2)
  end
  local s = schedule.sequence({ schedule.linear{ from = 0, to = lr, steps = warmup },
    decay{ from = lr, to = min_lr, steps = total - warmup } }, { warmup })
  s.name = "seqnn.optim.schedule." .. name
  return s
end

-- warmup_cosine{lr = peak, warmup = w, total = n [, min_lr = 0]}: linear from 0 to lr over
-- steps 1..w (step w gets lr), cosine from lr to min_lr by step n, min_lr after.
function schedule.warmup_cosine(opts) return warmup_then("warmup_cosine", schedule.cosine, opts) end

-- warmup_linear{lr, warmup, total [, min_lr = 0]}: the same with a linear decay.
function schedule.warmup_linear(opts) return warmup_then("warmup_linear", schedule.linear, opts) end

-- from_function(f): a schedule whose lr_at(step) is f(step).
function schedule.from_function(f)
  if type(f) ~= "function" then
    error(("seqnn.optim.schedule.from_function: expected a function, got %s"):format(type(f)), 2)
  end
  return Schedule(f, "seqnn.optim.schedule.from_function")
end

return schedule
