-- examples/sample.lua -- generate text from a checkpoint written by examples/train.lua.
--
--   lua examples/sample.lua runs/default/checkpoint.safetensors
--   lua examples/sample.lua CKPT --length 500 --temperature 0.7 --top-k 10 --prompt "The " --seed 3
--
-- The checkpoint carries the model's name and config and the tokenizer, so nothing else is
-- needed. The same seed gives the same text.
local sn = require "seqnn"

local USAGE = [[
usage: lua examples/sample.lua CHECKPOINT [flags]
  --length N        characters to generate [300]
  --temperature T   softmax temperature; 0 takes the most likely character [0.8]
  --top-k K         sample among the K most likely characters [all]
  --top-p P         sample among the most likely characters holding probability P [1]
  --prompt TEXT     text to continue [the first character of the vocabulary's "\n" or " "]
  --seed S          random seed [1]
  --threads N       threads [all cores]
  --help            this text]]

local function fail(msg)
  io.stderr:write("sample.lua: ", msg, " (try --help)\n")
  os.exit(2)
end

local NUMBERS = { length = "integer", temperature = "number", ["top-k"] = "integer", ["top-p"] = "number",
                  seed = "integer", threads = "integer" }
local opts = { length = 300, temperature = 0.8, seed = 1 }
local path
local argv, i = arg or {}, 1
while i <= #argv do
  local a = argv[i]
  if a == "--help" or a == "-h" then print(USAGE); os.exit(0) end
  local name = a:match("^%-%-([%w%-]+)$")
  if name then
    if NUMBERS[name] == nil and name ~= "prompt" then fail(("unknown flag '%s'"):format(a)) end
    local value = argv[i + 1]
    if value == nil then fail(("--%s needs a value"):format(name)) end
    if name == "prompt" then
      opts.prompt = value
    else
      local num = tonumber(value)
      if NUMBERS[name] == "integer" then num = num and math.tointeger(num) end
      if num == nil then fail(("--%s needs %s, got '%s'"):format(name, NUMBERS[name] == "integer"
        and "an integer" or "a number", value)) end
      opts[name] = num
    end
    i = i + 2
  elseif a:sub(1, 1) == "-" then
    fail(("unknown flag '%s'"):format(a))
  elseif path then
    fail(("one checkpoint only, got '%s' and '%s'"):format(path, a))
  else
    path, i = a, i + 1
  end
end
if not path then fail("no checkpoint given") end
if opts.threads then sn.set_num_threads(opts.threads) end

local ok, ck = pcall(sn.train.load_checkpoint, path)
if not ok then fail(tostring(ck):gsub("^[^:]*:%d+: ", "")) end
local state = {}
for k, v in pairs(ck.meta) do
  local key = k:match("^tokenizer%.(.+)$")
  if key then state[key] = v end
end
if next(state) == nil then fail(path .. " holds no tokenizer (not written by examples/train.lua?)") end
local tokenizer = sn.data.Tokenizer.from_state(state)
local model = sn.models.from_metadata(ck.meta)
model:load_state_dict(ck.model)

-- Start from the prompt, or from a newline (or a space) when the vocabulary has one.
local prompt = opts.prompt
if prompt == nil then
  prompt = " "
  for _, c in ipairs({ "\n", " " }) do
    if pcall(tokenizer.encode, tokenizer, c) then prompt = c; break end
  end
end
local okp, ids = pcall(tokenizer.encode, tokenizer, prompt)
if not okp then fail("the prompt does not fit the checkpoint's vocabulary: " .. tostring(ids):gsub("^[^:]*:%d+: ", "")) end
if ids:numel() == 0 then fail("the prompt is empty") end

-- Tokens are written as they come (through the model's cache when it has one).
io.write(prompt)
local okg, err = pcall(sn.generate, model, ids:totable(), { max_tokens = opts.length, seed = opts.seed,
  temperature = opts.temperature, top_k = opts["top-k"], top_p = opts["top-p"],
  on_token = function(id) io.write(tokenizer:decode({ id })); io.flush() end })
if not okg then io.write("\n"); fail(tostring(err):gsub("^[^:]*:%d+: ", "")) end
io.write("\n")
