local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local RMSNorm = require "seqnn.nn.RMSNorm"
local recurrent = require "seqnn.nn.recurrent"
local DeltaNet = sn.class("seqnn.nn.DeltaNet", Module)

local NAME = "seqnn.nn.DeltaNet"

-- DeltaNet(d, heads [, {d_conv = 4, allow_neg_eigval = false, bias = false}]): the delta
-- rule layer (Yang et al. 2024, the defaults of fla's DeltaNet) over x (B,T,d), head dim
-- d / heads:
--   q | k | v = silu(causal_conv1d(x W_qkv))   (a short convolution, d_conv taps; 1: none)
--   q, k L2-normalized per head;  beta = sigmoid(x W_beta) per head (x 2 with
--   allow_neg_eigval, so the state's eigenvalues may reach -1)
--   o = delta_rule(q, k, v, beta), a per-head RMSNorm, the output projection.
function DeltaNet:__init(d, heads, opts)
  Module.__init(self)
  opts = opts or {}
  local head_dim = recurrent.heads(NAME, d, heads)
  local W = recurrent.positive(NAME, "d_conv", opts.d_conv or 4)
  if W > 8 then error(("%s: d_conv must be at most 8, got %d"):format(NAME, W), 3) end
  self.d, self.heads, self.head_dim, self.d_conv = d, heads, head_dim, W
  self.beta_scale = opts.allow_neg_eigval and 2 or 1
  local bias = opts.bias == true
  self:add_module("qkv", Linear(d, 3 * d, { bias = bias }))
  recurrent.conv_params(self, 3 * d, W)
  self:add_module("beta_proj", Linear(d, heads, { bias = false }))
  self:add_module("norm", RMSNorm(head_dim))
  self:add_module("proj", Linear(d, d, { bias = bias }))
end

function DeltaNet:init_cache(batch)
  return { state = sn.zeros(batch, self.heads, self.head_dim, self.head_dim),
           conv = sn.zeros(batch, math.max(self.d_conv - 1, 1), 3 * self.d), length = 0 }
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d); with a cache the tokens continue it.
function DeltaNet:forward(x, cache)
  recurrent.check_input(NAME, x, self.d)
  if cache then recurrent.check_cache(NAME, cache, x) end
  local B, T, H, Dh = x:size(1), x:size(2), self.heads, self.head_dim
  local qkv = recurrent.conv(self.qkv(x), self.conv_weight, self.conv_bias, cache):view(B, T, 3 * H, Dh)
  local q = sn.F.l2_normalize(qkv:narrow(3, 1, H))
  local k = sn.F.l2_normalize(qkv:narrow(3, H + 1, H))
  local beta = sn.F.sigmoid(self.beta_proj(x))
  if self.beta_scale ~= 1 then beta = beta * self.beta_scale end
  local o = recurrent.mix("delta_rule", q, k, qkv:narrow(3, 2 * H + 1, H), beta, nil, cache)
  if cache then cache.length = cache.length + T end
  return self.proj(self.norm(o):reshape(B, T, self.d))
end

function DeltaNet:extra_repr()
  return ("%d, heads=%d, d_conv=%d%s"):format(self.d, self.heads, self.d_conv,
    self.beta_scale == 2 and ", allow_neg_eigval" or "")
end

return DeltaNet
