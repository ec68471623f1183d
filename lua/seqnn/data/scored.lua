-- seqnn.data.scored: what the synthetic tasks share. Their targets are -100 (cross_entropy's
-- ignore_index) except at the positions a model is scored on.
local sn = require "seqnn"

local scored = { IGNORE = -100 }

-- The batch size of ds:batch(B) or ds:batch(split, B) (split "train" or "val", for
-- sn.train.fit; it changes nothing). Errors are raised at the caller of ds:batch.
function scored.batch_size(fn, split, B)
  if B == nil and type(split) ~= "string" then split, B = nil, split end
  if split ~= nil and split ~= "train" and split ~= "val" then
    error(("%s: split must be \"train\" or \"val\", got %s"):format(fn, tostring(split)), 3)
  end
  if math.type(B) ~= "integer" or B < 1 then
    error(("%s: B must be a positive integer, got %s"):format(fn, tostring(B)), 3)
  end
  return B
end

-- fraction, count: how often argmax(logits) equals y where y ~= -100, and how many
-- positions were scored. logits (B, T, V) with y (B, T), or (N, V) with y (N). Errors are
-- raised at the caller of ds:accuracy.
function scored.accuracy(fn, logits, y)
  if not sn.is_tensor(logits) then
    error(("%s: logits must be a tensor, got %s"):format(fn, type(logits)), 3)
  end
  if not sn.is_tensor(y) or y:dtype() ~= "i64" then
    error(("%s: y must be an i64 tensor, got %s"):format(fn, sn.is_tensor(y) and y:dtype() or type(y)), 3)
  end
  local ls, ys = logits:shape(), y:shape()
  local ok = (#ys == 1 or #ys == 2) and #ls == #ys + 1
  for i = 1, #ys do ok = ok and ls[i] == ys[i] end
  if not ok then
    error(("%s: logits must be (B, T, V) for y (B, T) or (N, V) for y (N), got logits %s and y %s")
      :format(fn, table.concat(ls, "x"), table.concat(ys, "x")), 3)
  end
  local pred = logits:detach():argmax(#ls):view(-1):totable()
  local target = y:contiguous():view(-1):totable()
  local hits, count = 0, 0
  for i = 1, #target do
    local t = target[i]
    if t ~= scored.IGNORE then
      count = count + 1
      if pred[i] == t then hits = hits + 1 end
    end
  end
  if count == 0 then error(("%s: y has no scored positions (every target is -100)"):format(fn), 3) end
  return hits / count, count
end

-- ds:evaluate(model, batches, B) -> fraction: the accuracy of model (called as model(x),
-- under sn.no_grad) over `batches` fresh batches of B rows, weighted by scored positions.
-- The synthetic datasets take it as a method.
function scored.evaluate(ds, model, batches, B)
  if math.type(batches) ~= "integer" or batches < 1 then
    error(("%s:evaluate: batches must be a positive integer, got %s"):format(ds.__name, tostring(batches)), 2)
  end
  local hits, count = 0, 0
  sn.no_grad(function()
    for _ = 1, batches do
      local x, y = ds:batch(B)
      local acc, n = ds:accuracy(model(x), y)
      hits, count = hits + acc * n, count + n
    end
  end)
  return hits / count
end

return scored
