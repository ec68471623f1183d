-- bench/bench_peers.lua -- PyTorch beside seqnn's attention in the same `make bench` run:
-- runs bench/peers/run_attention.sh (Debian's python3-torch, jemalloc, the faster OpenMP
-- wait policy; skipped cleanly without torch) and compares its causal fwd+bwd at B=4, T=1024,
-- H=8, Dh=64 with the seqnn row the C bench just wrote to results.tsv.
local sn = require "seqnn"
local util = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "util.lua")

local KERNEL, SHAPE = "attention fwd+bwd", "B4 T1024 H8 Dh64 causal"

-- The C bench writes results.tsv beside itself, in the build dir whose core.so we loaded.
local function seqnn_ms()
  local so = package.searchpath("seqnn.core", package.cpath)
  local dir = so and so:match("^(.*)/seqnn/core%.so$")
  local f = dir and io.open(dir .. "/bench/results.tsv")
  if not f then return nil end
  local ms
  for line in f:lines() do
    local kernel, shape, _, value = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
    if kernel == KERNEL and shape == SHAPE then ms = tonumber(value) end
  end
  f:close()
  return ms
end

print()
print(("# bench_peers.lua  %s   %s   threads: %d   blas core: %s"):format(
  _VERSION, sn._VERSION, sn.config().threads, sn.config().blas_core))
print("# x_ref: PyTorch's time / seqnn's (above 1: seqnn is faster)")
util.header()
local ours = seqnn_ms()
local pipe = io.popen("sh bench/peers/run_attention.sh 2>&1")
local lines = {}
for line in pipe:lines() do lines[#lines + 1] = line end
pipe:close()
local flops = 4.0 * 4 * 8 * 1024 * 1024 * 64 / 2 * 3.5 -- as the C row counts fwd+bwd
for _, line in ipairs(lines) do
  local variant, ms, policy = line:match("^(%a+)_ms (%S+) %((.-)%)$")
  if variant then
    local t = tonumber(ms) / 1e3
    util.row("torch " .. variant, SHAPE, t, flops, ours and t / (ours / 1e3),
      ("PyTorch fwd+bwd, %s; seqnn %s ms"):format(policy, ours and ("%.1f"):format(ours) or "?"))
  elseif line:match("skip") then
    print(("%-18s %-22s %s"):format("torch attention", SHAPE, line))
  end
end
