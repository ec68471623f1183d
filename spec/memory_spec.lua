-- Tensor memory is invisible to Lua's collector, so the binding paces the collector on it.
-- A loop that makes 20 GB of temporaries must run in bounded memory without the user ever
-- calling collectgarbage().
local sn = require "seqnn"

local function peak_rss_bytes()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmHWM:%s+(%d+)%s+kB")
    if kb then return tonumber(kb) * 1024 end
  end
  error("no VmHWM in /proc/self/status")
end

describe("memory", function()
  it("stays bounded while a loop allocates 20 GB of temporaries", function()
    local x = sn.ones(1024, 1024) -- 4 MiB
    sn.reset_peak_memory()
    local allocated, total = 0, 20e9
    local acc = 0
    while allocated < total do
      -- each iteration makes three 4 MiB temporaries and keeps none of them
      local y = (x * 2 + 1):exp()
      acc = acc + y[1][1]
      allocated = allocated + 3 * 4 * 1024 * 1024
    end
    assert.is_true(acc > 0)
    local peak = sn.memory().peak
    assert.is_true(peak < 1e9, ("tensor memory peaked at %.0f MB"):format(peak / 1e6))
    local rss = peak_rss_bytes()
    assert.is_true(rss < 1e9, ("peak RSS was %.0f MB"):format(rss / 1e6))
  end)

  it("counts live tensor bytes and returns them when tensors are collected", function()
    collectgarbage() -- only to start from a known state; seqnn never needs it
    local before = sn.memory().live
    local t = sn.zeros(256, 256)
    assert.are.equal(before + 256 * 256 * 4, sn.memory().live)
    t = nil
    collectgarbage()
    assert.are.equal(before, sn.memory().live)
  end)
end)
