local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local GELU = sn.class("seqnn.nn.GELU", Module)

-- GELU(): the elementwise sn.F.gelu as a module, for Sequential and MLP.
function GELU:forward(x) return x:gelu() end

return GELU
