local sn = require "seqnn"
local core = require "seqnn.core"
local autograd = require "seqnn.autograd"
local Module = require "seqnn.nn.Module"
local SparseLinear = sn.class("seqnn.nn.SparseLinear", Module)

local NAME = "seqnn.nn.SparseLinear"

-- SparseLinear(in_features, out_features [, opts]): y = x W^T + b with most of W zero, the
-- same call as Linear. opts:
--   sparsity = 0.9, block = {4, 4}   block-sparse (BSR): W cut into ro x ri blocks, the
--                                    round((1 - sparsity) * nblocks) of largest norm kept;
--                                    trainable (the mask stays fixed, the kept values learn)
--   pattern = "2:4"                  2 of every 4 consecutive inputs kept; inference only
--   bias = true
-- A new layer draws W as Linear does, then prunes it by magnitude. State: values (the kept
-- weights), browptr and bcol (BSR, i64) or idx (2:4), bias; a layer made with the same
-- arguments loads a checkpoint of another. :quantize() switches to int8 inference.
-- The constructor's arguments checked: the parsed options, or nil and what is wrong.
local function options(in_features, out_features, opts)
  for _, arg in ipairs({ { "in_features", in_features }, { "out_features", out_features } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      return nil, ("%s must be a positive integer, got %s"):format(arg[1], tostring(arg[2]))
    end
  end
  opts = opts or {}
  if type(opts) ~= "table" then return nil, ("opts must be a table, got %s"):format(type(opts)) end
  if opts.pattern ~= nil then
    if opts.pattern ~= "2:4" then return nil, ("pattern must be \"2:4\", got %s"):format(tostring(opts.pattern)) end
    if opts.sparsity ~= nil or opts.block ~= nil then
      return nil, "pattern = \"2:4\" fixes the sparsity; leave sparsity and block out"
    end
    if in_features % 4 ~= 0 then return nil, ("2:4 needs in_features divisible by 4, got %d"):format(in_features) end
    return { pattern = "2:4", bias = opts.bias ~= false }
  end
  local sparsity, block = opts.sparsity or 0.9, opts.block or { 4, 4 }
  if type(sparsity) ~= "number" or not (sparsity >= 0 and sparsity <= 1) then
    return nil, ("sparsity must be a number in [0, 1], got %s"):format(tostring(sparsity))
  end
  local ro, ri = type(block) == "table" and block[1], type(block) == "table" and block[2]
  if math.type(ro) ~= "integer" or math.type(ri) ~= "integer" or ro < 1 or ri < 1 then
    return nil, ("block must be {rows, cols} of positive integers, got %s"):format(tostring(block))
  end
  if out_features % ro ~= 0 or in_features % ri ~= 0 then
    return nil, ("block %dx%d must divide the weight %dx%d (out x in)"):format(ro, ri, out_features, in_features)
  end
  return { pattern = "bsr", sparsity = sparsity, block = { ro, ri }, bias = opts.bias ~= false }
end

-- Fills a layer from weight (out, in) and bias (or nil), keeping by magnitude, or for BSR
-- the blocks of block_mask when given.
local function build(self, o, weight, bias, block_mask)
  Module.__init(self)
  self.out_features, self.in_features, self.pattern = weight:size(1), weight:size(2), o.pattern
  if o.pattern == "2:4" then
    local values, idx = core.k_sparse24_from_dense(weight)
    self:buffer("values", values)
    self:buffer("idx", idx)
  else
    self.block, self.sparsity = o.block, o.sparsity
    local values, browptr, bcol = core.k_bsr_pack(weight,
      block_mask or core.k_bsr_mask(weight, o.block[1], o.block[2], o.sparsity))
    self:parameter("values", values)
    self:buffer("browptr", browptr)
    self:buffer("bcol", bcol)
  end
  if bias then self:parameter("bias", bias) end
end

function SparseLinear:__init(in_features, out_features, opts)
  local o, err = options(in_features, out_features, opts)
  if not o then error(("%s: %s"):format(NAME, err), 3) end
  local bound = 1 / math.sqrt(in_features)
  build(self, o, sn.rand(out_features, in_features) * (2 * bound) - bound,
    o.bias and sn.rand(out_features) * (2 * bound) - bound or nil)
end

-- SparseLinear.from_dense(linear, opts): a sparse copy of a trained Linear, keeping the
-- weights of largest magnitude (opts as for the constructor; bias copied). A linear pruned
-- by sn.sparse.prune keeps exactly its mask, and opts may then be left out.
function SparseLinear.from_dense(linear, opts)
  if not sn.class.is_instance(linear, require("seqnn.nn.Linear")) then
    error(("%s.from_dense: linear must be a seqnn.nn.Linear, got %s"):format(NAME,
      type(linear) == "table" and (linear.__name or "a table") or type(linear)), 2)
  end
  opts = opts or linear.prune_opts
  if opts == nil then
    error(("%s.from_dense: opts {sparsity =, block =} or {pattern = \"2:4\"} are needed for a Linear that "
      .. "was not pruned"):format(NAME), 2)
  end
  local w = linear.weight:detach()
  local o, err = options(w:size(2), w:size(1), opts)
  if not o then error(("%s.from_dense: %s"):format(NAME, err), 2) end
  local block_mask
  if linear.mask then
    w = w * linear.mask
    -- Pooled to blocks: a kept block whose weights all went to zero must stay kept.
    if o.pattern == "bsr" then block_mask = require("seqnn.sparse").block_mask_of(linear.mask, o.block) end
  end
  local layer = setmetatable({}, SparseLinear)
  build(layer, o, w, linear.bias and linear.bias:detach():clone() or nil, block_mask)
  return layer
end

-- The dense weight (out, in), zeros where pruned.
function SparseLinear:to_dense()
  if self.pattern == "2:4" then return core.k_sparse24_to_dense(self.values, self.idx) end
  return core.k_bsr_to_dense(self.values:detach(), self.browptr, self.bcol, self.in_features)
end

-- The fraction of weights stored.
function SparseLinear:density() return self.values:numel() / (self.in_features * self.out_features) end

-- quantize(): int8 inference from now on (BSR only): weights to s8 with one scale per output,
-- each token's inputs quantized on the fly. Built from the current values; returns self.
-- Inference only: a forward that needs gradients fails.
function SparseLinear:quantize()
  if self.pattern ~= "bsr" then
    error(("%s:quantize: int8 is for block-sparse layers, not %s"):format(NAME, self.pattern), 2)
  end
  self.int8 = core.k_bsr_i8_new(self.values:detach(), self.browptr, self.bcol, self.in_features)
  return self
end

-- dequantize(): back to the f32 kernels (after a load_state_dict, say, before re-quantizing).
function SparseLinear:dequantize()
  self.int8 = nil -- the collector frees the int8 weights
  return self
end

local function check_x(self, x)
  if not core.is_tensor(x) then
    error(("bad argument #1 'x' to '%s' (seqnn.Tensor expected, got %s)"):format(NAME, type(x)), 3)
  end
  if x:dim() < 1 or x:size(-1) ~= self.in_features then
    local s = x:shape()
    error(("%s: x has %d features but the layer expects %d (x: %s)"):format(NAME, x:dim() > 0 and x:size(-1) or 0,
      self.in_features, #s == 0 and "scalar" or table.concat(s, "x")), 3)
  end
end

function SparseLinear:forward(x)
  check_x(self, x)
  local lead = x:shape()
  lead[#lead] = self.out_features
  local x2 = x:reshape(-1, self.in_features)
  local bias = self.bias
  local grad = autograd.is_enabled() and (autograd.tracked(x) or autograd.tracked(self.values) or autograd.tracked(bias))
  if self.int8 or self.pattern == "2:4" then
    if grad then
      error(("%s: the %s layer is inference-only (run under sn.no_grad, or fine-tune the dense model with "
        .. "sn.sparse.prune)"):format(NAME, self.int8 and "int8" or "2:4"), 2)
    end
    local y = self.int8 and core.k_bsr_i8_matmul(x2, self.int8, bias) or
        core.k_sparse24_matmul(x2, self.values, self.idx, bias)
    return y:view(table.unpack(lead))
  end
  local values, browptr, bcol = self.values, self.browptr, self.bcol
  local y = core.k_bsr_matmul(x2, values, browptr, bcol, bias):view(table.unpack(lead))
  if grad then
    autograd.record("bsr_linear", { x, values, bias, n = 3 }, y, function(g)
      local dx, dv, db = core.k_bsr_matmul_bwd(g:reshape(-1, self.out_features), x2, values, browptr, bcol,
        autograd.tracked(x), autograd.tracked(values), autograd.tracked(bias))
      return dx and dx:view(x:shape()), dv, db
    end, true)
  end
  return y
end

function SparseLinear:extra_repr()
  local kind = self.pattern == "2:4" and "2:4" or ("%dx%d blocks, %.0f%% sparse"):format(self.block[1],
    self.block[2], 100 * (1 - self:density()))
  return ("%d -> %d, %s%s%s"):format(self.in_features, self.out_features, kind, self.bias and "" or ", bias=false",
    self.int8 and ", int8" or "")
end

return SparseLinear
