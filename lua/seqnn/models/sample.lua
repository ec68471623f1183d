-- sn.models.sample(model, ids, {length = n [, temperature = 1, top_k, top_p, window]}):
-- extends a list of 0-based token ids by `length` tokens drawn one at a time from a language
-- model mapping ids (1,T) to logits (1,T,V). The model sees the last `window` tokens (default
-- model.config.context, else 256). temperature 0 takes the most likely token; top_k keeps
-- the k most likely, top_p the smallest set whose probability reaches p. Draws come from
-- seqnn's generator, so sn.manual_seed makes a sample repeatable. Returns the new ids.
local sn = require "seqnn"

local function check_opts(opts, fn)
  local function bad(key, want)
    error(("%s: %s must be %s, got %s"):format(fn, key, want, tostring(opts[key])), 4)
  end
  if math.type(opts.length) ~= "integer" or opts.length < 0 then bad("length", "an integer >= 0") end
  local t = opts.temperature
  if t ~= nil and (type(t) ~= "number" or not (t >= 0)) then bad("temperature", "a number >= 0") end
  if opts.top_k ~= nil and (math.type(opts.top_k) ~= "integer" or opts.top_k < 1) then bad("top_k", "an integer >= 1") end
  local p = opts.top_p
  if p ~= nil and (type(p) ~= "number" or not (p > 0 and p <= 1)) then bad("top_p", "a number in (0, 1]") end
end

-- One draw from probabilities probs[1..V] (a Lua list), after top-k / top-p filtering.
local function draw(probs, opts)
  local order = {}
  for i = 1, #probs do order[i] = i end
  table.sort(order, function(a, b) return probs[a] > probs[b] or (probs[a] == probs[b] and a < b) end)
  local keep, mass = #order, 0
  if opts.top_k then keep = math.min(keep, opts.top_k) end
  if opts.top_p then
    for i = 1, keep do
      mass = mass + probs[order[i]]
      if mass >= opts.top_p then keep = i; break end
    end
  end
  local total = 0
  for i = 1, keep do total = total + probs[order[i]] end
  local u, acc = sn.rand(1)[1] * total, 0
  for i = 1, keep do
    acc = acc + probs[order[i]]
    if u < acc then return order[i] - 1 end
  end
  return order[keep] - 1
end

local function sample(model, ids, opts)
  local fn = "seqnn.models.sample"
  if type(ids) ~= "table" then error(("%s: ids must be a Lua list of token ids, got %s"):format(fn, type(ids)), 2) end
  if type(opts) ~= "table" then error(("%s: expected options {length = n, ...}, got %s"):format(fn, type(opts)), 2) end
  check_opts(opts, fn)
  if #ids == 0 then error(("%s: ids must hold at least one token to start from"):format(fn), 2) end
  local window = opts.window or (model.config and model.config.context) or 256
  local seq, out = {}, {}
  for i, id in ipairs(ids) do seq[i] = id end
  local was_training = model.training
  model:eval()
  sn.no_grad(function()
    for _ = 1, opts.length do
      local first = math.max(1, #seq - window + 1)
      local x = sn.tensor({ table.move(seq, first, #seq, 1, {}) }, "i64")
      local logits = model(x)[1][-1] -- the last position, (V)
      local id
      if opts.temperature == 0 then
        id = logits:argmax():item()
      else
        id = draw(sn.F.softmax(logits / (opts.temperature or 1)):totable(), opts)
      end
      seq[#seq + 1], out[#out + 1] = id, id
    end
  end)
  model:train(was_training)
  return out
end

return sample
