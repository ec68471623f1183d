-- seqnn.train.Metrics(path [, {resume_step = n}]): a run's metrics log, one JSON object per
-- line, flushed as written so a crashed or running job can still be plotted:
--   {"step":100,"loss":2.1034,"val_loss":2.2051,"lr":0.003,"tokens":51200,"time":4.2}
-- Values are numbers (or strings). Resuming at step n keeps the lines up to step n and
-- drops later ones: they belong to the stretch that is about to be trained again.
--
--   log:write{step = 1, loss = 2.5}   log:close()   Metrics.read(path) -> list of records
local sn = require "seqnn"
local Metrics = sn.class("seqnn.train.Metrics")

-- Field order in a line: the usual ones first, then any others sorted.
local ORDER = { "step", "loss", "val_loss", "lr", "grad_norm", "tokens", "tok_s", "time" }
local RANK = {}
for i, k in ipairs(ORDER) do RANK[k] = i end

local function encode_value(v)
  if type(v) == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end -- JSON has no NaN
    if math.type(v) == "integer" then return ("%d"):format(v) end
    return ("%.9g"):format(v)
  end
  return ('"%s"'):format(tostring(v):gsub('[%c"\\]', function(c) return ("\\u%04x"):format(c:byte()) end))
end

function Metrics.encode(record)
  local keys = {}
  for k in pairs(record) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    local ra, rb = RANK[a] or math.huge, RANK[b] or math.huge
    if ra ~= rb then return ra < rb end
    return a < b
  end)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = ('"%s":%s'):format(k, encode_value(record[k])) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- decode(line): a flat JSON object of numbers, strings and nulls (what encode writes).
function Metrics.decode(line)
  local record, pos = {}, line:match("^%s*{()")
  if not pos then return nil end
  while true do
    local key, after = line:match('^%s*"([^"]*)"%s*:%s*()', pos)
    if not key then break end
    local str, num, null, nxt
    str, nxt = line:match('^"([^"]*)"()', after)
    if not str then num, nxt = line:match("^([%d%.eE+%-]+)()", after) end
    if not str and not num then null, nxt = line:match("^(null)()", after) end
    if not nxt then return nil end
    if str then record[key] = str:gsub("\\u(%x%x%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    elseif num then record[key] = tonumber(num) end
    pos = line:match("^%s*,()", nxt) or nxt
  end
  if not line:match("^%s*}%s*$", pos) then return nil end
  return record
end

-- read(path): the records of a log, in order; a malformed line is an error naming it.
function Metrics.read(path)
  local f, err = io.open(path, "r")
  if not f then error(("seqnn.train.Metrics.read: cannot open %s"):format(err), 2) end
  local records, n = {}, 0
  for line in f:lines() do
    n = n + 1
    if line:match("%S") then
      local r = Metrics.decode(line)
      if not r then
        f:close()
        error(("seqnn.train.Metrics.read: %s:%d: not a flat JSON object: %s"):format(path, n, line:sub(1, 80)), 2)
      end
      records[#records + 1] = r
    end
  end
  f:close()
  return records
end

function Metrics:__init(path, opts)
  local fn = "seqnn.train.Metrics"
  if type(path) ~= "string" then error(("%s: path must be a string, got %s"):format(fn, type(path)), 3) end
  local keep = {}
  local resume_step = opts and opts.resume_step
  if resume_step then
    local f = io.open(path, "r")
    if f then
      f:close()
      for _, r in ipairs(Metrics.read(path)) do
        if type(r.step) == "number" and r.step <= resume_step then keep[#keep + 1] = r end
      end
    end
  end
  local f, err = io.open(path, "w")
  if not f then error(("%s: cannot write the log: %s"):format(fn, err), 3) end
  f:setvbuf("line")
  for _, r in ipairs(keep) do f:write(Metrics.encode(r), "\n") end
  self.file, self.path = f, path
end

function Metrics:write(record)
  self.file:write(Metrics.encode(record), "\n")
end

function Metrics:close()
  if self.file then self.file:close(); self.file = nil end
end

return Metrics
