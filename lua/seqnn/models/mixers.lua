-- sn.models.mixers: token mixers by name, so a model config can say which layer mixes
-- tokens how: "attention", "swa" (sliding-window attention), "mamba", the linear-time
-- family "linear", "transnormer", "retnet", "gla", "liger", "mamba2", "deltanet", and the
-- hashing ones "memory_attention" (MemoryFormer's) and "ecoformer". Other
-- mixers register themselves the same way.
--
--   sn.models.mixers.register("attention", function(cfg, layer_index) return module end)
--   sn.models.mixers.build("attention", cfg, 3)     sn.models.mixers.names()
--
-- cfg holds the block's settings: d, heads, kv_heads, rope (bool), rope_base, window,
-- bias, dropout, and whatever else the model config carries. A mixer maps (B,T,d) to
-- (B,T,d); one that can decode step by step also has init_cache(batch, max_len) and takes
-- that cache as forward's second argument.
local Module = require "seqnn.nn.Module"
local MultiheadAttention = require "seqnn.nn.MultiheadAttention"
local Mamba = require "seqnn.nn.Mamba"
local LinearAttention = require "seqnn.nn.LinearAttention"
local DiagAttention = require "seqnn.nn.DiagAttention"
local RetNet = require "seqnn.nn.RetNet"
local GLA = require "seqnn.nn.GLA"
local Liger = require "seqnn.nn.Liger"
local Mamba2 = require "seqnn.nn.Mamba2"
local DeltaNet = require "seqnn.nn.DeltaNet"
local MemoryAttention = require "seqnn.nn.MemoryAttention"
local EcoFormer = require "seqnn.nn.EcoFormer"
local class = require "seqnn.class"

local mixers = {}
local builders = {}

function mixers.register(name, builder)
  if type(name) ~= "string" or name == "" then
    error(("seqnn.models.mixers.register: name must be a non-empty string, got %s"):format(tostring(name)), 2)
  end
  if type(builder) ~= "function" then
    error(("seqnn.models.mixers.register: builder for '%s' must be a function, got %s"):format(name, type(builder)), 2)
  end
  builders[name] = builder
end

function mixers.names()
  local list = {}
  for name in pairs(builders) do list[#list + 1] = name end
  table.sort(list)
  return list
end

function mixers.build(name, cfg, layer_index)
  local builder = builders[name]
  if builder == nil then
    error(("seqnn.models.mixers: unknown mixer '%s' (known: %s)"):format(tostring(name),
      table.concat(mixers.names(), ", ")), 3)
  end
  local m = builder(cfg, layer_index)
  if not class.is_instance(m, Module) then
    error(("seqnn.models.mixers: the builder of '%s' returned %s, not a seqnn.nn.Module"):format(name, type(m)), 3)
  end
  return m
end

mixers.register("attention", function(cfg)
  return MultiheadAttention(cfg.d, cfg.heads, { kv_heads = cfg.kv_heads, rope = cfg.rope, rope_base = cfg.rope_base,
    window = cfg.window, bias = cfg.bias, dropout = cfg.dropout })
end)

-- Mamba with the published defaults; cfg.d_state, d_conv, expand, dt_rank, bidirectional
-- and selective pass through when the model config carries them.
mixers.register("mamba", function(cfg)
  return Mamba(cfg.d, { d_state = cfg.d_state, d_conv = cfg.d_conv, expand = cfg.expand, dt_rank = cfg.dt_rank,
    bidirectional = cfg.bidirectional, selective = cfg.selective, bias = cfg.bias })
end)

-- Causal attention over the last swa_window (default 64) tokens, for hybrids such as
-- mixer = "deltanet,swa,deltanet,swa".
mixers.register("swa", function(cfg)
  return MultiheadAttention(cfg.d, cfg.heads, { kv_heads = cfg.kv_heads, rope = cfg.rope, rope_base = cfg.rope_base,
    window = (cfg.swa_window or 64) - 1, bias = cfg.bias, dropout = cfg.dropout })
end)

-- Kernel linear attention, normalized by its denominator; cfg.feature_map (default "elu1").
mixers.register("linear", function(cfg)
  return LinearAttention(cfg.d, cfg.heads, { feature_map = cfg.feature_map, bias = cfg.bias })
end)

-- TransNormer: block-local softmax attention (blocks of cfg.diag_block, default 64) in the
-- first half of the layers, NormAttention (elu features, output RMSNorm, silu gate) after.
mixers.register("transnormer", function(cfg, layer_index)
  if layer_index <= cfg.layers // 2 then
    return DiagAttention(cfg.d, cfg.heads, { block = cfg.diag_block, bias = cfg.bias })
  end
  return LinearAttention(cfg.d, cfg.heads, { feature_map = cfg.feature_map or "elu", normalize = "output", gate = true,
    bias = cfg.bias })
end)

mixers.register("retnet", function(cfg)
  return RetNet(cfg.d, cfg.heads, { rope = cfg.rope, rope_base = cfg.rope_base, bias = cfg.bias })
end)

mixers.register("gla", function(cfg) return GLA(cfg.d, cfg.heads, { d_conv = cfg.d_conv, bias = cfg.bias }) end)

mixers.register("liger", function(cfg)
  return Liger(cfg.d, cfg.heads, { window = cfg.swa_window, rope = cfg.rope, rope_base = cfg.rope_base, bias = cfg.bias })
end)

-- Mamba-2 with its defaults; cfg.d_state, d_conv, expand and headdim pass through.
mixers.register("mamba2", function(cfg)
  return Mamba2(cfg.d, { d_state = cfg.d_state, d_conv = cfg.d_conv, expand = cfg.expand, headdim = cfg.headdim,
    bias = cfg.bias })
end)

mixers.register("deltanet", function(cfg)
  return DeltaNet(cfg.d, cfg.heads, { d_conv = cfg.d_conv, bias = cfg.bias })
end)

-- EcoFormer's binary-code attention; cfg.ecoformer_bits (default 16) hash bits per head.
mixers.register("ecoformer", function(cfg)
  return EcoFormer(cfg.d, cfg.heads, { bits = cfg.ecoformer_bits, bias = cfg.bias })
end)

-- MemoryFormer's attention: q, k, v from one memory layer of cfg.memory_bits (default 8)
-- bits, no output projection; pair it with mlp = "memory" for the paper's blocks.
mixers.register("memory_attention", function(cfg)
  return MemoryAttention(cfg.d, cfg.heads, { bits = cfg.memory_bits, rope = cfg.rope, rope_base = cfg.rope_base,
    window = cfg.window, bias = cfg.bias })
end)

return mixers
