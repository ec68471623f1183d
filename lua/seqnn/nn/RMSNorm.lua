local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local RMSNorm = sn.class("seqnn.nn.RMSNorm", Module)

-- RMSNorm(dim [, {eps = 1e-6}]): divides the last dim by its root mean square and scales
-- by a learned weight (ones).
function RMSNorm:__init(dim, opts)
  Module.__init(self)
  if math.type(dim) ~= "integer" or dim < 1 then
    error(("seqnn.nn.RMSNorm: dim must be a positive integer, got %s"):format(tostring(dim)), 3)
  end
  self.eps = (opts and opts.eps) or 1e-6
  self:parameter("weight", sn.ones(dim))
end

function RMSNorm:forward(x) return sn.F.rms_norm(x, self.weight, self.eps) end

function RMSNorm:extra_repr() return ("%d, eps=%g"):format(self.weight:size(1), self.eps) end

return RMSNorm
