-- seqnn.nn.Module: the base of every layer and model.
--
-- A module registers what it owns by name, in order:
--   self:parameter(name, t)   a learned tensor (requires grad), in parameters() and state_dict()
--   self:buffer(name, t)      a tensor saved in state_dict() but not learned
--   self:add_module(name, m)  a child module; its entries appear under "name."
-- Each call also stores the value in self[name] (an integer name in self[i]), and the
-- registries keep only the names, so reassigning self.weight = t replaces it everywhere.
-- Names are strings without "." or positive integers (keys "1.weight", "2.bias", ...).
-- state_dict keys are dotted paths in registration order, never in pairs() order.
local sn = require "seqnn"
local class = require "seqnn.class"

local Module = class("seqnn.nn.Module")

local is_tensor = sn.core.is_tensor

function Module:__init()
  self.training = true
  self._params, self._buffers, self._children = {}, {}, {} -- ordered keys
end

local function shape_str(t)
  local s = t:shape()
  return #s == 0 and "scalar" or table.concat(s, "x")
end

-- The key under which a registered value is stored in self, or an error at the caller's caller.
local function check_name(self, method, name, registry)
  if registry == nil then
    error(("%s:%s: the module is not initialized; call Module.__init(self) first in __init"):format(
      self.__name, method), 3)
  end
  local key = name
  if math.type(name) == "integer" then
    if name < 1 then key = nil end
  elseif type(name) ~= "string" or name == "" or name:find(".", 1, true) then
    key = nil
  end
  if key == nil then
    error(("%s:%s: name must be a non-empty string without '.' or a positive integer, got %s"):format(
      self.__name, method, type(name) == "string" and ("'" .. name .. "'") or tostring(name)), 3)
  end
  for _, list in ipairs({ self._params, self._buffers, self._children }) do
    for _, k in ipairs(list) do
      if k == key then
        if list == registry then return key, true end
        error(("%s:%s: '%s' is already registered as another kind of entry"):format(
          self.__name, method, tostring(name)), 3)
      end
    end
  end
  if self[key] ~= nil then
    error(("%s:%s: '%s' is already a field or method of the module"):format(self.__name, method, tostring(name)), 3)
  end
  return key, false
end

-- parameter(name, t): registers t (f32) as a learned parameter, marks it as requiring grad
-- and returns it. Registering a name again replaces the tensor, keeping its place in order.
function Module:parameter(name, t)
  if not is_tensor(t) or t:dtype() ~= "f32" then
    error(("%s:parameter: '%s' must be an f32 seqnn.Tensor, got %s"):format(
      self.__name, tostring(name), is_tensor(t) and t:dtype() or type(t)), 2)
  end
  local key, known = check_name(self, "parameter", name, self._params)
  if not known then self._params[#self._params + 1] = key end
  self[key] = t:requires_grad(true)
  return t
end

-- buffer(name, t): registers t as state that is saved and loaded but not learned.
function Module:buffer(name, t)
  if not is_tensor(t) then
    error(("%s:buffer: '%s' must be a seqnn.Tensor, got %s"):format(self.__name, tostring(name), type(t)), 2)
  end
  local key, known = check_name(self, "buffer", name, self._buffers)
  if not known then self._buffers[#self._buffers + 1] = key end
  self[key] = t
  return t
end

-- add_module(name, m): registers a child module and returns it.
function Module:add_module(name, m)
  if not class.is_instance(m, Module) then
    error(("%s:add_module: '%s' must be a seqnn.nn.Module, got %s"):format(
      self.__name, tostring(name), type(m) == "table" and (m.__name or "a table") or type(m)), 2)
  end
  local key, known = check_name(self, "add_module", name, self._children)
  if not known then self._children[#self._children + 1] = key end
  self[key] = m
  return m
end

-- Calling a module runs forward. A tail call: error(msg, 2) in forward points at the user.
function Module.__call(self, ...) return self:forward(...) end

function Module:forward()
  error(("%s: forward is not implemented"):format(self.__name), 2)
end

-- ---- traversal -------------------------------------------------------------------------

-- Calls fn(prefix .. name, t) for every parameter (and buffer, when asked) in order.
local function walk(m, prefix, with_buffers, fn)
  for _, k in ipairs(m._params) do
    local t = m[k]
    if t ~= nil then fn(prefix .. k, t) end
  end
  if with_buffers then
    for _, k in ipairs(m._buffers) do
      local t = m[k]
      if t ~= nil then fn(prefix .. k, t) end
    end
  end
  for _, k in ipairs(m._children) do
    local c = m[k]
    if c ~= nil then walk(c, prefix .. k .. ".", with_buffers, fn) end
  end
end

-- Parameters in registration order (a tensor shared by two modules is listed once).
function Module:parameters()
  local list, seen = {}, {}
  walk(self, "", false, function(_, t)
    if not seen[t] then seen[t] = true; list[#list + 1] = t end
  end)
  return list
end

-- named_parameters(): an iterator over (name, tensor) in order, shared tensors once:
--   for name, p in model:named_parameters() do print(name, p:shape()) end
function Module:named_parameters()
  local names, list, seen = {}, {}, {}
  walk(self, "", false, function(name, t)
    if not seen[t] then seen[t] = true; names[#names + 1] = name; list[#list + 1] = t end
  end)
  local i = 0
  return function()
    i = i + 1
    return names[i], list[i]
  end
end

-- Direct children, in order.
function Module:children()
  local list = {}
  for _, k in ipairs(self._children) do list[#list + 1] = self[k] end
  return list
end

local function collect(m, list)
  list[#list + 1] = m
  for _, k in ipairs(m._children) do collect(m[k], list) end
  return list
end

-- This module and all its descendants, depth first, in order.
function Module:modules() return collect(self, {}) end

function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

-- train([mode = true]) sets self.training here and below (Dropout reads it); returns self.
function Module:train(mode)
  if mode == nil then mode = true end
  self.training = mode and true or false
  for _, k in ipairs(self._children) do self[k]:train(mode) end
  return self
end

function Module:eval() return self:train(false) end

-- Drops every parameter's gradient (p.grad = nil), so the next backward starts afresh.
function Module:zero_grad()
  for _, k in ipairs(self._params) do
    local t = self[k]
    if t ~= nil then t.grad = nil end
  end
  for _, k in ipairs(self._children) do self[k]:zero_grad() end
end

-- ---- state -----------------------------------------------------------------------------

-- state_dict(): dotted name -> tensor for every parameter and buffer, detached views that
-- share memory with the module (what sn.save needs; copy them to keep a snapshot).
function Module:state_dict()
  local sd = {}
  walk(self, "", true, function(name, t) sd[name] = t:detach() end)
  return sd
end

local function sorted_keys(set)
  local list = {}
  for k in pairs(set) do list[#list + 1] = k end
  table.sort(list)
  return list
end

-- load_state_dict(sd [, strict = true]): copies sd's tensors into the module's, in place.
-- Everything is checked before anything is copied. strict: missing or unexpected keys are
-- an error; otherwise they are skipped and returned as two sorted lists.
function Module:load_state_dict(sd, strict)
  local fn = self.__name .. ":load_state_dict"
  if type(sd) ~= "table" then error(("%s: expected a table name -> tensor, got %s"):format(fn, type(sd)), 2) end
  if strict == nil then strict = true end
  local own, order = {}, {}
  walk(self, "", true, function(name, t) own[name] = t; order[#order + 1] = name end)
  local missing, unexpected = {}, {}
  for _, name in ipairs(order) do
    if sd[name] == nil then missing[#missing + 1] = name end
  end
  local extra = {}
  for k in pairs(sd) do
    if own[k] == nil then extra[k] = true end
  end
  unexpected = sorted_keys(extra)
  if strict and (#missing > 0 or #unexpected > 0) then
    local parts = {}
    if #missing > 0 then parts[#parts + 1] = "missing keys: " .. table.concat(missing, ", ") end
    if #unexpected > 0 then parts[#parts + 1] = "unexpected keys: " .. table.concat(unexpected, ", ") end
    error(("%s: %s"):format(fn, table.concat(parts, "; ")), 2)
  end
  for _, name in ipairs(order) do
    local src, dst = sd[name], own[name]
    if src ~= nil then
      if not is_tensor(src) then
        error(("%s: '%s' must be a seqnn.Tensor, got %s"):format(fn, name, type(src)), 2)
      end
      if shape_str(src) ~= shape_str(dst) then
        error(("%s: size mismatch for '%s': the module has %s, the state dict has %s"):format(
          fn, name, shape_str(dst), shape_str(src)), 2)
      end
    end
  end
  sn.no_grad(function()
    for _, name in ipairs(order) do
      if sd[name] ~= nil then own[name]:copy_(sd[name]) end
    end
  end)
  return missing, unexpected
end

-- ---- printing --------------------------------------------------------------------------

-- extra_repr(): what goes in parentheses after the class name ("4 -> 8"); nil for nothing.
function Module:extra_repr() return nil end

local function count_str(n)
  if n < 1000 then return ("%d params"):format(n) end
  if n < 1e6 then return ("%.1fK params"):format(n / 1e3) end
  if n < 1e9 then return ("%.1fM params"):format(n / 1e6) end
  return ("%.1fB params"):format(n / 1e9)
end

local function describe(m)
  local extra = m:extra_repr()
  local head = extra and (m.__name .. "(" .. extra .. ")") or m.__name
  local n = m:num_parameters()
  return n > 0 and (head .. " (" .. count_str(n) .. ")") or head
end

local function tree(m, indent, lines)
  for _, k in ipairs(m._children) do
    local c = m[k]
    lines[#lines + 1] = ("%s(%s): %s"):format(indent, tostring(k), describe(c))
    tree(c, indent .. "  ", lines)
  end
end

-- The module tree with parameter counts, one line per module:
--   seqnn.nn.Sequential (49 params)
--     (1): seqnn.nn.Linear(4 -> 8) (40 params)
--     (2): seqnn.nn.GELU
function Module:__tostring()
  local lines = { describe(self) }
  tree(self, "  ", lines)
  return table.concat(lines, "\n")
end

-- For containers: the message of an error raised by child `key`, prefixed with its path
-- ("Sequential[3] (seqnn.nn.Linear): ..."), without the source position of the raise.
function Module:child_error(key, err)
  if type(err) ~= "string" then return err end
  err = err:gsub("^[%w%./_\\%-]+:%d+: ", "", 1)
  local child = self[key]
  return ("%s[%s] (%s): %s"):format(self.__name:gsub("^seqnn%.nn%.", ""), tostring(key),
    child and child.__name or "?", err)
end

return Module
