-- seqnn.nn.recurrent: what the linear-time mixers (LinearAttention, RetNet, GLA, Liger,
-- Mamba2, DeltaNet) share: their arguments' checks, a kernel run through a decoding cache,
-- and the short causal convolution with its rolling state. Not a module.
--
-- A mixer's cache is a table {state = (B,H,Dk,Dv) [, conv = (B,W-1,C)], length = 0}; any
-- number of tokens continue it in one pass (a prompt through the chunked kernel from the
-- cached state, one token through the step kernel), so decoding costs O(1) per token.
local sn = require "seqnn"

local recurrent = {}

-- A positive integer option, or an error at the module's constructor caller.
function recurrent.positive(name, what, v)
  if math.type(v) ~= "integer" or v < 1 then
    error(("%s: %s must be a positive integer, got %s"):format(name, what, tostring(v)), 4)
  end
  return v
end

-- d and heads positive integers with d divisible by heads; returns the head dim d / heads.
function recurrent.heads(name, d, heads)
  for _, arg in ipairs({ { "d", d }, { "heads", heads } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("%s: %s must be a positive integer, got %s"):format(name, arg[1], tostring(arg[2])), 4)
    end
  end
  if d % heads ~= 0 then error(("%s: d = %d is not divisible by heads = %d"):format(name, d, heads), 4) end
  return d // heads
end

-- x must be (B,T,d).
function recurrent.check_input(name, x, d)
  if not sn.core.is_tensor(x) or x:dim() ~= 3 or x:size(3) ~= d then
    error(("%s: x must be (B,T,%d), got %s"):format(name, d,
      sn.core.is_tensor(x) and table.concat(x:shape(), "x") or type(x)), 3)
  end
end

-- A cache from the module's init_cache, for x's batch.
function recurrent.check_cache(name, cache, x)
  if type(cache) ~= "table" or not sn.core.is_tensor(cache.state) then
    error(("%s: cache must come from init_cache, got %s"):format(name, type(cache)), 3)
  end
  if cache.state:size(1) ~= x:size(1) then
    error(("%s: the cache holds %d sequences, x has %d"):format(name, cache.state:size(1), x:size(1)), 3)
  end
end

-- o = kernel(q, k, v, gate) with kernel "gated_linear_attention" or "delta_rule" (sn.F),
-- continuing cache.state when there is a cache (and updating it).
function recurrent.mix(kernel, q, k, v, gate, scale, cache)
  if not cache then return sn.F[kernel](q, k, v, gate, { scale = scale }) end
  if q:size(2) == 1 then return sn.F[kernel .. "_step"](q, k, v, gate, cache.state, { scale = scale }) end
  local o, state = sn.F[kernel](q, k, v, gate, { scale = scale, initial_state = cache.state, return_state = true })
  cache.state:copy_(state)
  return o
end

-- silu(causal_conv1d(x, weight, bias)) over x (B,T,C); with a cache the convolution
-- continues cache.conv (the last W-1 inputs) and shifts x's last rows into it.
function recurrent.conv(x, weight, bias, cache)
  local W = weight:size(2)
  if not cache or W == 1 then return sn.F.causal_conv1d(x, weight, bias, { silu = true }) end
  local B, T, C = x:size(1), x:size(2), x:size(3)
  if T == 1 then
    return sn.core.k_causal_conv1d_step(cache.conv, x:select(2, 1), weight, bias, true):view(B, 1, C)
  end
  local full = sn.cat({ cache.conv, x }, 2)
  cache.conv:copy_(full:narrow(2, T + 1, W - 1))
  return sn.F.causal_conv1d(full, weight, bias, { silu = true }):narrow(2, W, T)
end

-- The conv weight (C, W) and bias (C) of a short convolution, PyTorch's Conv1d init.
function recurrent.conv_params(module, C, W)
  local bound = 1 / math.sqrt(W)
  module:parameter("conv_weight", sn.rand(C, W) * (2 * bound) - bound)
  module:parameter("conv_bias", sn.rand(C) * (2 * bound) - bound)
end

return recurrent
