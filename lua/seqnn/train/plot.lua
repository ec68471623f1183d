-- sn.train.plot(runs, out [, {title = s, logy = false}]): draws training and validation loss
-- against step for one or several metrics logs (Metrics files) into a PNG through gnuplot.
-- Each run gets one colour: training loss as a line, validation loss as points joined by a
-- dashed line. A run is labelled by its file name, or by its directory when the file is
-- called metrics.jsonl (runs/big/metrics.jsonl -> "big").
local Metrics = require "seqnn.train.Metrics"

local plot = {}

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function gp_quote(s) return "'" .. s:gsub("'", "''") .. "'" end -- gnuplot doubles quotes

local function label_of(path)
  local dir, file = path:match("^(.-)([^/]*)$")
  if file == "metrics.jsonl" and dir ~= "" then
    return dir:match("([^/]+)/$") or file
  end
  return (file:gsub("%.jsonl$", ""):gsub("%.json$", ""))
end

-- pngcairo draws antialiased lines; plain png (libgd) is the fallback some builds only have.
local function png_terminal()
  if os.execute("gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1") == true then
    return "pngcairo size 1000,600 font 'sans,11'"
  end
  return "png size 1000,600"
end

-- Writes "step value" rows of records that have `key`; returns how many.
local function write_series(path, records, key)
  local f = assert(io.open(path, "w"))
  local n = 0
  for _, r in ipairs(records) do
    if type(r.step) == "number" and type(r[key]) == "number" then
      f:write(("%s %.9g\n"):format(math.tointeger(r.step) or r.step, r[key]))
      n = n + 1
    end
  end
  f:close()
  return n
end

function plot.plot(runs, out, opts)
  local fn = "seqnn.train.plot"
  if type(runs) == "string" then runs = { runs } end
  if type(runs) ~= "table" or #runs == 0 then
    error(("%s: runs must be a metrics log path or a non-empty list of them"):format(fn), 2)
  end
  if type(out) ~= "string" or out == "" then error(("%s: out must be a PNG path, got %s"):format(fn, tostring(out)), 2) end
  opts = opts or {}
  if os.execute("command -v gnuplot >/dev/null 2>&1") ~= true then
    error(("%s: gnuplot is not installed (on Debian: sudo apt-get install gnuplot-nox)"):format(fn), 2)
  end
  local base = os.tmpname()
  local files, series = { base }, {}
  for i, path in ipairs(runs) do
    local records = Metrics.read(path)
    local train_file, val_file = ("%s.%d.train"):format(base, i), ("%s.%d.val"):format(base, i)
    files[#files + 1], files[#files + 2] = train_file, val_file
    local label = label_of(path)
    if write_series(train_file, records, "loss") > 0 then
      series[#series + 1] = ("%s using 1:2 with lines lw 2 lc %d title %s"):format(gp_quote(train_file), i,
        gp_quote(label .. " train"))
    end
    if write_series(val_file, records, "val_loss") > 0 then
      series[#series + 1] = ("%s using 1:2 with linespoints dt 2 pt 7 ps 0.8 lw 2 lc %d title %s"):format(
        gp_quote(val_file), i, gp_quote(label .. " val"))
    end
  end
  if #series == 0 then
    for _, f in ipairs(files) do os.remove(f) end
    error(("%s: no step/loss records in %s"):format(fn, table.concat(runs, ", ")), 2)
  end
  local script = table.concat({
    "set terminal " .. png_terminal(),
    "set output " .. gp_quote(out),
    "set title " .. gp_quote(opts.title or "loss"),
    "set xlabel 'step'", "set ylabel 'loss (nats/token)'",
    "set grid", "set key top right",
    opts.logy and "set logscale y" or "",
    "plot " .. table.concat(series, ", \\\n     "),
  }, "\n") .. "\n"
  local script_file = base .. ".gp"
  files[#files + 1] = script_file
  local f = assert(io.open(script_file, "w"))
  f:write(script)
  f:close()
  local p = io.popen("gnuplot " .. shell_quote(script_file) .. " 2>&1")
  local messages = p:read("a")
  local ok = p:close()
  for _, name in ipairs(files) do os.remove(name) end
  if not ok then error(("%s: gnuplot failed: %s"):format(fn, messages), 2) end
  return out
end

return plot
