local sn = require "seqnn"
local MultiheadAttention = require "seqnn.nn.MultiheadAttention"
local MemoryLayer = require "seqnn.nn.MemoryLayer"
local MemoryAttention = sn.class("seqnn.nn.MemoryAttention", MultiheadAttention)

local NAME = "seqnn.nn.MemoryAttention"

-- MemoryAttention(d, heads [, {bits = 8, score = "code", rope = true, rope_base = 10000,
--                 window = nil, bias = false}]): MemoryFormer's token mixer (Ding et al. 2024).
-- Queries, keys and values come from one sn.nn.MemoryLayer(d, 3d), `qkv`: the paper's three
-- memory layers share the hash codes and scores of the (normed) input, so one layer with
-- 3d outputs is exactly them, hashed once. Then causal softmax attention over heads of
-- head_dim = d / heads as in sn.nn.MultiheadAttention (rope, window, decoding with a
-- KVCache) and, as in the paper, no output projection. d must be a multiple of bits.
function MemoryAttention:__init(d, heads, opts)
  opts = opts or {}
  local bits = opts.bits or 8
  if math.type(bits) ~= "integer" or bits < 1 or bits > 16 then
    error(("%s: bits must be an integer in 1..16, got %s"):format(NAME, tostring(bits)), 3)
  end
  if math.type(d) == "integer" and d % bits ~= 0 then
    error(("%s: d = %d is not a multiple of bits = %d"):format(NAME, d, bits), 3)
  end
  local qkv = math.type(d) == "integer" and d >= 1
    and MemoryLayer(d, 3 * d, { bits = bits, score = opts.score, bias = opts.bias == true }) or nil
  MultiheadAttention.__init(self, d, heads, { rope = opts.rope, rope_base = opts.rope_base, window = opts.window,
    qkv = qkv, proj = false })
end

function MemoryAttention:extra_repr()
  return MultiheadAttention.extra_repr(self):gsub("heads=%d+", "%0, bits=" .. self.qkv.bits, 1)
end

return MemoryAttention
