local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local recurrent = require "seqnn.nn.recurrent"
local EcoFormer = sn.class("seqnn.nn.EcoFormer", Module)

local NAME = "seqnn.nn.EcoFormer"

-- EcoFormer(d, heads [, {bits = 16, bias = false}]): causal binary-code attention (Liu et
-- al., NeurIPS 2022) over x (B,T,d), head dim Dh = d / heads, through sn.F.binary_attention:
--   qk = l2_normalize(x W_qk) per head      (one projection shared by queries and keys)
--   y  = qk A_h, A_h (Dh, bits) per head    (the learned hash projection, parameter "hash")
--   h  = sign(y) in {-1,+1}^bits            v = x W_v
--   o_i = sum_{j<=i} (h_i.h_j + bits + 1) v_j / sum_{j<=i} (h_i.h_j + bits + 1),  out = o W_o
-- The hash projection trains with the rest of the model through the straight-through
-- estimator of sign (dy = dh * 1[|y| < 1]); the paper's kernelized hashing with anchors and
-- its self-supervised KSH stage are not implemented. Decoding: init_cache(batch) holds one
-- (B,H,bits+1,Dh+1) state, so a token costs O(H bits Dh) whatever the context length.
function EcoFormer:__init(d, heads, opts)
  Module.__init(self)
  if opts ~= nil and type(opts) ~= "table" then
    error(("%s: opts must be a table {bits =, bias =}, got %s"):format(NAME, type(opts)), 3)
  end
  opts = opts or {}
  local head_dim = recurrent.heads(NAME, d, heads)
  local bits = opts.bits or 16
  if math.type(bits) ~= "integer" or bits < 1 or bits > 64 then
    error(("%s: bits must be an integer in 1..64, got %s"):format(NAME, tostring(bits)), 3)
  end
  self.d, self.heads, self.head_dim, self.bits = d, heads, head_dim, bits
  local bias = opts.bias == true
  self:add_module("qk", Linear(d, d, { bias = bias }))
  self:add_module("value", Linear(d, d, { bias = bias }))
  self:add_module("proj", Linear(d, d, { bias = bias }))
  -- unit-norm qk against N(0, 1) columns: y ~ N(0, 1), about 2/3 inside the estimator's |y| < 1
  self:parameter("hash", sn.randn(heads, head_dim, bits))
end

-- The hash pre-activations y (B,T,H,bits) of x (B,T,d); sign(y) are the codes.
function EcoFormer:hash_logits(x)
  local B, T, H, Dh = x:size(1), x:size(2), self.heads, self.head_dim
  local qk = sn.F.l2_normalize(self.qk(x):view(B, T, H, Dh)):transpose(2, 3)         -- (B,H,T,Dh)
  return sn.matmul(qk, self.hash:view(1, H, Dh, self.bits)):transpose(2, 3)          -- (B,T,H,bits)
end

function EcoFormer:init_cache(batch)
  return { state = sn.zeros(batch, self.heads, self.bits + 1, self.head_dim + 1), length = 0 }
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d); with a cache the tokens continue it (a prompt
-- through the chunked kernel from the cached state, one token through the step).
function EcoFormer:forward(x, cache)
  recurrent.check_input(NAME, x, self.d)
  if cache then recurrent.check_cache(NAME, cache, x) end
  local B, T, H, Dh = x:size(1), x:size(2), self.heads, self.head_dim
  local y = self:hash_logits(x)
  local v = self.value(x):view(B, T, H, Dh)
  local o
  if not cache then
    o = sn.F.binary_attention(y, v)
  elseif T == 1 then
    o = sn.F.binary_attention_step(y, v, cache.state)
  else
    local state
    o, state = sn.F.binary_attention(y, v, { initial_state = cache.state, return_state = true })
    cache.state:copy_(state)
  end
  if cache then cache.length = cache.length + T end
  return self.proj(o:reshape(B, T, self.d))
end

-- Forward FLOPs per token (a multiply-add is 2): the three d x d projections, the hash
-- projection, and the state's read and update, each bits x Dh per head (adds and
-- subtracts on binary codes, counted as one FLOP each). The chunk-local popcount terms
-- (at most 64 tokens) are left out, as in the paper's accounting.
function EcoFormer:flops_per_token()
  local d = self.d
  return 3 * 2 * d * d + 2 * d * self.bits + 2 * self.bits * d
end

function EcoFormer:extra_repr()
  return ("%d, heads=%d, bits=%d"):format(self.d, self.heads, self.bits)
end

return EcoFormer
