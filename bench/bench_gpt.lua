-- bench/bench_gpt.lua -- the char-level GPT end to end: training tokens/s (forward,
-- backward and AdamW through sn.nn and the tape) and generation tokens/s through the KV
-- caches (sn.generate), with PyTorch eager on the same model as the peer
-- (bench/peers/run_gpt.sh; skipped when torch is missing). The model is nanoGPT's
-- Shakespeare-char baby GPT: 4 layers, 4 heads, d = 128, context 64, learned positions,
-- GELU MLP, LayerNorm, tied head, no biases, vocabulary 65, batch 12.
-- Rows use the table format of build/bench/seqnn_bench (bench/README.md).
--
--   make bench    (runs it after bench_train.lua, with LUA_PATH/LUA_CPATH set to this checkout)
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local row, median = util.row, util.median

local now = sn.clock
local V, D, LAYERS, HEADS, CONTEXT, BATCH = 65, 128, 4, 4, 64, 12
local WARMUP, SAMPLES, STEPS = 3, 7, 10

local function gpt(context)
  return sn.models.LM{ vocab_size = V, d = D, layers = LAYERS, heads = HEADS, context = context, positions = "learned" }
end

-- The peer's last line: "train_tokens_per_s N (...)" or "skip: why".
local function peer()
  local pipe = io.popen("sh bench/peers/run_gpt.sh 2>&1")
  local last, version
  for line in pipe:lines() do
    last = line
    version = version or line:match("^(torch %S+)")
  end
  pipe:close()
  local rate = last and tonumber(last:match("^train_tokens_per_s (%S+)"))
  return rate, rate and (version or "torch") or (last or "skip: no output from run_gpt.sh")
end

util.banner("bench_gpt.lua")
print("# train: ms per AdamW step of batch 12 x 64 tokens, GFLOP/s counts 6 x params x tokens + causal attention;")
print("#   x_ref: seqnn tokens/s over PyTorch eager's (same model, 2 threads, the faster OMP_WAIT_POLICY)")
print("# generate: ms per token through the KV caches from a 1-token prompt to `context` tokens")
util.header()

-- ---- training ---------------------------------------------------------------------------
sn.manual_seed(1)
local model = gpt(CONTEXT)
local opt = sn.optim.AdamW(model:parameters(), { lr = 1e-3, weight_decay = 0.1 })
local x, y = sn.randint(0, V, BATCH, CONTEXT), sn.randint(0, V, BATCH, CONTEXT)
local function step()
  model:zero_grad()
  local loss = sn.F.cross_entropy(model(x), y)
  loss:backward()
  opt:step()
end
for _ = 1, WARMUP do step() end
local samples = {}
for _ = 1, SAMPLES do
  local t0 = now()
  for _ = 1, STEPS do step() end
  samples[#samples + 1] = (now() - t0) / STEPS
end
local step_s, tokens = median(samples), BATCH * CONTEXT
local params = model:num_parameters() - model.pos.weight:numel()
local flops = 6 * params * tokens + 6 * LAYERS * BATCH * CONTEXT * CONTEXT * D -- attention: 12 T^2 d / 2 (causal)
local rate = tokens / step_s
local torch_rate, torch_name = peer()
local shape = ("L%d H%d d%d T%d B%d"):format(LAYERS, HEADS, D, CONTEXT, BATCH)
row("gpt train step", shape, step_s, flops, torch_rate and rate / torch_rate,
  torch_rate and ("%.0f tokens/s; %s eager %.0f tokens/s"):format(rate, torch_name, torch_rate)
             or ("%.0f tokens/s; peer %s"):format(rate, torch_name))

-- ---- generation through the KV caches ----------------------------------------------------
for _, context in ipairs({ 64, 1024 }) do
  sn.manual_seed(2)
  local m = context == CONTEXT and model or gpt(context)
  local n = context - 1
  sn.generate(m, { 0 }, { max_tokens = 8, seed = 1 })
  local times = {}
  for _ = 1, 3 do
    local t0 = now()
    sn.generate(m, { 0 }, { max_tokens = n, seed = 1 })
    times[#times + 1] = (now() - t0) / n
  end
  local per_token = median(times)
  row("gpt generate", ("L%d H%d d%d T%d B1"):format(LAYERS, HEADS, D, context), per_token, nil, nil,
    ("%.0f tokens/s (KV cache, sampling included)"):format(1 / per_token))
end
