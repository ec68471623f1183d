local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local LayerNorm = sn.class("seqnn.nn.LayerNorm", Module)

-- LayerNorm(dim [, {eps = 1e-5, affine = true}]): normalizes the last dim to zero mean and
-- unit variance, then scales by weight (ones) and shifts by bias (zeros) when affine.
function LayerNorm:__init(dim, opts)
  Module.__init(self)
  if math.type(dim) ~= "integer" or dim < 1 then
    error(("seqnn.nn.LayerNorm: dim must be a positive integer, got %s"):format(tostring(dim)), 3)
  end
  opts = opts or {}
  self.dim, self.eps = dim, opts.eps or 1e-5
  if opts.affine ~= false then
    self:parameter("weight", sn.ones(dim))
    self:parameter("bias", sn.zeros(dim))
  end
end

function LayerNorm:forward(x) return sn.F.layer_norm(x, self.weight, self.bias, self.eps) end

function LayerNorm:extra_repr()
  return ("%d, eps=%g%s"):format(self.dim, self.eps, self.weight and "" or ", affine=false")
end

return LayerNorm
