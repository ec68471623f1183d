-- The block-sparse (BSR) kernels through the binding (core.k_bsr_*): mask, pack and
-- to_dense against loops over the dense weight, the matmul and its backward against dense
-- products with the masked weight (sn.matmul), and every bad input's message.
local sn = require "seqnn"
local core = sn.core
local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

local function max_diff(a, b)
  assert.are.same(b:shape(), a:shape())
  return a:numel() == 0 and 0 or (a - b):abs():max():item()
end
local function close(a, b, tol)
  return a:numel() == 0 and b:numel() == 0 or max_diff(a, b) <= (tol or 1e-5) * (1 + b:abs():max():item())
end

-- w with the blocks the mask drops set to 0, by loops over the elements.
local function masked(w, mask, ro, ri)
  local wt, mt = w:totable(), mask:totable()
  for o = 1, #wt do
    for k = 1, #wt[1] do
      if mt[(o - 1) // ro + 1][(k - 1) // ri + 1] == 0 then wt[o][k] = 0 end
    end
  end
  return sn.tensor(wt)
end

local function count(mask)
  local n = 0
  for _, row in ipairs(mask:totable()) do
    for _, v in ipairs(row) do n = n + (v ~= 0 and 1 or 0) end
  end
  return n
end

local function expect_error(fn, want)
  local msg = err_of(fn)
  assert(msg:find(want, 1, true), ("message %q does not contain %q"):format(msg, want))
end

describe("core.k_bsr_*", function()
  before_each(function() sn.manual_seed(5) end)

  it("masks the exact count and packs what to_dense gives back", function()
    for _, c in ipairs({ { 36, 20, 4, 4 }, { 48, 7, 16, 1 }, { 36, 20, 4, 1 }, { 9, 8, 3, 2 } }) do
      local M, K, ro, ri = table.unpack(c)
      local w = sn.randn(M, K)
      for _, s in ipairs({ 0, 0.5, 0.9, 1 }) do
        local mask = core.k_bsr_mask(w, ro, ri, s)
        assert.are.same({ M // ro, K // ri }, mask:shape())
        local nb = (M // ro) * (K // ri)
        assert.are.equal(math.floor((1 - s) * nb + 0.5), count(mask))
        local values, browptr, bcol = core.k_bsr_pack(w, mask)
        assert.are.same({ count(mask), ro, ri }, values:shape())
        assert.are.equal("i64", browptr:dtype())
        assert.are.equal(count(mask), bcol:numel())
        local back = core.k_bsr_to_dense(values, browptr, bcol, K)
        assert.are.equal(0, max_diff(back, masked(w, mask, ro, ri)))
      end
    end
  end)

  it("keeps the blocks of largest norm, ties to the lower index", function()
    local w = sn.tensor({ { 1, 1, 3, 3, 1, 1 }, { 1, 1, 3, 3, -1, -1 } })
    assert.are.same({ { 0, 1, 0 } }, core.k_bsr_mask(w, 2, 2, 2 / 3):totable())
    assert.are.same({ { 1, 1, 0 } }, core.k_bsr_mask(w, 2, 2, 1 / 3):totable())
  end)

  it("matches dense products with the masked weight", function()
    for _, c in ipairs({ { 36, 20, 4, 4 }, { 48, 7, 16, 1 }, { 40, 12, 4, 1 }, { 15, 8, 3, 2 } }) do
      local M, K, ro, ri = table.unpack(c)
      local w = sn.randn(M, K)
      for _, s in ipairs({ 0, 0.5, 0.9, 1 }) do
        local mask = core.k_bsr_mask(w, ro, ri, s)
        local values, browptr, bcol = core.k_bsr_pack(w, mask)
        local wd = masked(w, mask, ro, ri)
        for _, N in ipairs({ 1, 37, 130 }) do
          local x, dy, bias = sn.randn(N, K), sn.randn(N, M), sn.randn(M)
          local y = core.k_bsr_matmul(x, values, browptr, bcol, bias)
          assert.is_true(close(y, sn.matmul(x, wd:transpose(1, 2)) + bias), ("y %dx%d %dx%d s%g N%d"):format(M, K, ro, ri, s, N))
          assert.is_true(close(core.k_bsr_matmul(x, values, browptr, bcol, nil), sn.matmul(x, wd:transpose(1, 2))))
          local dx, dv, db = core.k_bsr_matmul_bwd(dy, x, values, browptr, bcol, true, true, true)
          assert.is_true(close(dx, sn.matmul(dy, wd)), "dx")
          -- dvalues: dy^T x at the stored blocks, packed by the same mask
          local dw_blocks = core.k_bsr_pack(sn.matmul(dy:transpose(1, 2), x), mask)
          assert.is_true(close(dv, dw_blocks), "dvalues")
          assert.is_true(close(db, dy:sum(1)), "dbias")
          local a, b, d = core.k_bsr_matmul_bwd(dy, x, values, browptr, bcol, false, true, false)
          assert.is_nil(a)
          assert.is_nil(d)
          assert.are.equal(0, max_diff(b, dv))
        end
      end
    end
  end)

  it("reads x and dy given as transposed views", function()
    local w = sn.randn(16, 8)
    local values, browptr, bcol = core.k_bsr_pack(w, core.k_bsr_mask(w, 4, 4, 0.5))
    local xt, dyt = sn.randn(8, 5), sn.randn(16, 5)
    local x, dy = xt:transpose(1, 2), dyt:transpose(1, 2)
    assert.are.equal(0, max_diff(core.k_bsr_matmul(x, values, browptr, bcol), core.k_bsr_matmul(x:contiguous(), values, browptr, bcol)))
    local dx = core.k_bsr_matmul_bwd(dy, x, values, browptr, bcol, true, false, false)
    assert.are.equal(0, max_diff(dx, core.k_bsr_matmul_bwd(dy:contiguous(), x:contiguous(), values, browptr, bcol, true)))
  end)

  describe("rejects bad input", function()
    -- 4x4 blocks, M = 8, K = 8: block-rows {0, 1} and {1}
    local values, browptr, bcol, x, dy
    before_each(function()
      values = sn.randn(3, 4, 4)
      browptr = sn.tensor({ 0, 2, 3 }, "i64")
      bcol = sn.tensor({ 0, 1, 1 }, "i64")
      x, dy = sn.randn(3, 8), sn.randn(3, 8)
    end)

    it("wrong types and ranks", function()
      expect_error(function() core.k_bsr_matmul(1, values, browptr, bcol) end,
        "bad argument #1 'x' to 'seqnn.sparse.bsr_matmul' (seqnn.Tensor expected, got number)")
      expect_error(function() core.k_bsr_matmul(x, "v", browptr, bcol) end,
        "bad argument #2 'values' to 'seqnn.sparse.bsr_matmul' (seqnn.Tensor expected, got string)")
      expect_error(function() core.k_bsr_matmul(x, values, browptr, bcol, 3) end, "'bias'")
      expect_error(function() core.k_bsr_matmul(sn.randn(8), values, browptr, bcol) end,
        "seqnn.sparse.bsr_matmul: x must be (N, K), got 8")
      expect_error(function() core.k_bsr_matmul(x, sn.randn(3, 16), browptr, bcol) end,
        "seqnn.sparse.bsr_matmul: values must be (nnzb, ro, ri) with ro, ri >= 1, got 3x16")
      expect_error(function() core.k_bsr_mask(sn.randn(8), 4, 4, 0.5) end, "seqnn.sparse.bsr_mask: w must be (M, K), got 8")
      expect_error(function() core.k_bsr_mask(sn.randn(8, 8), 4, 4, "x") end, "(number expected, got string)")
      expect_error(function() core.k_bsr_matmul_bwd(dy, x, values, browptr, nil) end,
        "bad argument #5 'bcol' to 'seqnn.sparse.bsr_matmul_bwd'")
    end)

    it("wrong shapes and dtypes", function()
      expect_error(function() core.k_bsr_matmul(sn.randn(3, 7), values, browptr, bcol) end,
        "seqnn.sparse.bsr_matmul: x must be (N, K) with K a multiple of the block's ri = 4, got 3x7")
      expect_error(function() core.k_bsr_matmul(x, values, browptr, bcol, sn.randn(9)) end,
        "seqnn.sparse.bsr_matmul: bias must be (M) = 8, got 9")
      expect_error(function() core.k_bsr_matmul(x:long(), values, browptr, bcol) end,
        "seqnn.sparse.bsr_matmul: argument 'x' must be f32, got i64")
      expect_error(function() core.k_bsr_matmul(x, values, sn.tensor({ 0, 2, 3 }), bcol) end,
        "seqnn.sparse.bsr_matmul: argument 'browptr' must be i64, got f32")
      expect_error(function() core.k_bsr_matmul(x, values, browptr, sn.tensor({ 0, 1 }, "i64")) end,
        "seqnn.sparse.bsr_matmul: bcol must be a vector of nnzb = 3 (values' first dim), got 2")
      expect_error(function() core.k_bsr_matmul_bwd(sn.randn(3, 9), x, values, browptr, bcol, true, true, true) end,
        "seqnn.sparse.bsr_matmul_bwd: dy must be (N, M) = (3, 8), got 3x9")
      expect_error(function() core.k_bsr_matmul_bwd(sn.randn(2, 8), x, values, browptr, bcol, true) end,
        "dy must be (N, M) = (3, 8), got 2x8")
      expect_error(function() core.k_bsr_pack(sn.randn(8, 8), sn.ones(3, 2)) end,
        "seqnn.sparse.bsr_pack: mask must be (M/ro, K/ri) for w 8x8, got 3x2")
      expect_error(function() core.k_bsr_mask(sn.randn(8, 8), 3, 4, 0.5) end,
        "seqnn.sparse.bsr_mask: w's shape 8x8 must be a multiple of the block ro x ri = 3 x 4")
    end)

    it("corrupt indices", function()
      expect_error(function() core.k_bsr_matmul(x, values, browptr, sn.tensor({ 0, 1, 2 }, "i64")) end,
        "seqnn.sparse.bsr_matmul: bcol[2] = 2 is out of range [0, K/ri = 2) (block-row 1)")
      expect_error(function() core.k_bsr_matmul(x, values, browptr, sn.tensor({ 1, 0, 1 }, "i64")) end,
        "seqnn.sparse.bsr_matmul: bcol must be strictly ascending within a block-row, got bcol[1] = 0 after 1")
      expect_error(function() core.k_bsr_matmul(x, values, sn.tensor({ 0, 3, 2 }, "i64"), bcol) end,
        "seqnn.sparse.bsr_matmul: browptr must be non-decreasing within [0, nnzb = 3], got browptr[2] = 2 after 3")
      expect_error(function() core.k_bsr_matmul_bwd(dy, x, values, sn.tensor({ 0, 2, 2 }, "i64"), bcol, true) end,
        "seqnn.sparse.bsr_matmul_bwd: browptr[2] must be nnzb = 3, got 2")
      expect_error(function() core.k_bsr_to_dense(values, browptr, sn.tensor({ 0, -1, 1 }, "i64"), 8) end,
        "seqnn.sparse.bsr_to_dense: bcol[1] = -1 is out of range")
      expect_error(function() core.k_bsr_to_dense(values, browptr, bcol, 4) end,
        "seqnn.sparse.bsr_to_dense: bcol[1] = 1 is out of range [0, K/ri = 1)")
      expect_error(function() core.k_bsr_to_dense(values, browptr, bcol, 6) end,
        "seqnn.sparse.bsr_to_dense: K = 6 inputs must be a multiple of the block's ri = 4")
      -- the valid index passes
      assert.are.same({ 3, 8 }, core.k_bsr_matmul(x, values, browptr, bcol):shape())
    end)

    it("out-of-range scalars", function()
      local w = sn.randn(8, 8)
      expect_error(function() core.k_bsr_mask(w, 4, 4, 1.5) end, "seqnn.sparse.bsr_mask: sparsity must be in [0, 1], got 1.5")
      expect_error(function() core.k_bsr_mask(w, 4, 4, -0.1) end, "sparsity must be in [0, 1], got -0.1")
      expect_error(function() core.k_bsr_mask(w, 4, 4, 0 / 0) end, "sparsity must be in [0, 1], got ")
      expect_error(function() core.k_bsr_mask(w, 0, 4, 0.5) end, "seqnn.sparse.bsr_mask: ro must be >= 1, got 0")
      expect_error(function() core.k_bsr_mask(w, 4, -2, 0.5) end, "seqnn.sparse.bsr_mask: ri must be >= 1, got -2")
      expect_error(function() core.k_bsr_mask(w, 1.5, 4, 0.5) end,
        "bad argument #2 'ro' to 'seqnn.sparse.bsr_mask' (integer expected, got a non-integral number)")
      expect_error(function() core.k_bsr_to_dense(values, browptr, bcol, -8) end,
        "seqnn.sparse.bsr_to_dense: K must be >= 0, got -8")
    end)
  end)
end)
