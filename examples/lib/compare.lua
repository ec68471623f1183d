-- examples/lib/compare.lua -- what the examples that train several models side by side
-- measure each of them with (examples/sparse.lua, examples/memory_layers.lua):
--   local compare = dofile(<this folder> .. "lib/compare.lua")
--   local val = compare.Validation(ds, batch)   -- 20 fixed validation batches
--   val:loss(model), val:tokens_per_s(model)
local sn = require "seqnn"

local Validation = {}
Validation.__index = Validation

-- The same `count` (default 20) validation batches for every model, drawn under their own
-- seed so that they do not move the caller's random stream.
local function new(ds, batch, count)
  local self = setmetatable({ batches = {} }, Validation)
  local saved = sn.get_rng_state()
  sn.manual_seed(12345)
  for i = 1, count or 20 do self.batches[i] = { ds:batch("val", batch) } end
  sn.set_rng_state(saved)
  return self
end

-- The mean cross-entropy over the batches, in eval mode.
function Validation:loss(model)
  model:eval()
  local sum = sn.no_grad(function()
    local s = 0
    for _, b in ipairs(self.batches) do s = s + sn.F.cross_entropy(model(b[1]), b[2]):item() end
    return s
  end)
  model:train()
  return sum / #self.batches
end

-- Inference tokens/s: the median of 7 forwards over the first batch.
function Validation:tokens_per_s(model)
  model:eval()
  local x = self.batches[1][1]
  local times = {}
  sn.no_grad(function()
    model(x)
    for i = 1, 7 do
      local t0 = sn.clock()
      model(x)
      times[i] = sn.clock() - t0
    end
  end)
  model:train()
  table.sort(times)
  return x:numel() / times[4]
end

return { Validation = new }
