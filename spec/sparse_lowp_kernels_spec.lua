-- The 2:4 and int8 block-sparse inference kernels through the binding (core.k_sparse24_*,
-- core.k_bsr_i8_*): results against dense math with sn.matmul, int8 within the quantization
-- error bound, the seqnn.BSRInt8 object, and every bad input giving a clear error.
local sn = require "seqnn"
local core = sn.core

local function max_diff(a, b) return (a - b):abs():max():item() end

-- y = x W^T (+ bias) with the library's dense matmul.
local function dense(x, w, bias)
  local y = sn.matmul(x, w:transpose(1, 2))
  if bias then y = y + bias:view(1, bias:size(1)) end
  return y
end

describe("core.k_sparse24_*", function()
  before_each(function() sn.manual_seed(7) end)

  it("keeps the two largest |w| of each group of 4 and expands back", function()
    local w = sn.randn(6, 20)
    local values, idx = core.k_sparse24_from_dense(w)
    assert.same({ 6, 10 }, values:shape())
    assert.same({ 6, 1 }, idx:shape())
    local wd, wt = core.k_sparse24_to_dense(values, idx):totable(), w:totable()
    for m = 1, 6 do
      for g = 0, 4 do
        local kept = {}
        for p = 1, 4 do
          local v, outranked = wt[m][4 * g + p], 0
          for o = 1, 4 do
            local u = wt[m][4 * g + o]
            if o ~= p and (math.abs(u) > math.abs(v) or (math.abs(u) == math.abs(v) and o < p)) then
              outranked = outranked + 1
            end
          end
          local want = outranked < 2 and v or 0
          assert.are.equal(want, wd[m][4 * g + p])
          if outranked < 2 then kept[#kept + 1] = p end
        end
        assert.are.equal(2, #kept)
      end
    end
  end)

  it("matches the dense product on the expanded weight (N = 1, 3, 37; K = 20 and 4)", function()
    for _, mk in ipairs({ { 36, 20 }, { 12, 4 }, { 8, 132 } }) do
      local M, K = mk[1], mk[2]
      local values, idx = core.k_sparse24_from_dense(sn.randn(M, K))
      local wd = core.k_sparse24_to_dense(values, idx)
      for _, N in ipairs({ 1, 3, 37 }) do
        local x, bias = sn.randn(N, K), sn.randn(M)
        local y = core.k_sparse24_matmul(x, values, idx, bias)
        assert.same({ N, M }, y:shape())
        assert.is_true(max_diff(y, dense(x, wd, bias)) < 1e-4, ("M %d K %d N %d"):format(M, K, N))
        assert.is_true(max_diff(core.k_sparse24_matmul(x, values, idx), dense(x, wd)) < 1e-4)
      end
    end
  end)

  it("reads a transposed x (copied to unit stride)", function()
    local values, idx = core.k_sparse24_from_dense(sn.randn(8, 12))
    local xt = sn.randn(12, 5)
    local y = core.k_sparse24_matmul(xt:transpose(1, 2), values, idx)
    assert.is_true(max_diff(y, dense(xt:transpose(1, 2):contiguous(), core.k_sparse24_to_dense(values, idx))) < 1e-4)
  end)

  it("rejects bad input with messages naming the argument and shapes", function()
    local values, idx = core.k_sparse24_from_dense(sn.randn(6, 20))
    local fd, td, mm = core.k_sparse24_from_dense, core.k_sparse24_to_dense, core.k_sparse24_matmul
    assert.has_error(function() fd(1) end,
      "bad argument #1 'w' to 'seqnn.sparse.sparse24_from_dense' (seqnn.Tensor expected, got number)")
    assert.has_error(function() fd(sn.tensor({ { 1, 2, 3, 4 } }, "i64")) end,
      "seqnn.sparse.sparse24_from_dense: argument 'w' must be f32, got i64 (1x4)")
    assert.has_error(function() fd(sn.randn(8)) end, "seqnn.sparse.sparse24_from_dense: w must be (M, K), got 8")
    assert.has_error(function() fd(sn.randn(3, 6)) end,
      "seqnn.sparse.sparse24_from_dense: w must have K (inputs) a multiple of 4, got 3x6")
    assert.has_error(function() td(values, values) end,
      "seqnn.sparse.sparse24_to_dense: argument 'idx' must be i64, got f32 (6x10)")
    assert.has_error(function() td(sn.randn(6, 10, 1), idx) end,
      "seqnn.sparse.sparse24_to_dense: values must be (M, K/2), got 6x10x1")
    assert.has_error(function() mm(sn.randn(2, 8), values, idx) end,
      "seqnn.sparse.sparse24_matmul: x has 8 features but the weight has K = 20 inputs (x: 2x8, values: 6x10)")
    assert.has_error(function() mm(sn.randn(2, 3, 20), values, idx) end,
      "seqnn.sparse.sparse24_matmul: x must be (N, K), got 2x3x20")
    assert.has_error(function() mm(sn.randn(2, 20), values, idx, sn.randn(5)) end,
      "seqnn.sparse.sparse24_matmul: bias must be (M) = 6, got 5")
    assert.has_error(function() mm(sn.randn(2, 20), values, idx, "b") end,
      "bad argument #4 'bias' to 'seqnn.sparse.sparse24_matmul' (seqnn.Tensor expected, got string)")
    assert.has_error(function() mm(sn.randn(2, 20), values, sn.zeros(6, 2):long()) end,
      "seqnn.sparse.sparse24_matmul: idx must be a contiguous i64 tensor of shape 6x1, got i64 6x2")
    -- K = 6 (values with 3 columns) is no multiple of 4.
    assert.has_error(function() mm(sn.randn(2, 6), sn.randn(2, 3), sn.tensor({ { 4 }, { 4 } }, "i64")) end,
      "seqnn.sparse.sparse24_matmul: values must be (M, K/2) with K a multiple of 4, got 2x3 (K = 6)")
    -- Corrupt codes: p0 = p1 = 1 (5); p0 = 2 > p1 = 1 (6); a bit past the only group.
    local v2 = sn.randn(2, 2)
    assert.has_error(function() mm(sn.randn(1, 4), v2, sn.tensor({ { 4 }, { 5 } }, "i64")) end,
      "seqnn.sparse.sparse24_matmul: idx has a bad code 5 at row 1, group 0 (positions p0 = 1, p1 = 1; need p0 < p1)")
    assert.has_error(function() td(v2, sn.tensor({ { 6 }, { 4 } }, "i64")) end,
      "seqnn.sparse.sparse24_to_dense: idx has a bad code 6 at row 0, group 0 (positions p0 = 2, p1 = 1; need p0 < p1)")
    assert.has_error(function() mm(sn.randn(1, 4), v2, sn.tensor({ { 4 }, { 4 + 16 } }, "i64")) end,
      "seqnn.sparse.sparse24_matmul: idx row 1 word 0 has nonzero bits past the last group (K = 4 has 1 groups; " ..
      "unused bits must be zero)")
  end)
end)

describe("core.k_bsr_i8_*", function()
  before_each(function() sn.manual_seed(11) end)

  -- A BSR weight of 4x1 blocks, M = 8, K = 12: block-row 0 stores inputs 0, 3, 7, block-row 1
  -- inputs 2, 11.
  local function weight()
    local values = sn.randn(5, 4, 1)
    local browptr, bcol = sn.tensor({ 0, 3, 5 }, "i64"), sn.tensor({ 0, 3, 7, 2, 11 }, "i64")
    local v, cols, w = values:totable(), { 0, 3, 7, 2, 11 }, {}
    for m = 1, 8 do
      w[m] = {}
      for k = 1, 12 do w[m][k] = 0 end
    end
    for b = 1, 5 do
      local br = b <= 3 and 0 or 1
      for r = 1, 4 do w[br * 4 + r][cols[b] + 1] = v[b][r][1] end
    end
    return values, browptr, bcol, sn.tensor(w)
  end

  -- |y - x W^T - bias| <= sum_k |w| sx/2 + |x| sw/2 + sx sw/4 over stored weights (one
  -- rounding step of each factor), plus float rounding.
  local function within_bound(y, x, wd, bias)
    local ref, yt, xt, wt = dense(x, wd, bias):totable(), y:totable(), x:totable(), wd:totable()
    for n = 1, #xt do
      local sx = 0
      for k = 1, #xt[n] do sx = math.max(sx, math.abs(xt[n][k])) end
      sx = sx / 127
      for m = 1, #wt do
        local sw, bound = 0, 1e-5 * (1 + math.abs(ref[n][m]))
        for k = 1, #wt[m] do sw = math.max(sw, math.abs(wt[m][k])) end
        sw = sw / 127
        for k = 1, #wt[m] do
          if wt[m][k] ~= 0 then
            bound = bound + math.abs(wt[m][k]) * sx / 2 + math.abs(xt[n][k]) * sw / 2 + sx * sw / 4
          end
        end
        if math.abs(yt[n][m] - ref[n][m]) > bound then return false, ("token %d output %d"):format(n, m) end
      end
    end
    return true
  end

  it("matches the f32 dense product within the quantization bound (decode and panel sizes)", function()
    local values, browptr, bcol, wd = weight()
    local w8 = core.k_bsr_i8_new(values, browptr, bcol, 12)
    for _, N in ipairs({ 1, 3, 37, 70 }) do
      local x, bias = sn.randn(N, 12), sn.randn(8)
      local y = core.k_bsr_i8_matmul(x, w8, bias)
      assert.same({ N, 8 }, y:shape())
      assert.is_true(within_bound(y, x, wd, bias))
      assert.is_true(within_bound(core.k_bsr_i8_matmul(x, w8), x, wd))
    end
  end)

  it("gives the bias for an empty weight", function()
    local w8 = core.k_bsr_i8_new(sn.zeros(0, 4, 1), sn.tensor({ 0, 0 }, "i64"), sn.zeros(0):long(), 8)
    local bias = sn.randn(4)
    local y = core.k_bsr_i8_matmul(sn.randn(5, 8), w8, bias)
    assert.are.equal(0, max_diff(y, bias:view(1, 4):expand(5, 4)))
  end)

  it("is a seqnn.BSRInt8 with size, bytes, tostring and close", function()
    local values, browptr, bcol = weight()
    local w8 = core.k_bsr_i8_new(values, browptr, bcol, 12)
    local M, K = w8:size()
    assert.are.equal(8, M)
    assert.are.equal(12, K)
    assert.is_true(math.type(w8:bytes()) == "integer" and w8:bytes() > 0)
    assert.are.equal(("BSRInt8(8x12, nnzb=5, bytes=%d)"):format(w8:bytes()), tostring(w8))
    do
      local closed <close> = core.k_bsr_i8_new(values, browptr, bcol, 12)
      w8 = closed
    end
    assert.are.equal("BSRInt8(freed)", tostring(w8))
    assert.has_error(function() core.k_bsr_i8_matmul(sn.randn(2, 12), w8) end,
      "seqnn.sparse.bsr_i8_matmul: argument 'w': seqnn.BSRInt8 was freed")
    assert.has_error(function() w8:size() end, "seqnn.BSRInt8:size: argument 'self': seqnn.BSRInt8 was freed")
  end)

  it("rejects bad input with messages naming the argument and shapes", function()
    local values, browptr, bcol = weight()
    local new, mm = core.k_bsr_i8_new, core.k_bsr_i8_matmul
    local w8 = new(values, browptr, bcol, 12)
    assert.has_error(function() new(values, browptr, bcol, "12") end,
      "bad argument #4 'K' to 'seqnn.sparse.bsr_i8_new' (integer expected, got string)")
    assert.has_error(function() new(values, browptr:float(), bcol, 12) end,
      "seqnn.sparse.bsr_i8_new: argument 'browptr' must be i64, got f32 (3)")
    assert.has_error(function() new(values:long(), browptr, bcol, 12) end,
      "seqnn.sparse.bsr_i8_new: argument 'values' must be f32, got i64 (5x4x1)")
    assert.has_error(function() new({}, browptr, bcol, 12) end,
      "bad argument #1 'values' to 'seqnn.sparse.bsr_i8_new' (seqnn.Tensor expected, got table)")
    -- Index errors come from the shared BSR check; they name the function and the index.
    for _, bad in ipairs({ sn.tensor({ 0, 3, 12, 2, 11 }, "i64"), sn.tensor({ 0, 3, 3, 2, 11 }, "i64") }) do
      local ok, msg = pcall(new, values, browptr, bad, 12)
      assert.is_false(ok)
      assert.truthy(msg:find("^seqnn%.sparse%.bsr_i8_new: .*bcol"), msg)
    end
    local ok, msg = pcall(new, values, browptr, bcol, 10)
    assert.is_false(ok)
    assert.truthy(msg:find("^seqnn%.sparse%.bsr_i8_new: "), msg)
    assert.has_error(function() new(sn.full({ 5, 4, 1 }, math.huge), browptr, bcol, 12) end,
      "seqnn.sparse.bsr_i8_new: values must be finite to quantize, block 0 row 0 col 0 is inf")
    assert.has_error(function() mm(sn.randn(2, 12), values) end,
      "bad argument #2 'w' to 'seqnn.sparse.bsr_i8_matmul' (seqnn.BSRInt8 expected, got seqnn.Tensor)")
    assert.has_error(function() mm(sn.randn(2, 12), io.stdout) end,
      "bad argument #2 'w' to 'seqnn.sparse.bsr_i8_matmul' (seqnn.BSRInt8 expected, got FILE*)")
    assert.has_error(function() mm(sn.randn(2, 12), nil) end,
      "bad argument #2 'w' to 'seqnn.sparse.bsr_i8_matmul' (seqnn.BSRInt8 expected, got nil)")
    assert.has_error(function() mm(sn.randn(2, 10), w8) end,
      "seqnn.sparse.bsr_i8_matmul: x has 10 features but the weight has K = 12 inputs (x: 2x10, weight: 8x12)")
    assert.has_error(function() mm(sn.randn(2, 3, 12), w8) end,
      "seqnn.sparse.bsr_i8_matmul: x must be (N, K), got 2x3x12")
    assert.has_error(function() mm(sn.randn(2, 12):long(), w8) end,
      "seqnn.sparse.bsr_i8_matmul: argument 'x' must be f32, got i64 (2x12)")
    assert.has_error(function() mm(sn.randn(2, 12), w8, sn.randn(7)) end,
      "seqnn.sparse.bsr_i8_matmul: bias must be (M) = 8, got 7")
  end)
end)
