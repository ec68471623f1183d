local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Embedding = sn.class("seqnn.nn.Embedding", Module)

-- Embedding(num_embeddings, dim): a table of num_embeddings vectors, initialized N(0, 1);
-- forward(ids) looks up 0-based i64 ids of any shape and appends the dim.
function Embedding:__init(num_embeddings, dim)
  Module.__init(self)
  for _, arg in ipairs({ { "num_embeddings", num_embeddings }, { "dim", dim } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("seqnn.nn.Embedding: %s must be a positive integer, got %s"):format(arg[1], tostring(arg[2])), 3)
    end
  end
  self:parameter("weight", sn.randn(num_embeddings, dim))
end

function Embedding:forward(ids) return sn.F.embedding(ids, self.weight) end

function Embedding:extra_repr() return ("%d, %d"):format(self.weight:size(1), self.weight:size(2)) end

return Embedding
