local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local LayerNorm = require "seqnn.nn.LayerNorm"
local autograd = require "seqnn.autograd"
local core = require "seqnn.core"
local ProductKeyMemory = sn.class("seqnn.nn.ProductKeyMemory", Module)

local defaults = { n_keys = 256, k_dim = 128, heads = 4, knn = 32, query_norm = "batchnorm",
                   momentum = 0.1, eps = 1e-5 }

-- ProductKeyMemory(d_in, d_out [, {n_keys = 256, k_dim = 128, heads = 4, knn = 32,
--   query_norm = "batchnorm" | "layernorm" | "none", momentum = 0.1, eps = 1e-5}]):
-- Lample et al.'s product-key memory, usable in place of an FFN: (..., d_in) -> (..., d_out).
--   q = norm(W_q x + b) split into heads of k_dim, each into halves q1, q2;
--   per head: the knn best of the n_keys^2 slots by q1.c1[a] + q2.c2[b] (sub-keys in
--   `keys` (heads, 2, n_keys, k_dim/2)), softmax over their scores, weighted sum of the rows
--   of `values` (n_keys^2, d_out) (shared by the heads); heads summed.
-- The gradient of `values` is row-sparse (only the rows read): sn.optim.AdamW / SGD update
-- those rows only (lazily; see AdamW.lua). "batchnorm" (the paper's choice; it spreads the
-- queries over the keys) normalizes each query feature over the batch's tokens with running
-- statistics for eval mode, computed by the layer-norm kernel on the transposed queries
-- (see batch_norm); "layernorm" uses sn.nn.LayerNorm.
function ProductKeyMemory:__init(d_in, d_out, opts)
  Module.__init(self)
  local name = "seqnn.nn.ProductKeyMemory"
  for _, arg in ipairs({ { "d_in", d_in }, { "d_out", d_out } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("%s: %s must be a positive integer, got %s"):format(name, arg[1], tostring(arg[2])), 3)
    end
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("%s: opts must be a table, got %s"):format(name, type(opts)), 3)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if defaults[k] == nil then error(("%s: unknown option '%s'"):format(name, tostring(k)), 3) end
  end
  local o = {}
  for k, v in pairs(defaults) do if opts[k] ~= nil then o[k] = opts[k] else o[k] = v end end
  for _, k in ipairs({ "n_keys", "k_dim", "heads", "knn" }) do
    if math.type(o[k]) ~= "integer" or o[k] < 1 then
      error(("%s: %s must be a positive integer, got %s"):format(name, k, tostring(o[k])), 3)
    end
  end
  if o.k_dim % 2 ~= 0 then
    error(("%s: k_dim must be even (it splits into two halves), got %d"):format(name, o.k_dim), 3)
  end
  if o.knn > o.n_keys then
    error(("%s: knn = %d must be <= n_keys = %d"):format(name, o.knn, o.n_keys), 3)
  end
  if o.n_keys > 46340 then -- n_keys^2 value rows must stay far inside memory and int64
    error(("%s: n_keys = %d gives %d^2 value rows, too many"):format(name, o.n_keys, o.n_keys), 3)
  end
  local norm = o.query_norm
  if norm == false then norm = "none" end
  if norm ~= "batchnorm" and norm ~= "layernorm" and norm ~= "none" then
    error(("%s: query_norm must be \"batchnorm\", \"layernorm\" or \"none\", got %s"):format(name, tostring(norm)), 3)
  end
  self.d_in, self.d_out, self.n_keys, self.k_dim, self.heads, self.knn = d_in, d_out, o.n_keys, o.k_dim, o.heads, o.knn
  self.query_norm, self.momentum, self.eps = norm, o.momentum, o.eps
  local C = o.heads * o.k_dim
  self:add_module("query", Linear(d_in, C))
  if norm == "layernorm" then
    self:add_module("norm", LayerNorm(C, { eps = o.eps }))
  elseif norm == "batchnorm" then
    self:parameter("norm_weight", sn.ones(C))
    self:parameter("norm_bias", sn.zeros(C))
    self:buffer("running_mean", sn.zeros(C))
    self:buffer("running_var", sn.ones(C))
  end
  local half = o.k_dim // 2
  local bound = 1 / math.sqrt(half)
  self:parameter("keys", sn.rand(o.heads, 2, o.n_keys, half) * (2 * bound) - bound)
  self:parameter("values", sn.randn(o.n_keys * o.n_keys, d_out) * (1 / math.sqrt(d_out)))
end

-- Per-feature statistics over the tokens are a layer norm of q^T (features, tokens): one
-- fused kernel each way (k_layer_norm_*), where the composition of tensor ops took ~9 passes
-- forward and more backward. Returns the normalized q^T and its mean and rstd per feature.
local function token_norm(qt, eps)
  local y, mean, rstd = core.k_layer_norm_fwd(qt, nil, nil, eps)
  autograd.record("batch_norm", { qt }, y, function(g)
    local gx = core.k_layer_norm_bwd(g, qt, nil, mean, rstd, false)
    qt = nil
    return gx
  end)
  return y, mean, rstd
end

-- Batch normalization of q (tokens, C) over its tokens.
function ProductKeyMemory:batch_norm(q)
  if self.training and q:size(1) > 1 then
    local y, mean, rstd = token_norm(q:t():contiguous(), self.eps)
    local N, m = q:size(1), self.momentum
    sn.no_grad(function()
      local var = (rstd * rstd):pow(-1) - self.eps -- the biased variance the kernel used
      self.running_mean:mul_(1 - m):add_(mean * m)
      self.running_var:mul_(1 - m):add_(var * (m * N / (N - 1)))
    end)
    return y:t() * self.norm_weight + self.norm_bias
  end
  local mean, var = self.running_mean, self.running_var
  return (q - mean) / (var + self.eps):sqrt() * self.norm_weight + self.norm_bias
end

function ProductKeyMemory:forward(x)
  if not sn.is_tensor(x) or x:dim() < 1 or x:size(-1) ~= self.d_in then
    error(("seqnn.nn.ProductKeyMemory: x must be (..., %d), got %s"):format(self.d_in,
      sn.is_tensor(x) and (x:dim() == 0 and "a scalar" or table.concat(x:shape(), "x")) or type(x)), 2)
  end
  local q = self.query(x)
  local shape = q:shape()
  if self.query_norm == "batchnorm" then
    q = self:batch_norm(q:reshape(-1, shape[#shape]))
  elseif self.query_norm == "layernorm" then
    q = self.norm(q)
  end
  shape[#shape] = self.heads
  shape[#shape + 1] = self.k_dim
  return sn.F.product_key_lookup(q:reshape(shape), self.keys, self.values, self.knn)
end

-- Forward multiply-adds per token, as 2 FLOPs each: the query projection, the scores of
-- both halves against their sub-keys, and the weighted sum of heads * knn value rows (the
-- selections compare and add, and are left out). The value table is not read in full.
function ProductKeyMemory:flops_per_token()
  local H = self.heads
  return 2 * self.d_in * H * self.k_dim + 2 * H * self.n_keys * self.k_dim + 2 * H * self.knn * self.d_out
end

function ProductKeyMemory:extra_repr()
  return ("%d -> %d, n_keys=%d (%d slots), k_dim=%d, heads=%d, knn=%d, query_norm=%s"):format(self.d_in,
    self.d_out, self.n_keys, self.n_keys * self.n_keys, self.k_dim, self.heads, self.knn, self.query_norm)
end

return ProductKeyMemory
