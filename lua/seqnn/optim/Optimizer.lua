-- seqnn.optim.Optimizer: the base of SGD and AdamW.
--
-- Parameters come as a list of tensors, or as a list of groups, each a table
-- {params = {...}, <option> = value, ...} whose options override the optimizer's (e.g. no
-- weight decay for norms and biases). Every group is a table in opt.param_groups with all
-- options filled in; opt:step() reads them each step, so they may be changed between steps.
--
-- State is kept per parameter, created at its first step. opt:state_dict() returns it as
-- two flat tables that fit a safetensors file: tensors ("<i>.<name>" -> tensor, i the
-- parameter's position over all groups) and numbers ("<i>.step", "group.<g>.lr",
-- "params" -> number, for the metadata; write them with ("%.17g"):format(v) so they read
-- back exactly). opt:load_state_dict(tensors, numbers) restores it, numbers given as
-- numbers or strings; the optimizer must be built with the same options and parameters.
local sn = require "seqnn"
local class = require "seqnn.class"

local Optimizer = class("seqnn.optim.Optimizer")

local is_tensor = sn.core.is_tensor
local is_sparse = require("seqnn.autograd").is_sparse

local function shape_str(t)
  local s = t:shape()
  return #s == 0 and "scalar" or table.concat(s, "x")
end

-- Optimizer.__init(self, params, opts, defaults): defaults lists every option with its
-- default value; unknown options are an error (they are usually typos).
function Optimizer:__init(params, opts, defaults)
  local name = self.__name
  if type(params) ~= "table" or #params == 0 then
    error(("%s: params must be a non-empty list of tensors or of groups {params = {...}}, got %s"):format(
      name, type(params) == "table" and "an empty table" or type(params)), 4)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if defaults[k] == nil then error(("%s: unknown option '%s'"):format(name, tostring(k)), 4) end
  end
  local groups = is_tensor(params[1]) and { { params = params } } or params
  self.param_groups, self.params, self.state = {}, {}, {}
  local seen = {}
  for g, spec in ipairs(groups) do
    if type(spec) ~= "table" or type(spec.params) ~= "table" then
      error(("%s: group %d must be a table {params = {...}, ...}, got %s"):format(name, g, type(spec)), 4)
    end
    local group = { params = {} }
    for k, v in pairs(defaults) do
      if opts[k] ~= nil then v = opts[k] end
      group[k] = v
    end
    for k, v in pairs(spec) do
      if k ~= "params" then
        if defaults[k] == nil then error(("%s: unknown option '%s' in group %d"):format(name, tostring(k), g), 4) end
        group[k] = v
      end
    end
    for i, p in ipairs(spec.params) do
      if not is_tensor(p) or p:dtype() ~= "f32" then
        error(("%s: parameter %d must be an f32 seqnn.Tensor, got %s"):format(
          name, #self.params + 1, is_tensor(p) and p:dtype() or type(p)), 4)
      end
      if seen[p] then error(("%s: parameter %d appears more than once"):format(name, #self.params + 1), 4) end
      seen[p] = true
      group.params[i] = p
      self.params[#self.params + 1] = p
    end
    local bad = self:check_group(group)
    if bad then error(("%s: %s%s"):format(name, bad, #groups > 1 and (" (group " .. g .. ")") or ""), 4) end
    self.param_groups[g] = group
  end
end

-- check_group(group) -> nil, or what is wrong with one of its options ("lr must be ...");
-- subclasses override it.
function Optimizer:check_group() return nil end

-- For check_group: nil when group[key] is a number in [lo, hi), else the complaint.
function Optimizer.bad_number(group, key, lo, hi)
  local v = group[key]
  if type(v) == "number" and v >= lo and v < hi then return nil end
  return ("%s must be a number in [%g, %g), got %s"):format(key, lo, hi, tostring(v))
end

-- Subclasses list in row_state the per-row state tensors (i64, one entry per row of the
-- parameter) that exist once a parameter has had a row-sparse gradient; they are saved
-- and loaded like the others but may be absent.
Optimizer.row_state = {}

-- rows_of(p, g) -> rows (i64), values: a row-sparse gradient's rows, or every row of a
-- dense one (for a parameter whose state counts steps per row).
function Optimizer.rows_of(p, g)
  if is_sparse(g) then return g.rows, g.values end
  return sn.arange(p:size(1), "i64"), g
end

-- Drops every parameter's gradient (p.grad = nil).
function Optimizer:zero_grad()
  local params = self.params
  for i = 1, #params do params[i].grad = nil end
end

-- set_lr(lr): the learning rate of every group (what schedules call each step).
function Optimizer:set_lr(lr)
  if type(lr) ~= "number" or not (lr >= 0) then
    error(("%s:set_lr: lr must be a number >= 0, got %s"):format(self.__name, tostring(lr)), 2)
  end
  for _, group in ipairs(self.param_groups) do group.lr = lr end
end

-- The learning rate of the first group.
function Optimizer:get_lr() return self.param_groups[1].lr end

-- state_dict() -> tensors, numbers (see the top of this file). The tensors are the live
-- state: save them before the next step, or copy them.
function Optimizer:state_dict()
  local tensors, numbers = {}, { params = #self.params }
  for i, p in ipairs(self.params) do
    local s = self.state[p]
    if s then
      for _, k in ipairs(self.state_tensors) do tensors[i .. "." .. k] = s[k] end
      for _, k in ipairs(self.row_state) do tensors[i .. "." .. k] = s[k] end -- nil when absent
      for _, k in ipairs(self.state_numbers) do numbers[i .. "." .. k] = s[k] end
    end
  end
  for g, group in ipairs(self.param_groups) do numbers["group." .. g .. ".lr"] = group.lr end
  return tensors, numbers
end

-- load_state_dict(tensors, numbers): replaces the state with copies of the given one.
-- Everything is checked before anything changes.
function Optimizer:load_state_dict(tensors, numbers)
  local fn = self.__name .. ":load_state_dict"
  if type(tensors) ~= "table" or type(numbers) ~= "table" then
    error(("%s: expected two tables (tensors, numbers), got %s and %s"):format(fn, type(tensors), type(numbers)), 2)
  end
  local function number(key, integer)
    local v = tonumber(numbers[key])
    if v == nil or (integer and math.tointeger(v) == nil) then
      error(("%s: '%s' must be %s, got %s"):format(fn, key, integer and "an integer" or "a number",
        tostring(numbers[key])), 3)
    end
    return integer and math.tointeger(v) or v
  end
  local n = number("params", true)
  if n ~= #self.params then
    error(("%s: the state is for %d parameters but this optimizer has %d"):format(fn, n, #self.params), 2)
  end
  local known, per_row = {}, {}
  for _, k in ipairs(self.state_tensors) do known[k] = true end
  for _, k in ipairs(self.row_state) do known[k], per_row[k] = true, true end
  local keys = {}
  for key in pairs(tensors) do keys[#keys + 1] = tostring(key) end
  table.sort(keys) -- a deterministic first complaint
  local state = {}
  for _, key in ipairs(keys) do
    local t = tensors[key]
    local i, k = key:match("^(%d+)%.(.+)$")
    i = tonumber(i)
    local p = i and self.params[i]
    if not p or not known[k] then
      error(("%s: unexpected key '%s' (expected <i>.%s, i in 1..%d)"):format(fn, key,
        table.concat(self.state_tensors, "|"), #self.params), 2)
    end
    if per_row[k] then -- one step count per row of the parameter
      if not is_tensor(t) or p:dim() < 1 or t:numel() ~= p:size(1) then
        error(("%s: '%s' has shape %s but parameter %d has %s rows"):format(fn, key,
          is_tensor(t) and shape_str(t) or type(t), i, p:dim() < 1 and "no" or tostring(p:size(1))), 2)
      end
      state[i] = state[i] or {}
      state[i][k] = t:reshape(p:size(1)):long():contiguous():clone()
      goto continue
    end
    if not is_tensor(t) or t:numel() ~= p:numel() then
      error(("%s: '%s' has shape %s but parameter %d is %s"):format(fn, key,
        is_tensor(t) and shape_str(t) or type(t), i, shape_str(p)), 2)
    end
    state[i] = state[i] or {}
    state[i][k] = t:reshape(p:shape()):clone()
    ::continue::
  end
  for i, s in pairs(state) do
    for _, k in ipairs(self.state_tensors) do
      if s[k] == nil then error(("%s: '%d.%s' is missing"):format(fn, i, k), 2) end
    end
    for _, k in ipairs(self.state_numbers) do s[k] = number(i .. "." .. k, true) end
  end
  local lrs = {}
  for g = 1, #self.param_groups do lrs[g] = number("group." .. g .. ".lr") end
  self.state = {}
  for i, s in pairs(state) do self.state[self.params[i]] = s end
  for g, group in ipairs(self.param_groups) do group.lr = lrs[g] end
end

return Optimizer
