local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local RMSNorm = require "seqnn.nn.RMSNorm"
local recurrent = require "seqnn.nn.recurrent"
local Mamba2 = sn.class("seqnn.nn.Mamba2", Module)

local NAME = "seqnn.nn.Mamba2"

-- Mamba2(d_model [, {d_state = 64, d_conv = 4, expand = 2, headdim = 64, dt_min = 1e-3,
--         dt_max = 0.1, bias = false}]): Mamba-2's SSD mixer (mamba2_simple.py, one group)
-- over x (B,T,d_model), d_inner = expand d_model in heads of headdim channels:
--   z | xBC | dt = in_proj(h);  x | B | C = silu(causal_conv1d(xBC));  dt = softplus(dt + dt_bias)
--   per head h: S_t = exp(dt_t A_h) S_{t-1} + B_t (dt_t x_t)^T,  y_t = S_t^T C_t + D_h x_t
--   out = out_proj(rmsnorm(y silu(z)))
-- The recurrence is sn.F.gated_linear_attention with q = C, k = B (shared by the heads),
-- v = dt x and one log gate dt A per head: the scalar-decay member of the family.
-- A_log starts at log U(1, 16), D at 1, dt_bias at the inverse softplus of a dt drawn
-- log-uniformly from [dt_min, dt_max].
function Mamba2:__init(d_model, opts)
  Module.__init(self)
  opts = opts or {}
  recurrent.positive(NAME, "d_model", d_model)
  local N = recurrent.positive(NAME, "d_state", opts.d_state or 64)
  local W = recurrent.positive(NAME, "d_conv", opts.d_conv or 4)
  if W > 8 then error(("%s: d_conv must be at most 8, got %d"):format(NAME, W), 3) end
  local Di = recurrent.positive(NAME, "expand", opts.expand or 2) * d_model
  local P = recurrent.positive(NAME, "headdim", opts.headdim or math.min(64, Di))
  if Di % P ~= 0 then error(("%s: d_inner = %d is not divisible by headdim = %d"):format(NAME, Di, P), 3) end
  local H = Di // P
  self.d_model, self.d_inner, self.d_state, self.d_conv, self.heads, self.headdim = d_model, Di, N, W, H, P
  local bias = opts.bias == true
  self:add_module("in_proj", Linear(d_model, 2 * Di + 2 * N + H, { bias = bias }))
  recurrent.conv_params(self, Di + 2 * N, W)
  local dt_min, dt_max = opts.dt_min or 1e-3, opts.dt_max or 0.1
  local dt = (sn.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)):exp():maximum(1e-4)
  self:parameter("dt_bias", dt + (-(-dt):exp() + 1):log())
  self:parameter("A_log", (sn.rand(H) * 15 + 1):log())
  self:parameter("D", sn.ones(H))
  self:add_module("norm", RMSNorm(Di))
  self:add_module("out_proj", Linear(Di, d_model, { bias = bias }))
end

function Mamba2:init_cache(batch)
  return { state = sn.zeros(batch, self.heads, self.d_state, self.headdim),
           conv = sn.zeros(batch, math.max(self.d_conv - 1, 1), self.d_inner + 2 * self.d_state), length = 0 }
end

-- forward(x [, cache]): x (B,T,d_model) -> (B,T,d_model); with a cache the tokens continue it.
function Mamba2:forward(x, cache)
  recurrent.check_input(NAME, x, self.d_model)
  if cache then recurrent.check_cache(NAME, cache, x) end
  local B, T, Di, N, H, P = x:size(1), x:size(2), self.d_inner, self.d_state, self.heads, self.headdim
  local p = self.in_proj(x)
  local z, dt = p:narrow(3, 1, Di), p:narrow(3, 2 * Di + 2 * N + 1, H)
  local xbc = recurrent.conv(p:narrow(3, Di + 1, Di + 2 * N), self.conv_weight, self.conv_bias, cache)
  local xs = xbc:narrow(3, 1, Di):view(B, T, H, P)
  local Bm = xbc:narrow(3, Di + 1, N):view(B, T, 1, N):expand(B, T, H, N)
  local Cm = xbc:narrow(3, Di + N + 1, N):view(B, T, 1, N):expand(B, T, H, N)
  dt = sn.F.softplus(dt + self.dt_bias)
  local g = dt * (-self.A_log:exp())
  local y = recurrent.mix("gated_linear_attention", Cm, Bm, xs * dt:view(B, T, H, 1), g, 1, cache)
  y = (y + xs * self.D:view(1, 1, H, 1)):reshape(B, T, Di)
  if cache then cache.length = cache.length + T end
  return self.out_proj(self.norm(y * sn.F.silu(z)))
end

function Mamba2:extra_repr()
  return ("%d, d_inner=%d, heads=%d x %d, d_state=%d, d_conv=%d"):format(self.d_model, self.d_inner, self.heads,
    self.headdim, self.d_state, self.d_conv)
end

return Mamba2
