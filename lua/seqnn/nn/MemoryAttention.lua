local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local MemoryLayer = require "seqnn.nn.MemoryLayer"
local KVCache = require "seqnn.nn.KVCache"
local MemoryAttention = sn.class("seqnn.nn.MemoryAttention", Module)

local NAME = "seqnn.nn.MemoryAttention"

-- MemoryAttention(d, heads [, {bits = 8, score = "code", rope = true, rope_base = 10000,
--                 window = nil, bias = false}]): MemoryFormer's token mixer (Ding et al. 2024).
-- Queries, keys and values come from one sn.nn.MemoryLayer(d, 3d), `qkv`: the paper's three
-- memory layers share the hash codes and scores of the (normed) input, so one layer with
-- 3d outputs is exactly them, hashed once. Then causal softmax attention over heads of
-- head_dim = d / heads (sn.F.attention_qkv; rope rotates q and k, window limits each query
-- to the window previous keys) and, as in the paper, no output projection. d must be a
-- multiple of bits. Decodes step by step like MultiheadAttention (init_cache: a KVCache).
function MemoryAttention:__init(d, heads, opts)
  Module.__init(self)
  opts = opts or {}
  for _, arg in ipairs({ { "d", d }, { "heads", heads } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("%s: %s must be a positive integer, got %s"):format(NAME, arg[1], tostring(arg[2])), 3)
    end
  end
  if d % heads ~= 0 then error(("%s: d = %d is not divisible by heads = %d"):format(NAME, d, heads), 3) end
  local bits = opts.bits or 8
  if math.type(bits) ~= "integer" or bits < 1 or bits > 16 then
    error(("%s: bits must be an integer in 1..16, got %s"):format(NAME, tostring(bits)), 3)
  end
  if d % bits ~= 0 then error(("%s: d = %d is not a multiple of bits = %d"):format(NAME, d, bits), 3) end
  local Dh = d // heads
  self.rope = opts.rope ~= false
  if self.rope and Dh % 2 ~= 0 then
    error(("%s: rope needs an even head_dim, got d / heads = %d / %d = %d"):format(NAME, d, heads, Dh), 3)
  end
  local window = opts.window
  if window ~= nil and (math.type(window) ~= "integer" or window < 0) then
    error(("%s: window must be an integer >= 0 or nil, got %s"):format(NAME, tostring(window)), 3)
  end
  self.d, self.heads, self.head_dim, self.window = d, heads, Dh, window
  self.rope_base = opts.rope_base or 10000
  self:add_module("qkv", MemoryLayer(d, 3 * d, { bits = bits, score = opts.score, bias = opts.bias == true }))
end

-- init_cache(batch, max_len): a KVCache for decoding up to max_len positions with forward.
function MemoryAttention:init_cache(batch, max_len)
  return KVCache(batch, self.heads, max_len, self.head_dim)
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d); a cache continues the cached sequence (see
-- MultiheadAttention:forward).
function MemoryAttention:forward(x, cache)
  if not sn.core.is_tensor(x) or x:dim() ~= 3 or x:size(3) ~= self.d then
    error(("%s: x must be (B,T,%d), got %s"):format(NAME, self.d,
      sn.core.is_tensor(x) and table.concat(x:shape(), "x") or type(x)), 2)
  end
  local B, T, H, Dh = x:size(1), x:size(2), self.heads, self.head_dim
  local qkv = self.qkv(x):view(B, T, 3 * H, Dh)
  local o
  if cache == nil then
    o = sn.F.attention_qkv(qkv, H, H, { causal = true, window = self.window,
      rope = self.rope and { base = self.rope_base } or nil })
  else
    local q, k, v = qkv:narrow(3, 1, H), qkv:narrow(3, H + 1, H), qkv:narrow(3, 2 * H + 1, H)
    if self.rope then
      local ropt = { offset = cache.length, base = self.rope_base }
      q, k = sn.F.rope(q, ropt), sn.F.rope(k, ropt)
    end
    o = cache:attend(q, k, v, self.window)
  end
  return o:reshape(B, T, H * Dh)
end

function MemoryAttention:extra_repr()
  local parts = { ("%d, heads=%d, bits=%d"):format(self.d, self.heads, self.qkv.bits) }
  if self.rope then parts[#parts + 1] = "rope" end
  if self.window then parts[#parts + 1] = ("window=%d"):format(self.window) end
  return table.concat(parts, ", ")
end

return MemoryAttention
