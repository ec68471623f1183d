local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local Mamba = sn.class("seqnn.nn.Mamba", Module)

local NAME = "seqnn.nn.Mamba"

-- Mamba(d_model [, {d_state = 16, d_conv = 4, expand = 2, dt_rank = ceil(d_model / 16),
--        dt_min = 1e-3, dt_max = 0.1, dt_init_floor = 1e-4, conv_bias = true, bias = false,
--        selective = true, bidirectional = false}]): Mamba's selective state-space mixer,
-- (B,T,d_model) -> (B,T,d_model), as mamba_simple.py:
--   x | z = in_proj(h);  xc = silu(causal_conv1d(x));  dt_low | B | C = x_proj(xc)
--   y = selective_scan(xc, dt_low W_dt^T, -exp(A_log), B, C, {D, z, delta_bias = b_dt,
--       delta_softplus});  out = out_proj(y)
-- Children and parameters: in_proj, conv_weight (d_inner, d_conv), conv_bias, x_proj,
-- dt_proj (its bias is the scan's delta_bias, started at the inverse softplus of a dt drawn
-- log-uniformly from [dt_min, dt_max]), A_log (d_inner, d_state) = log(1..d_state) (S4D
-- real), D (d_inner) = 1, out_proj. A_log and D are usually kept out of weight decay.
-- selective = false removes the selection: dt, B and C become parameters that do not depend
-- on the input (an LTI state-space layer), the ablation of the Mamba paper.
-- bidirectional = true adds a second conv/scan path over the reversed sequence (its own
-- conv, x_proj, dt_proj, A_log and D, suffix _b), summed before out_proj, for encoders;
-- such a layer cannot decode step by step.
function Mamba:__init(d_model, opts)
  Module.__init(self)
  opts = opts or {}
  if type(opts) ~= "table" then error(("%s: opts must be a table, got %s"):format(NAME, type(opts)), 3) end
  local N, W, expand = opts.d_state or 16, opts.d_conv or 4, opts.expand or 2
  for _, arg in ipairs({ { "d_model", d_model }, { "d_state", N }, { "expand", expand } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("%s: %s must be a positive integer, got %s"):format(NAME, arg[1], tostring(arg[2])), 3)
    end
  end
  if math.type(W) ~= "integer" or W < 1 or W > 8 then
    error(("%s: d_conv must be an integer in 1..8, got %s"):format(NAME, tostring(W)), 3)
  end
  local R = opts.dt_rank or math.ceil(d_model / 16)
  if math.type(R) ~= "integer" or R < 1 then
    error(("%s: dt_rank must be a positive integer, got %s"):format(NAME, tostring(R)), 3)
  end
  local dt_min, dt_max, floor = opts.dt_min or 1e-3, opts.dt_max or 0.1, opts.dt_init_floor or 1e-4
  if not (type(dt_min) == "number" and type(dt_max) == "number" and 0 < dt_min and dt_min <= dt_max) then
    error(("%s: need 0 < dt_min <= dt_max, got %s and %s"):format(NAME, tostring(dt_min), tostring(dt_max)), 3)
  end
  local Di = expand * d_model
  self.d_model, self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_model, Di, N, W, R
  self.selective, self.bidirectional = opts.selective ~= false, opts.bidirectional == true
  local bias = opts.bias == true
  self:add_module("in_proj", Linear(d_model, 2 * Di, { bias = bias }))
  self:add_module("out_proj", Linear(Di, d_model, { bias = bias }))
  for _, suffix in ipairs(self.bidirectional and { "", "_b" } or { "" }) do
    self:init_path(suffix, opts, dt_min, dt_max, floor)
  end
end

-- The parameters of one scan direction: conv, x_proj and dt_proj (or the input-independent
-- dt, B, C when not selective), A_log, D.
function Mamba:init_path(suffix, opts, dt_min, dt_max, floor)
  local Di, N, W, R = self.d_inner, self.d_state, self.d_conv, self.dt_rank
  local bound = 1 / math.sqrt(W) -- PyTorch's Conv1d default for a depthwise kernel of W
  self:parameter("conv_weight" .. suffix, sn.rand(Di, W) * (2 * bound) - bound)
  if opts.conv_bias ~= false then
    self:parameter("conv_bias" .. suffix, sn.rand(Di) * (2 * bound) - bound)
  end
  -- dt = exp(U(log dt_min, log dt_max)), at least floor; bias = softplus^-1(dt) = dt + log(1 - e^-dt).
  local dt = (sn.rand(Di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)):exp():maximum(floor)
  local dt_bias = dt + (-(-dt):exp() + 1):log()
  if self.selective then
    self:add_module("x_proj" .. suffix, Linear(Di, R + 2 * N, { bias = false }))
    local dt_proj = Linear(R, Di)
    local wb = R ^ -0.5
    sn.no_grad(function()
      dt_proj.weight:copy_(sn.rand(Di, R) * (2 * wb) - wb)
      dt_proj.bias:copy_(dt_bias)
    end)
    self:add_module("dt_proj" .. suffix, dt_proj)
  else
    self:parameter("dt_bias" .. suffix, dt_bias)
    self:parameter("B" .. suffix, sn.randn(N) * (N ^ -0.5))
    self:parameter("C" .. suffix, sn.randn(N) * (N ^ -0.5))
  end
  local a = {}
  for n = 1, N do a[n] = math.log(n) end
  self:parameter("A_log" .. suffix, sn.tensor({ a }):expand(Di, N):contiguous())
  self:parameter("D" .. suffix, sn.ones(Di))
end

-- One direction over x (B,T,Di) (already reversed for the backward path), gated by z.
function Mamba:scan_path(suffix, x, z, opts)
  local B, T, Di, N, R = x:size(1), x:size(2), self.d_inner, self.d_state, self.dt_rank
  local xc = sn.F.causal_conv1d(x, self["conv_weight" .. suffix], self["conv_bias" .. suffix], { silu = true })
  local delta, Bm, Cm, dt_bias
  if self.selective then
    local x_dbl = self["x_proj" .. suffix](xc)
    local dt_proj = self["dt_proj" .. suffix]
    delta = sn.F.linear(x_dbl:narrow(3, 1, R), dt_proj.weight)
    Bm, Cm, dt_bias = x_dbl:narrow(3, R + 1, N), x_dbl:narrow(3, R + N + 1, N), dt_proj.bias
  else
    delta = sn.zeros(B, T, Di)
    Bm = self["B" .. suffix]:view(1, 1, N):expand(B, T, N)
    Cm = self["C" .. suffix]:view(1, 1, N):expand(B, T, N)
    dt_bias = self["dt_bias" .. suffix]
  end
  local A = -self["A_log" .. suffix]:exp()
  return sn.F.selective_scan(xc, delta, A, Bm, Cm, { D = self["D" .. suffix], z = z, delta_bias = dt_bias,
    delta_softplus = true, initial_state = opts and opts.initial_state, return_state = opts and opts.return_state })
end

-- Reverses dim 2 (time) through a differentiable index_select.
local function flip_time(x)
  local T = x:size(2)
  local idx = {}
  for t = 1, T do idx[t] = T - t end
  return x:index_select(2, sn.tensor(idx, "i64"))
end

-- init_cache(batch): the decoding state, O(1) in the length: the last d_conv - 1 inputs of
-- the convolution (B, d_conv - 1, d_inner) and the scan state (B, d_inner, d_state), and
-- A = -exp(A_log), which the weights fix for a whole generation (not recomputed per token).
function Mamba:init_cache(batch)
  if self.bidirectional then
    error(("%s: a bidirectional layer sees the future, so it cannot decode step by step"):format(NAME), 2)
  end
  return { conv = sn.zeros(batch, math.max(self.d_conv - 1, 1), self.d_inner),
           ssm = sn.zeros(batch, self.d_inner, self.d_state), length = 0,
           A = sn.no_grad(function() return -self.A_log:exp() end) }
end

-- One token x (B,d_model) through the cache, without autograd: O(1) time and memory.
function Mamba:step(x, cache)
  local Di, N, R = self.d_inner, self.d_state, self.dt_rank
  return sn.no_grad(function()
    local xz = self.in_proj(x)
    local xin, z = xz:narrow(2, 1, Di), xz:narrow(2, Di + 1, Di)
    local xc
    if self.d_conv > 1 then
      xc = sn.core.k_causal_conv1d_step(cache.conv, xin, self.conv_weight, self.conv_bias, true)
    else
      xc = sn.F.causal_conv1d(xin:view(-1, 1, Di), self.conv_weight, self.conv_bias, { silu = true }):view(-1, Di)
    end
    local delta, Bm, Cm, dt_bias
    if self.selective then
      local x_dbl = self.x_proj(xc)
      delta = sn.F.linear(x_dbl:narrow(2, 1, R), self.dt_proj.weight)
      Bm, Cm, dt_bias = x_dbl:narrow(2, R + 1, N), x_dbl:narrow(2, R + N + 1, N), self.dt_proj.bias
    else
      local B = x:size(1)
      delta = sn.zeros(B, Di)
      Bm, Cm, dt_bias = self.B:view(1, N):expand(B, N), self.C:view(1, N):expand(B, N), self.dt_bias
    end
    local y = sn.core.k_selective_scan_step(cache.ssm, xc, delta, cache.A, Bm, Cm, self.D, z, dt_bias, true)
    cache.length = cache.length + 1
    return self.out_proj(y)
  end)
end

-- The prompt of an empty cache in one pass: the chunked scan from a zero state returns
-- its final state, and the convolution's state is the last d_conv - 1 inputs.
local function prefill(self, x, cache)
  local Di, T, W = self.d_inner, x:size(2), self.d_conv
  local xz = self.in_proj(x)
  local xin, z = xz:narrow(3, 1, Di), xz:narrow(3, Di + 1, Di)
  local y, h = self:scan_path("", xin, z, { return_state = true })
  cache.ssm:copy_(h)
  if W > 1 then
    local keep = math.min(T, W - 1)
    cache.conv:narrow(2, W - keep, keep):copy_(xin:narrow(2, T - keep + 1, keep))
  end
  cache.length = T
  return self.out_proj(y)
end

-- forward(x [, cache]): x (B,T,d_model) -> (B,T,d_model). With a cache (from init_cache)
-- the tokens continue the cached sequence: a prompt on an empty cache in one pass, later
-- tokens one step at a time.
function Mamba:forward(x, cache)
  if not sn.core.is_tensor(x) or x:dim() ~= 3 or x:size(3) ~= self.d_model then
    error(("%s: x must be (B,T,%d), got %s"):format(NAME, self.d_model,
      sn.core.is_tensor(x) and table.concat(x:shape(), "x") or type(x)), 2)
  end
  if cache ~= nil then
    if type(cache) ~= "table" or not cache.ssm then
      error(("%s: cache must come from init_cache, got %s"):format(NAME, type(cache)), 2)
    end
    local T = x:size(2)
    if cache.length == 0 and T > 1 then return prefill(self, x, cache) end
    local out = sn.empty(x:size(1), T, self.d_model)
    for t = 1, T do out:select(2, t):copy_(self:step(x:select(2, t), cache)) end
    return out
  end
  local Di = self.d_inner
  local xz = self.in_proj(x)
  local xin, z = xz:narrow(3, 1, Di), xz:narrow(3, Di + 1, Di)
  local y = self:scan_path("", xin, z)
  if self.bidirectional then
    y = y + flip_time(self:scan_path("_b", flip_time(xin), flip_time(z)))
  end
  return self.out_proj(y)
end

function Mamba:extra_repr()
  local parts = { ("%d, d_inner=%d, d_state=%d, d_conv=%d, dt_rank=%d"):format(self.d_model, self.d_inner,
    self.d_state, self.d_conv, self.dt_rank) }
  if not self.selective then parts[#parts + 1] = "selective=false" end
  if self.bidirectional then parts[#parts + 1] = "bidirectional" end
  return table.concat(parts, ", ")
end

return Mamba
