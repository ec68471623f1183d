-- seqnn.sparse (sn.sparse): pruning a trained model, fine-tuning it sparse, and converting
-- it for sparse inference.
--
--   local pruner = sn.sparse.prune(model, {pattern = "2:4", method = "ast"})
--   for step = 1, n do ...; opt:step(); pruner:step() end      -- masks re-selected (AST)
--   sn.sparse.convert(model)        -- every pruned Linear -> sn.nn.SparseLinear (BSR / 2:4)
--   sn.sparse.quantize(model)       -- block-sparse layers -> int8 inference
--
-- Details and the kernels: docs/sparse.md.
local sn = require "seqnn"
local core = require "seqnn.core"
local Linear = require "seqnn.nn.Linear"
local MaskedLinear = require "seqnn.nn.MaskedLinear"
local SparseLinear = require "seqnn.nn.SparseLinear"

local sparse = {}

local function fail(fn, level, fmt, ...) error(("seqnn.sparse.%s: " .. fmt):format(fn, ...), level + 1) end

-- The (out/ro, in/ri) block mask of a 0/1 mask (out, in): 1 where a block keeps any weight.
function sparse.block_mask_of(mask, block)
  local ro, ri = block[1], block[2]
  local M, K = mask:size(1), mask:size(2)
  local counts = mask:reshape(M // ro, ro, K // ri, ri):sum(4):sum(2)
  return counts:minimum(1)
end

-- A 0/1 mask (out, in) of w: the kept blocks (by block L2 norm) or 2:4 positions (by |w|).
local function select_mask(w, o)
  if o.pattern == "2:4" then
    local values, idx = core.k_sparse24_from_dense(w)
    return core.k_sparse24_to_dense(sn.ones(values:shape()), idx)
  end
  local ro, ri = o.block[1], o.block[2]
  local M, K = w:size(1), w:size(2)
  local blocks = core.k_bsr_mask(w, ro, ri, o.sparsity)
  return blocks:reshape(M // ro, 1, K // ri, 1):expand(M // ro, ro, K // ri, ri):contiguous():reshape(M, K)
end

-- Options of prune and convert, checked once: pattern "2:4", or sparsity and block.
local function prune_options(fn, opts)
  if type(opts) ~= "table" then fail(fn, 3, "opts must be a table, got %s", type(opts)) end
  local o = { pattern = opts.pattern }
  if o.pattern ~= nil then
    if o.pattern ~= "2:4" then fail(fn, 3, "pattern must be \"2:4\", got %s", tostring(o.pattern)) end
    if opts.sparsity ~= nil or opts.block ~= nil then
      fail(fn, 3, "pattern = \"2:4\" fixes the sparsity; leave sparsity and block out")
    end
  else
    o.sparsity, o.block = opts.sparsity, opts.block or { 4, 4 }
    if type(o.sparsity) ~= "number" or not (o.sparsity >= 0 and o.sparsity <= 1) then
      fail(fn, 3, "opts.sparsity must be a number in [0, 1] (or pattern = \"2:4\"), got %s", tostring(o.sparsity))
    end
    local b = o.block
    if type(b) ~= "table" or math.type(b[1]) ~= "integer" or math.type(b[2]) ~= "integer" or b[1] < 1 or b[2] < 1 then
      fail(fn, 3, "opts.block must be {rows, cols} of positive integers, got %s", tostring(b))
    end
  end
  if opts.filter ~= nil and type(opts.filter) ~= "function" then
    fail(fn, 3, "opts.filter must be a function(name, linear) -> boolean, got %s", type(opts.filter))
  end
  return o
end

local function fits(o, linear)
  local M, K = linear.weight:size(1), linear.weight:size(2)
  if o.pattern == "2:4" then return K % 4 == 0 end
  return M % o.block[1] == 0 and K % o.block[2] == 0
end

-- Calls fn(parent, key, name, child) for every module below m whose class is cls (not
-- derived classes unless derived is true), depth first, in registration order.
local function each_child(m, prefix, cls, fn)
  for _, key in ipairs(m._children) do
    local child = m[key]
    local name = prefix .. tostring(key)
    if getmetatable(child) == cls then fn(m, key, name, child) else each_child(child, name .. ".", cls, fn) end
  end
end

-- The output head decides every token's scores and Mamba reads dt_proj's weight directly:
-- neither is pruned unless a filter asks for it.
local function default_filter(name)
  local last = name:match("[^.]+$")
  return last ~= "head" and last ~= "dt_proj"
end

local Pruner = {}
Pruner.__index = Pruner

-- prune(model, opts): replaces each Linear of model that the filter accepts by a
-- MaskedLinear sharing its weight and bias (optimizers keep working), the mask selected by
-- magnitude now. opts:
--   sparsity, block = {4, 4}  or  pattern = "2:4"     what to keep (as SparseLinear)
--   method = "fixed"   pruned weights are zeroed and stay zero (their gradient is masked)
--            "ast"     adaptive sparse training: masks re-selected from the dense weights
--                      every `every` steps (100), SR-STE gradient with decay (2e-4) that
--                      grows linearly over `increase_steps` (1000) so masks settle
--   filter = function(name, linear) -> bool   (default: all but "head" and "dt_proj")
-- Returns a pruner: call pruner:step() after every optimizer step; pruner.layers lists
-- {name =, module =}; pruner.flipped is the number of mask entries changed by the last
-- re-selection.
function sparse.prune(model, opts)
  if not sn.class.is_instance(model, sn.nn.Module) then
    fail("prune", 2, "model must be a seqnn.nn.Module, got %s", type(model))
  end
  local o = prune_options("prune", opts)
  local method = opts.method or "fixed"
  if method ~= "fixed" and method ~= "ast" then fail("prune", 2, "opts.method must be \"fixed\" or \"ast\", got %s", tostring(method)) end
  local p = setmetatable({ opts = o, method = method, layers = {}, steps = 0, flipped = 0 }, Pruner)
  p.every, p.decay, p.increase_steps = opts.every or 100, opts.decay or 2e-4, opts.increase_steps or 1000
  for _, k in ipairs({ "every", "increase_steps" }) do
    if math.type(p[k]) ~= "integer" or p[k] < 1 then fail("prune", 2, "opts.%s must be a positive integer, got %s", k, tostring(p[k])) end
  end
  if type(p.decay) ~= "number" or not (p.decay >= 0) then fail("prune", 2, "opts.decay must be a number >= 0, got %s", tostring(p.decay)) end
  local filter = opts.filter or default_filter
  each_child(model, "", Linear, function(parent, key, name, linear)
    if not filter(name, linear) or not fits(o, linear) then return end
    local mask = select_mask(linear.weight:detach(), o)
    local masked = MaskedLinear(linear, mask, method == "ast" and p:current_decay() or 0)
    masked.prune_opts = o
    parent:add_module(key, masked)
    if method == "fixed" then sn.no_grad(function() linear.weight:mul_(mask) end) end
    p.layers[#p.layers + 1] = { name = name, module = masked }
  end)
  if #p.layers == 0 then fail("prune", 2, "no Linear layer of the model fits (filter, or sizes that the block does not divide)") end
  return p
end

function Pruner:current_decay()
  if self.method ~= "ast" then return 0 end
  return self.decay * math.min(1, (self.steps + 1) / self.increase_steps)
end

-- step(): after the optimizer's step. AST: anneals the SR-STE decay and, every `every`
-- steps, re-selects each mask from the dense weights (counting flips in self.flipped).
function Pruner:step()
  self.steps = self.steps + 1
  if self.method ~= "ast" then return self end
  local decay = self:current_decay()
  for _, l in ipairs(self.layers) do l.module.decay = decay end
  if self.steps % self.every ~= 0 then return self end
  local flipped = 0
  sn.no_grad(function()
    for _, l in ipairs(self.layers) do
      local m = l.module
      local new = select_mask(m.weight:detach(), self.opts)
      flipped = flipped + (new - m.mask):abs():sum():item()
      m.mask:copy_(new)
    end
  end)
  self.flipped = math.floor(flipped + 0.5)
  return self
end

-- The fraction of the pruned layers' weights that are kept.
function Pruner:density()
  local kept, total = 0, 0
  for _, l in ipairs(self.layers) do
    kept, total = kept + l.module.mask:sum():item(), total + l.module.mask:numel()
  end
  return kept / total
end

-- convert(model [, opts]): replaces every MaskedLinear (with its mask) and, when opts are
-- given, every other Linear the filter accepts (pruned by magnitude now) by a
-- SparseLinear for sparse inference. Returns model and the number of layers converted.
function sparse.convert(model, opts)
  if not sn.class.is_instance(model, sn.nn.Module) then
    fail("convert", 2, "model must be a seqnn.nn.Module, got %s", type(model))
  end
  local o = opts and prune_options("convert", opts)
  local filter = opts and opts.filter or default_filter
  local n = 0
  each_child(model, "", MaskedLinear, function(parent, key, _, m)
    parent:add_module(key, SparseLinear.from_dense(m))
    n = n + 1
  end)
  if o then
    each_child(model, "", Linear, function(parent, key, name, linear)
      if not filter(name, linear) or not fits(o, linear) then return end
      parent:add_module(key, SparseLinear.from_dense(linear, o))
      n = n + 1
    end)
  end
  return model, n
end

-- quantize(model): every block-sparse SparseLinear of model to int8 inference
-- (SparseLinear:quantize). Returns model and the number of layers quantized.
function sparse.quantize(model)
  if not sn.class.is_instance(model, sn.nn.Module) then
    fail("quantize", 2, "model must be a seqnn.nn.Module, got %s", type(model))
  end
  local n = 0
  for _, m in ipairs(model:modules()) do
    if getmetatable(m) == SparseLinear and m.pattern == "bsr" then
      m:quantize()
      n = n + 1
    end
  end
  return model, n
end

-- distill_loss(student, teacher, targets [, {temperature = 2, alpha = 0.67}]): the sparse
-- student learning from its dense teacher, as adaptive sparse training does:
--   (1 - alpha) cross_entropy(student, targets) + alpha T^2 KL(softmax(teacher/T) || softmax(student/T))
-- logits (..., V), targets i64 (...). The teacher's logits get no gradient.
function sparse.distill_loss(student, teacher, targets, opts)
  opts = opts or {}
  local T, alpha = opts.temperature or 2, opts.alpha or 0.67
  if type(T) ~= "number" or not (T > 0) then fail("distill_loss", 2, "temperature must be > 0, got %s", tostring(T)) end
  if type(alpha) ~= "number" or not (alpha >= 0 and alpha <= 1) then
    fail("distill_loss", 2, "alpha must be in [0, 1], got %s", tostring(alpha))
  end
  local V = student:size(-1)
  local s, t = student:reshape(-1, V), teacher:detach():reshape(-1, V)
  local task = sn.F.cross_entropy(s, targets:reshape(-1))
  if alpha == 0 then return task end
  local pt = sn.F.softmax(t / T)
  local kl = (pt * (sn.F.log_softmax(t / T) - sn.F.log_softmax(s / T))):sum() / s:size(1)
  return task * (1 - alpha) + kl * (alpha * T * T)
end

return sparse
