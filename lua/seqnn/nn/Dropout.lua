local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Dropout = sn.class("seqnn.nn.Dropout", Module)

-- Dropout([p = 0.5]): in training mode zeroes each element with probability p and scales
-- the rest by 1/(1-p); in eval mode (module:eval()) returns its input unchanged.
function Dropout:__init(p)
  Module.__init(self)
  if p == nil then p = 0.5 end
  if type(p) ~= "number" or not (p >= 0 and p < 1) then
    error(("seqnn.nn.Dropout: p must be a number in [0, 1), got %s"):format(tostring(p)), 3)
  end
  self.p = p
end

function Dropout:forward(x) return sn.F.dropout(x, self.p, self.training) end

function Dropout:extra_repr() return ("p=%g"):format(self.p) end

return Dropout
