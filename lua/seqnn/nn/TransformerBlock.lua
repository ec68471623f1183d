local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local class = require "seqnn.class"
local MultiheadAttention = require "seqnn.nn.MultiheadAttention"
local LayerNorm = require "seqnn.nn.LayerNorm"
local RMSNorm = require "seqnn.nn.RMSNorm"
local MLP = require "seqnn.nn.MLP"
local SwiGLU = require "seqnn.nn.SwiGLU"
local MemoryLayer = require "seqnn.nn.MemoryLayer"
local Sequential = require "seqnn.nn.Sequential"
local ProductKeyMemory = require "seqnn.nn.ProductKeyMemory"
local Dropout = require "seqnn.nn.Dropout"
local TransformerBlock = sn.class("seqnn.nn.TransformerBlock", Module)

local NAME = "seqnn.nn.TransformerBlock"

-- TransformerBlock(d, heads [, {mlp = "gelu", norm = "layernorm", mixer = nil, hidden = nil,
--                  dropout = 0, bias = false, kv_heads, rope, window, ...}]): a pre-norm
-- residual block,  h = x + mixer(norm1(x));  y = h + mlp(norm2(h)).
--   mixer   the token mixer: a module taking (B,T,d) (and a cache, for decoding), or a name
--           from sn.models.mixers, built with this block's options plus d and heads
--           (default: MultiheadAttention(d, heads, opts))
--   mlp     "gelu": Linear(d, hidden) GELU Linear(hidden, d), hidden = 4d by default;
--           "swiglu": sn.nn.SwiGLU(d, hidden), hidden = 8d/3 rounded up to a multiple of 8;
--           "none": no second half, y = h (Mamba's blocks: the mixer has the parameters);
--           "memory": MemoryFormer's FFN, MemoryLayer(d, K (b+2)) LayerNorm MemoryLayer(K (b+2),
--           d, {bits = b+2}) with b = memory_bits (default 8) and K = d / b tables;
--           "pkm": sn.nn.ProductKeyMemory(d, d, {n_keys = pkm_keys, heads = pkm_heads,
--           knn = pkm_knn, k_dim = pkm_k_dim}) (ProductKeyMemory's defaults where not given)
--   norm    "layernorm" or "rmsnorm"
function TransformerBlock:__init(d, heads, opts)
  Module.__init(self)
  opts = opts or {}
  if math.type(d) ~= "integer" or d < 1 then
    error(("%s: d must be a positive integer, got %s"):format(NAME, tostring(d)), 3)
  end
  local norm = ({ layernorm = LayerNorm, rmsnorm = RMSNorm })[opts.norm or "layernorm"]
  if not norm then
    error(("%s: norm must be 'layernorm' or 'rmsnorm', got %s"):format(NAME, tostring(opts.norm)), 3)
  end
  local kind = opts.mlp or "gelu"
  if kind ~= "gelu" and kind ~= "swiglu" and kind ~= "none" and kind ~= "memory" and kind ~= "pkm" then
    error(("%s: mlp must be 'gelu', 'swiglu', 'memory', 'pkm' or 'none', got %s"):format(NAME, tostring(kind)), 3)
  end
  local bits = opts.memory_bits or 8
  if kind == "memory" and (math.type(bits) ~= "integer" or bits < 1 or bits > 14 or d % bits ~= 0) then
    error(("%s: mlp 'memory' needs memory_bits, an integer in 1..14 dividing d = %d, got %s"):format(NAME, d,
      tostring(bits)), 3)
  end
  local hidden = opts.hidden or (kind == "gelu" and 4 * d or (8 * d // 3 + 7) // 8 * 8)
  local mixer = opts.mixer
  if mixer == nil then
    mixer = MultiheadAttention(d, heads, opts)
  elseif type(mixer) == "string" then
    local cfg = setmetatable({ d = d, heads = heads }, { __index = opts })
    mixer = require("seqnn.models.mixers").build(mixer, cfg, 1)
  elseif not class.is_instance(mixer, Module) then
    error(("%s: mixer must be a seqnn.nn.Module or a mixer name, got %s"):format(NAME, type(mixer)), 3)
  end
  self:add_module("norm1", norm(d))
  self:add_module("mixer", mixer)
  if kind == "gelu" then
    self:add_module("norm2", norm(d))
    self:add_module("mlp", MLP({ d, hidden, d }, { activation = "gelu", bias = opts.bias == true }))
  elseif kind == "swiglu" then
    self:add_module("norm2", norm(d))
    self:add_module("mlp", SwiGLU(d, hidden))
  elseif kind == "memory" then
    -- the paper's extra_bit expansion: K tables of b bits in, K chunks of b + 2 bits out
    local K, bias = d // bits, opts.bias == true
    self:add_module("norm2", norm(d))
    self:add_module("mlp", Sequential(MemoryLayer(d, K * (bits + 2), { bits = bits, bias = bias }),
      LayerNorm(K * (bits + 2)), MemoryLayer(K * (bits + 2), d, { bits = bits + 2, bias = bias })))
  elseif kind == "pkm" then
    self:add_module("norm2", norm(d))
    self:add_module("mlp", ProductKeyMemory(d, d, { n_keys = opts.pkm_keys, heads = opts.pkm_heads,
      knn = opts.pkm_knn, k_dim = opts.pkm_k_dim }))
  end
  if (opts.dropout or 0) > 0 then self:add_module("drop", Dropout(opts.dropout)) end
end

-- init_cache(batch, max_len): the mixer's decoding state (a KVCache for attention).
function TransformerBlock:init_cache(batch, max_len)
  if type(self.mixer.init_cache) ~= "function" then
    error(("%s: the mixer (%s) has no init_cache, so it cannot decode step by step"):format(
      NAME, self.mixer.__name), 2)
  end
  return self.mixer:init_cache(batch, max_len)
end

-- forward(x [, cache]): x (B,T,d) -> (B,T,d); the cache goes to the mixer.
function TransformerBlock:forward(x, cache)
  local h = x + self.mixer(self.norm1(x), cache)
  if not self.mlp then return h end
  local m = self.mlp(self.norm2(h))
  if self.drop then m = self.drop(m) end
  return h + m
end

return TransformerBlock
