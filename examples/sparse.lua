-- examples/sparse.lua -- a small character-level LM trained dense, pruned to 2:4 and to
-- block sparsity, fine-tuned sparse (adaptive sparse training: masks re-selected, SR-STE,
-- distillation from the dense model), converted for sparse inference and quantized to
-- int8. Prints validation loss, weights, FLOPs per token and inference tokens/s of each.
-- About three minutes on 2 cores.
--
--   lua examples/sparse.lua
--   lua examples/sparse.lua --sparsity 0.9 --block 16x1 --finetune 400
--   lua examples/sparse.lua --help
local sn = require "seqnn"
local compare = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib/compare.lua")

local PROG = "examples/sparse.lua"
local FLAGS = {
  { "steps", "integer", 300, "dense training steps (the 3 KB corpus: more overfit)" },
  { "finetune", "integer", 150, "sparse fine-tuning steps per pruned model" },
  { "batch", "integer", 32, "sequences per step" },
  { "seq", "integer", 64, "characters per sequence" },
  { "d", "integer", 128, "model width (the MLP is 4d wide)" },
  { "layers", "integer", 2, "transformer blocks" },
  { "lr", "number", 3e-3, "peak learning rate of the dense run (fine-tuning: a third)" },
  { "sparsity", "number", 0.8, "fraction of blocks pruned in the block-sparse model" },
  { "block", "string", "4x1", "block shape, outputs x inputs (4x1 feeds the int8 kernel best)" },
  { "threads", "integer", nil, "threads (default: all cores)" },
  { "seed", "integer", 1, "random seed" },
}
local opts = sn.cli.parse(PROG, FLAGS, arg or {})
if opts.threads then sn.set_num_threads(opts.threads) end
local ro, ri = opts.block:match("^(%d+)x(%d+)$")
ro, ri = math.tointeger(tonumber(ro)), math.tointeger(tonumber(ri))
if not ro or ro < 1 or ri < 1 then sn.cli.fail(PROG, ("--block must look like 4x1, got '%s'"):format(opts.block)) end
if not (opts.sparsity >= 0 and opts.sparsity < 1) then
  sn.cli.fail(PROG, ("--sparsity must be in [0, 1), got %g"):format(opts.sparsity))
end

sn.manual_seed(opts.seed)
local ds = sn.data.TextDataset{ text = sn.data.default_corpus(), seq = opts.seq }
local config = { vocab_size = ds.tokenizer.vocab_size, d = opts.d, layers = opts.layers, heads = 4,
  context = opts.seq, mlp = "gelu", norm = "rmsnorm", dropout = 0.3 }
local function new_model() return sn.models.LM(config) end

-- The same validation windows for every model.
local val = compare.Validation(ds, opts.batch)

-- Weights of the linear layers (nonzero ones for sparse layers) and of the rest.
local function count_weights(model)
  local linear, other = 0, 0
  for _, m in ipairs(model:modules()) do
    if m.__name == "seqnn.nn.SparseLinear" then
      linear = linear + m.values:numel()
    elseif m.__name == "seqnn.nn.Linear" or m.__name == "seqnn.nn.MaskedLinear" then
      linear = linear + (m.mask and m.mask:sum():item() or m.weight:numel())
    end
  end
  local total = 0
  for _, p in ipairs(model:parameters()) do total = total + p:numel() end
  for _, m in ipairs(model:modules()) do
    if m.__name == "seqnn.nn.SparseLinear" and m.pattern == "2:4" then total = total + m.values:numel() end
  end
  other = total - linear
  return math.floor(linear), math.floor(other)
end

local function fit(model, steps, lr, extra)
  local optimizer = sn.optim.AdamW(model:parameters(), { lr = lr, weight_decay = 0.1 })
  local args = { model = model, optimizer = optimizer, data = ds, steps = steps, batch = opts.batch, clip = 1.0,
    schedule = sn.optim.schedule.warmup_cosine{ lr = lr, warmup = math.max(1, steps // 20), total = steps,
      min_lr = lr / 10 }, eval_batches = 0, log_every = math.max(1, steps // 10) }
  for k, v in pairs(extra or {}) do args[k] = v end
  return sn.train.fit(args)
end

local rows = {}
local function report(name, model, note)
  local linear, other = count_weights(model)
  -- Per token: 2 FLOPs per linear weight; attention's scores and sums over a full window.
  local flops = 2 * linear + opts.layers * 4 * opts.seq * opts.d
  rows[#rows + 1] = { name = name, loss = val:loss(model), linear = linear, other = other, flops = flops,
    tps = val:tokens_per_s(model), note = note or "" }
  local r = rows[#rows]
  print(("  %-28s val %.4f  %d linear weights  %.0f tokens/s"):format(name, r.loss, linear, r.tps))
end

print(("seqnn sparse example | %s, %d threads | %d tokens, vocab %d | LM d=%d, %d layers, MLP 4d"):format(
  sn.config().simd, sn.get_num_threads(), ds:num_tokens(), ds.tokenizer.vocab_size, opts.d, opts.layers))

print(("== dense: %d steps"):format(opts.steps))
local dense = new_model()
fit(dense, opts.steps, opts.lr)
report("dense", dense)
local teacher = dense
teacher:eval()

local function copy_of_dense()
  local m = new_model()
  m:load_state_dict(dense:state_dict())
  return m
end

-- Fine-tuning learns from the dense model's outputs as well as from the text.
local function distill(model, x, y)
  local t = sn.no_grad(function() return teacher(x) end)
  return sn.sparse.distill_loss(model(x), t, y, { temperature = 2, alpha = 0.67 })
end

local function sparse_run(name, prune_opts)
  print(("== %s: one-shot magnitude pruning, then %d steps of adaptive sparse training"):format(name, opts.finetune))
  local oneshot = copy_of_dense()
  sn.sparse.convert(oneshot, prune_opts)
  report(name .. ", pruned only", oneshot)
  local model = copy_of_dense()
  local p = {}
  for k, v in pairs(prune_opts) do p[k] = v end
  p.method, p.every, p.increase_steps = "ast", 50, math.max(1, opts.finetune // 2)
  local pruner = sn.sparse.prune(model, p)
  fit(model, opts.finetune, opts.lr / 3, { loss = distill, on_step = function() pruner:step() end })
  print(("  masks: %d entries flipped at the last re-selection"):format(pruner.flipped))
  sn.sparse.convert(model)
  report(name .. ", fine-tuned", model)
  return model
end

sparse_run("2:4", { pattern = "2:4" })
local blocky = sparse_run(("%d%% %dx%d blocks"):format(math.floor(opts.sparsity * 100 + 0.5), ro, ri),
  { sparsity = opts.sparsity, block = { ro, ri } })
local f32_loss = rows[#rows].loss
sn.sparse.quantize(blocky)
report(("%d%% %dx%d blocks, int8"):format(math.floor(opts.sparsity * 100 + 0.5), ro, ri), blocky,
  ("int8 costs %+.4f nats"):format(val:loss(blocky) - f32_loss))

print()
print(("%-32s %9s %12s %10s %12s %11s  %s"):format("model", "val loss", "linear wts", "other wts", "FLOPs/token",
  "tokens/s", ""))
for _, r in ipairs(rows) do
  print(("%-32s %9.4f %12d %10d %12d %11.0f  %s"):format(r.name, r.loss, r.linear, r.other, r.flops, r.tps, r.note))
end
local cfg = sn.config()
local gemm = cfg.simd == "avx512" and os.getenv("SEQNN_GEMM") ~= "blas" and "seqnn's AVX-512 sgemm"
  or ("OpenBLAS (core " .. cfg.blas_core .. ")")
print(("(tokens/s: inference forwards of %d x %d tokens; the dense linear layers run on %s)"):format(opts.batch,
  opts.seq, gemm))
