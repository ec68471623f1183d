-- seqnn.models.LM{vocab_size = V (or vocab = V) [, d = 128, layers = 4, heads = 4, kv_heads = heads,
--                 context = 64, mixer = "attention", mlp = "gelu", norm = "layernorm",
--                 positions = "rope", window, dropout = 0, bias = false, tie_weights = true,
--                 rope_base = 10000]}: a decoder-only language model, ids (B,T) -> logits
-- (B,T,V): token embedding (+ learned position embedding when positions = "learned"),
-- `layers` pre-norm sn.nn.TransformerBlocks, a final norm and the output projection (the
-- token embedding itself when tie_weights).
--   mixer      a name from sn.models.mixers for every layer, or one per layer: a list
--              {"attention", "mamba", ...} or the same names joined by commas
--   positions  "rope": q and k are rotated (sn.F.rope), no position table, any length;
--              "learned": a (context, d) table added to the embeddings, at most context
--   mlp        "gelu", "swiglu", "memory" (MemoryFormer's), "pkm" (product-key memory), or "none"
--              (Mamba's blocks: LM{..., mixer = "mamba", mlp = "none"})
--   d_state, d_conv, expand, dt_rank, selective, bidirectional: passed to "mamba" mixers
--   (d_state, d_conv, expand, headdim to "mamba2"; d_conv to "deltanet" and "gla", whose
--   short convolution is off without it); swa_window to
--   "swa" and "liger"; feature_map to "linear" and "transnormer"; diag_block to "transnormer";
--   memory_bits to "memory_attention" and mlp = "memory"; ecoformer_bits to "ecoformer";
--   pkm_keys, pkm_heads, pkm_knn, pkm_k_dim to mlp = "pkm"
--   (a MemoryFormer: LM{..., mixer = "memory_attention", mlp = "memory"})
-- Decoding: cache = model:init_cache(batch, max_len), then model:step(ids, cache) with the
-- prompt and then one token at a time; each call returns the logits of its tokens.
local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Embedding = require "seqnn.nn.Embedding"
local Linear = require "seqnn.nn.Linear"
local LayerNorm = require "seqnn.nn.LayerNorm"
local RMSNorm = require "seqnn.nn.RMSNorm"
local Dropout = require "seqnn.nn.Dropout"
local ModuleList = require "seqnn.nn.ModuleList"
local TransformerBlock = require "seqnn.nn.TransformerBlock"
local mixers = require "seqnn.models.mixers"
local LM = sn.class("seqnn.models.LM", Module)

local NAME = "seqnn.models.LM"
local defaults = { d = 128, layers = 4, heads = 4, context = 64, mixer = "attention", mlp = "gelu",
                   norm = "layernorm", positions = "rope", dropout = 0, bias = false, tie_weights = true,
                   rope_base = 10000 }
-- Options that only some mixers read (Mamba's), passed through to the mixer builders.
local optional = { vocab_size = true, vocab = true, kv_heads = true, window = true, d_state = true, d_conv = true,
                   expand = true, dt_rank = true, selective = true, bidirectional = true, headdim = true,
                   feature_map = true, diag_block = true, swa_window = true, memory_bits = true,
                   ecoformer_bits = true, pkm_keys = true, pkm_heads = true, pkm_knn = true, pkm_k_dim = true }

-- Raised from resolve, through __init and the class constructor, at the caller's line.
local function fail(fmt, ...) error(NAME .. ": " .. fmt:format(...), 5) end

-- The complete config (flat: numbers, strings, booleans, for checkpoint metadata) and the
-- list of mixer names, one per layer.
local function resolve(opts)
  if type(opts) ~= "table" then fail("expected a table of options, got %s", type(opts)) end
  local config = {}
  for k, v in pairs(opts) do
    if defaults[k] == nil and not optional[k] then fail("unknown option '%s'", tostring(k)) end
    config[k] = v
  end
  for k, v in pairs(defaults) do
    if config[k] == nil then config[k] = v end
  end
  -- `vocab` is the short spelling; the config (and checkpoint metadata) keep vocab_size.
  if config.vocab ~= nil then
    if config.vocab_size ~= nil and config.vocab_size ~= config.vocab then
      fail("vocab %s and vocab_size %s disagree", tostring(config.vocab), tostring(config.vocab_size))
    end
    config.vocab_size, config.vocab = config.vocab, nil
  end
  config.kv_heads = config.kv_heads or config.heads
  for _, k in ipairs({ "vocab_size", "d", "layers", "heads", "kv_heads", "context" }) do
    if math.type(config[k]) ~= "integer" or config[k] < 1 then
      fail("%s must be a positive integer, got %s", k, tostring(config[k]))
    end
  end
  if config.positions ~= "rope" and config.positions ~= "learned" then
    fail("positions must be 'rope' or 'learned', got %s", tostring(config.positions))
  end
  local names = config.mixer
  if type(names) == "string" then
    local list = {}
    for name in names:gmatch("[^,]+") do list[#list + 1] = name end
    if #list == 1 then
      for i = 2, config.layers do list[i] = list[1] end
    end
    names = list
  end
  if type(names) ~= "table" or #names ~= config.layers then
    fail("mixer must be a mixer name or a list of %d names (one per layer), got %s", config.layers,
      type(names) == "table" and (#names .. " names") or tostring(names))
  end
  config.mixer = table.concat(names, ",")
  return config, names
end

function LM:__init(opts)
  Module.__init(self)
  local config, names = resolve(opts)
  self.config = config
  local d = config.d
  self:add_module("tok", Embedding(config.vocab_size, d))
  -- GPT-2's N(0, 0.02): with tied weights the first logits are near uniform.
  sn.no_grad(function() self.tok.weight:mul_(0.02) end)
  if config.positions == "learned" then
    self:add_module("pos", Embedding(config.context, d))
    sn.no_grad(function() self.pos.weight:mul_(0.02) end)
  end
  if config.dropout > 0 then self:add_module("drop", Dropout(config.dropout)) end
  local cfg = setmetatable({ rope = config.positions == "rope" }, { __index = config })
  local blocks = {}
  for i = 1, config.layers do
    local mixer = mixers.build(names[i], cfg, i)
    blocks[i] = TransformerBlock(d, config.heads, { mixer = mixer, mlp = config.mlp, norm = config.norm,
      bias = config.bias, dropout = config.dropout, memory_bits = config.memory_bits, pkm_keys = config.pkm_keys,
      pkm_heads = config.pkm_heads, pkm_knn = config.pkm_knn, pkm_k_dim = config.pkm_k_dim })
  end
  self:add_module("blocks", ModuleList(blocks))
  self:add_module("norm", config.norm == "rmsnorm" and RMSNorm(d) or LayerNorm(d))
  if not config.tie_weights then self:add_module("head", Linear(d, config.vocab_size, { bias = false })) end
end

-- init_cache(batch [, max_len = context]): the decoding state of every layer, for step.
function LM:init_cache(batch, max_len)
  max_len = max_len or self.config.context
  if self.pos and max_len > self.config.context then
    error(("%s: learned positions stop at context = %d, asked for a cache of %s"):format(
      NAME, self.config.context, tostring(max_len)), 2)
  end
  local cache = { length = 0 }
  for i, block in ipairs(self.blocks) do cache[i] = block:init_cache(batch, max_len) end
  return cache
end

-- forward(ids [, cache]): ids (B,T) i64 -> logits (B,T,V). With a cache the ids continue
-- the cached sequence (positions cache.length .. cache.length + T - 1).
function LM:forward(ids, cache)
  if not sn.core.is_tensor(ids) or ids:dtype() ~= "i64" or ids:dim() ~= 2 then
    error(("%s: ids must be (B,T) i64 token ids, got %s"):format(NAME,
      sn.core.is_tensor(ids) and (table.concat(ids:shape(), "x") .. " " .. ids:dtype()) or type(ids)), 2)
  end
  local T, start = ids:size(2), cache and cache.length or 0
  local x = self.tok(ids)
  if self.pos then
    if start + T > self.config.context then
      error(("%s: positions %d..%d exceed the learned context of %d"):format(
        NAME, start + 1, start + T, self.config.context), 2)
    end
    x = x + self.pos(sn.arange(T, "i64") + start)
  end
  if self.drop then x = self.drop(x) end
  for i, block in ipairs(self.blocks) do x = block(x, cache and cache[i]) end
  x = self.norm(x)
  if cache then cache.length = start + T end
  return self.head and self.head(x) or sn.F.linear(x, self.tok.weight)
end

-- step(ids, cache): forward through the cache (see init_cache); what sn.generate calls.
function LM:step(ids, cache)
  if type(cache) ~= "table" then
    error(("%s:step: expected a cache from init_cache, got %s"):format(NAME, type(cache)), 2)
  end
  return self:forward(ids, cache)
end

function LM:extra_repr()
  local c = self.config
  local first, uniform = c.mixer:match("^[^,]+"), true
  for name in c.mixer:gmatch("[^,]+") do uniform = uniform and name == first end
  return ("vocab %d, d %d, %d layers of %s, heads %d/%d, context %d, %s positions, %s, %s"):format(
    c.vocab_size, c.d, c.layers, uniform and first or ("{" .. c.mixer .. "}"), c.heads, c.kv_heads,
    c.context, c.positions, c.mlp, c.norm)
end

return LM
