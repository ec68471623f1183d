-- seqnn.data.Dataset: the base of datasets. Two kinds plug into training loops:
--   index datasets define len() and get(i) -> x, y (i = 1 .. len()); a DataLoader batches
--     them, through collate, which a subclass may replace with a faster gather;
--   samplers define batch(split, B) -> x, y, drawing B random examples of a split
--     ("train", "val") with seqnn's generator (TextDataset, synthetic tasks).
local sn = require "seqnn"
local Dataset = sn.class("seqnn.data.Dataset")

local function missing(self, method, kind)
  error(("%s does not define %s (%s)"):format(getmetatable(self).__name, method, kind), 3)
end

function Dataset:len() missing(self, "len", "index datasets define len and get") end
function Dataset:get() missing(self, "get", "index datasets define len and get") end
function Dataset:batch() missing(self, "batch", "samplers define batch(split, B)") end

function Dataset:__len() return self:len() end

local function describe(t)
  return (t:dim() == 0 and "scalar" or table.concat(t:shape(), "x")) .. " " .. t:dtype()
end

-- collate(indices): the samples at indices (a Lua table of positions) stacked along a new
-- first dim, x (n, ...) and y (n, ...). Every sample must have the shapes of the first.
function Dataset:collate(indices)
  local fn = getmetatable(self).__name .. ":collate"
  local out, first = {}, {}
  for k, i in ipairs(indices) do
    local sample = { self:get(i) }
    for m, name in ipairs({ "x", "y" }) do
      local t = sample[m]
      if not sn.is_tensor(t) then
        error(("%s: get(%d) returned %s for %s, expected a tensor"):format(fn, i, type(t), name), 2)
      end
      if k == 1 then
        local shape = t:shape()
        table.insert(shape, 1, #indices)
        out[m], first[m] = sn.zeros(shape, t:dtype()), describe(t)
      elseif describe(t) ~= first[m] then
        error(("%s: sample %d has %s %s but sample %d has %s"):format(
          fn, i, name, describe(t), indices[1], first[m]), 2)
      end
      out[m][k] = t -- copies into row k
    end
  end
  return out[1], out[2]
end

return Dataset
