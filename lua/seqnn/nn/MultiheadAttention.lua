local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local Dropout = require "seqnn.nn.Dropout"
local KVCache = require "seqnn.nn.KVCache"
local MultiheadAttention = sn.class("seqnn.nn.MultiheadAttention", Module)

-- MultiheadAttention(d, heads [, {kv_heads = heads, rope = true, rope_base = 10000,
--                    window = nil, causal = true, bias = false, dropout = 0}]):
-- self-attention over x (B,T,d) with head_dim = d / heads. One Linear projects x to the
-- queries, keys and values of all heads at once ((heads + 2 kv_heads) * head_dim outputs,
-- split by narrow views); kv_heads < heads shares each key/value head among a contiguous
-- group of query heads (GQA; 1 is multi-query). rope rotates q and k by their positions
-- (sn.F.rope); window limits each query to the window previous keys. dropout applies to
-- the output projection. Subclasses change the projections (sn.nn.MemoryAttention):
-- opts.qkv, a module mapping d to the (heads + 2 kv_heads) * head_dim outputs in place of
-- the Linear, and opts.proj = false for no output projection.
function MultiheadAttention:__init(d, heads, opts)
  Module.__init(self)
  local NAME = self.__name -- a subclass's errors name the subclass
  opts = opts or {}
  local kv_heads = opts.kv_heads or heads
  for _, arg in ipairs({ { "d", d }, { "heads", heads }, { "kv_heads", kv_heads } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("%s: %s must be a positive integer, got %s"):format(NAME, arg[1], tostring(arg[2])), 3)
    end
  end
  if d % heads ~= 0 then
    error(("%s: d = %d is not divisible by heads = %d"):format(NAME, d, heads), 3)
  end
  if heads % kv_heads ~= 0 then
    error(("%s: heads = %d is not a multiple of kv_heads = %d"):format(NAME, heads, kv_heads), 3)
  end
  local Dh = d // heads
  self.rope = opts.rope ~= false
  if self.rope and Dh % 2 ~= 0 then
    error(("%s: rope needs an even head_dim, got d / heads = %d / %d = %d"):format(NAME, d, heads, Dh), 3)
  end
  local window = opts.window
  if window ~= nil and (math.type(window) ~= "integer" or window < 0) then
    error(("%s: window must be an integer >= 0 or nil, got %s"):format(NAME, tostring(window)), 3)
  end
  local p = opts.dropout or 0
  if type(p) ~= "number" or not (p >= 0 and p < 1) then
    error(("%s: dropout must be a number in [0, 1), got %s"):format(NAME, tostring(p)), 3)
  end
  self.d, self.heads, self.kv_heads, self.head_dim = d, heads, kv_heads, Dh
  self.rope_base, self.window, self.causal = opts.rope_base or 10000, window, opts.causal ~= false
  self:add_module("qkv", opts.qkv or Linear(d, (heads + 2 * kv_heads) * Dh, { bias = opts.bias == true }))
  if opts.proj ~= false then self:add_module("proj", Linear(d, d, { bias = opts.bias == true })) end
  if p > 0 then self:add_module("drop", Dropout(p)) end
end

-- init_cache(batch, max_len): a KVCache for decoding up to max_len positions with forward.
function MultiheadAttention:init_cache(batch, max_len)
  return KVCache(batch, self.kv_heads, max_len, self.head_dim)
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d). With a cache (from init_cache) the tokens
-- continue the cached sequence: the first call (an empty cache) runs full causal attention
-- over the prompt and stores its keys and values; later calls attend over the cache.
function MultiheadAttention:forward(x, cache)
  local NAME = self.__name
  if not sn.core.is_tensor(x) or x:dim() ~= 3 or x:size(3) ~= self.d then
    error(("%s: x must be (B,T,%d), got %s"):format(NAME, self.d,
      sn.core.is_tensor(x) and table.concat(x:shape(), "x") or type(x)), 2)
  end
  if cache ~= nil and not self.causal then
    error(("%s: a cache needs causal attention (this module has causal = false)"):format(NAME), 2)
  end
  local B, T = x:size(1), x:size(2)
  local H, G, Dh = self.heads, self.kv_heads, self.head_dim
  local qkv = self.qkv(x):view(B, T, H + 2 * G, Dh)
  local o
  if cache == nil then -- training: one node from the packed projection to the output
    o = sn.F.attention_qkv(qkv, H, G, { causal = self.causal, window = self.window,
      rope = self.rope and { base = self.rope_base } or nil })
  else
    local q, k, v = qkv:narrow(3, 1, H), qkv:narrow(3, H + 1, G), qkv:narrow(3, H + G + 1, G)
    if self.rope then
      local ropt = { offset = cache.length, base = self.rope_base }
      q, k = sn.F.rope(q, ropt), sn.F.rope(k, ropt)
    end
    o = cache:attend(q, k, v, self.window)
  end
  o = o:reshape(B, T, H * Dh)
  if self.proj then o = self.proj(o) end
  return self.drop and self.drop(o) or o
end

function MultiheadAttention:extra_repr()
  local parts = { ("%d, heads=%d"):format(self.d, self.heads) }
  if self.kv_heads ~= self.heads then parts[#parts + 1] = ("kv_heads=%d"):format(self.kv_heads) end
  if self.rope then parts[#parts + 1] = "rope" end
  if self.window then parts[#parts + 1] = ("window=%d"):format(self.window) end
  if not self.causal then parts[#parts + 1] = "causal=false" end
  return table.concat(parts, ", ")
end

return MultiheadAttention
