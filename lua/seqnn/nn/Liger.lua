local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local KVCache = require "seqnn.nn.KVCache"
local recurrent = require "seqnn.nn.recurrent"
local Liger = sn.class("seqnn.nn.Liger", Module)

local NAME = "seqnn.nn.Liger"

-- Liger(d, heads [, {window = 64, rope = true, rope_base = 10000, bias = false}]): Liger
-- attention (Lan et al. 2025) over x (B,T,d) with an attention layer's parameters only (one
-- q|k|v projection and the output projection, so pretrained attention weights load as is):
--   gated recurrence: phi = softmax over the head dim of q and k, a forget gate per key dim
--     from the keys themselves, g = logsigmoid(k) / 16, scale 1 (sn.F.gated_linear_attention)
--   sliding window: softmax attention of rope(q), rope(k), v over the last `window` tokens
--   o = (recurrence + window) / 2, then the output projection.
-- Decoding keeps the recurrent state and a KVCache for the window (its length is max_len:
-- each step reads only the last `window` positions).
function Liger:__init(d, heads, opts)
  Module.__init(self)
  opts = opts or {}
  local head_dim = recurrent.heads(NAME, d, heads)
  self.d, self.heads, self.head_dim = d, heads, head_dim
  self.window = recurrent.positive(NAME, "window", opts.window or 64)
  self.rope, self.rope_base = opts.rope ~= false, opts.rope_base or 10000
  if self.rope and self.head_dim % 2 ~= 0 then
    error(("%s: rope needs an even head dim, got d / heads = %d"):format(NAME, self.head_dim), 3)
  end
  self:add_module("qkv", Linear(d, 3 * d, { bias = opts.bias == true }))
  self:add_module("proj", Linear(d, d, { bias = opts.bias == true }))
end

function Liger:init_cache(batch, max_len)
  return { state = sn.zeros(batch, self.heads, self.head_dim, self.head_dim),
           kv = KVCache(batch, self.heads, max_len, self.head_dim), length = 0 }
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d); with a cache the tokens continue it.
function Liger:forward(x, cache)
  recurrent.check_input(NAME, x, self.d)
  if cache then recurrent.check_cache(NAME, cache, x) end
  local B, T, H, Dh = x:size(1), x:size(2), self.heads, self.head_dim
  local qkv = self.qkv(x):view(B, T, 3 * H, Dh)
  local q, k, v = qkv:narrow(3, 1, H), qkv:narrow(3, H + 1, H), qkv:narrow(3, 2 * H + 1, H)
  local g = sn.F.logsigmoid(k) / 16
  local o = recurrent.mix("gated_linear_attention", sn.F.softmax(q), sn.F.softmax(k), v, g, 1, cache)
  if self.rope then
    local ropt = { offset = cache and cache.length or 0, base = self.rope_base }
    q, k = sn.F.rope(q, ropt), sn.F.rope(k, ropt)
  end
  local w = cache and cache.kv:attend(q, k, v, self.window - 1)
    or sn.F.attention(q, k, v, { causal = true, window = self.window - 1 })
  o = (o + w) * 0.5
  if cache then cache.length = cache.length + T end
  return self.proj(o:reshape(B, T, self.d))
end

function Liger:extra_repr()
  return ("%d, heads=%d, window=%d%s"):format(self.d, self.heads, self.window, self.rope and ", rope" or "")
end

return Liger
