local sn = require "seqnn"
local autograd = require "seqnn.autograd"
local Linear = require "seqnn.nn.Linear"
local Module = require "seqnn.nn.Module"
local MaskedLinear = sn.class("seqnn.nn.MaskedLinear", Linear)

-- MaskedLinear(linear, mask [, decay]): a Linear during pruning (sn.sparse.prune makes
-- these): y = x (W o mask)^T + b, W and b the very tensors of `linear` (an optimizer built
-- on the dense model keeps updating them). mask (out, in) of 0/1 is a buffer. decay = 0:
-- pruned weights get no gradient (a fixed mask). decay > 0: SR-STE, as in adaptive sparse
-- training: the gradient passes to every weight, plus decay (1 - mask) o W pulling the
-- pruned ones toward zero, so a re-selected mask can revive them.
function MaskedLinear:__init(linear, mask, decay)
  Module.__init(self)
  self:parameter("weight", linear.weight)
  if linear.bias then self:parameter("bias", linear.bias) end
  self:buffer("mask", mask)
  self.decay = decay or 0
end

local function masked_weight(w, mask, decay)
  local y = w:detach() * mask
  autograd.record("masked_weight", { w }, y, function(g)
    if decay == 0 then return g * mask end
    return g + w:detach() * (1 - mask) * decay
  end, true)
  return y
end

function MaskedLinear:forward(x)
  return sn.F.linear(x, masked_weight(self.weight, self.mask, self.decay), self.bias)
end

-- The fraction of weights kept.
function MaskedLinear:density() return self.mask:sum():item() / self.mask:numel() end

function MaskedLinear:extra_repr()
  return ("%s, %.0f%% pruned%s"):format(Linear.extra_repr(self), 100 * (1 - self:density()),
    self.decay > 0 and (", SR-STE decay %g"):format(self.decay) or "")
end

return MaskedLinear
