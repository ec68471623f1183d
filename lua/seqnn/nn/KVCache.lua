local sn = require "seqnn"
local class = require "seqnn.class"
local KVCache = class("seqnn.nn.KVCache")

-- KVCache(batch, kv_heads, max_len, head_dim): the keys and values one attention layer has
-- seen while decoding, k and v (B, Hkv, Tmax, Dh) f32 (per-head contiguous slabs, the layout
-- F.attention_step reads), filled up to `length` positions. Not a Module: it holds no
-- parameters and is never saved; models make one per layer for a generation.
function KVCache:__init(batch, kv_heads, max_len, head_dim)
  for _, arg in ipairs({ { "batch", batch }, { "kv_heads", kv_heads }, { "max_len", max_len }, { "head_dim", head_dim } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("seqnn.nn.KVCache: %s must be a positive integer, got %s"):format(arg[1], tostring(arg[2])), 3)
    end
  end
  self.k = sn.zeros(batch, kv_heads, max_len, head_dim)
  self.v = sn.zeros(batch, kv_heads, max_len, head_dim)
  self.max_len, self.length = max_len, 0
end

-- claim(n): reserves the next n positions; returns the 0-based position of the first.
function KVCache:claim(n)
  if self.length + n > self.max_len then
    error(("seqnn.nn.KVCache: full: %d positions held, %d more asked, room for %d"):format(
      self.length, n, self.max_len), 3)
  end
  local pos = self.length
  self.length = pos + n
  return pos
end

-- append(k, v): k, v (B, T, Hkv, Dh), as attention reads them, copied to the next T positions.
function KVCache:append(k, v)
  local T = k:size(2)
  local pos = self:claim(T)
  sn.no_grad(function()
    self.k:narrow(3, pos + 1, T):copy_(k:transpose(2, 3))
    self.v:narrow(3, pos + 1, T):copy_(v:transpose(2, 3))
  end)
end

-- attend(q, k, v [, window]): causal attention of q (B,T,H,Dh) over the cached sequence
-- continued by k, v (B,T,Hkv,Dh); returns (B,T,H,Dh). On an empty cache the tokens are a
-- prompt: one full causal sn.F.attention, then their keys and values are stored; later
-- tokens take one sn.F.attention_step each over the cached positions (O(length) per token,
-- or O(window) with a window: each query sees the window previous keys and itself).
function KVCache:attend(q, k, v, window)
  if self.length == 0 then
    local o = sn.F.attention(q, k, v, { causal = true, window = window })
    self:append(k, v)
    return o
  end
  local T = q:size(2)
  local opts = { window = window }
  if T == 1 then return sn.F.attention_step(q, k, v, self.k, self.v, self:claim(1), opts) end
  local o = sn.empty(q:size(1), T, q:size(3), q:size(4))
  for t = 1, T do
    o:narrow(2, t, 1):copy_(sn.F.attention_step(q:narrow(2, t, 1), k:narrow(2, t, 1), v:narrow(2, t, 1), self.k,
      self.v, self:claim(1), opts))
  end
  return o
end

function KVCache:reset() self.length = 0 end

function KVCache:__tostring()
  local s = self.k:shape()
  return ("seqnn.nn.KVCache(batch %d, kv_heads %d, %d/%d positions, head_dim %d)"):format(
    s[1], s[2], self.length, self.max_len, s[4])
end

return KVCache
