-- Tape-based reverse-mode autograd over coarse C kernels.
--
-- A differentiable function runs its C forward, then calls
--   autograd.record(name, inputs, outputs, backward)
-- which links the outputs to one tape node. `backward(g1, ..., gk)` receives one gradient
-- per output (nil for an output that got none) and returns one gradient per input (nil
-- where none is needed). After it has run, the node drops its closure and inputs, so the
-- tensors saved for backward are released at once, not when the collector gets to them.
--
-- Which tensors take part is a weak-keyed set, checked on every arithmetic call: a table
-- lookup is cheaper than reading a tensor field. Its values are plain `true`, never
-- nodes: a weak table whose values reach other keys makes the collector quadratic.
-- A computed tensor keeps its node in the fields `_node` and `_out` (which output of the
-- node it is); a leaf keeps its gradient in `grad`.
local core = require "seqnn.core"

local autograd = {}
local state = { enabled = true } -- read directly by tensor_grad.lua on every call
autograd.state = state
local tracked_set = setmetatable({}, { __mode = "k" })

local is_tensor = core.is_tensor

-- True when t takes part in differentiation (a leaf that requires grad, or a result of one).
local function tracked(t)
  return tracked_set[t] ~= nil
end
autograd.tracked = tracked

function autograd.is_enabled() return state.enabled end

-- The node that computed t, or nil for a leaf or an untracked tensor.
local function node_of(t)
  return tracked_set[t] and t._node or nil
end
autograd.node_of = node_of

function autograd.set_leaf(t, flag)
  tracked_set[t] = flag or nil
end

-- Runs fn(...) with recording off and returns its results; errors propagate.
function autograd.no_grad(fn, ...)
  local was = state.enabled
  state.enabled = false
  local res = table.pack(pcall(fn, ...))
  state.enabled = was
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

-- Records a tape node when recording is on and any input is tracked. `inputs` may hold
-- nils (numbers, options) when it has an `n` field; `outputs` is a tensor or a list.
-- `fresh`: backward returns a new tensor per input that nothing else holds (a kernel's
-- outputs), so a gradient is adopted as it is instead of copied before accumulation.
function autograd.record(name, inputs, outputs, backward, fresh)
  if not state.enabled then return false end
  local n, any = inputs.n or #inputs, false
  for i = 1, n do
    if tracked(inputs[i]) then any = true; break end
  end
  if not any then return false end
  local node = { name = name, inputs = inputs, ninputs = n, backward = backward, fresh = fresh == true }
  if is_tensor(outputs) then
    node.noutputs = 1
    tracked_set[outputs] = true
    outputs._node, outputs._out = node, 1
  else
    node.noutputs = #outputs
    for i, out in ipairs(outputs) do
      tracked_set[out] = true
      out._node, out._out = node, i
    end
  end
  return true
end

local function shape_str(t)
  local s = t:shape()
  return #s == 0 and "scalar" or table.concat(s, "x")
end

-- Nodes reachable from `root`, ordered so that every node comes after all nodes that
-- consume its outputs (reverse topological order), without recursion: graphs of long
-- unrolled loops are deep.
local function order_nodes(root_node)
  local order, seen = {}, {} -- seen: nil unvisited, 1 on stack, 2 done
  local stack = { { root_node, 0 } }
  seen[root_node] = 1
  while #stack > 0 do
    local top = stack[#stack]
    local node, i = top[1], top[2] + 1
    top[2] = i
    if node.inputs == nil then
      error("seqnn.backward: the graph through '" .. node.name ..
        "' was already used by an earlier backward (run the forward again)", 3)
    end
    if i <= node.ninputs then
      local child = node_of(node.inputs[i])
      if child and not seen[child] then
        seen[child] = 1
        stack[#stack + 1] = { child, 0 }
      end
    else
      stack[#stack] = nil
      seen[node] = 2
      order[#order + 1] = node
    end
  end
  return order -- post-order: consumers last; iterate backwards
end

-- A gradient that is zero outside one slice of its input (a narrow's backward): g fills
-- input:narrow(dim, start, len). Accumulation adds it into one buffer per input, so the
-- narrows of one tensor (q|k|v, x|z, dt|B|C) cost one zero-filled gradient, not one each.
local Slice = {}
function autograd.slice_grad(g, dim, start, len)
  return setmetatable({ g = g, dim = dim, start = start, len = len }, Slice)
end

local function is_slice(g) return getmetatable(g) == Slice end

-- A row-sparse gradient: zero outside `rows` (i64 (n), ascending, each once) of a tensor
-- of shape `shape` whose first dim they index; values (n, ...) holds those rows. A backward
-- returns one for a huge table it reads a few rows of (product-key memory values), so the
-- gradient reaching the leaf costs n rows, not the table. Two of them accumulate by
-- concatenation and coalescing (k_rows_coalesce: duplicates summed, in order); one meeting
-- a dense gradient of the same tensor becomes dense. Optimizers (SGD, AdamW) update only
-- the rows; clip_grad_norm and train's allreduce handle it (see there).
local RowSparse = {}
RowSparse.__index = RowSparse
RowSparse.__name = "seqnn.RowSparseGrad"
autograd.RowSparse = RowSparse

function autograd.row_sparse(rows, values, shape)
  return setmetatable({ rows = rows, values = values, shape = shape, is_sparse = true }, RowSparse)
end

local function is_sparse(g) return getmetatable(g) == RowSparse end
autograd.is_sparse = is_sparse

-- The dense tensor of the gradient (a new one).
function RowSparse:to_dense()
  local d = core.zeros(self.shape)
  if self.rows:numel() > 0 then core.k_rows_scatter_add(d, self.rows, self.values) end
  return d
end

-- Scales the values in place (what clipping does); returns self.
function RowSparse:mul_(s)
  self.values:mul_(s)
  return self
end

-- Sparse a + b (same shape): rows joined, duplicates summed.
local function sparse_add(a, b)
  local cat = require("seqnn").cat -- loaded by then: seqnn requires this file first
  local r, v = core.k_rows_coalesce(cat({ a.rows, b.rows }, 1), cat({ a.values, b.values }, 1), a.shape[1])
  return autograd.row_sparse(r, v, a.shape)
end

function RowSparse:__tostring()
  return ("seqnn.RowSparseGrad(%d of %s rows, values %s)"):format(self.rows:numel(), tostring(self.shape[1]),
    table.concat(self.values:shape(), "x"))
end

-- g added into buf, a tensor of the input's shape that this backward owns.
local function add_into(buf, g)
  if is_sparse(g) then
    if g.rows:numel() > 0 then core.k_rows_scatter_add(buf, g.rows, g.values) end
  elseif is_slice(g) then buf:narrow(g.dim, g.start, g.len):add_(g.g) else buf:add_(g) end
end

-- A new buffer of the input's shape holding g.
local function materialize(input, g)
  if is_sparse(g) then return g:to_dense() end
  if not is_slice(g) then return g:is_contiguous() and g:clone() or g:contiguous() end
  local z = core.zeros(input:shape())
  z:narrow(g.dim, g.start, g.len):copy_(g.g)
  return z
end

local function accumulate_leaf(t, g, fresh)
  local have = t.grad
  if is_sparse(g) or is_sparse(have) then -- row-sparse: stays sparse until it meets a dense one
    if have == nil then
      t.grad = fresh and g or autograd.row_sparse(g.rows:clone(), g.values:clone(), g.shape)
    elseif is_sparse(have) and is_sparse(g) then
      t.grad = sparse_add(have, g)
    elseif is_sparse(have) then
      local dense = materialize(t, g)
      add_into(dense, have)
      t.grad = dense
    else
      add_into(have, g)
    end
    return
  end
  if have == nil then
    -- A copy unless fresh: g may be a view shared with other gradients or the upstream one.
    t.grad = (fresh and not is_slice(g) and g:is_contiguous()) and g or materialize(t, g)
  else
    add_into(have, g)
  end
end

local function check_grad(node, i, input, g)
  if is_sparse(g) then
    local a, rows, vals = input:shape(), g.rows, g.values
    local same = #a == #g.shape and is_tensor(rows) and is_tensor(vals) and rows:dim() == 1
      and vals:dim() >= 1 and vals:size(1) == rows:numel() and vals:numel() == rows:numel() * (input:numel() // math.max(a[1] or 1, 1))
    for d = 1, #a do same = same and a[d] == g.shape[d] end
    if not same then
      error(("seqnn.backward: '%s' returned a malformed row-sparse gradient for input %d of shape %s"):format(
        node.name, i, shape_str(input)), 0)
    end
    return
  end
  if is_slice(g) then
    if not is_tensor(g.g) then
      error(("seqnn.backward: '%s' returned a slice gradient of a %s for input %d"):format(node.name, type(g.g), i), 0)
    end
    input = input:narrow(g.dim, g.start, g.len)
    g = g.g
  end
  if not is_tensor(g) then
    error(("seqnn.backward: '%s' returned a %s as the gradient of input %d"):format(
      node.name, type(g), i), 0)
  end
  local a, b = input:shape(), g:shape()
  local same = #a == #b
  for d = 1, #a do same = same and a[d] == b[d] end
  if not same then
    error(("seqnn.backward: '%s' returned a gradient of shape %s for input %d of shape %s"):format(
      node.name, shape_str(g), i, shape_str(input)), 0)
  end
end

-- t:backward([gradient]): accumulates d(t)/d(leaf) into leaf.grad for every tracked leaf.
function autograd.backward(t, gradient)
  if not tracked(t) then
    error("seqnn.backward: the tensor does not require grad (no input of its graph called requires_grad)", 2)
  end
  if gradient == nil then
    if t:numel() ~= 1 then
      error(("seqnn.backward: a gradient is needed for a tensor of %d elements (%s); only scalars default to 1")
        :format(t:numel(), shape_str(t)), 2)
    end
    gradient = core.ones(t:shape())
  elseif not is_tensor(gradient) then
    error("bad argument #1 'gradient' to 'seqnn.backward' (seqnn.Tensor expected, got " .. type(gradient) .. ")", 2)
  end
  local root = node_of(t)
  if root == nil then -- a leaf: its gradient is the given one
    accumulate_leaf(t, gradient:expand(t:shape()))
    return
  end
  local grads = { [root] = { [t._out] = gradient } }
  -- Slot tensors this backward made itself (sums, slice buffers): only those are added
  -- into in place; a gradient a backward returned may be shared with another input.
  local owned = {}
  local order = order_nodes(root)
  local was = state.enabled
  state.enabled = false -- gradients are not differentiated again
  local ok, err = pcall(function()
    for k = #order, 1, -1 do
      local node = order[k]
      local outs = grads[node]
      grads[node] = nil
      local fn, inputs = node.backward, node.inputs
      node.backward, node.inputs = nil, nil -- releases what the closure saved
      if outs then
        for j = 1, node.noutputs do
          if outs[j] ~= nil then owned[outs[j]] = nil end -- handed to fn: no longer ours to change
        end
        local gin = table.pack(fn(table.unpack(outs, 1, node.noutputs)))
        for i = 1, node.ninputs do
          local input, g = inputs[i], gin[i]
          if g ~= nil and tracked(input) then
            check_grad(node, i, input, g)
            local child = node_of(input)
            if child then
              local slot = grads[child]
              if not slot then slot = {}; grads[child] = slot end
              local j = input._out
              local have = slot[j]
              if have == nil then
                if is_slice(g) or is_sparse(g) then
                  slot[j] = materialize(input, g)
                  owned[slot[j]] = true
                else
                  slot[j] = g
                  owned[g] = node.fresh or nil
                end
              elseif owned[have] then
                add_into(have, g)
              else
                local sum = materialize(input, have)
                add_into(sum, g)
                slot[j], owned[sum] = sum, true
              end
            else
              accumulate_leaf(input, g, node.fresh)
            end
          end
        end
      end
    end
  end)
  state.enabled = was
  if not ok then error(err, 0) end
end

-- Sums g over the dims that broadcasting expanded, giving it `shape`.
function autograd.unbroadcast(g, shape)
  local gs = g:shape()
  local lead = #gs - #shape
  if lead == 0 then
    local same = true
    for d = 1, #gs do same = same and gs[d] == shape[d] end
    if same then return g end
  end
  for _ = 1, lead do g = g:sum(1) end
  for d = 1, #shape do
    if shape[d] == 1 and g:size(d) ~= 1 then g = g:sum(d, true) end
  end
  return g:reshape(shape)
end

-- gradcheck(fn, inputs [, opts]): compares the gradients of sum(fn(inputs...) * G), G a
-- fixed random tensor, with central finite differences for every input that requires
-- grad. opts: eps (1e-3), atol (1e-3), rtol (1e-2), max_checks per input (200 elements,
-- spread over the tensor). Returns true, or raises an error naming the worst element.
function autograd.gradcheck(fn, inputs, opts)
  opts = opts or {}
  local eps, atol, rtol = opts.eps or 1e-3, opts.atol or 1e-3, opts.rtol or 1e-2
  local max_checks = opts.max_checks or 200
  local rng = core.get_rng_state()

  local function outputs_of(...)
    local r = table.pack(fn(...))
    local list = {}
    for i = 1, r.n do
      if is_tensor(r[i]) then list[#list + 1] = r[i] end
    end
    return list
  end
  -- Every evaluation draws the same random numbers, so functions like dropout can be checked.
  local function run()
    core.manual_seed(4321)
    return outputs_of(table.unpack(inputs))
  end
  local outs = run()
  -- Upstream gradients, one per output, from a fixed seed.
  core.manual_seed(1234)
  local G, Gt = {}, {}
  for i, o in ipairs(outs) do
    G[i] = core.randn(o:shape())
    Gt[i] = G[i]:reshape(-1):totable()
  end

  local function loss_value()
    local value = 0
    autograd.no_grad(function()
      for i, o in ipairs(run()) do
        local ov = o:float():reshape(-1):totable()
        for j = 1, #ov do value = value + ov[j] * Gt[i][j] end
      end
    end)
    return value
  end

  -- Analytic gradients, keeping whatever .grad the inputs had.
  local saved = {}
  for i, x in ipairs(inputs) do
    if tracked(x) then saved[i] = x.grad; x.grad = nil end
  end
  -- L = sum_i sum(out_i * G_i), through the differentiable tensor methods.
  local L
  for i, o in ipairs(outs) do
    local term = (o:float() * G[i]):sum()
    L = L and L + term or term
  end
  if L and tracked(L) then autograd.backward(L) end
  local analytic = {}
  for i, x in ipairs(inputs) do
    if tracked(x) then
      local xg = is_sparse(x.grad) and x.grad:to_dense() or x.grad
      analytic[i] = xg and xg:reshape(-1):totable() or false
      x.grad = saved[i]
    end
  end

  for i, x in ipairs(inputs) do
    if tracked(x) then
      if not x:is_contiguous() then
        error(("seqnn.autograd.gradcheck: input %d must be contiguous"):format(i), 2)
      end
      local flat = x:view(-1)
      local n = flat:numel()
      local step = math.max(1, n // max_checks)
      for j = 1, n, step do
        local v = flat[j]
        flat[j] = v + eps
        local lp = loss_value()
        flat[j] = v - eps
        local lm = loss_value()
        flat[j] = v
        local numeric = (lp - lm) / (2 * eps)
        local got = analytic[i] and analytic[i][j] or 0
        if not (math.abs(got - numeric) <= atol + rtol * math.abs(numeric)) then
          core.set_rng_state(rng)
          error(("seqnn.autograd.gradcheck: input %d (%s), element %d: analytic %.6g, numeric %.6g")
            :format(i, shape_str(x), j, got, numeric), 2)
        end
      end
    end
  end
  core.set_rng_state(rng)
  return true
end

return autograd
