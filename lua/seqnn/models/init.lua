-- sn.models: named model builders, so scripts and checkpoints refer to a model by name.
--
--   sn.models.register("mlp", function(config) return MLPLM(config) end)
--   model = sn.models.build("mlp", {vocab_size = 65, context = 8})
--   sn.models.names()                      --> {"mlp", ...} sorted
--   sn.models.sample(model, ids, {length = 200, temperature = 0.8, top_k = 10})  (= sn.generate)
--
-- A built model keeps the complete config it was built from in model.config (numbers,
-- strings and booleans only), so metadata(name, model) can write it into a checkpoint
-- and from_metadata(meta) can build the same model again.
local models = {}
local builders = {}

function models.register(name, builder)
  if type(name) ~= "string" or name == "" then
    error(("seqnn.models.register: name must be a non-empty string, got %s"):format(tostring(name)), 2)
  end
  if type(builder) ~= "function" then
    error(("seqnn.models.register: builder for '%s' must be a function, got %s"):format(name, type(builder)), 2)
  end
  builders[name] = builder
end

function models.names()
  local list = {}
  for name in pairs(builders) do list[#list + 1] = name end
  table.sort(list)
  return list
end

function models.build(name, config)
  local builder = builders[name]
  if builder == nil then
    error(("seqnn.models.build: unknown model '%s' (known: %s)"):format(tostring(name),
      table.concat(models.names(), ", ")), 2)
  end
  return builder(config or {})
end

-- metadata(name, model): {model = name, ["model.<key>"] = tostring(value)} for model.config.
function models.metadata(name, model)
  if type(model) ~= "table" or type(model.config) ~= "table" then
    error("seqnn.models.metadata: the model has no config table (build it with sn.models.build)", 2)
  end
  local meta = { model = name }
  for k, v in pairs(model.config) do
    if math.type(v) == "float" then v = ("%.17g"):format(v) end
    meta["model." .. k] = tostring(v)
  end
  return meta
end

-- from_metadata(meta): the model named by meta.model, built from its "model.<key>" entries
-- (decimal strings become numbers, "true"/"false" booleans). Returns the model and its name.
function models.from_metadata(meta)
  if type(meta) ~= "table" or type(meta.model) ~= "string" then
    error("seqnn.models.from_metadata: the metadata names no model (no 'model' key)", 2)
  end
  local config = {}
  for key, v in pairs(meta) do
    local k = key:match("^model%.(.+)$")
    if k then
      local num = tonumber(v)
      if num ~= nil then v = math.tointeger(num) or num
      elseif v == "true" or v == "false" then v = (v == "true") end
      config[k] = v
    end
  end
  return models.build(meta.model, config), meta.model
end

models.sample = require "seqnn.models.sample"
models.MLPLM = require "seqnn.models.MLPLM"
models.register("mlp", function(config) return models.MLPLM(config) end)
models.mixers = require "seqnn.models.mixers"
models.LM = require "seqnn.models.LM"
models.register("gpt", function(config) return models.LM(config) end)

return models
