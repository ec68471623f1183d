-- Training checkpoints: one safetensors file (sn.save, atomic) holding everything a run
-- needs to continue exactly where it stopped.
--
--   tensors   "model.<name>"  the model's state_dict
--             "optim.<key>"   the optimizer's state tensors
--   metadata  "step"                    the last finished step
--             "rng.seed" "rng.offset"   sn.get_rng_state(), as decimal integers
--             "optim.<key>"             the optimizer's numbers (per-parameter step, lr)
--             "loader.<key>"            a DataLoader's state(), when one is given
--             "time"                    seconds trained so far
--             anything in opts.meta     strings, e.g. the tokenizer and the model config
-- A schedule is a function of the step, so the step restores it.
local sn = require "seqnn"

local checkpoint = {}

local RESERVED = { step = true, time = true }
local RESERVED_PREFIX = { "rng.", "optim.", "loader." }

-- Integers exactly (64-bit RNG words included), other numbers with all their digits.
local function number_string(v)
  if math.type(v) == "integer" then return ("%d"):format(v) end
  return ("%.17g"):format(v)
end

local function integer_of(s)
  local num = tonumber(s)
  return num and math.tointeger(num)
end

local function is_reserved(key)
  if RESERVED[key] then return true end
  for _, prefix in ipairs(RESERVED_PREFIX) do
    if key:sub(1, #prefix) == prefix then return true end
  end
  return false
end

-- save(path, {model = m, optimizer = opt, step = n [, loader = dl] [, time = s] [, meta = {}]})
function checkpoint.save(path, opts)
  local fn = "seqnn.train.save_checkpoint"
  if type(path) ~= "string" then error(("%s: path must be a string, got %s"):format(fn, type(path)), 2) end
  if type(opts) ~= "table" or opts.model == nil then
    error(("%s: expected a table {model = ..., optimizer = ..., step = n}"):format(fn), 2)
  end
  if math.type(opts.step) ~= "integer" or opts.step < 0 then
    error(("%s: step must be an integer >= 0, got %s"):format(fn, tostring(opts.step)), 2)
  end
  local tensors, meta = {}, {}
  for name, t in pairs(opts.meta or {}) do
    if type(name) ~= "string" or type(t) ~= "string" then
      error(("%s: meta must map strings to strings, got %s = %s (%s)"):format(fn, tostring(name),
        tostring(t), type(t)), 2)
    end
    if is_reserved(name) then
      error(("%s: meta key '%s' is reserved for the checkpoint itself"):format(fn, name), 2)
    end
    meta[name] = t
  end
  for name, t in pairs(opts.model:state_dict()) do tensors["model." .. name] = t end
  if opts.optimizer then
    local otensors, numbers = opts.optimizer:state_dict()
    for k, t in pairs(otensors) do tensors["optim." .. k] = t end
    for k, v in pairs(numbers) do meta["optim." .. k] = number_string(v) end
  end
  if opts.loader then
    for k, v in pairs(opts.loader:state()) do meta["loader." .. k] = number_string(v) end
  end
  local rng = sn.get_rng_state()
  meta["rng.seed"], meta["rng.offset"] = number_string(rng.seed), number_string(rng.offset)
  meta.step = number_string(opts.step)
  meta.time = number_string(opts.time or 0)
  sn.save(path, tensors, meta)
end

-- load(path [, {model = m, optimizer = opt, loader = dl, rng = true}]) -> ck:
--   ck.step, ck.time, ck.meta (all metadata), ck.model (name -> tensor, for load_state_dict),
--   ck.optim_tensors, ck.optim_numbers, ck.rng ({seed, offset}), ck.loader (a state or nil).
-- What the second argument names is restored: the model and optimizer in place, the
-- loader's position, and with rng = true seqnn's generator.
function checkpoint.load(path, into)
  local fn = "seqnn.train.load_checkpoint"
  if type(path) ~= "string" then error(("%s: path must be a string, got %s"):format(fn, type(path)), 2) end
  local tensors, meta = sn.load(path)
  local function need_integer(key)
    local v = integer_of(meta[key])
    if v == nil then
      error(("%s: %s: metadata '%s' must be an integer, got %s (not a seqnn.train checkpoint?)"):format(
        fn, path, key, tostring(meta[key])), 3)
    end
    return v
  end
  local ck = {
    step = need_integer("step"), time = tonumber(meta.time) or 0, meta = meta,
    rng = { seed = need_integer("rng.seed"), offset = need_integer("rng.offset") },
    model = {}, optim_tensors = {}, optim_numbers = {},
  }
  for name, t in pairs(tensors) do
    local m, o = name:match("^model%.(.+)$"), name:match("^optim%.(.+)$")
    if m then ck.model[m] = t elseif o then ck.optim_tensors[o] = t end
  end
  for key, v in pairs(meta) do
    local o, l = key:match("^optim%.(.+)$"), key:match("^loader%.(.+)$")
    if o then ck.optim_numbers[o] = v end
    if l then ck.loader = ck.loader or {}; ck.loader[l] = v end
  end
  into = into or {}
  if into.model then into.model:load_state_dict(ck.model) end
  if into.optimizer then
    if next(ck.optim_numbers) == nil then
      error(("%s: %s holds no optimizer state"):format(fn, path), 2)
    end
    into.optimizer:load_state_dict(ck.optim_tensors, ck.optim_numbers)
  end
  if into.loader then
    if ck.loader == nil then error(("%s: %s holds no DataLoader position"):format(fn, path), 2) end
    into.loader:set_state(ck.loader)
  end
  if into.rng then sn.set_rng_state(ck.rng) end
  return ck
end

return checkpoint
