-- sn.optim: optimizers, learning-rate schedules and gradient clipping (docs/nn.md).
--
--   opt = sn.optim.AdamW(model:parameters(), {lr = 3e-4, weight_decay = 0.1})
--   opt = sn.optim.SGD(params, {lr = 0.1, momentum = 0.9, nesterov = true})
--   opt:step()  opt:zero_grad()  opt:set_lr(lr)  opt:state_dict()  opt:load_state_dict(t, n)
--   sn.optim.schedule.warmup_cosine{lr = 3e-4, warmup = 100, total = 5000}:apply(opt, step)
--   sn.optim.clip_grad_norm(params, max_norm) -> total norm before clipping
local sn = require "seqnn"

local optim = {
  Optimizer = require "seqnn.optim.Optimizer",
  SGD = require "seqnn.optim.SGD",
  AdamW = require "seqnn.optim.AdamW",
  schedule = require "seqnn.optim.schedule",
}

local matmul, is_tensor = sn.core.matmul, sn.core.is_tensor

-- clip_grad_norm(params, max_norm): the L2 norm of all gradients together (parameters
-- without one are skipped); when it exceeds max_norm, every gradient is scaled in place
-- by max_norm / (norm + 1e-6). Returns the norm before clipping. One dot product per
-- parameter (a fused BLAS reduction), no per-element Lua.
function optim.clip_grad_norm(params, max_norm)
  if type(params) ~= "table" then
    error(("seqnn.optim.clip_grad_norm: params must be a list of tensors, got %s"):format(type(params)), 2)
  end
  if type(max_norm) ~= "number" or not (max_norm >= 0) then
    error(("seqnn.optim.clip_grad_norm: max_norm must be a number >= 0, got %s"):format(tostring(max_norm)), 2)
  end
  local sq = 0
  for i = 1, #params do
    local p = params[i]
    if not is_tensor(p) then
      error(("seqnn.optim.clip_grad_norm: parameter %d must be a seqnn.Tensor, got %s"):format(i, type(p)), 2)
    end
    local g = p.grad
    if g ~= nil then
      -- a row-sparse gradient (autograd.row_sparse; its rows are distinct): the norm of its
      -- values; its mul_ scales them in place below
      local v = (sn.autograd.is_sparse(g) and g.values or g):reshape(-1)
      sq = sq + matmul(v, v):item()
    end
  end
  local norm = math.sqrt(sq)
  if norm > max_norm then
    local scale = max_norm / (norm + 1e-6)
    for i = 1, #params do
      local g = params[i].grad
      if g ~= nil then g:mul_(scale) end
    end
  end
  return norm
end

return optim
