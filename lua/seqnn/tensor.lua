-- Tensor methods written in Lua: printing like Torch7, and small conveniences over the C
-- methods. Everything hot stays in C (csrc/lua/).
local SUMMARY_AT = 1000 -- elements beyond which printing elides the middle
local EDGE = 3          -- rows/columns shown at each edge when eliding

local function shape_string(t)
  local dims = t:shape()
  if #dims == 0 then return "scalar" end
  return table.concat(dims, "x")
end

-- One number format for the whole tensor, so columns line up (Torch7 style).
local function number_format(values, is_int)
  if is_int then
    local width = 1
    for _, v in ipairs(values) do width = math.max(width, #string.format("%d", v)) end
    return function(v) return string.format("%" .. width .. "d", v) end
  end
  local maxabs, minabs, finite = 0, math.huge, false
  for _, v in ipairs(values) do
    if v == v and v ~= math.huge and v ~= -math.huge then
      finite = true
      local a = math.abs(v)
      maxabs = math.max(maxabs, a)
      if a > 0 then minabs = math.min(minabs, a) end
    end
  end
  local fmt
  if not finite then
    fmt = "%g"
  elseif maxabs >= 1e5 or (minabs < 1e-4 and minabs ~= math.huge) then
    fmt = "%.4e"
  else
    fmt = "%.4f"
  end
  local width = 1
  local function raw(v)
    if v ~= v then return "nan" end
    if v == math.huge then return "inf" end
    if v == -math.huge then return "-inf" end
    return string.format(fmt, v)
  end
  for _, v in ipairs(values) do width = math.max(width, #raw(v)) end
  return function(v) return string.format("%" .. width .. "s", raw(v)) end
end

-- Indices to show along a dim of size n: all of them, or the edges with a gap (0 marks "...").
local function shown(n, summarize)
  local idx = {}
  if summarize and n > 2 * EDGE then
    for i = 1, EDGE do idx[#idx + 1] = i end
    idx[#idx + 1] = 0
    for i = n - EDGE + 1, n do idx[#idx + 1] = i end
  else
    for i = 1, n do idx[#idx + 1] = i end
  end
  return idx
end

-- Collects the values that will be printed (for the common format).
local function gather(t, summarize, out)
  if t:dim() == 1 then
    for _, i in ipairs(shown(t:size(1), summarize)) do
      if i > 0 then out[#out + 1] = t[i] end
    end
  else
    for _, i in ipairs(shown(t:size(1), summarize)) do
      if i > 0 then gather(t:select(1, i), summarize, out) end
    end
  end
  return out
end

local function format_matrix(m, fmt, summarize, lines, indent)
  local cols = shown(m:size(2), summarize)
  for _, r in ipairs(shown(m:size(1), summarize)) do
    if r == 0 then
      lines[#lines + 1] = indent .. "..."
    else
      local row, cells = m:select(1, r), {}
      for _, c in ipairs(cols) do cells[#cells + 1] = c == 0 and "..." or fmt(row[c]) end
      lines[#lines + 1] = indent .. table.concat(cells, " ")
    end
  end
end

-- Tensors of 3+ dims print as a list of matrices headed "(i,j,.,.) = ", as in Torch7.
local function format_slices(t, fmt, summarize, lines, prefix)
  if t:dim() == 2 then
    lines[#lines + 1] = "(" .. table.concat(prefix, ",") .. ",.,.) = "
    format_matrix(t, fmt, summarize, lines, " ")
    lines[#lines + 1] = ""
    return
  end
  for _, i in ipairs(shown(t:size(1), summarize)) do
    if i == 0 then
      lines[#lines + 1] = "..."
      lines[#lines + 1] = ""
    else
      prefix[#prefix + 1] = tostring(i)
      format_slices(t:select(1, i), fmt, summarize, lines, prefix)
      prefix[#prefix] = nil
    end
  end
end

local function tensor_tostring(t)
  local ok, dims = pcall(t.dim, t)
  if not ok then return "[seqnn.Tensor (freed)]" end
  local footer = string.format("[seqnn.Tensor of size %s (%s)]", shape_string(t), t:dtype())
  if t:numel() == 0 then return footer end
  if dims == 0 then
    local fmt = number_format({ t:item() }, t:dtype() == "i64")
    return fmt(t:item()):gsub("^%s+", "") .. "\n" .. footer
  end
  local summarize = t:numel() > SUMMARY_AT
  local fmt = number_format(gather(t, summarize, {}), t:dtype() == "i64")
  local lines = {}
  if dims == 1 then
    for _, i in ipairs(shown(t:size(1), summarize)) do
      lines[#lines + 1] = i == 0 and "..." or fmt(t[i])
    end
  elseif dims == 2 then
    format_matrix(t, fmt, summarize, lines, "")
  else
    format_slices(t, fmt, summarize, lines, {})
  end
  lines[#lines + 1] = footer
  return table.concat(lines, "\n")
end

return function(sn)
  local mt = sn.core.metatable
  mt.__tostring = tensor_tostring
  local T = sn.Tensor

  -- t:type() like Torch7 for code that checks it; dtype() is the seqnn name.
  function T:type() return "seqnn.Tensor" end

  function T:allclose(other, rtol, atol) return sn.allclose(self, other, rtol, atol) end

  -- Element-count-preserving flatten, a view when possible.
  function T:flatten() return self:reshape(self:numel()) end
end
