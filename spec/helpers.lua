-- spec/helpers.lua -- what several specs share, loaded with
--   local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local helpers = {}

-- The message of the error fn raises; fails the spec when fn does not raise.
function helpers.err_of(fn)
  local ok, msg = pcall(fn)
  -- plain error(): a dofile'd chunk sees the real globals, not busted's `assert`
  if ok then error("expected an error", 2) end
  return tostring(msg)
end

-- A checker: fn raises, pointing at the caller's line in `file` (a spec file name), exactly
-- `expected` after the position.
function helpers.raises_in(file)
  local pattern = "^(.-" .. file:gsub("%p", "%%%0") .. ":%d+: )(.*)$"
  return function(fn, expected)
    local msg = helpers.err_of(fn)
    local pos, rest = msg:match(pattern)
    if not pos then error(("message %q does not point at the caller's line"):format(msg), 2) end
    if rest ~= expected then error(("message %q, expected %q"):format(rest, expected), 2) end
  end
end

return helpers
