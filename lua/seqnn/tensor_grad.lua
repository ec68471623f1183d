-- Differentiable tensor methods: the C arithmetic, math, reductions, matmul and views,
-- each recording one tape node when an input requires grad. When none does (or under
-- sn.no_grad) they cost one extra Lua call over the C function.
local core = require "seqnn.core"
local autograd = require "seqnn.autograd"

local record, tracked, unbroadcast = autograd.record, autograd.tracked, autograd.unbroadcast
local state = autograd.state

return function(sn)
  local T, mt = sn.Tensor, core.metatable

  -- The same function serves as t:name(...), sn.name(t, ...) and, given, a metamethod.
  local function install(name, fn, metamethod)
    T[name], sn[name] = fn, fn
    if metamethod then mt[metamethod] = fn end
  end

  -- ---- arithmetic -------------------------------------------------------------------
  -- a op b, either side possibly a number. grad_a(g, a, b, y) and grad_b(g, a, b, y) give
  -- the gradients before the broadcast dims are summed away; each runs only for an operand
  -- that takes part, so x * constant_tensor does no work for the constant.
  local function binary(name, metamethod, grad_a, grad_b)
    local c = core[name]
    install(name, function(a, b)
      local y = c(a, b)
      if state.enabled and (tracked(a) or tracked(b)) then
        record(name, { a, b, n = 2 }, y, function(g)
          return tracked(a) and unbroadcast(grad_a(g, a, b, y), a:shape()) or nil,
                 tracked(b) and unbroadcast(grad_b(g, a, b, y), b:shape()) or nil
        end)
      end
      return y
    end, metamethod)
  end
  local function pass(g) return g end
  binary("add", "__add", pass, pass)
  binary("sub", "__sub", pass, function(g) return -g end)
  binary("mul", "__mul", function(g, _, b) return g * b end, function(g, a) return g * a end)
  binary("div", "__div", function(g, _, b) return g / b end, function(g, _, b, y) return -(g * y) / b end)
  binary("pow", "__pow", function(g, a, b) return g * b * core.pow(a, b - 1) end,
    function(g, a, _, y) return g * y * (type(a) == "number" and math.log(a) or a:log()) end)

  local cneg = core.neg
  local function neg(a)
    local y = cneg(a)
    if state.enabled and tracked(a) then
      record("neg", { a }, y, function(g) return -g end)
    end
    return y
  end
  install("neg", neg, "__unm")

  -- ---- unary math ---------------------------------------------------------------------
  -- derivative(x, y, g) -> dx, in terms of the input and the output.
  local function unary(name, derivative)
    local c = core[name]
    install(name, function(a)
      local y = c(a)
      if state.enabled and tracked(a) then
        record(name, { a }, y, function(g) return derivative(a, y, g) end)
      end
      return y
    end)
  end
  unary("exp", function(_, y, g) return g * y end)
  unary("log", function(x, _, g) return g / x end)
  unary("sqrt", function(_, y, g) return g * 0.5 / y end)
  unary("rsqrt", function(_, y, g) return g * -0.5 * y * y * y end)
  -- abs'(x) = sign(x), 0 at 0: x / |x| with the 0/0 case sent to 0 by the max.
  unary("abs", function(x, y, g) return g * x / y:maximum(1e-38) end)
  -- Fused C backward: one pass instead of several temporaries.
  unary("tanh", function(_, y, g) return core.k_tanh_bwd(g, y) end)
  unary("sigmoid", function(_, y, g) return core.k_sigmoid_bwd(g, y) end)
  unary("gelu", function(x, _, g) return core.k_gelu_bwd(g, x) end)
  unary("silu", function(x, _, g) return core.k_silu_bwd(g, x) end)
  unary("softplus", function(x, _, g) return core.k_softplus_bwd(g, x) end)

  -- ---- reductions -----------------------------------------------------------------------
  -- The gradient of a reduction, broadcast back over the reduced dim (or everything).
  local function spread(g, x, dim, keepdim)
    if dim ~= nil and not keepdim then g = g:unsqueeze(dim) end
    return g:expand(x:shape())
  end

  local csum, cmean, clse = core.sum, core.mean, core.logsumexp
  install("sum", function(a, dim, keepdim)
    local y = csum(a, dim, keepdim)
    if state.enabled and tracked(a) then
      record("sum", { a }, y, function(g) return spread(g, a, dim, keepdim) end)
    end
    return y
  end)

  install("mean", function(a, dim, keepdim)
    local y = cmean(a, dim, keepdim)
    if state.enabled and tracked(a) then
      local n = dim and a:size(dim) or a:numel()
      record("mean", { a }, y, function(g) return spread(g / n, a, dim, keepdim) end)
    end
    return y
  end)

  install("logsumexp", function(a, dim, keepdim)
    local y = clse(a, dim, keepdim)
    if state.enabled and tracked(a) then
      record("logsumexp", { a }, y, function(g)
        return spread(g, a, dim, keepdim) * (a - spread(y, a, dim, keepdim)):exp()
      end)
    end
    return y
  end)

  -- max/min over everything route the gradient to the first extreme element.
  for _, name in ipairs({ "max", "min" }) do
    local c, carg = core[name], core["arg" .. name]
    install(name, function(a, dim, keepdim)
      if dim ~= nil and state.enabled and tracked(a) then
        error(("seqnn.%s: the gradient of %s along a dim is not implemented; use %s() over all elements or sn.no_grad")
          :format(name, name, name), 2)
      end
      local y, i = c(a, dim, keepdim)
      if dim == nil and state.enabled and tracked(a) then
        local at = carg(a):item() + 1
        record(name, { a }, y, function(g)
          local z = core.zeros(a:numel())
          z[at] = g:item()
          return z:view(a:shape())
        end)
      end
      return y, i
    end)
  end

  -- ---- matmul -----------------------------------------------------------------------------
  local cmatmul = core.matmul
  install("matmul", function(a, b)
    local y = cmatmul(a, b)
    if state.enabled and (tracked(a) or tracked(b)) then
      record("matmul", { a, b }, y, function(g)
        -- Restore the vector dims matmul dropped, then dA = dY B^T and dB = A^T dY, summed
        -- over any batch dims that broadcast.
        local a2 = a:dim() == 1 and a:unsqueeze(1) or a
        local b2 = b:dim() == 1 and b:unsqueeze(2) or b
        local g2 = g
        if a:dim() == 1 and b:dim() == 1 then
          g2 = g:reshape(1, 1)
        else
          if a:dim() == 1 then g2 = g2:unsqueeze(g2:dim()) end
          if b:dim() == 1 then g2 = g2:unsqueeze(g2:dim() + 1) end
        end
        local ga = tracked(a) and unbroadcast(cmatmul(g2, b2:transpose(-1, -2)), a2:shape()):reshape(a:shape()) or nil
        local gb
        if tracked(b) and b2:dim() == 2 and a2:dim() > 2 then
          -- A shared weight (x @ W, as in linear): one GEMM over all stacked rows instead
          -- of a GEMM per batch entry followed by a sum.
          local K, N = b2:size(1), b2:size(2)
          gb = cmatmul(a2:reshape(-1, K):t(), g2:reshape(-1, N)):reshape(b:shape())
        elseif tracked(b) then
          gb = unbroadcast(cmatmul(a2:transpose(-1, -2), g2), b2:shape()):reshape(b:shape())
        end
        return ga, gb
      end)
    end
    return y
  end)

  -- ---- views and copies ------------------------------------------------------------------
  -- grad(g, x, ...) gives dx from dy and the call's arguments.
  local function view_op(name, grad)
    local c = T[name]
    T[name] = function(a, ...)
      local y = c(a, ...)
      if y ~= a and state.enabled and tracked(a) then
        local args = table.pack(...)
        record(name, { a }, y, function(g) return grad(g, a, table.unpack(args, 1, args.n)) end)
      end
      return y
    end
  end
  local function back_to_shape(g, x) return g:reshape(x:shape()) end
  view_op("view", back_to_shape)
  view_op("reshape", back_to_shape)
  view_op("unsqueeze", back_to_shape)
  view_op("squeeze", back_to_shape)
  view_op("contiguous", function(g) return g end)
  view_op("clone", function(g) return g end)
  view_op("transpose", function(g, x, d0, d1)
    if d0 == nil then return g:t() end
    return g:transpose(d0, d1)
  end)
  view_op("t", function(g) return g:t() end)
  view_op("permute", function(g, x, ...)
    local order = select("#", ...) == 1 and type(...) == "table" and (...) or { ... }
    local inverse = {}
    for i, d in ipairs(order) do
      if d < 0 then d = d + #order + 1 end
      inverse[d] = i
    end
    return g:permute(table.unpack(inverse))
  end)
  view_op("expand", function(g, x) return unbroadcast(g, x:shape()) end)
  view_op("narrow", function(g, _, dim, start, len) return autograd.slice_grad(g, dim, start, len) end)
  view_op("select", function(g, x, dim, index)
    local z = core.zeros(x:shape())
    z:select(dim, index):copy_(g)
    return z
  end)
  -- Rows of g summed into the rows they were read from: with dim moved to the front and the
  -- other dims flattened, that is the embedding backward (one C pass, repeated ids summed).
  view_op("index_select", function(g, x, dim, index)
    if dim < 0 then dim = dim + x:dim() + 1 end
    local front = dim == 1 and g:contiguous() or g:transpose(1, dim):contiguous()
    local shape = front:shape()
    local rows = core.k_embedding_bwd(front:view(shape[1], -1), index, x:size(dim))
    shape[1] = x:size(dim)
    rows = rows:view(shape)
    return dim == 1 and rows or rows:transpose(1, dim)
  end)

  -- cat(tensors, dim): a new tensor of the tensors joined along dim (1-based, negative
  -- from the end); they agree on every other size. Each one's gradient is its slice of g.
  function sn.cat(list, dim)
    if type(list) ~= "table" or #list == 0 then
      error(("seqnn.cat: expected a non-empty list of tensors, got %s"):format(type(list)), 2)
    end
    for i, t in ipairs(list) do
      if not core.is_tensor(t) then
        error(("seqnn.cat: element %d is not a seqnn.Tensor (got %s)"):format(i, type(t)), 2)
      end
    end
    local first = list[1]
    local nd = first:dim()
    if math.type(dim) ~= "integer" or dim == 0 or dim > nd or dim < -nd then
      error(("seqnn.cat: dim must be an integer in [-%d, %d] other than 0, got %s"):format(nd, nd, tostring(dim)), 2)
    end
    if dim < 0 then dim = dim + nd + 1 end
    local shape, total = first:shape(), 0
    for i, t in ipairs(list) do
      local ts = t:shape()
      local same = #ts == nd and t:dtype() == first:dtype()
      for d = 1, nd do same = same and (d == dim or ts[d] == shape[d]) end
      if not same then
        error(("seqnn.cat: tensor %d is %s %s but tensor 1 is %s %s (they may differ only in dim %d)"):format(
          i, table.concat(ts, "x"), t:dtype(), table.concat(shape, "x"), first:dtype(), dim), 2)
      end
      total = total + ts[dim]
    end
    shape[dim] = total
    local y = core.empty(shape, first:dtype())
    local at, starts, grad = 1, {}, false
    for i, t in ipairs(list) do
      starts[i] = at
      if t:size(dim) > 0 then y:narrow(dim, at, t:size(dim)):copy_(t) end
      at = at + t:size(dim)
      grad = grad or tracked(t)
    end
    if state.enabled and grad then
      local inputs = { n = #list }
      for i, t in ipairs(list) do inputs[i] = t end
      record("cat", inputs, y, function(g)
        local out = {}
        for i, t in ipairs(inputs) do
          out[i] = tracked(t) and t:size(dim) > 0 and g:narrow(dim, starts[i], t:size(dim)) or nil
        end
        return table.unpack(out, 1, inputs.n)
      end)
    end
    return y
  end

  -- In-place updates of a tensor the tape may have saved would corrupt its gradients.
  for _, name in ipairs({ "add_", "sub_", "mul_", "div_", "copy_", "fill_", "zero_" }) do
    local c = T[name]
    T[name] = function(a, ...)
      if state.enabled and tracked(a) then
        error(("seqnn.%s: in-place update of a tensor that requires grad; do it under sn.no_grad, or out of place")
          :format(name), 2)
      end
      return c(a, ...)
    end
  end

  -- ---- autograd on tensors ------------------------------------------------------------------
  -- t:requires_grad([flag = true]): marks a leaf (in place) and returns it.
  function T:requires_grad(flag)
    if flag == nil then flag = true end
    if flag and self:dtype() ~= "f32" then
      error(("seqnn.requires_grad: only f32 tensors can require grad, this one is %s"):format(self:dtype()), 2)
    end
    if autograd.node_of(self) then
      if flag then return self end -- already part of a graph
      error("seqnn.requires_grad: a computed tensor cannot stop requiring grad; use detach()", 2)
    end
    autograd.set_leaf(self, flag)
    return self
  end

  function T:backward(gradient) return autograd.backward(self, gradient) end

  -- A view of the same memory that is not part of any graph.
  function T:detach() return self:alias() end

  function T:is_leaf() return autograd.node_of(self) == nil end

  sn.no_grad = autograd.no_grad
  sn.autograd = autograd
end
