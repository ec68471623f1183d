local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Sequential = sn.class("seqnn.nn.Sequential", Module)

-- Sequential(m1, m2, ...): applies its children in order, each to the previous output.
-- Children are named 1, 2, ... (state_dict keys "1.weight", ...), and seq[i], #seq and
-- ipairs(seq) reach them. An error in a child is re-raised with its place prepended:
--   Sequential[3] (seqnn.nn.Linear): seqnn.F.linear: x has 128 features but ...
function Sequential:__init(...)
  Module.__init(self)
  for i = 1, select("#", ...) do
    local m = select(i, ...)
    if not sn.class.is_instance(m, Module) then
      error(("seqnn.nn.Sequential: argument %d must be a seqnn.nn.Module, got %s"):format(
        i, type(m) == "table" and (m.__name or "a table") or type(m)), 3)
    end
    self:add_module(i, m)
  end
end

-- add(m): appends a child (named #seq + 1) and returns the container, for chaining.
function Sequential:add(m)
  if not sn.class.is_instance(m, Module) then
    error(("%s:add: the argument must be a seqnn.nn.Module, got %s"):format(
      self.__name, type(m) == "table" and (m.__name or "a table") or type(m)), 2)
  end
  self:add_module(#self._children + 1, m)
  return self
end

function Sequential:forward(x)
  local keys = self._children
  for i = 1, #keys do
    local ok, y = pcall(self[keys[i]], x)
    if not ok then error(self:child_error(keys[i], y), 2) end
    x = y
  end
  return x
end

return Sequential
