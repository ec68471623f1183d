local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local RMSNorm = require "seqnn.nn.RMSNorm"
local recurrent = require "seqnn.nn.recurrent"
local LinearAttention = sn.class("seqnn.nn.LinearAttention", Module)

local NAME = "seqnn.nn.LinearAttention"

local feature_maps = {
  elu1 = function(x) return sn.F.elu(x) + 1 end,
  elu = sn.F.elu,
  identity = function(x) return x end,
  softmax = function(x) return sn.F.softmax(x) end,
}
local normalizations = { denominator = true, output = true, none = true }

-- LinearAttention(d, heads [, {feature_map = "elu1", normalize = "denominator", gate = false,
--                  bias = false}]): causal kernel linear attention over x (B,T,d), head
-- dim d / heads, one fused q|k|v projection, through sn.F.gated_linear_attention (no gate):
--   feature_map  phi on q and k: "elu1" (elu + 1, positive), "elu", "identity", "softmax"
--                (over the head dim)
--   normalize    "denominator": o_t = phi(q_t)^T S_t / (phi(q_t) . sum_{s<=t} phi(k_s)), the
--                classic form (needs positive features); "output": TransNormer's
--                NormAttention, the unnormalized output through an RMSNorm over the merged
--                heads; "none"
--   gate         multiply by silu(x W_u) before the output projection (TransNormer)
-- The denominator rides along as one more value column of ones, so decoding carries one
-- (B,H,Dk,Dv+1) state.
function LinearAttention:__init(d, heads, opts)
  Module.__init(self)
  opts = opts or {}
  local head_dim = recurrent.heads(NAME, d, heads)
  local fmap, norm = opts.feature_map or "elu1", opts.normalize or "denominator"
  if not feature_maps[fmap] then
    error(("%s: feature_map must be 'elu1', 'elu', 'identity' or 'softmax', got %s"):format(NAME, tostring(fmap)), 3)
  end
  if not normalizations[norm] then
    error(("%s: normalize must be 'denominator', 'output' or 'none', got %s"):format(NAME, tostring(norm)), 3)
  end
  self.d, self.heads, self.head_dim = d, heads, head_dim
  self.feature_map, self.normalize, self.gated = fmap, norm, opts.gate == true
  local bias = opts.bias == true
  self:add_module("qkv", Linear(d, 3 * d, { bias = bias }))
  if self.gated then self:add_module("gate", Linear(d, d, { bias = bias })) end
  if norm == "output" then self:add_module("norm", RMSNorm(d)) end
  self:add_module("proj", Linear(d, d, { bias = bias }))
end

function LinearAttention:init_cache(batch)
  local Dh = self.head_dim
  return { state = sn.zeros(batch, self.heads, Dh, Dh + (self.normalize == "denominator" and 1 or 0)), length = 0 }
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d); with a cache the tokens continue it.
function LinearAttention:forward(x, cache)
  recurrent.check_input(NAME, x, self.d)
  if cache then recurrent.check_cache(NAME, cache, x) end
  local B, T, H, Dh = x:size(1), x:size(2), self.heads, self.head_dim
  local qkv = self.qkv(x):view(B, T, 3 * H, Dh)
  local phi = feature_maps[self.feature_map]
  local q, k, v = phi(qkv:narrow(3, 1, H)), phi(qkv:narrow(3, H + 1, H)), qkv:narrow(3, 2 * H + 1, H)
  local o
  if self.normalize == "denominator" then
    local vo = recurrent.mix("gated_linear_attention", q, k, sn.cat({ v, sn.ones(B, T, H, 1) }, 4), nil, nil, cache)
    o = vo:narrow(4, 1, Dh) / (vo:narrow(4, Dh + 1, 1) + 1e-6)
  else
    o = recurrent.mix("gated_linear_attention", q, k, v, nil, nil, cache)
  end
  o = o:reshape(B, T, self.d)
  if self.norm then o = self.norm(o) end
  if self.gated then o = o * sn.F.silu(self.gate(x)) end
  if cache then cache.length = cache.length + T end
  return self.proj(o)
end

function LinearAttention:extra_repr()
  return ("%d, heads=%d, feature_map=%s, normalize=%s%s"):format(self.d, self.heads, self.feature_map,
    self.normalize, self.gated and ", gate" or "")
end

return LinearAttention
