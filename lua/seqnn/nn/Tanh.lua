local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Tanh = sn.class("seqnn.nn.Tanh", Module)

-- Tanh(): the elementwise sn.F.tanh as a module, for Sequential and MLP.
function Tanh:forward(x) return x:tanh() end

return Tanh
