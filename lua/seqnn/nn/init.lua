-- sn.nn: modules. Every layer derives from sn.nn.Module (see Module.lua and docs/nn.md).
--
--   sn.nn.Linear(in, out [, {bias = true}])      sn.nn.Embedding(num, dim)
--   sn.nn.LayerNorm(dim [, {eps, affine}])       sn.nn.RMSNorm(dim [, {eps}])
--   sn.nn.Dropout(p)  sn.nn.GELU()  sn.nn.SiLU()  sn.nn.Tanh()
--   sn.nn.Sequential(m1, m2, ...)  sn.nn.ModuleList{m1, m2, ...}
--   sn.nn.MLP{d1, ..., dn, activation = "gelu", dropout = 0}   sn.nn.SwiGLU(dim, hidden)
--   sn.nn.MultiheadAttention(d, heads [, {kv_heads, rope, window, causal, bias, dropout}])
--   sn.nn.Mamba(d_model [, {d_state = 16, d_conv = 4, expand = 2, dt_rank, selective, bidirectional}])
--   sn.nn.LinearAttention(d, heads [, {feature_map, normalize, gate}])   sn.nn.DiagAttention(d, heads [, {block}])
--   sn.nn.RetNet(d, heads)  sn.nn.GLA(d, heads)  sn.nn.Liger(d, heads [, {window}])
--   sn.nn.Mamba2(d_model [, {d_state = 64, headdim = 64, ...}])  sn.nn.DeltaNet(d, heads [, {d_conv = 4}])
--   sn.nn.TransformerBlock(d, heads [, {mlp, norm, mixer, ...}])
--   sn.nn.SparseLinear(in, out [, {sparsity = 0.9, block = {4, 4}} | {pattern = "2:4"}])
--   sn.nn.MaskedLinear(linear, mask [, decay])   (made by sn.sparse.prune)
--   sn.nn.KVCache(batch, kv_heads, max_len, head_dim)   (decoding state, not a Module)
--   sn.nn.MemoryLayer(d_in, d_out [, {bits = 8, chunks, bias, score}])   sn.nn.MemoryAttention(d, heads [, {bits}])
--   sn.nn.ProductKeyMemory(d_in, d_out [, {n_keys = 256, k_dim = 128, heads = 4, knn = 32, query_norm}])
local nn = {}
for _, name in ipairs({ "Module", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU",
                        "SiLU", "Tanh", "Sequential", "ModuleList", "MLP", "SwiGLU", "KVCache",
                        "MultiheadAttention", "Mamba", "LinearAttention", "DiagAttention", "RetNet", "GLA",
                        "Liger", "Mamba2", "DeltaNet", "TransformerBlock", "MaskedLinear", "SparseLinear", "EcoFormer",
                        "ProductKeyMemory", "MemoryLayer", "MemoryAttention" }) do
  nn[name] = require("seqnn.nn." .. name)
end
return nn
