-- seqnn: a neural sequence engine for CPUs.  sn = require "seqnn"
--
-- The C core (seqnn.core) provides tensors and their math; this file gathers it into one
-- table, adds the Lua-side tensor methods (tensor.lua), and loads larger parts (nn, optim,
-- data, ...) on first use, so `require "seqnn"` stays fast.
local core = require "seqnn.core"

local sn = {
  _VERSION = "seqnn scm",
  core = core,
  Tensor = core.methods, -- methods shared by every tensor; Lua code may add to it
}

for name, fn in pairs(core) do
  if type(fn) == "function" then sn[name] = fn end
end

require("seqnn.tensor")(sn)
require("seqnn.tensor_grad")(sn)

-- Submodules that are loaded when first touched.
local lazy = {
  repl = "seqnn.repl", class = "seqnn.class", data = "seqnn.data", F = "seqnn.F",
  nn = "seqnn.nn", optim = "seqnn.optim", train = "seqnn.train", models = "seqnn.models",
  generate = "seqnn.generate", -- a function: sn.generate(model, prompt, opts)
  cli = "seqnn.cli", sparse = "seqnn.sparse",
  dist = "seqnn.dist", -- loads in any build; MPI (seqnn.mpi) only when a function needs it
}

return setmetatable(sn, {
  __index = function(t, key)
    local modname = lazy[key]
    if modname == nil then return nil end
    local mod = require(modname)
    rawset(t, key, mod)
    return mod
  end,
})
