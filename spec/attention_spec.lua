-- sn.F.attention, attention_varlen and attention_step: gradients against finite
-- differences for every option, varlen against per-sequence calls, the decode step against
-- the causal forward, and the messages for what a user can get wrong.
local sn = require "seqnn"
local F = sn.F
local gradcheck = sn.autograd.gradcheck

local function leaf(...) return sn.randn(...):requires_grad(true) end

local function max_diff(a, b) return (a - b):abs():max():item() end

-- Softmax attention spelled out with matmul and softmax, head by head (G = H / Hkv).
local function naive(q, k, v, opts)
  opts = opts or {}
  local _, T, H, D = table.unpack(q:shape())
  local S, Hkv = k:size(2), k:size(3)
  local rows = {}
  for i = 1, T do
    rows[i] = {}
    local p = i - 1 + S - T
    for j = 1, S do
      local ok = true
      if opts.causal or opts.window then ok = j - 1 <= p end
      if opts.window then ok = ok and j - 1 >= p - opts.window end
      rows[i][j] = ok and 0 or -1e30
    end
  end
  local mask, heads = sn.tensor(rows), {}
  for h = 1, H do
    local g = (h - 1) // (H // Hkv) + 1
    local qh, kh, vh = q:narrow(3, h, 1):squeeze(3), k:narrow(3, g, 1):squeeze(3), v:narrow(3, g, 1):squeeze(3)
    local s = sn.matmul(qh, kh:transpose(2, 3)) * (opts.scale or 1 / math.sqrt(D)) + mask
    heads[h] = sn.matmul(F.softmax(s), vh)
  end
  return heads
end

describe("seqnn.F.attention", function()
  before_each(function() sn.manual_seed(11) end)

  it("matches matmul-softmax-matmul for every option", function()
    local cases = {
      { 2, 9, 9, 4, 4, 8, {} },
      { 2, 9, 9, 4, 2, 8, { causal = true } },
      { 1, 7, 12, 4, 1, 6, { causal = true } },           -- cross, bottom-right
      { 1, 10, 10, 2, 2, 5, { window = 3 } },
      { 1, 10, 10, 2, 1, 5, { causal = true, window = 50 } }, -- window larger than T
      { 1, 6, 6, 2, 2, 4, { scale = 0.3 } },
    }
    for _, c in ipairs(cases) do
      local B, T, S, H, Hkv, D, opts = table.unpack(c)
      local q, k, v = sn.randn(B, T, H, D), sn.randn(B, S, Hkv, D), sn.randn(B, S, Hkv, D)
      local o, want = F.attention(q, k, v, opts), naive(q, k, v, opts)
      for h = 1, H do assert.is_true(max_diff(o:narrow(3, h, 1):squeeze(3), want[h]) < 1e-5) end
    end
  end)

  it("passes gradcheck for every option, including GQA and windows", function()
    local cases = {
      { 1, 5, 5, 2, 2, 3, nil },
      { 2, 5, 5, 2, 1, 3, { causal = true } },
      { 1, 4, 6, 4, 2, 3, { causal = true } },
      { 1, 6, 6, 4, 1, 2, { causal = true, window = 2 } },
      { 1, 6, 6, 2, 2, 3, { window = 1, scale = 0.5 } },
    }
    for _, c in ipairs(cases) do
      local B, T, S, H, Hkv, D, opts = table.unpack(c)
      assert.is_true(gradcheck(function(q, k, v) return F.attention(q, k, v, opts) end,
        { leaf(B, T, H, D), leaf(B, S, Hkv, D), leaf(B, S, Hkv, D) }, { eps = 1e-2, atol = 2e-3, rtol = 1e-2 }))
    end
  end)

  it("treats a huge window as causal", function()
    local q, k, v = sn.randn(1, 9, 2, 4), sn.randn(1, 5, 2, 4), sn.randn(1, 5, 2, 4)
    local a = F.attention(q, k, v, { window = math.maxinteger })
    assert.are.equal(0, max_diff(a, F.attention(q, k, v, { causal = true })))
  end)

  it("takes views of a fused projection", function()
    local qkv = sn.randn(2, 7, 8, 4)
    local q, k, v = qkv:narrow(3, 1, 4), qkv:narrow(3, 5, 2), qkv:narrow(3, 7, 2)
    local a = F.attention(q, k, v, { causal = true })
    local b = F.attention(q:contiguous(), k:contiguous(), v:contiguous(), { causal = true })
    assert.are.equal(0, max_diff(a, b))
  end)

  it("attention_qkv equals rope and attention on the three parts, gradients included", function()
    for _, c in ipairs({ { 4, 4, nil }, { 4, 2, { base = 500 } }, { 3, 1, { base = 10000 } } }) do
      local H, G, rope = table.unpack(c)
      local x = leaf(2, 7, H + 2 * G, 6)
      local opts = { causal = true, rope = rope }
      local a = F.attention_qkv(x, H, G, opts)
      local g = sn.randn(a:shape())
      ;(a * g):sum():backward()
      local y = x:detach():requires_grad(true)
      local q, k, v = y:narrow(3, 1, H), y:narrow(3, H + 1, G), y:narrow(3, H + G + 1, G)
      if rope then q, k = F.rope(q, rope), F.rope(k, rope) end
      local b = F.attention(q, k, v, { causal = true })
      ;(b * g):sum():backward()
      assert.is_true(max_diff(a, b) < 1e-6)
      assert.is_true(max_diff(x.grad, y.grad) < 1e-5)
    end
  end)

  it("attention_qkv passes gradcheck with rope and a window", function()
    assert.is_true(gradcheck(function(x) return F.attention_qkv(x, 2, 1, { window = 2, rope = { offset = 3 } }) end,
      { leaf(1, 6, 4, 4) }, { eps = 1e-2, atol = 2e-3, rtol = 1e-2 }))
  end)

  it("attention_qkv names a qkv that does not match the heads", function()
    local x = sn.randn(1, 3, 5, 4)
    assert.has_error(function() F.attention_qkv(x, 2, 2) end,
      "seqnn.F.attention_qkv: qkv must be (B,T,6,Dh) for 2 heads and 2 kv_heads, got 1x3x5x4")
    assert.has_error(function() F.attention_qkv(x, 3, 2) end,
      "seqnn.F.attention_qkv: heads and kv_heads must be positive integers with heads a multiple of kv_heads, got 3 and 2")
    assert.has_error(function() F.attention_qkv(sn.randn(1, 3, 4), 1, 1) end,
      "seqnn.F.attention_qkv: qkv must be (B,T,3,Dh) for 1 heads and 1 kv_heads, got 1x3x4")
  end)

  it("varlen equals separate calls per sequence, with gradients", function()
    local lq, lk = { 3, 0, 1, 9 }, { 4, 2, 1, 9 }
    local cq, ck = { 0 }, { 0 }
    for s = 1, #lq do cq[s + 1], ck[s + 1] = cq[s] + lq[s], ck[s] + lk[s] end
    local q, k, v = leaf(1, cq[#cq], 4, 8), leaf(1, ck[#ck], 2, 8), leaf(1, ck[#ck], 2, 8)
    local cuq, cuk = sn.tensor(cq, "i64"), sn.tensor(ck, "i64")
    local o = F.attention_varlen(q, k, v, cuq, cuk, { causal = true })
    local g = sn.randn(o:shape())
    ;(o * g):sum():backward()
    for s = 1, #lq do
      if lq[s] > 0 then
        local qs = q:detach():narrow(2, cq[s] + 1, lq[s]):contiguous():requires_grad(true)
        local ks = k:detach():narrow(2, ck[s] + 1, lk[s]):contiguous():requires_grad(true)
        local vs = v:detach():narrow(2, ck[s] + 1, lk[s]):contiguous():requires_grad(true)
        local os = F.attention(qs, ks, vs, { causal = true })
        ;(os * g:narrow(2, cq[s] + 1, lq[s])):sum():backward()
        assert.are.equal(0, max_diff(os, o:narrow(2, cq[s] + 1, lq[s])))
        assert.are.equal(0, max_diff(qs.grad, q.grad:narrow(2, cq[s] + 1, lq[s])))
        assert.are.equal(0, max_diff(ks.grad, k.grad:narrow(2, ck[s] + 1, lk[s])))
        assert.are.equal(0, max_diff(vs.grad, v.grad:narrow(2, ck[s] + 1, lk[s])))
      end
    end
  end)

  it("decoding step by step equals the causal forward", function()
    for _, window in ipairs({ false, 3 }) do
      local B, T, H, Hkv, D = 2, 11, 4, 2, 8
      local q, k, v = sn.randn(B, T, H, D), sn.randn(B, T, Hkv, D), sn.randn(B, T, Hkv, D)
      local opts = { causal = true, window = window or nil }
      local full = F.attention(q, k, v, opts)
      local kc, vc = sn.zeros(B, Hkv, 16, D), sn.zeros(B, Hkv, 16, D)
      for t = 1, T do
        local o = F.attention_step(q:narrow(2, t, 1), k:narrow(2, t, 1), v:narrow(2, t, 1), kc, vc, t - 1,
          { window = opts.window })
        assert.is_true(max_diff(o, full:narrow(2, t, 1)) < 1e-5)
      end
    end
  end)

  it("names the problem and the shapes in its errors", function()
    assert.has_error(function() F.attention(sn.randn(2, 16, 4, 32), sn.randn(2, 16, 4, 64), sn.randn(2, 16, 4, 64)) end,
      "seqnn.F.attention: k has head dim 64 but q has 32 (q: 2x16x4x32, k: 2x16x4x64)")
    assert.has_error(function() F.attention(sn.randn(2, 16, 6, 8), sn.randn(2, 16, 4, 8), sn.randn(2, 16, 4, 8)) end,
      "seqnn.F.attention: q has 6 heads, not a multiple of k's 4 heads (q: 2x16x6x8, k: 2x16x4x8)")
    assert.has_error(function() F.attention(sn.randn(16, 8), sn.randn(2, 16, 4, 8), sn.randn(2, 16, 4, 8)) end,
      "seqnn.F.attention: q must be (B, T, H, Dh), got 16x8")
    assert.has_error(function() F.attention(sn.randn(1, 4, 2, 8), sn.randn(1, 4, 2, 8), nil) end,
      "bad argument #3 'v' to 'seqnn.F.attention' (seqnn.Tensor expected, got nil)")
    assert.has_error(function()
      F.attention(sn.randn(1, 4, 2, 8), sn.randn(1, 4, 2, 8), sn.randn(1, 4, 2, 8), { window = -1 })
    end, "seqnn.F.attention: window must be >= 0 (or nil for none), got -1")
    assert.has_error(function()
      F.attention_varlen(sn.randn(1, 5, 2, 8), sn.randn(1, 5, 2, 8), sn.randn(1, 5, 2, 8),
        sn.tensor({ 0, 3, 4 }, "i64"), sn.tensor({ 0, 3, 5 }, "i64"))
    end, "seqnn.F.attention: cu_seqlens_q ends at 4 but q has 5 tokens (q: 1x5x2x8)")
    assert.has_error(function()
      F.attention_varlen(sn.randn(1, 5, 2, 8), sn.randn(1, 5, 2, 8), sn.randn(1, 5, 2, 8),
        sn.tensor({ 0, 3, 2, 5 }, "i64"), sn.tensor({ 0, 1, 2, 5 }, "i64"))
    end, "seqnn.F.attention: cu_seqlens_q must not decrease, got cu_seqlens_q[2] = 2 after 3")
    local kc, vc = sn.zeros(1, 2, 4, 8), sn.zeros(1, 2, 4, 8)
    assert.has_error(function()
      F.attention_step(sn.randn(1, 1, 2, 8), sn.randn(1, 1, 2, 8), sn.randn(1, 1, 2, 8), kc, vc, 4)
    end, "seqnn.F.attention: pos 4 is outside the cache's 4 positions (k_cache: 1x2x4x8)")
  end)
end)
