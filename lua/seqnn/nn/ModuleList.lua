local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local ModuleList = sn.class("seqnn.nn.ModuleList", Module)

-- ModuleList([{m1, m2, ...}]): holds modules named 1, 2, ... so their parameters are
-- registered, without a forward of its own; index it (list[i], #list, ipairs(list)).
function ModuleList:__init(list)
  Module.__init(self)
  if list ~= nil and type(list) ~= "table" then
    error(("seqnn.nn.ModuleList: expected a list of modules, got %s"):format(type(list)), 3)
  end
  for i, m in ipairs(list or {}) do
    if not sn.class.is_instance(m, Module) then
      error(("seqnn.nn.ModuleList: element %d must be a seqnn.nn.Module, got %s"):format(
        i, type(m) == "table" and (m.__name or "a table") or type(m)), 3)
    end
    self:add_module(i, m)
  end
end

-- append(m): adds m as the next element; returns the list.
function ModuleList:append(m)
  if not sn.class.is_instance(m, Module) then
    error(("seqnn.nn.ModuleList:append: the argument must be a seqnn.nn.Module, got %s"):format(
      type(m) == "table" and (m.__name or "a table") or type(m)), 2)
  end
  self:add_module(#self._children + 1, m)
  return self
end

function ModuleList:forward()
  error("seqnn.nn.ModuleList: has no forward; call its elements (for i, m in ipairs(list) do ... end)", 2)
end

return ModuleList
