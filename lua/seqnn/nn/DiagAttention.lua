local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local recurrent = require "seqnn.nn.recurrent"
local DiagAttention = sn.class("seqnn.nn.DiagAttention", Module)

local NAME = "seqnn.nn.DiagAttention"

-- DiagAttention(d, heads [, {block = 64, bias = false}]): TransNormer's block-local softmax
-- attention: the sequence is cut into non-overlapping blocks of `block` tokens and each
-- token attends causally within its own block only, O(T block d). The blocks become the
-- batch of one sn.F.attention_qkv call (the sequence padded to a whole number of blocks;
-- the padding sits after every real token, so causality keeps it out).
function DiagAttention:__init(d, heads, opts)
  Module.__init(self)
  opts = opts or {}
  local head_dim = recurrent.heads(NAME, d, heads)
  self.d, self.heads, self.head_dim = d, heads, head_dim
  self.block = recurrent.positive(NAME, "block", opts.block or 64)
  self:add_module("qkv", Linear(d, 3 * d, { bias = opts.bias == true }))
  self:add_module("proj", Linear(d, d, { bias = opts.bias == true }))
end

-- The decoding state is the current block's keys and values: O(block), whatever the length.
function DiagAttention:init_cache(batch)
  return { k = sn.zeros(batch, self.heads, self.block, self.head_dim),
           v = sn.zeros(batch, self.heads, self.block, self.head_dim), length = 0 }
end

-- One token per step: its position in its block is length % block, and attention_step
-- reads the cache up to there (the slots after it hold an earlier block, never read).
local function decode(self, qkv, cache)
  local H, T = self.heads, qkv:size(2)
  local o = sn.empty(qkv:size(1), T, H, self.head_dim)
  for t = 1, T do
    local row = qkv:narrow(2, t, 1)
    local o_t = sn.F.attention_step(row:narrow(3, 1, H), row:narrow(3, H + 1, H), row:narrow(3, 2 * H + 1, H),
      cache.k, cache.v, cache.length % self.block)
    o:narrow(2, t, 1):copy_(o_t)
    cache.length = cache.length + 1
  end
  return o
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d); with a cache the tokens continue it.
function DiagAttention:forward(x, cache)
  recurrent.check_input(NAME, x, self.d)
  local B, T, H, Dh, w = x:size(1), x:size(2), self.heads, self.head_dim, self.block
  local qkv = self.qkv(x):view(B, T, 3 * H, Dh)
  local o
  if cache then
    if type(cache) ~= "table" or not cache.k then error(("%s: cache must come from init_cache"):format(NAME), 2) end
    o = sn.no_grad(function() return decode(self, qkv, cache) end)
  else
    local nb = (T + w - 1) // w
    if nb * w > T then qkv = sn.cat({ qkv, sn.zeros(B, nb * w - T, 3 * H, Dh) }, 2) end
    o = sn.F.attention_qkv(qkv:view(B * nb, w, 3 * H, Dh), H, H, { causal = true })
    o = o:view(B, nb * w, H * Dh)
    if nb * w > T then o = o:narrow(2, 1, T) end
  end
  return self.proj(o:reshape(B, T, self.d))
end

function DiagAttention:extra_repr()
  return ("%d, heads=%d, block=%d"):format(self.d, self.heads, self.block)
end

return DiagAttention
