-- The tensor API of ARCHITECTURE.md ("Tensors"): creation, queries, views, indexing,
-- arithmetic, reductions, matmul and printing, checked against values computed in Lua.
local sn = require "seqnn"

-- Reference values from plain Lua tables, so the checks do not trust the code under test.
local function approx(a, b, tol)
  tol = tol or 1e-5
  if type(a) == "table" then
    assert.are.equal(#b, #a)
    for i = 1, #a do approx(a[i], b[i], tol) end
    return
  end
  if not (math.abs(a - b) <= tol * (1 + math.abs(b))) then
    error(("expected %.9g, got %.9g"):format(b, a), 2)
  end
end

describe("creation", function()
  it("makes zeros, ones, full and empty tensors of a shape given as varargs or a table", function()
    local z = sn.zeros(2, 3)
    assert.are.same({ 2, 3 }, z:shape())
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, z:totable())
    assert.are.same({ { 1, 1 } }, sn.ones({ 1, 2 }):totable())
    assert.are.same({ 7, 7 }, sn.full({ 2 }, 7):totable())
    assert.are.equal("i64", sn.zeros(3, "i64"):dtype())
    assert.are.equal("f32", sn.ones(3):dtype())
    assert.are.equal(0, sn.zeros():dim())
  end)

  it("builds tensors from nested tables and numbers", function()
    local t = sn.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    assert.are.same({ 2, 3 }, t:shape())
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t:totable())
    local ids = sn.tensor({ 3, 1, 4 }, "i64")
    assert.are.equal("i64", ids:dtype())
    assert.are.equal(4, ids[3])
    local s = sn.tensor(2.5)
    assert.are.equal(0, s:dim())
    assert.are.equal(2.5, s:item())
    assert.are.same({ 0 }, sn.tensor({}):shape())
  end)

  it("counts with arange like PyTorch (stop excluded)", function()
    assert.are.same({ 0, 1, 2, 3 }, sn.arange(4):totable())
    assert.are.same({ 2, 4, 6 }, sn.arange(2, 7, 2):totable())
    assert.are.same({ 5, 4, 3 }, sn.arange(5, 2, -1, "i64"):totable())
    assert.are.equal(0, sn.arange(0):numel())
  end)

  it("draws the same random numbers for the same seed, whatever the thread count", function()
    local threads = sn.get_num_threads()
    sn.manual_seed(42)
    local a = sn.randn(100003):totable()
    sn.set_num_threads(1)
    sn.manual_seed(42)
    local b = sn.randn(100003):totable()
    sn.set_num_threads(threads)
    assert.are.same(a, b)
    sn.manual_seed(43)
    assert.are_not.same(a[1], sn.randn(1)[1])
  end)

  it("draws normal and uniform numbers with the right moments", function()
    sn.manual_seed(1)
    local n = sn.randn(200000)
    approx(n:mean():item(), 0, 0.01)
    approx((n * n):mean():item(), 1, 0.02)
    local u = sn.rand(200000)
    assert.is_true(u:min():item() >= 0 and u:max():item() < 1)
    approx(u:mean():item(), 0.5, 0.01)
    local r = sn.randint(3, 7, 1000)
    assert.are.equal("i64", r:dtype())
    assert.is_true(r:min():item() >= 3 and r:max():item() <= 6)
  end)

  it("continues a random stream exactly from a saved state", function()
    sn.manual_seed(7)
    sn.randn(10)
    local state = sn.get_rng_state()
    local a = sn.randn(5):totable()
    sn.set_rng_state(state)
    assert.are.same(a, sn.randn(5):totable())
  end)
end)

describe("queries", function()
  it("reports shape, size, dim, numel, dtype and item", function()
    local t = sn.zeros(2, 3, 4)
    assert.are.same({ 2, 3, 4 }, t:shape())
    assert.are.equal(3, t:size(2))
    assert.are.equal(4, t:size(-1))
    assert.are.equal(3, t:dim())
    assert.are.equal(24, t:numel())
    assert.are.equal("f32", t:dtype())
    assert.are.equal(2, #t)
    assert.are.equal(5, sn.full({ 1, 1 }, 5):item())
  end)
end)

describe("views", function()
  local t
  before_each(function() t = sn.arange(24):view(2, 3, 4) end)

  it("share memory with the original", function()
    local v = t:view(6, 4)
    v[1][1] = 100
    assert.are.equal(100, t[1][1][1])
    local tr = t:transpose(1, 3)
    assert.are.same({ 4, 3, 2 }, tr:shape())
    assert.is_false(tr:is_contiguous())
    tr[1][1][2] = -1
    assert.are.equal(-1, t[2][1][1])
  end)

  it("infer one -1 size", function()
    assert.are.same({ 4, 6 }, t:view(4, -1):shape())
    assert.are.same({ 24 }, t:view({ -1 }):shape())
  end)

  it("permute, narrow, select, expand, squeeze and unsqueeze", function()
    local p = t:permute(3, 1, 2)
    assert.are.same({ 4, 2, 3 }, p:shape())
    assert.are.equal(t[2][3][4], p[4][2][3])
    local n = t:narrow(3, 2, 2)
    assert.are.same({ 2, 3, 2 }, n:shape())
    assert.are.equal(t[1][2][3], n[1][2][2])
    local s = t:select(2, 3)
    assert.are.same({ 2, 4 }, s:shape())
    assert.are.equal(t[2][3][1], s[2][1])
    local e = sn.tensor({ { 1 }, { 2 } }):expand(2, 3)
    assert.are.same({ { 1, 1, 1 }, { 2, 2, 2 } }, e:totable())
    assert.are.same({ 2, 1, 3, 4 }, t:unsqueeze(2):shape())
    assert.are.same({ 2, 3, 4, 1 }, t:unsqueeze(-1):shape())
    assert.are.same({ 2, 4 }, sn.zeros(2, 1, 4):squeeze():shape())
  end)

  it("reshape copies only when the strides require it", function()
    local tr = t:transpose(2, 3) -- 2x4x3, not viewable as 24
    assert.has_error(function() tr:view(24) end)
    local r = tr:reshape(24)
    assert.are.same({ 24 }, r:shape())
    assert.are.equal(t[1][2][1], r[2])
    r[2] = 999 -- a copy: t unchanged
    assert.are_not.equal(999, t[1][2][1])
    local v = t:reshape(6, 4)
    v[1][2] = 999 -- a view: t changed
    assert.are.equal(999, t[1][1][2])
  end)

  it("contiguous and clone copy non-contiguous data in order", function()
    local c = t:transpose(1, 2):contiguous()
    assert.is_true(c:is_contiguous())
    assert.are.same(t:transpose(1, 2):totable(), c:totable())
    local k = t:clone()
    k[1][1][1] = -5
    assert.are.equal(0, t[1][1][1])
  end)

  it("converts dtypes with float() and long()", function()
    local f = sn.tensor({ 1.7, -2.7 })
    assert.are.same({ 1, -2 }, f:long():totable())
    assert.are.equal("i64", f:long():dtype())
    assert.are.equal("f32", f:long():float():dtype())
    assert.are.equal(f, f:float()) -- already f32: the same tensor
  end)

  it("index_select gathers rows by 0-based ids", function()
    local m = sn.arange(12):view(4, 3)
    local r = m:index_select(1, sn.tensor({ 3, 0, 3 }, "i64"))
    assert.are.same({ { 9, 10, 11 }, { 0, 1, 2 }, { 9, 10, 11 } }, r:totable())
  end)
end)

describe("indexing", function()
  it("reads numbers from 1-dim tensors and views from others", function()
    local m = sn.tensor({ { 1, 2 }, { 3, 4 } })
    assert.are.equal(2, m[1][2])
    assert.are.equal(4, m[-1][-1])
    assert.are.same({ 3, 4 }, m[2]:totable())
  end)

  it("writes numbers and tensors into slices", function()
    local m = sn.zeros(2, 3)
    m[1] = 5
    m[2] = sn.tensor({ 1, 2, 3 })
    m[2][3] = 9
    assert.are.same({ { 5, 5, 5 }, { 1, 2, 9 } }, m:totable())
  end)

  it("keeps Lua fields on tensors", function()
    local t = sn.zeros(1)
    t.note = "hello"
    assert.are.equal("hello", t.note)
    assert.is_nil(sn.zeros(1).note)
  end)
end)

describe("arithmetic", function()
  local a = sn.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
  local b = sn.tensor({ 10, 20, 30 })

  it("broadcasts tensors and numbers in every metamethod", function()
    assert.are.same({ { 11, 22, 33 }, { 14, 25, 36 } }, (a + b):totable())
    assert.are.same({ { -9, -18, -27 }, { -6, -15, -24 } }, (a - b):totable())
    assert.are.same({ { 2, 4, 6 }, { 8, 10, 12 } }, (a * 2):totable())
    approx((1 / a):totable()[2], { 0.25, 0.2, 1 / 6 })
    approx((a / b):totable()[2], { 0.4, 0.25, 0.2 })
    assert.are.same({ { 1, 4, 9 }, { 16, 25, 36 } }, (a ^ 2):totable())
    assert.are.same({ -1, -2, -3 }, (-a)[1]:totable())
    assert.are.same({ { 9, 8, 7 }, { 6, 5, 4 } }, (10 - a):totable())
    local col = sn.tensor({ { 1 }, { 2 } })
    assert.are.same({ { 11, 21, 31 }, { 12, 22, 32 } }, (col + b):totable())
  end)

  it("keeps integers integral and promotes mixed operations to f32", function()
    local i = sn.tensor({ 1, 2 }, "i64")
    assert.are.equal("i64", (i + i):dtype())
    assert.are.equal("i64", (i * 3):dtype())
    assert.are.equal("f32", (i * 1.5):dtype())
    assert.are.equal("f32", (i / i):dtype())
    assert.are.equal("f32", (i + sn.ones(2)):dtype())
  end)

  it("updates in place with add_, sub_, mul_ and div_", function()
    local t = sn.ones(2, 2)
    local r = t:add_(sn.tensor({ 1, 2 })):mul_(2)
    assert.are.equal(t, r)
    assert.are.same({ { 4, 6 }, { 4, 6 } }, t:totable())
    assert.has_error(function() sn.ones(2, "i64"):div_(2) end)
  end)

  it("computes unary math like the Lua math library", function()
    local x = sn.tensor({ -2, -0.5, 0, 0.5, 2 })
    local ref = {
      exp = math.exp, tanh = function(v) return (math.exp(2 * v) - 1) / (math.exp(2 * v) + 1) end,
      sigmoid = function(v) return 1 / (1 + math.exp(-v)) end,
      silu = function(v) return v / (1 + math.exp(-v)) end,
      softplus = function(v) return math.log(1 + math.exp(v)) end,
      abs = math.abs, neg = function(v) return -v end,
    }
    for name, f in pairs(ref) do
      local got = x[name](x):totable()
      for i, v in ipairs(x:totable()) do approx(got[i], f(v), 1e-5) end
    end
    local p = sn.tensor({ 0.25, 1, 4 })
    approx(p:sqrt():totable(), { 0.5, 1, 2 })
    approx(p:rsqrt():totable(), { 2, 1, 0.5 })
    approx(p:log():totable(), { math.log(0.25), 0, math.log(4) })
    -- gelu(1) = 0.5 * (1 + erf(1/sqrt 2)) = 0.841344746
    approx(sn.tensor({ 1 }):gelu()[1], 0.841344746, 1e-5)
  end)
end)

describe("reductions", function()
  local m = sn.tensor({ { 1, 5, 3 }, { 4, 2, 6 } })

  it("reduce everything to a 0-dim tensor", function()
    assert.are.equal(0, m:sum():dim())
    assert.are.equal(21, m:sum():item())
    assert.are.equal(3.5, m:mean():item())
    assert.are.equal(6, m:max():item())
    assert.are.equal(1, m:min():item())
    assert.are.equal(5, m:argmax():item()) -- 0-based flat index
    approx(m:logsumexp():item(), math.log(math.exp(1) + math.exp(5) + math.exp(3) + math.exp(4) + math.exp(2) + math.exp(6)))
  end)

  it("reduce along a dim, dropping it unless keepdim", function()
    assert.are.same({ 5, 7, 9 }, m:sum(1):totable())
    assert.are.same({ { 9 }, { 12 } }, m:sum(2, true):totable())
    assert.are.same({ 3, 4 }, m:mean(2):totable())
    local v, i = m:max(2)
    assert.are.same({ 5, 6 }, v:totable())
    assert.are.same({ 1, 2 }, i:totable()) -- 0-based, like token ids
    local mn, mi = m:min(1)
    assert.are.same({ 1, 2, 3 }, mn:totable())
    assert.are.same({ 0, 1, 0 }, mi:totable())
    assert.are.same({ 1, 2 }, m:argmax(2):totable())
  end)

  it("reduce non-contiguous views", function()
    assert.are.same({ 9, 12 }, m:t():sum(1):totable())
    assert.are.same({ 5, 7, 9 }, m:t():sum(2):totable())
  end)
end)

describe("matmul", function()
  it("multiplies matrices, vectors and batches", function()
    local a = sn.tensor({ { 1, 2 }, { 3, 4 }, { 5, 6 } })
    local b = sn.tensor({ { 1, 0, 2 }, { 0, 1, 3 } })
    assert.are.same({ { 1, 2, 8 }, { 3, 4, 18 }, { 5, 6, 28 } }, sn.matmul(a, b):totable())
    assert.are.same(sn.matmul(a, b):t():totable(), sn.matmul(b:t(), a:t()):totable())
    assert.are.same({ 5, 11, 17 }, sn.matmul(a, sn.tensor({ 1, 2 })):totable())
    assert.are.same({ 22, 28 }, sn.matmul(sn.tensor({ 1, 2, 3 }), a):totable())
    local batch = sn.matmul(sn.ones(4, 3, 2), b)
    assert.are.same({ 4, 3, 3 }, batch:shape())
    assert.are.same({ 1, 1, 5 }, batch[4][3]:totable())
  end)

  it("uses transposed views without copying and agrees with a Lua loop", function()
    sn.manual_seed(3)
    local a, b = sn.randn(7, 5), sn.randn(9, 5)
    local c = sn.matmul(a, b:t())
    local at, bt = a:totable(), b:totable()
    for i = 1, 7 do
      for j = 1, 9 do
        local s = 0
        for k = 1, 5 do s = s + at[i][k] * bt[j][k] end
        approx(c[i][j], s, 1e-5)
      end
    end
  end)
end)

describe("allclose", function()
  it("compares with tolerances and rejects NaN", function()
    assert.is_true(sn.allclose(sn.ones(3), sn.ones(3) + 1e-7))
    assert.is_false(sn.allclose(sn.ones(3), sn.ones(3) + 1e-3))
    assert.is_true(sn.allclose(sn.ones(3), sn.ones(3) + 1e-3, 1e-2))
    assert.is_false(sn.allclose(sn.tensor({ 0 / 0 }), sn.tensor({ 0 / 0 })))
  end)
end)

describe("tostring", function()
  it("prints values, shape and dtype like Torch7", function()
    local s = tostring(sn.tensor({ { 1, 2 }, { 3, 4 } }))
    assert.are.equal("1.0000 2.0000\n3.0000 4.0000\n[seqnn.Tensor of size 2x2 (f32)]", s)
    assert.are.equal("-1.5000\n 2.0000\n[seqnn.Tensor of size 2 (f32)]", tostring(sn.tensor({ -1.5, 2 })))
    assert.are.equal("1\n2\n[seqnn.Tensor of size 2 (i64)]", tostring(sn.tensor({ 1, 2 }, "i64")))
    assert.truthy(tostring(sn.zeros(2, 2, 2)):find("(2,.,.) = ", 1, true))
    assert.truthy(tostring(sn.tensor(1.5)):find("1.5000\n[seqnn.Tensor of size scalar (f32)]", 1, true))
  end)

  it("elides big tensors", function()
    local s = tostring(sn.zeros(1000, 1000))
    assert.is_true(#s < 1000)
    assert.truthy(s:find("...", 1, true))
    assert.truthy(s:find("1000x1000", 1, true))
  end)
end)

describe("free", function()
  it("releases memory at once and refuses later use", function()
    local t = sn.zeros(1024, 1024)
    local before = sn.memory().live
    t:free()
    assert.are.equal(before - 4 * 1024 * 1024, sn.memory().live)
    assert.has_error(function() t:sum() end, "seqnn.sum: argument 'self': tensor was freed")
    local after_scope
    do
      local scoped <close> = sn.zeros(1024, 1024)
      after_scope = sn.memory().live - 4 * 1024 * 1024
    end
    assert.are.equal(after_scope, sn.memory().live)
  end)
end)
