local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = sn.class("seqnn.nn.Linear", Module)

-- Linear(in_features, out_features [, {bias = true}]): y = x W^T + b over the last dim.
-- weight (out, in) and bias (out) start U(-1/sqrt(in), 1/sqrt(in)), PyTorch's default
-- (kaiming-uniform with a = sqrt(5) reduces to this bound).
function Linear:__init(in_features, out_features, opts)
  Module.__init(self)
  for _, arg in ipairs({ { "in_features", in_features }, { "out_features", out_features } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("seqnn.nn.Linear: %s must be a positive integer, got %s"):format(arg[1], tostring(arg[2])), 3)
    end
  end
  local bound = 1 / math.sqrt(in_features)
  self:parameter("weight", sn.rand(out_features, in_features) * (2 * bound) - bound)
  if not opts or opts.bias ~= false then
    self:parameter("bias", sn.rand(out_features) * (2 * bound) - bound)
  end
end

function Linear:forward(x) return sn.F.linear(x, self.weight, self.bias) end

function Linear:extra_repr()
  return ("%d -> %d%s"):format(self.weight:size(2), self.weight:size(1), self.bias and "" or ", bias=false")
end

return Linear
