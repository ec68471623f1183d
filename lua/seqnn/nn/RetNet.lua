local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local recurrent = require "seqnn.nn.recurrent"
local RetNet = sn.class("seqnn.nn.RetNet", Module)

local NAME = "seqnn.nn.RetNet"

-- RetNet(d, heads [, {expand_v = 2, rope = true, rope_base = 10000, bias = false}]): RetNet's
-- multi-scale retention over x (B,T,d): q, k (head dim d / heads), v (expand_v d / heads),
-- a fixed decay gamma_h = 1 - 2^(-5-h) per head h = 0 .. heads-1 (sn.F.gated_linear_attention
-- with g = log gamma_h), a per-head RMSNorm (RetNet's GroupNorm), a silu output gate and the
-- output projection. rope rotates q and k by their positions (RetNet's xPos without its
-- length extrapolation term).
function RetNet:__init(d, heads, opts)
  Module.__init(self)
  opts = opts or {}
  local Dk = recurrent.heads(NAME, d, heads)
  local expand_v = recurrent.positive(NAME, "expand_v", opts.expand_v or 2)
  self.rope = opts.rope ~= false
  if self.rope and Dk % 2 ~= 0 then
    error(("%s: rope needs an even head dim, got d / heads = %d"):format(NAME, Dk), 3)
  end
  self.d, self.heads, self.key_dim, self.value_dim = d, heads, Dk, expand_v * Dk
  self.rope_base = opts.rope_base or 10000
  local bias = opts.bias == true
  self:add_module("qkvg", Linear(d, 2 * d + 2 * expand_v * d, { bias = bias }))
  self:add_module("proj", Linear(expand_v * d, d, { bias = bias }))
  local g = {}
  for h = 1, heads do g[h] = math.log(1 - 2 ^ (-4 - h)) end
  self:buffer("log_decay", sn.tensor(g))
end

function RetNet:init_cache(batch)
  return { state = sn.zeros(batch, self.heads, self.key_dim, self.value_dim), length = 0 }
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d); with a cache the tokens continue it.
function RetNet:forward(x, cache)
  recurrent.check_input(NAME, x, self.d)
  if cache then recurrent.check_cache(NAME, cache, x) end
  local B, T, H, Dk, Dv = x:size(1), x:size(2), self.heads, self.key_dim, self.value_dim
  local p = self.qkvg(x)
  local q, k = p:narrow(3, 1, H * Dk):view(B, T, H, Dk), p:narrow(3, H * Dk + 1, H * Dk):view(B, T, H, Dk)
  local v = p:narrow(3, 2 * H * Dk + 1, H * Dv):view(B, T, H, Dv)
  local gate = p:narrow(3, 2 * H * Dk + H * Dv + 1, H * Dv)
  if self.rope then
    local ropt = { offset = cache and cache.length or 0, base = self.rope_base }
    q, k = sn.F.rope(q, ropt), sn.F.rope(k, ropt)
  end
  local g = self.log_decay:view(1, 1, H):expand(B, T, H)
  local o = recurrent.mix("gated_linear_attention", q, k, v, g, nil, cache)
  o = sn.F.rms_norm(o, nil):reshape(B, T, H * Dv) * sn.F.silu(gate)
  if cache then cache.length = cache.length + T end
  return self.proj(o)
end

function RetNet:extra_repr()
  return ("%d, heads=%d, value_dim=%d%s"):format(self.d, self.heads, self.value_dim, self.rope and ", rope" or "")
end

return RetNet
