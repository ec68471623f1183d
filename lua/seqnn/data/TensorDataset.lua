-- seqnn.data.TensorDataset(x, y): sample i is (x[i], y[i]) along the first dim of both.
local sn = require "seqnn"
local Dataset = require "seqnn.data.Dataset"
local TensorDataset = sn.class("seqnn.data.TensorDataset", Dataset)

function TensorDataset:__init(x, y)
  local fn = "seqnn.data.TensorDataset"
  for _, arg in ipairs({ { "x", x }, { "y", y } }) do
    local name, t = arg[1], arg[2]
    if not sn.is_tensor(t) then
      error(("%s: %s must be a seqnn.Tensor, got %s"):format(fn, name, type(t)), 3)
    end
    if t:dim() == 0 then error(("%s: %s must have at least 1 dim, got a scalar"):format(fn, name), 3) end
  end
  if x:size(1) ~= y:size(1) then
    error(("%s: x has %d samples but y has %d (x: %s, y: %s)"):format(fn, x:size(1), y:size(1),
      table.concat(x:shape(), "x"), table.concat(y:shape(), "x")), 3)
  end
  self.x, self.y = x, y
end

function TensorDataset:len() return self.x:size(1) end

-- get(i): views of row i of x and y (they share memory with x and y).
function TensorDataset:get(i)
  local n = self.x:size(1)
  if math.type(i) ~= "integer" or i < 1 or i > n then
    error(("seqnn.data.TensorDataset:get: index %s is not in 1..%d"):format(tostring(i), n), 2)
  end
  return self.x:select(1, i), self.y:select(1, i)
end

-- One gather per tensor instead of a copy per sample.
function TensorDataset:collate(indices)
  local ids = sn.tensor(indices, "i64") - 1 -- positions are 1-based, index_select is 0-based
  return self.x:index_select(1, ids), self.y:index_select(1, ids)
end

return TensorDataset
