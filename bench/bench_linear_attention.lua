-- bench/bench_linear_attention.lua -- the delta rule and gated linear attention through
-- the Lua API, beside the PyTorch peers of bench/peers/run_linear_attention.sh (skipped when
-- torch is missing): fwd+bwd of sn.F.delta_rule and sn.F.gated_linear_attention (per-key
-- gates) at B = 2, H = 4, T = 1024, Dk = Dv = 64 against a chunked pure-PyTorch version
-- (mostly GEMMs) and the naive recurrent loop, and the per-token time at T = 16384 on both
-- sides. FLOPs as in bench_linear_attention.c. Rows use the table format of
-- build/bench/seqnn_bench (bench/README.md).
--
--   make bench    (runs it after bench_mamba.lua, with LUA_PATH/LUA_CPATH set to this checkout)
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")
local row, time = util.row, util.time

util.banner("bench_linear_attention.lua")
print("# x_ref: PyTorch's time / seqnn's (above 1: seqnn is faster)")
util.header()

local torch, torch_name = util.peer("sh bench/peers/run_linear_attention.sh")
local function vs(name, value, unit)
  local theirs = torch and torch[name]
  if not theirs then return nil, torch and (name .. " not reported by the peer") or torch_name end
  return theirs / value, ("%s %s %.1f %s"):format(torch_name, name:gsub("_ms$", ""):gsub("_us_per_token$", ""),
    theirs, unit)
end

local B, H, D, C = 2, 4, 64, 64
local FLOPS = { -- per token and head, fwd+bwd (bench_linear_attention.c)
  delta = 2 * C * (D + D) + 6 * D * D + C * C / 3 + 6 * C * D + 5 * C * D + 14 * D * D + C * C / 3,
  gla = C * (D + D) + 4 * D * D + 3 * C * D + 2 * C * D + 8 * D * D,
}

-- Seconds of one fwd+bwd of `kind` at length T.
local function measure(kind, T, samples)
  sn.manual_seed(1)
  local function leaf(t) return t:requires_grad(true) end
  local q, k, v = leaf(sn.randn(B, T, H, D)), leaf(sn.F.l2_normalize(sn.randn(B, T, H, D))), leaf(sn.randn(B, T, H, D))
  local gate = kind == "delta" and leaf(sn.rand(B, T, H)) or leaf(sn.F.logsigmoid(sn.randn(B, T, H, D)) / 16)
  local g = sn.randn(B, T, H, D)
  local fn = kind == "delta" and sn.F.delta_rule or sn.F.gated_linear_attention
  local s = time(function()
    q.grad, k.grad, v.grad, gate.grad = nil, nil, nil, nil -- as the peer: each step's gradients afresh
    fn(q, k, v, gate):backward(g)
  end, samples)
  collectgarbage()
  return s
end

for _, kind in ipairs({ "delta", "gla" }) do
  local name = kind == "delta" and "delta_rule" or "gla (key gates)"
  local peer_name = kind == "delta" and "delta_rule" or "gla"
  local shape = ("B%d H%d T1024 Dk%d Dv%d"):format(B, H, D, D)
  local s = measure(kind, 1024, 9)
  local flops = FLOPS[kind] * B * H * 1024
  local x, ref = vs(peer_name .. "_chunked_fwdbwd_ms", s * 1e3, "ms")
  row(name, shape, s, flops, x, "fwd+bwd vs chunked: " .. ref)
  x, ref = vs(peer_name .. "_recurrent_fwdbwd_ms", s * 1e3, "ms")
  row(name, shape, s, flops, x, "fwd+bwd vs recurrent: " .. ref)
  local long = measure(kind, 16384, 3)
  local us = long / 16384 / B * 1e6
  x, ref = vs(peer_name .. "_chunked_long_us_per_token", us, "us/token")
  row(name, ("B%d H%d T16384 Dk%d Dv%d"):format(B, H, D, D), long, FLOPS[kind] * B * H * 16384, x,
    ("fwd+bwd, per token x%.2f of T1024; vs chunked: %s"):format(long / 16 / s, ref))
end
