local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local RMSNorm = require "seqnn.nn.RMSNorm"
local recurrent = require "seqnn.nn.recurrent"
local GLA = sn.class("seqnn.nn.GLA", Module)

local NAME = "seqnn.nn.GLA"

-- GLA(d, heads [, {expand_k = 0.5, expand_v = 1, gate_rank = 16, gate_normalizer = 16,
--      d_conv = 0, bias = false}]): gated linear attention (Yang et al. 2024, the defaults of
-- fla's GLA layer) over x (B,T,d): q, k (expand_k d in all, split over heads), v (expand_v d),
-- a forget gate per key dim from a low-rank projection, g = logsigmoid(x W1 W2 + b) /
-- gate_normalizer, then sn.F.gated_linear_attention, a per-head RMSNorm times silu(x W_g),
-- and the output projection. d_conv > 0 adds fla's optional short convolution (with silu)
-- over q, k and v, as DeltaNet has: it lets a token's key meet the next token's value.
function GLA:__init(d, heads, opts)
  Module.__init(self)
  opts = opts or {}
  recurrent.positive(NAME, "d", d)
  recurrent.positive(NAME, "heads", heads)
  local K, V = math.floor(d * (opts.expand_k or 0.5) + 0.5), math.floor(d * (opts.expand_v or 1) + 0.5)
  if K < heads or K % heads ~= 0 or V < heads or V % heads ~= 0 then
    error(("%s: expand_k d = %d and expand_v d = %d must be multiples of heads = %d"):format(NAME, K, V, heads), 3)
  end
  local rank = recurrent.positive(NAME, "gate_rank", opts.gate_rank or 16)
  local W = opts.d_conv or 0
  if math.type(W) ~= "integer" or W < 0 or W > 8 then
    error(("%s: d_conv must be an integer in 0..8, got %s"):format(NAME, tostring(W)), 3)
  end
  self.d, self.heads, self.key_dim, self.value_dim = d, heads, K // heads, V // heads
  self.normalizer, self.d_conv = opts.gate_normalizer or 16, W
  local bias = opts.bias == true
  self:add_module("qkvg", Linear(d, 2 * K + 2 * V, { bias = bias }))
  if W > 0 then recurrent.conv_params(self, 2 * K + V, W) end
  self:add_module("gate_down", Linear(d, rank, { bias = false }))
  self:add_module("gate_up", Linear(rank, K))
  self:add_module("norm", RMSNorm(V // heads))
  self:add_module("proj", Linear(V, d, { bias = bias }))
end

function GLA:init_cache(batch)
  local H, Dk, Dv = self.heads, self.key_dim, self.value_dim
  return { state = sn.zeros(batch, H, Dk, Dv), length = 0,
           conv = self.d_conv > 0 and sn.zeros(batch, math.max(self.d_conv - 1, 1), H * (2 * Dk + Dv)) or nil }
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d); with a cache the tokens continue it.
function GLA:forward(x, cache)
  recurrent.check_input(NAME, x, self.d)
  if cache then recurrent.check_cache(NAME, cache, x) end
  local B, T, H, Dk, Dv = x:size(1), x:size(2), self.heads, self.key_dim, self.value_dim
  local K, V = H * Dk, H * Dv
  local p = self.qkvg(x)
  local gate, qkv = p:narrow(3, 2 * K + V + 1, V), p:narrow(3, 1, 2 * K + V)
  if self.d_conv > 0 then qkv = recurrent.conv(qkv, self.conv_weight, self.conv_bias, cache) end
  local q, k = qkv:narrow(3, 1, K):view(B, T, H, Dk), qkv:narrow(3, K + 1, K):view(B, T, H, Dk)
  local v = qkv:narrow(3, 2 * K + 1, V):view(B, T, H, Dv)
  local g = (sn.F.logsigmoid(self.gate_up(self.gate_down(x))) / self.normalizer):view(B, T, H, Dk)
  local o = recurrent.mix("gated_linear_attention", q, k, v, g, nil, cache)
  o = self.norm(o):reshape(B, T, V) * sn.F.silu(gate)
  if cache then cache.length = cache.length + T end
  return self.proj(o)
end

function GLA:extra_repr()
  return ("%d, heads=%d, key_dim=%d, value_dim=%d%s"):format(self.d, self.heads, self.key_dim, self.value_dim,
    self.d_conv > 0 and (", d_conv=%d"):format(self.d_conv) or "")
end

return GLA
