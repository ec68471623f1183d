local sn = require "seqnn"
local Module = require "seqnn.nn.Module"
local Linear = require "seqnn.nn.Linear"
local MemoryLayer = sn.class("seqnn.nn.MemoryLayer", Module)

local NAME = "seqnn.nn.MemoryLayer"

-- E[s^2], E[|z| s^2], E[z^2 s^2] for z ~ N(0, 1) and s = sigmoid(2|z|): Simpson's rule
-- over [0, 10] (the normal's mass beyond is below 1e-22).
local moments = (function()
  local n, h = 2000, 10 / 2000
  local a, b, c = 0, 0, 0
  for i = 0, n do
    local z = i * h
    local w = (i == 0 or i == n) and 1 or (i % 2 == 1 and 4 or 2)
    local s = 1 / (1 + math.exp(-2 * z))
    local f = w * 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi) * s * s
    a, b, c = a + f, b + f * z, c + f * z * z
  end
  return { a * h / 3, b * h / 3, c * h / 3 }
end)()

-- E[p^2] of one chunk of `bits` N(0, 1) features: "paper" p = prod s_i, E = a^bits;
-- "code" p = S prod s_i with S = sum |z_i|, E = bits c a^(bits-1) + bits (bits-1) b^2 a^(bits-2).
local function score_square(bits, score)
  local a, b, c = moments[1], moments[2], moments[3]
  if score == "paper" then return a ^ bits end
  return bits * c * a ^ (bits - 1) + bits * (bits - 1) * b * b * a ^ (bits - 2)
end

-- MemoryLayer(d_in, d_out [, {bits = 8, chunks = nil, bias = true, score = "code"}]):
-- MemoryFormer's memory layer (Ding et al. 2024), a drop-in for sn.nn.Linear(d_in, d_out)
-- computed by sn.F.hash_linear: the input's K chunks of `bits` features each pick one row of
-- their own table of 2^bits rows by their signs, and the rows are summed weighted by the
-- chunks' scores. Parameters: tables (K * 2^bits, d_out) and bias (d_out).
--   chunks  K. nil: d_in / bits (d_in must then be a multiple of bits). Given with
--           chunks * bits ~= d_in, a bias-free Linear(d_in, chunks * bits), `proj`, maps the
--           input to the hashed features first (the paper's optional projection).
--   score   "code" (the released code: L1 norm of the chunk times the corner's
--           probability) or "paper" (the probability alone); see sn.F.hash_linear.
-- Initialisation: bias as Linear's, U(-1/sqrt(d_in), 1/sqrt(d_in)); tables N(0, sigma^2)
-- with sigma^2 = 1 / (3 K E[p^2]), E[p^2] the mean square score of a chunk of N(0, 1)
-- features: for such inputs (what a LayerNorm before the layer gives) each output has
-- variance 1/3, as a default Linear's has.
-- Costs: flops_per_token() and table_bytes(); pack() makes the inference copy.
function MemoryLayer:__init(d_in, d_out, opts)
  Module.__init(self)
  for _, arg in ipairs({ { "d_in", d_in }, { "d_out", d_out } }) do
    if math.type(arg[2]) ~= "integer" or arg[2] < 1 then
      error(("%s: %s must be a positive integer, got %s"):format(NAME, arg[1], tostring(arg[2])), 3)
    end
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("%s: opts must be a table {bits, chunks, bias, score}, got %s"):format(NAME, type(opts)), 3)
  end
  opts = opts or {}
  local known = { bits = true, chunks = true, bias = true, score = true }
  for k in pairs(opts) do
    if not known[k] then error(("%s: unknown option '%s'"):format(NAME, tostring(k)), 3) end
  end
  local bits, chunks, score = opts.bits or 8, opts.chunks, opts.score or "code"
  if math.type(bits) ~= "integer" or bits < 1 or bits > 16 then
    error(("%s: bits must be an integer in 1..16, got %s"):format(NAME, tostring(bits)), 3)
  end
  if chunks ~= nil and (math.type(chunks) ~= "integer" or chunks < 1) then
    error(("%s: chunks must be a positive integer or nil, got %s"):format(NAME, tostring(chunks)), 3)
  end
  if score ~= "code" and score ~= "paper" then
    error(("%s: score must be 'code' or 'paper', got %s"):format(NAME, tostring(score)), 3)
  end
  if chunks ~= nil and chunks * bits ~= d_in then
    self:add_module("proj", Linear(d_in, chunks * bits, { bias = false }))
  elseif d_in % bits ~= 0 then
    error(("%s: d_in = %d is not a multiple of bits = %d; give chunks to project the input to chunks * bits "
      .. "features first"):format(NAME, d_in, bits), 3)
  end
  local K = chunks or d_in // bits
  if K * 2.0 ^ bits * d_out > 2.0 ^ 40 then
    error(("%s: the tables would hold K * 2^bits * d_out = %d * %d * %d values, more than 2^40"):format(
      NAME, K, 1 << bits, d_out), 3)
  end
  self.d_in, self.d_out, self.bits, self.chunks, self.score = d_in, d_out, bits, K, score
  local sigma = math.sqrt(1 / (3 * K * score_square(bits, score)))
  self:parameter("tables", sn.randn(K * (1 << bits), d_out) * sigma)
  if opts.bias ~= false then
    local bound = 1 / math.sqrt(d_in)
    self:parameter("bias", sn.rand(d_out) * (2 * bound) - bound)
  end
end

-- forward(x): x (..., d_in) -> (..., d_out). Uses the packed copy when there is one and no
-- gradient is being recorded.
function MemoryLayer:forward(x)
  if self.proj then x = self.proj(x) end
  return sn.F.hash_linear(x, self.tables, self.bias, { bits = self.bits, score = self.score, packed = self._packed })
end

-- pack([{bf16 = false}]): keeps a copy of the tables in the column panels the forward
-- kernel reads, so that inference skips gathering them per call; with bf16 the copy holds
-- the tables rounded to bf16 (half the bytes to read; sums stay f32, outputs change by
-- about 2^-9 relative). Used while no gradient is recorded; it is a snapshot: call pack()
-- again after the tables change, or unpack() (train() unpacks too). Returns self.
function MemoryLayer:pack(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(("%s:pack: opts must be a table {bf16 =}, got %s"):format(NAME, type(opts)), 2)
  end
  self:unpack()
  self._packed = sn.core.k_hash_linear_pack(self.tables, opts and opts.bf16 == true)
  self._packed_bf16 = opts and opts.bf16 == true
  return self
end

function MemoryLayer:pack_bf16() return self:pack({ bf16 = true }) end

function MemoryLayer:unpack()
  if self._packed then self._packed:free() end
  self._packed = nil
  return self
end

function MemoryLayer:train(mode)
  if mode == nil or mode then self:unpack() end
  return Module.train(self, mode)
end

-- FLOPs per token: 2 K d_out for the weighted sum of K rows, 5 per hashed feature (sign,
-- |z|, sigmoid-product and sum, counted as the paper does, O(d_in)), plus the projection's
-- 2 d_in K bits when there is one. A Linear(d_in, d_out) costs 2 d_in d_out.
function MemoryLayer:flops_per_token()
  local hashed = self.chunks * self.bits
  return 2 * self.chunks * self.d_out + 5 * hashed + (self.proj and 2 * self.d_in * hashed or 0)
end

-- Bytes of the tables (f32): K 2^bits d_out 4; a token reads K d_out 4 of them.
function MemoryLayer:table_bytes() return self.chunks * (1 << self.bits) * self.d_out * 4 end

function MemoryLayer:extra_repr()
  return ("%d -> %d, bits=%d, chunks=%d%s%s%s%s"):format(self.d_in, self.d_out, self.bits, self.chunks,
    self.proj and ", proj" or "", self.score ~= "code" and (", score=" .. self.score) or "",
    self.bias and "" or ", bias=false", self._packed and (self._packed_bf16 and ", packed bf16" or ", packed") or "")
end

return MemoryLayer
