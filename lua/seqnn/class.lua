-- seqnn.class: small Torch7-style classes, shared by sn.nn, sn.optim and sn.data.
--
--   local Linear = sn.class("seqnn.nn.Linear", Module)   -- parent optional
--   function Linear:__init(a, b) Module.__init(self) ... end
--   local m = Linear(4, 8)                                -- new instance, runs __init
--   sn.class.is_instance(m, Module)                       --> true
--
-- A class is the metatable of its instances: methods are looked up in the class, then in
-- its ancestors. Lua reads metamethods (__tostring, __len, ...) only from the metatable
-- itself, so a new class copies its parent's: define a parent fully before subclassing it.
-- __name (the class name) shows in tostring and in Lua's "bad argument" messages.
local parent_of = setmetatable({}, { __mode = "k" }) -- class -> parent class, or false

local function new(cls, ...)
  local obj = setmetatable({}, cls)
  obj:__init(...) -- not a tail call: error(msg, 3) in __init points at the caller's line
  return obj
end

local function noop() end

local function class(_, name, parent)
  if type(name) ~= "string" then
    error(("seqnn.class: name must be a string, got %s"):format(type(name)), 2)
  end
  if parent ~= nil and parent_of[parent] == nil then
    error(("seqnn.class: the parent of %s is not a seqnn.class"):format(name), 2)
  end
  local cls = {}
  for k, v in pairs(parent or {}) do
    if type(k) == "string" and k:sub(1, 2) == "__" and k ~= "__init" then cls[k] = v end
  end
  cls.__name = name
  cls.__index = cls
  if not parent then cls.__init = noop end -- subclasses find their parent's through __index
  parent_of[cls] = parent or false
  return setmetatable(cls, {
    __index = parent,
    __call = new,
    __tostring = function() return "class " .. name end,
  })
end

-- is_instance(obj, cls): obj was made by cls or by a class derived from it.
local function is_instance(obj, cls)
  if type(obj) ~= "table" then return false end
  local c = getmetatable(obj)
  while c do
    if c == cls then return true end
    c = parent_of[c]
  end
  return false
end

return setmetatable({ is_instance = is_instance }, { __call = class })
