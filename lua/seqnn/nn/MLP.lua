local sn = require "seqnn"
local Sequential = require "seqnn.nn.Sequential"
local Linear = require "seqnn.nn.Linear"
local Dropout = require "seqnn.nn.Dropout"
local MLP = sn.class("seqnn.nn.MLP", Sequential)

local activations = {
  gelu = require "seqnn.nn.GELU", silu = require "seqnn.nn.SiLU", tanh = require "seqnn.nn.Tanh",
}

-- MLP{d1, d2, ..., dn [, activation = "gelu", dropout = 0, bias = true]}, or
-- MLP({d1, ..., dn}, {activation = ..., ...}): Linear(d1 -> d2), activation, [Dropout],
-- ..., Linear(d(n-1) -> dn); no activation after the last Linear. A Sequential, so its
-- state_dict keys are "1.weight", "3.weight", ...
function MLP:__init(dims, opts)
  Sequential.__init(self)
  if type(dims) ~= "table" or #dims < 2 then
    error("seqnn.nn.MLP: expected a list of at least 2 layer sizes, e.g. MLP{4, 64, 1}", 3)
  end
  opts = opts or dims
  local act = activations[opts.activation or "gelu"]
  if not act then
    error(("seqnn.nn.MLP: activation must be 'gelu', 'silu' or 'tanh', got %s"):format(tostring(opts.activation)), 3)
  end
  local p = opts.dropout or 0
  if type(p) ~= "number" or not (p >= 0 and p < 1) then
    error(("seqnn.nn.MLP: dropout must be a number in [0, 1), got %s"):format(tostring(p)), 3)
  end
  for i = 1, #dims do
    if math.type(dims[i]) ~= "integer" or dims[i] < 1 then
      error(("seqnn.nn.MLP: layer size %d must be a positive integer, got %s"):format(i, tostring(dims[i])), 3)
    end
  end
  for i = 1, #dims - 1 do
    self:add(Linear(dims[i], dims[i + 1], { bias = opts.bias }))
    if i < #dims - 1 then
      self:add(act())
      if p > 0 then self:add(Dropout(p)) end
    end
  end
end

return MLP
