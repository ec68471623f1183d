local sn = require "seqnn"
local Optimizer = require "seqnn.optim.Optimizer"
local SGD = sn.class("seqnn.optim.SGD", Optimizer)

local k_sgd_step, zeros = sn.core.k_sgd_step, sn.core.zeros
local k_sgd_rows_step, is_sparse = sn.core.k_sgd_rows_step, require("seqnn.autograd").is_sparse

local defaults = { lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false }

-- SGD(params [, {lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false}]),
-- as PyTorch's torch.optim.SGD:
--   g <- g + wd p;  b <- g at the first step, else momentum b + (1 - dampening) g
--   p <- p - lr * (nesterov and g + momentum b or b)      (b = g when momentum is 0)
-- One fused kernel call per parameter; the momentum buffer is created at the first step.
-- A row-sparse gradient (autograd.row_sparse) updates only its rows (k_sgd_rows_step):
-- weight decay and momentum act on touched rows only; with momentum, row_step (i64 per
-- row, in the state) marks which rows have started their buffer. Once a parameter has it,
-- dense gradients take the same path over every row.
function SGD:__init(params, opts)
  Optimizer.__init(self, params, opts, defaults)
end

SGD.state_tensors = { "momentum_buffer" }
SGD.state_numbers = {}
SGD.row_state = { "row_step" } -- with momentum, once the parameter has had a row-sparse gradient

function SGD:check_group(group)
  local bad = Optimizer.bad_number(group, "lr", 0, math.huge) or Optimizer.bad_number(group, "momentum", 0, math.huge)
    or Optimizer.bad_number(group, "dampening", 0, math.huge)
    or Optimizer.bad_number(group, "weight_decay", 0, math.huge)
  if bad then return bad end
  if group.nesterov and (group.momentum <= 0 or group.dampening ~= 0) then
    return ("nesterov needs momentum > 0 and dampening 0, got momentum %g, dampening %g"):format(
      group.momentum, group.dampening)
  end
end

function SGD:step()
  local state = self.state
  for _, group in ipairs(self.param_groups) do
    local lr, mom, damp, wd, nesterov = group.lr, group.momentum, group.dampening, group.weight_decay, group.nesterov
    for _, p in ipairs(group.params) do
      local g = p.grad
      local s = state[p]
      if g ~= nil and (is_sparse(g) or (s and s.row_step)) then
        local rows, values = self.rows_of(p, g)
        if mom == 0 then
          k_sgd_rows_step(p, rows, values, nil, nil, lr, 0, damp, wd, false)
        else
          if s == nil then
            s = { momentum_buffer = zeros(p:shape()), row_step = zeros({ p:size(1) }, "i64") }
            state[p] = s
          elseif s.row_step == nil then -- after dense steps every row's buffer has started
            s.row_step = zeros({ p:size(1) }, "i64"):fill_(1)
          end
          k_sgd_rows_step(p, rows, values, s.momentum_buffer, s.row_step, lr, mom, damp, wd, nesterov)
        end
      elseif g ~= nil then
        if mom == 0 then
          k_sgd_step(p, g, nil, lr, 0, damp, wd, false, false)
        else
          local s, first = state[p], false
          if s == nil then
            s, first = { momentum_buffer = zeros(p:shape()) }, true
            state[p] = s
          end
          k_sgd_step(p, g, s.momentum_buffer, lr, mom, damp, wd, nesterov, first)
        end
      end
    end
  end
end

return SGD
