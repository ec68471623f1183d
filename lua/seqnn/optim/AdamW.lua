local sn = require "seqnn"
local Optimizer = require "seqnn.optim.Optimizer"
local AdamW = sn.class("seqnn.optim.AdamW", Optimizer)

local k_adamw_step, zeros = sn.core.k_adamw_step, sn.core.zeros
local k_adamw_rows_step, is_sparse = sn.core.k_adamw_rows_step, require("seqnn.autograd").is_sparse

local defaults = { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 1e-2 }

-- AdamW(params [, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 1e-2}]):
-- Adam with decoupled weight decay, as PyTorch's torch.optim.AdamW:
--   p <- p * (1 - lr*wd);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
--   p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
-- One fused kernel call per parameter; state (exp_avg, exp_avg_sq, step) per parameter,
-- created at its first step. Parameters without a gradient are skipped.
-- A row-sparse gradient (autograd.row_sparse, e.g. ProductKeyMemory's values) takes the
-- lazy step (k_adamw_rows_step): only its rows of p and of the moments change, and
-- row_step (i64, one count per row, kept in the state and in state_dict) gives each row
-- its own bias correction, so a row's update is exactly the dense one with t = the number
-- of steps that row has had. Decoupled weight decay, too, reaches touched rows only (an
-- untouched row is not decayed while it is not read; PyTorch's SparseAdam has no decay).
-- Once a parameter has row counts, its dense gradients go through the same kernel over
-- every row, so the counts stay exact.
function AdamW:__init(params, opts)
  Optimizer.__init(self, params, opts, defaults)
end

AdamW.state_tensors = { "exp_avg", "exp_avg_sq" }
AdamW.state_numbers = { "step" }
AdamW.row_state = { "row_step" } -- present once the parameter has had a row-sparse gradient

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
        if is_sparse(g) or s.row_step then
          if s.row_step == nil then -- every row has had the dense steps so far
            s.row_step = zeros({ p:size(1) }, "i64"):fill_(s.step - 1)
          end
          local rows, values = self.rows_of(p, g)
          k_adamw_rows_step(p, rows, values, s.exp_avg, s.exp_avg_sq, s.row_step, lr, b1, b2, eps, wd)
        else
          k_adamw_step(p, g, s.exp_avg, s.exp_avg_sq, lr, b1, b2, eps, wd, s.step)
        end
      end
    end
  end
end

return AdamW
