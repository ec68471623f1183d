local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local SiLU = sn.class("seqnn.nn.SiLU", Module)

-- SiLU(): the elementwise sn.F.silu as a module, for Sequential and MLP.
function SiLU:forward(x) return x:silu() end

return SiLU
