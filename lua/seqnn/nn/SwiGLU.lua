local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local SwiGLU = sn.class("seqnn.nn.SwiGLU", Module)

-- SwiGLU(dim, hidden): the gated feed-forward of LLaMA-style blocks,
-- y = w2(silu(w1 x) * w3 x), with w1, w3: dim -> hidden and w2: hidden -> dim, no biases.
function SwiGLU:__init(dim, hidden)
  Module.__init(self)
  for _, arg in ipairs({ { "dim", dim }, { "hidden", hidden } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("seqnn.nn.SwiGLU: %s must be a positive integer, got %s"):format(arg[1], tostring(arg[2])), 3)
    end
  end
  self:add_module("w1", Linear(dim, hidden, { bias = false }))
  self:add_module("w2", Linear(hidden, dim, { bias = false }))
  self:add_module("w3", Linear(dim, hidden, { bias = false }))
end

function SwiGLU:forward(x) return self.w2(self.w1(x):silu() * self.w3(x)) end

function SwiGLU:extra_repr() return ("%d -> %d"):format(self.w1.weight:size(2), self.w1.weight:size(1)) end

return SwiGLU
