-- lua/seqnn/repl.lua -- the `seqnn` command: a REPL in the spirit of Torch7's `th`, and a
-- script runner like `lua`. bin/seqnn only sets package paths and calls main(arg).
--
--   repl.main(argv)   parse `seqnn [options] [script [args...]]`, return an exit status
--   repl.run(opts)    the read-eval-print loop; opts.interactive (default: stdin is a tty),
--                     opts.history (default ~/.seqnn_history), opts.banner (default true)
--   repl.show(v)      how a result is printed (tensors via tostring, tables shallowly)
local M = {}

M.usage = [==[
usage: seqnn [options] [script [args...]]

  seqnn                  interactive session; `sn` (the seqnn module) is a global
  seqnn train.lua a b    run a script with arg = {[0]="train.lua", "a", "b"}, like lua
  echo 'sn.ones(2)' | seqnn
                         evaluate stdin line by line, print every result (exit 1 if any failed)

options:
  -e stmt    execute the Lua statement stmt (may be repeated)
  -i         enter the interactive session after -e / the script
  -v         print the version and exit
  -h         print this help and exit

In the session: expressions print their values, `..>` continues an unfinished chunk,
errors are reported and the session goes on, Ctrl-D (EOF) or os.exit() quits. With
lua-readline installed: line editing, Tab completion of names, history in ~/.seqnn_history.]==]

-- Is file descriptor 0 a terminal? Pure Lua has no isatty; `test -t 0` inherits our stdin.
local function stdin_is_tty()
  return os.execute("test -t 0") == true
end

local function err(msg) io.stderr:write(msg, "\n") end

----------------------------------------------------------------------------- printing

local MAX_ITEMS = 24  -- entries shown of a table before "..."

local function is_ident(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil
end

-- One-line form of a value nested inside a table.
local function brief(v)
  local mt = getmetatable(v)
  if type(mt) == "table" and mt.__name == "seqnn.Tensor" then
    local ok, shape = pcall(function() return v:shape() end)
    local okd, dtype = pcall(function() return v:dtype() end)
    if ok and type(shape) == "table" then
      local dims = #shape == 0 and "scalar" or table.concat(shape, "x")
      return ("seqnn.Tensor(%s%s)"):format(dims, okd and (" " .. tostring(dtype)) or "")
    end
  end
  if type(v) == "string" then return ("%q"):format(v):gsub("\\\n", "\\n") end
  if type(mt) == "table" and mt.__tostring then
    local ok, s = pcall(tostring, v)
    if ok and type(s) == "string" and #s <= 60 and not s:find("\n") then return s end
    return "<" .. (type(mt.__name) == "string" and mt.__name or type(v)) .. ">"
  end
  if type(v) == "table" then return next(v) == nil and "{}" or "{...}" end
  return tostring(v)
end

-- A table's array part, then its other keys sorted, one level deep: readable, never huge.
local function show_table(t)
  local parts, n = {}, #t
  for i = 1, math.min(n, MAX_ITEMS) do parts[#parts + 1] = brief(t[i]) end
  local keys = {}
  for k in pairs(t) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  for _, k in ipairs(keys) do
    if #parts >= MAX_ITEMS then break end
    local key = is_ident(k) and k or ("[" .. brief(k) .. "]")
    parts[#parts + 1] = key .. " = " .. brief(t[k])
  end
  local total = n + #keys
  if total > #parts then parts[#parts + 1] = ("... (%d entries)"):format(total) end
  local one = "{" .. table.concat(parts, ", ") .. "}"
  if #one <= 100 then return one end
  return "{\n  " .. table.concat(parts, ",\n  ") .. "\n}"
end

-- How the REPL prints one result: whatever has __tostring (tensors, modules) by tostring,
-- plain tables shallowly, strings as they are (like lua's REPL), the rest by tostring.
function M.show(v)
  local mt = getmetatable(v)
  if type(mt) == "table" and mt.__tostring then
    local ok, s = pcall(tostring, v)
    if ok then return s end
    return "<" .. type(v) .. ": __tostring failed: " .. tostring(s) .. ">"
  end
  if type(v) == "table" then return show_table(v) end
  return tostring(v)
end

local function print_results(n, ...)
  if n == 0 then return end
  local out = {}
  for i = 1, n do out[i] = M.show((select(i, ...))) end
  io.stdout:write(table.concat(out, "\t"), "\n")
  io.stdout:flush()
end

----------------------------------------------------------------------------- evaluation

-- Message plus traceback, without the REPL's own frames below the user's chunk.
local function traceback(e)
  local msg
  if type(e) == "string" then msg = e
  else
    local mt = getmetatable(e)
    msg = (type(mt) == "table" and mt.__tostring) and tostring(e)
          or ("(error object is a %s value)"):format(type(e))
  end
  local tb = debug.traceback(msg, 2)
  local cut = tb:find("\n%s*%[C%]: in function 'xpcall'")
  return cut and tb:sub(1, cut - 1) or tb
end

local function is_incomplete(msg)
  return msg:sub(-5) == "<eof>"  -- the parser ran out of input: the chunk is unfinished
end

-- Compile src as an expression (so its values print) or else as a statement.
-- Returns fn, or nil + "incomplete", or nil + the syntax error.
local function compile(src, chunkname)
  local fn = load("return " .. src .. "\n", chunkname, "t")
  if fn then return fn end
  local fn2, e = load(src, chunkname, "t")
  if fn2 then return fn2 end
  if is_incomplete(e) then return nil, "incomplete" end
  return nil, e
end

-- Run fn, print its results or the error. Returns true on success.
local function eval(fn)
  local function pack(ok, ...) return ok, select("#", ...), ... end
  local res = table.pack(pack(xpcall(fn, traceback)))
  if res[1] then
    print_results(res[2], table.unpack(res, 3, res.n))
    return true
  end
  io.stdout:flush()
  err(tostring(res[3]))
  return false
end

----------------------------------------------------------------------------- line input

-- Tab completion of dotted names: "sn.ze" -> sn.zeros, "t:res" -> t:reshape, t:requires_grad.
local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
  "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true",
  "until", "while" }

local function fields_of(v, into, seen)
  seen = seen or {}
  if v == nil or seen[v] then return end
  seen[v] = true
  if type(v) == "table" then
    for k in pairs(v) do if is_ident(k) then into[k] = true end end
  end
  local mt = getmetatable(v)
  if type(mt) == "table" then
    local idx = rawget(mt, "__index")
    if type(idx) == "table" then fields_of(idx, into, seen)
    elseif type(idx) == "function" and debug and debug.getupvalue then
      -- tensor methods live in a table that the C __index holds as an upvalue
      local _, up = debug.getupvalue(idx, 1)
      if type(up) == "table" then fields_of(up, into, seen) end
    end
  end
end

local function complete(word)
  local base, sep, part = word:match("^(.-)([%.:]?)([%w_]*)$")
  if not base then return {} end
  local names = {}
  if sep == "" then
    fields_of(_G, names)
    for _, k in ipairs(KEYWORDS) do names[k] = true end
  else
    local v = _G
    for name in base:gmatch("[^%.]+") do  -- only plain names: completion must not run code
      if not is_ident(name) or type(v) ~= "table" and type(v) ~= "userdata" then return {} end
      local ok, nv = pcall(function() return v[name] end)
      if not ok or nv == nil then return {} end
      v = nv
    end
    fields_of(v, names)
  end
  local out = {}
  for k in pairs(names) do
    if k:sub(1, #part) == part then out[#out + 1] = base .. sep .. k end
  end
  table.sort(out)
  return out
end

-- A reader: function(prompt) -> line or nil at EOF, plus a close function.
local function make_reader(interactive, history)
  if interactive then
    local ok, rl = pcall(require, "readline")
    if ok and type(rl) == "table" and rl.readline then
      rl.set_options({ histfile = history, keeplines = 1000, completion = true })
      if rl.set_complete_function then
        rl.set_complete_function(function(text, from, to)
          -- readline resets this to " " after every completion; "sn.zeros(" reads better
          if rl.set_completion_append_character then rl.set_completion_append_character("") end
          return complete(text:sub(from, to))
        end)
      end
      return rl.readline, function() pcall(rl.save_history) end
    end
    return function(prompt)
      io.stdout:write(prompt); io.stdout:flush()
      return io.stdin:read("l")
    end, function() end
  end
  return function() return io.stdin:read("l") end, function() end
end

----------------------------------------------------------------------------- the loop

local function banner(sn)
  local cfg = sn.config()
  io.stdout:write(("%s | %s | SIMD %s | %d threads | OpenBLAS core %s\n"):format(
    sn._VERSION, _VERSION, cfg.simd, cfg.threads, cfg.blas_core),
    "`sn` is loaded. Expressions print their values; Ctrl-D quits; seqnn -h for help.\n")
end

-- The read-eval-print loop. Returns 0, or 1 when input was not interactive and a chunk
-- failed (so `seqnn < cmds.lua` can fail a pipeline).
function M.run(opts)
  opts = opts or {}
  local interactive = opts.interactive
  if interactive == nil then interactive = stdin_is_tty() end
  local sn = opts.sn or rawget(_G, "sn")
  if interactive and opts.banner ~= false and sn then banner(sn) end
  local read, close = make_reader(interactive, opts.history or "~/.seqnn_history")

  local failures, lineno = 0, 0
  local buffer = nil  -- an unfinished chunk waiting for more lines
  while true do
    -- A Ctrl-C lands as an "interrupted!" error anywhere in here: report it, keep going.
    local ok, done = pcall(function()
      local line = read(buffer and "..> " or "sn> ")
      if line == nil then
        if buffer then  -- EOF inside a chunk: report the error it has
          local _, e = load(buffer, "=stdin", "t")
          err(e or "incomplete chunk at end of input")
          failures = failures + 1
        end
        return true
      end
      lineno = lineno + 1
      local src = buffer and (buffer .. "\n" .. line) or line
      if not buffer and src:match("^%s*$") then return false end
      src = src:gsub("^=", "return ")  -- lua 5.1 habit: "=expr"
      local fn, e = compile(src, "=stdin")
      if not fn and e == "incomplete" then buffer = src; return false end
      buffer = nil
      if not fn then
        err(e); failures = failures + 1
      elseif not eval(fn) then
        failures = failures + 1
      end
      return false
    end)
    if not ok then
      buffer = nil
      local msg = tostring(done)
      if msg:find("interrupted!$") then
        -- lua's SIGINT handler is one-shot: after this, a Ctrl-C ends the process
        msg = "interrupted (the next Ctrl-C quits seqnn)"
      end
      err(msg)
      failures = failures + 1
    elseif done then
      break
    end
  end
  if interactive then io.stdout:write("\n") end
  close()
  if not interactive and failures > 0 then return 1 end
  return 0
end

----------------------------------------------------------------------------- command line

local function load_seqnn()
  local ok, sn = pcall(require, "seqnn")
  if not ok then
    err("seqnn: cannot load the seqnn module:\n" .. tostring(sn))
    return nil
  end
  return sn
end

-- Run a script like `lua script args...`: arg[0] = script, varargs = args.
local function run_script(argv, i)
  local script = argv[i]
  local args = { [-1] = argv[-1] or "seqnn", [0] = script }
  for j = i + 1, #argv do args[#args + 1] = argv[j] end
  _G.arg = args
  local fn, e
  if script == "-" then fn, e = load(io.stdin:read("a"), "=stdin", "t")
  else fn, e = loadfile(script, "t") end
  if not fn then err("seqnn: " .. e); return 1 end
  local ok, res = xpcall(fn, traceback, table.unpack(args, 1, #args))
  if not ok then err("seqnn: " .. tostring(res)); return 1 end
  return 0
end

-- Parse `seqnn [-e stmt]... [-i] [-v] [-h] [script [args...]]`; returns the exit status.
function M.main(argv)
  argv = argv or {}
  local stmts, interactive, script_at = {}, false, nil
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-h" or a == "--help" then print(M.usage); return 0
    elseif a == "-v" or a == "--version" then
      local sn = load_seqnn(); if not sn then return 1 end
      print(sn._VERSION .. " (" .. _VERSION .. ")")
      return 0
    elseif a == "-i" then interactive = true
    elseif a == "-e" then
      if argv[i + 1] == nil then err("seqnn: '-e' needs an argument\n" .. M.usage); return 2 end
      stmts[#stmts + 1] = argv[i + 1]; i = i + 1
    elseif a == "--" then script_at = argv[i + 1] and i + 1; break
    elseif a == "-" or a:sub(1, 1) ~= "-" then script_at = i; break
    else err("seqnn: unknown option '" .. a .. "'\n" .. M.usage); return 2 end
    i = i + 1
  end

  local sn = load_seqnn()
  if not sn then return 1 end
  -- `sn` is a global in the session and in -e, as `torch` was in th. Scripts are left to
  -- `local sn = require "seqnn"`, so they also run under plain `lua`.
  if script_at == nil or #stmts > 0 or interactive then _G.sn = sn end

  for _, s in ipairs(stmts) do
    local fn, e = load(s, "=(command line)", "t")
    if not fn then err("seqnn: " .. e); return 1 end
    local ok, res = xpcall(fn, traceback)
    if not ok then err("seqnn: " .. tostring(res)); return 1 end
  end
  if script_at then
    local status = run_script(argv, script_at)
    if status ~= 0 or not interactive then return status end
  elseif #stmts > 0 and not interactive then
    return 0
  end
  _G.sn = sn
  return M.run({ sn = sn, interactive = interactive or nil })
end

return M
