-- sn.cli: command-line flags for scripts such as the examples.
--
--   local FLAGS = { { "steps", "integer", 1500, "optimizer steps" }, { "out", "string", "runs/x", "where" } }
--   local opts = sn.cli.parse("train.lua", FLAGS, arg)
--
-- A flag is { name, type, default, help [, min] }: type "string", "integer", "number" or
-- "boolean"; numbers must be positive unless min says otherwise. --name value and
-- --name=value both work; a boolean is --name (true) or --name=true|false; --help prints
-- the usage and exits 0; a bad flag prints the problem and exits 2.
local cli = {}

function cli.usage(prog, flags, synopsis)
  local lines = { ("usage: lua %s %s"):format(prog, synopsis or "[flags]"), "" }
  for _, f in ipairs(flags) do
    local kind = f[2] == "string" and "S" or f[2] == "boolean" and "" or "N"
    lines[#lines + 1] = ("  --%-11s %-8s %s%s"):format(f[1], kind, f[4],
      f[3] ~= nil and (" [" .. tostring(f[3]) .. "]") or "")
  end
  lines[#lines + 1] = "  --help                 this text"
  return table.concat(lines, "\n")
end

function cli.fail(prog, msg)
  io.stderr:write(prog, ": ", msg, " (try --help)\n")
  os.exit(2)
end

function cli.parse(prog, flags, argv)
  local spec, opts = {}, {}
  for _, f in ipairs(flags) do spec[f[1]], opts[f[1]] = f, f[3] end
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--help" or a == "-h" then print(cli.usage(prog, flags)); os.exit(0) end
    local name, inline = a:match("^%-%-([%w%-]+)=(.*)$")
    name = name or a:match("^%-%-([%w%-]+)$")
    local f = name and spec[name]
    if not f then cli.fail(prog, ("unknown flag '%s'"):format(a)) end
    local value = inline
    if f[2] == "boolean" then
      if value ~= nil and value ~= "true" and value ~= "false" then
        cli.fail(prog, ("--%s takes no value, or =true or =false, got '%s'"):format(name, value))
      end
      value = value or "true"
    elseif value == nil then
      i = i + 1
      value = argv[i]
      if value == nil then cli.fail(prog, ("--%s needs a value"):format(name)) end
    end
    if f[2] == "string" then
      opts[name] = value
    elseif f[2] == "boolean" then
      opts[name] = value == "true"
    else
      local num = tonumber(value)
      if f[2] == "integer" then num = num and math.tointeger(num) end
      local min = f[5]
      if num == nil or (min and num < min) or (not min and num <= 0) then
        cli.fail(prog, ("--%s needs a %s %s, got '%s'"):format(name, min and (">= " .. min) or "positive", f[2], value))
      end
      opts[name] = num
    end
    i = i + 1
  end
  return opts
end

return cli
