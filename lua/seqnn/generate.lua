-- sn.generate(model, prompt, {max_tokens = n [, temperature = 1, top_k, top_p, seed,
--             on_token = function(id) end, cache = true, window]}): extends a prompt (a Lua
-- list of 0-based token ids, or a 1-dim i64 tensor) by max_tokens tokens drawn one at a
-- time from a language model mapping ids (1,T) to logits (1,T,V); returns the new ids.
--
--   temperature  0 takes the most likely token; otherwise logits / temperature
--   top_k, top_p keep the k most likely tokens / the smallest set holding probability p
--   seed         seeds seqnn's generator first (sn.manual_seed), so a run repeats
--   on_token     called with each id as soon as it is drawn (streaming)
--   window       how many tokens the model sees (default model.config.context, else 256)
--
-- A model with init_cache(batch, max_len) and step(ids, cache) decodes through its cache:
-- the prompt goes through step at once, then each token alone, O(context) per token for
-- attention. When the sequence reaches `window`, the cache restarts from the last window/2
-- tokens (one prefill per window/2 tokens), so a model never sees more positions than it
-- was trained on. Other models, or cache = false, run the last `window` tokens in full for
-- every token.
local sn = require "seqnn"

local NAME = "seqnn.generate"

local function check_opts(opts)
  local function bad(key, want)
    error(("%s: %s must be %s, got %s"):format(NAME, key, want, tostring(opts[key])), 4)
  end
  if math.type(opts.max_tokens) ~= "integer" or opts.max_tokens < 0 then bad("max_tokens", "an integer >= 0") end
  local t = opts.temperature
  if t ~= nil and (type(t) ~= "number" or not (t >= 0)) then bad("temperature", "a number >= 0") end
  if opts.top_k ~= nil and (math.type(opts.top_k) ~= "integer" or opts.top_k < 1) then bad("top_k", "an integer >= 1") end
  local p = opts.top_p
  if p ~= nil and (type(p) ~= "number" or not (p > 0 and p <= 1)) then bad("top_p", "a number in (0, 1]") end
  if opts.seed ~= nil and math.type(opts.seed) ~= "integer" then bad("seed", "an integer") end
  if opts.on_token ~= nil and type(opts.on_token) ~= "function" then bad("on_token", "a function") end
  local w = opts.window
  if w ~= nil and (math.type(w) ~= "integer" or w < 1) then bad("window", "an integer >= 1") end
end

-- One id from logits (V): argmax at temperature 0, else a draw from the softmax after
-- top-k / top-p filtering (sorting only when a filter asks for it).
local function pick(logits, opts)
  local temperature = opts.temperature or 1
  if temperature == 0 then return logits:argmax():item() end
  local probs = sn.F.softmax(logits / temperature):totable()
  local order = {}
  for i = 1, #probs do order[i] = i end
  local keep = #order
  if opts.top_k or opts.top_p then
    table.sort(order, function(a, b) return probs[a] > probs[b] or (probs[a] == probs[b] and a < b) end)
    if opts.top_k then keep = math.min(keep, opts.top_k) end
    if opts.top_p then
      local mass = 0
      for i = 1, keep do
        mass = mass + probs[order[i]]
        if mass >= opts.top_p then keep = i; break end
      end
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

local function ids_tensor(seq, first, last)
  return sn.tensor({ table.move(seq, first, last, 1, {}) }, "i64")
end

local function generate(model, prompt, opts)
  if type(model) ~= "table" or getmetatable(model) == nil or type(model.forward) ~= "function" then
    error(("%s: model must be a seqnn.nn.Module, got %s"):format(NAME, type(model)), 2)
  end
  if sn.core.is_tensor(prompt) and prompt:dim() == 1 and prompt:dtype() == "i64" then prompt = prompt:totable() end
  if type(prompt) ~= "table" then
    error(("%s: prompt must be a Lua list of token ids or a 1-dim i64 tensor, got %s"):format(NAME, type(prompt)), 2)
  end
  if #prompt == 0 then error(("%s: the prompt must hold at least one token"):format(NAME), 2) end
  if type(opts) ~= "table" then error(("%s: expected options {max_tokens = n, ...}, got %s"):format(NAME, type(opts)), 2) end
  check_opts(opts)
  if opts.seed then sn.manual_seed(opts.seed) end
  local window = opts.window or (model.config and model.config.context) or 256
  local cached = opts.cache ~= false and type(model.step) == "function" and type(model.init_cache) == "function"
  local seq, out = table.move(prompt, 1, #prompt, 1, {}), {}
  local was_training = model.training
  model:eval()
  local ok, err = pcall(sn.no_grad, function()
    local cache
    -- Logits for the next token after seq, (V).
    local function prefill(keep)
      cache = model:init_cache(1, window)
      return model:step(ids_tensor(seq, math.max(1, #seq - keep + 1), #seq), cache)[1][-1]
    end
    local logits = cached and opts.max_tokens > 0 and prefill(window) or nil
    for i = 1, opts.max_tokens do
      if not cached then logits = model(ids_tensor(seq, math.max(1, #seq - window + 1), #seq))[1][-1] end
      local id = pick(logits, opts)
      seq[#seq + 1], out[i] = id, id
      if opts.on_token then opts.on_token(id) end
      if cached and i < opts.max_tokens then
        if cache.length < window then
          logits = model:step(sn.tensor({ { id } }, "i64"), cache)[1][1]
        else
          logits = prefill(math.max(1, window // 2))
        end
      end
    end
  end)
  model:train(was_training)
  if not ok then error(err, 0) end
  return out
end

return generate
