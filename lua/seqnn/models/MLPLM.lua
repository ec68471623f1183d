-- seqnn.models.MLPLM{vocab_size = V [, context = 4, embed = 16, hidden = 64, layers = 2,
--                    dropout = 0.2]}: a fixed-context character language model in the
-- manner of Bengio et al. (2003). Each position t predicts token t+1 from tokens
-- t-context+1 .. t: their embeddings are concatenated and go through an MLP to V logits.
-- forward(x) maps ids (B,T) to logits (B,T,V); positions before the start of x read a
-- padding token (id V, an extra embedding row).
local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Embedding = require "seqnn.nn.Embedding"
local MLP = require "seqnn.nn.MLP"
local MLPLM = sn.class("seqnn.models.MLPLM", Module)

local defaults = { context = 4, embed = 16, hidden = 64, layers = 2, dropout = 0.2 }

function MLPLM:__init(opts)
  Module.__init(self)
  local fn = "seqnn.models.MLPLM"
  if type(opts) ~= "table" then error(("%s: expected a table of options, got %s"):format(fn, type(opts)), 3) end
  local config = { vocab_size = opts.vocab_size }
  for k, v in pairs(defaults) do config[k] = opts[k] == nil and v or opts[k] end
  for k in pairs(opts) do
    if config[k] == nil then error(("%s: unknown option '%s'"):format(fn, tostring(k)), 3) end
  end
  for _, k in ipairs({ "vocab_size", "context", "embed", "hidden", "layers" }) do
    if math.type(config[k]) ~= "integer" or config[k] < 1 then
      error(("%s: %s must be a positive integer, got %s"):format(fn, k, tostring(config[k])), 3)
    end
  end
  self.config = config
  local V, k, E, H = config.vocab_size, config.context, config.embed, config.hidden
  self:add_module("embed", Embedding(V + 1, E))
  local dims = { k * E }
  for i = 1, config.layers do dims[i + 1] = H end
  dims[#dims + 1] = V
  self:add_module("mlp", MLP(dims, { activation = "gelu", dropout = config.dropout }))
end

-- The windows of ids, (B,T,k), for inputs (B,T): row (b,t) holds x[b][t-k+1 .. t], with the
-- padding id V where that reaches before the start. One index_select gathers them all.
local function windows(self, x)
  local B, T = x:size(1), x:size(2)
  local k, V = self.config.context, self.config.vocab_size
  local padded = sn.full({ B, T + k - 1 }, V, "i64")
  padded:narrow(2, k, T):copy_(x)
  local key = B .. "x" .. T
  if self.index_key ~= key then -- the gather positions depend only on the shape
    local row = (sn.arange(B, "i64") * (T + k - 1)):view(B, 1, 1)
    local col = sn.arange(T, "i64"):view(1, T, 1) + sn.arange(k, "i64"):view(1, 1, k)
    self.index, self.index_key = (row + col):reshape(B * T * k), key
  end
  return padded:view(B * (T + k - 1)):index_select(1, self.index):view(B, T, k)
end

function MLPLM:forward(x)
  if not sn.core.is_tensor(x) or x:dtype() ~= "i64" or x:dim() ~= 2 then
    error(("seqnn.models.MLPLM: x must be (B,T) i64 token ids, got %s"):format(
      sn.core.is_tensor(x) and (table.concat(x:shape(), "x") .. " " .. x:dtype()) or type(x)), 2)
  end
  local B, T = x:size(1), x:size(2)
  local e = self.embed(windows(self, x))                 -- (B,T,k,E), contiguous
  return self.mlp(e:view(B, T, self.config.context * self.config.embed))
end

function MLPLM:extra_repr()
  local c = self.config
  return ("vocab %d, context %d, embed %d, hidden %d x %d"):format(c.vocab_size, c.context, c.embed,
    c.hidden, c.layers)
end

return MLPLM
