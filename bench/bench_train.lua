-- bench/bench_train.lua -- what the Lua layer (modules, autograd tape, optimizer loop) adds
-- to a training step. A 4-layer MLP (d = 128, GELU between layers, batch 256, MSE loss,
-- AdamW) is timed two ways:
--   step         model:zero_grad, forward through sn.nn, loss:backward(), opt:step()
--   kernel loop  the same C calls (GEMMs, bias adds, GELU and its backward, the MSE
--                gradient, the fused AdamW update) written out by hand: no modules, no
--                tape, no optimizer object
-- Both compute the same update (checked before timing); overhead = (step - kernel) / step.
-- Rows use the table format of build/bench/seqnn_bench (bench/README.md).
--
--   make bench    (runs it after bench_lua.lua, with LUA_PATH/LUA_CPATH set to this checkout)
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local row, median = util.row, util.median

local core, now = sn.core, sn.clock
local cfg = sn.config()
local REPS, WARMUP, CALLS = 11, 2, 10
local B, D, LAYERS = 256, 128, 4
local LR, BETA1, BETA2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 0.01

-- ---- the two implementations ------------------------------------------------------------

-- Through the library: what a user's training loop runs.
local function make_module_step(params_init, x, y)
  local model = sn.nn.MLP({ D, D, D, D, D }, { activation = "gelu" })
  model:load_state_dict(params_init)
  local opt = sn.optim.AdamW(model:parameters(), { lr = LR, betas = { BETA1, BETA2 }, eps = EPS, weight_decay = WD })
  local function step()
    model:zero_grad()
    local loss = sn.F.mse_loss(model(x), y)
    loss:backward()
    opt:step()
  end
  return step, model
end

-- By hand: weights W[i] (D,D), biases b[i] (D), the same kernels in the same order.
local function make_kernel_step(params_init, x, y)
  local W, b, m, v = {}, {}, {}, {}
  for i = 1, LAYERS do
    local k = 2 * i - 1 -- MLP children: 1 Linear, 2 GELU, 3 Linear, ...
    W[i], b[i] = params_init[k .. ".weight"]:clone(), params_init[k .. ".bias"]:clone()
    m[i] = { core.zeros(D, D), core.zeros(D) }
    v[i] = { core.zeros(D, D), core.zeros(D) }
  end
  local t = 0
  local z, a = {}, { [0] = x } -- pre-activations and activations, kept for backward
  local scale = 2 / (B * D)
  local function step()
    for i = 1, LAYERS do
      z[i] = core.add(core.matmul(a[i - 1], W[i]:t()), b[i])
      a[i] = i < LAYERS and core.gelu(z[i]) or z[i]
    end
    local d = core.sub(a[LAYERS], y)
    local _ = core.mean(core.mul(d, d)) -- the loss value, as a training loop reads it
    local g = core.mul(d, scale)
    t = t + 1
    for i = LAYERS, 1, -1 do
      local gw = core.matmul(g:t(), a[i - 1])
      local gb = core.sum(g, 1)
      if i > 1 then g = core.k_gelu_bwd(core.matmul(g, W[i]), z[i - 1]) end
      core.k_adamw_step(W[i], gw, m[i][1], v[i][1], LR, BETA1, BETA2, EPS, WD, t)
      core.k_adamw_step(b[i], gb, m[i][2], v[i][2], LR, BETA1, BETA2, EPS, WD, t)
    end
  end
  return step, W, b
end

-- ---- check, then time ---------------------------------------------------------------------

sn.manual_seed(1)
local x, y = sn.randn(B, D), sn.randn(B, D)
local init = sn.nn.MLP({ D, D, D, D, D }, { activation = "gelu" }):state_dict()
for k, t in pairs(init) do init[k] = t:clone() end

util.banner("bench_train.lua")
print(("# lua rows: ms per training step; x_ref: kernel-loop time / step time; %d steps per sample"):format(CALLS))
util.header()

local module_step, model = make_module_step(init, x, y)
local kernel_step, W, b = make_kernel_step(init, x, y)
for _ = 1, 3 do module_step(); kernel_step() end
local worst = 0
for i = 1, LAYERS do
  local k = 2 * i - 1
  for _, pair in ipairs({ { model[k].weight, W[i] }, { model[k].bias, b[i] } }) do
    local diff = (pair[1] - pair[2]):abs():max():item()
    worst = math.max(worst, diff)
  end
end
local shape = ("MLP %dx%d B%d"):format(LAYERS, D, B)
if worst > 1e-5 then
  print(("%-18s %-22s MISMATCH: parameters differ by %g after 3 steps"):format("lua train step", shape, worst))
  return
end

-- Alternate the two, sample by sample, so drift of a shared machine hits both alike. At the
-- default thread count and, when that is more than one, at one thread too: the extra
-- elementwise ops of the tape each pay an OpenMP fork/join, which a busy machine inflates.
local flops = 3 * 2 * B * D * D * LAYERS -- forward GEMMs and the two backward GEMMs per layer
local function time_both(threads)
  sn.set_num_threads(threads)
  local t_mod, t_ker, ratios = {}, {}, {}
  for rep = 1, WARMUP + REPS do
    local t0 = now()
    for _ = 1, CALLS do module_step() end
    local t1 = now()
    for _ = 1, CALLS do kernel_step() end
    local t2 = now()
    if rep > WARMUP then
      t_mod[#t_mod + 1], t_ker[#t_ker + 1] = (t1 - t0) / CALLS, (t2 - t1) / CALLS
      ratios[#ratios + 1] = (t2 - t1) / (t1 - t0)
    end
  end
  local step_s, kernel_s, ratio = median(t_mod), median(t_ker), median(ratios)
  row("lua kernel loop", shape, kernel_s, flops, nil, "(reference: same C kernels, no tape/modules)")
  row("lua train step", shape, step_s, flops, ratio,
    ("sn.nn + autograd + AdamW; Lua overhead %.1f%% of the step"):format((1 - ratio) * 100))
end

local threads = cfg.threads
time_both(threads)
if threads > 1 then time_both(1) end
sn.set_num_threads(threads)
