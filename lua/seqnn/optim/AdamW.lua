local sn = require "seqnn"
local Optimizer = require "seqnn.optim.Optimizer"
local AdamW = sn.class("seqnn.optim.AdamW", Optimizer)

local k_adamw_step, zeros = sn.core.k_adamw_step, sn.core.zeros

local defaults = { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 1e-2 }

-- AdamW(params [, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 1e-2}]):
-- Adam with decoupled weight decay, as PyTorch's torch.optim.AdamW:
--   p <- p * (1 - lr*wd);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
--   p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
-- One fused kernel call per parameter; state (exp_avg, exp_avg_sq, step) per parameter,
-- created at its first step. Parameters without a gradient are skipped.
function AdamW:__init(params, opts)
  Optimizer.__init(self, params, opts, defaults)
end

AdamW.state_tensors = { "exp_avg", "exp_avg_sq" }
AdamW.state_numbers = { "step" }

function AdamW:check_group(group)
  local b = group.betas
  if type(b) ~= "table" or #b ~= 2 then
    return ("betas must be a pair {beta1, beta2}, got %s"):format(tostring(b))
  end
  local betas = { beta1 = b[1], beta2 = b[2] }
  return Optimizer.bad_number(group, "lr", 0, math.huge) or Optimizer.bad_number(betas, "beta1", 0, 1)
    or Optimizer.bad_number(betas, "beta2", 0, 1) or Optimizer.bad_number(group, "eps", 0, math.huge)
    or Optimizer.bad_number(group, "weight_decay", 0, math.huge)
end

function AdamW:step()
  local state = self.state
  for _, group in ipairs(self.param_groups) do
    local lr, b1, b2, eps, wd = group.lr, group.betas[1], group.betas[2], group.eps, group.weight_decay
    for _, p in ipairs(group.params) do
      local g = p.grad
      if g ~= nil then
        local s = state[p]
        if s == nil then
          s = { step = 0, exp_avg = zeros(p:shape()), exp_avg_sq = zeros(p:shape()) }
          state[p] = s
        end
        s.step = s.step + 1
        k_adamw_step(p, g, s.exp_avg, s.exp_avg_sq, lr, b1, b2, eps, wd, s.step)
      end
    end
  end
end

return AdamW
