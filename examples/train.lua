-- examples/train.lua -- the default experiment: a character bigram language model trained
-- by gradient descent on the embedded corpus (examples/data/tiny.txt), then sampled.
--
--   lua examples/train.lua [--steps N] [--batch B] [--lr LR] [--seed S] [--data file.txt]
--
-- The gradient of the bigram model is written out by hand here: softmax cross-entropy
-- gives dlogits = softmax(logits) - onehot(target), gathered back onto the rows of W.
local sn = require "seqnn"

local function parse_args(argv)
  local opts = { steps = 300, batch = 256, lr = 5.0, seed = 1, data = nil }
  local i = 1
  while i <= #argv do
    local key = argv[i]:match("^%-%-(.+)$")
    if key == "help" then
      print("usage: lua examples/train.lua [--steps N] [--batch B] [--lr LR] [--seed S] [--data file.txt]")
      os.exit(0)
    end
    if not key or opts[key] == nil and key ~= "data" or argv[i + 1] == nil then
      io.stderr:write("train.lua: bad argument '" .. argv[i] .. "' (try --help)\n")
      os.exit(2)
    end
    opts[key] = key == "data" and argv[i + 1] or tonumber(argv[i + 1])
    i = i + 2
  end
  return opts
end

local function script_dir()
  return (debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local opts = parse_args(arg or {})
sn.manual_seed(opts.seed)
local text = read_file(opts.data or (script_dir() .. "data/tiny.txt"))

-- Vocabulary: the distinct characters, in byte order; ids are 0-based.
local seen, chars = {}, {}
for c in text:gmatch(".") do
  if not seen[c] then seen[c] = true; chars[#chars + 1] = c end
end
table.sort(chars)
local id_of = {}
for i, c in ipairs(chars) do id_of[c] = i - 1 end
local V = #chars
local ids = {}
for c in text:gmatch(".") do ids[#ids + 1] = id_of[c] end
local split = math.floor(#ids * 0.9)
local all = sn.tensor(ids, "i64")
local train, valid = all:narrow(1, 1, split), all:narrow(1, split + 1, #ids - split)

-- onehot(y) as rows of the identity: eye:index_select(1, y).
local eye = sn.zeros(V, V)
for i = 1, V do eye[i][i] = 1 end

local W = sn.zeros(V, V) -- logits of the next character given the current one

-- Mean cross-entropy of pairs (x -> y) and its gradient with respect to W.
local function loss_and_grad(x, y)
  local logits = W:index_select(1, x)               -- B x V
  local lse = logits:logsumexp(2, true)             -- B x 1
  local Y = eye:index_select(1, y)                  -- B x V
  local loss = (lse - (logits * Y):sum(2, true)):mean():item()
  local dlogits = ((logits - lse):exp() - Y) / x:size(1)
  local dW = sn.matmul(eye:index_select(1, x):t(), dlogits) -- scatter rows back onto W
  return loss, dW
end

local function batch(data, B)
  local pos = sn.randint(0, data:size(1) - 1, B)
  return data:index_select(1, pos), data:index_select(1, pos + 1)
end

local function eval_loss(data)
  local n = data:size(1) - 1
  return (loss_and_grad(data:narrow(1, 1, n), data:narrow(1, 2, n)))
end

print(("%s | %s, %d threads | corpus %d chars, vocab %d"):format(
  sn._VERSION, sn.config().simd, sn.get_num_threads(), #ids, V))
local t0 = os.clock()
for step = 1, opts.steps do
  local x, y = batch(train, opts.batch)
  local loss, dW = loss_and_grad(x, y)
  W:sub_(dW * opts.lr)
  if step == 1 or step % 50 == 0 or step == opts.steps then
    print(("step %4d  train loss %.4f"):format(step, loss))
  end
end
print(("validation loss %.4f (uniform would be %.4f), %.2f s"):format(eval_loss(valid), math.log(V), os.clock() - t0))

-- Sample: draw each next character from softmax(W[current]).
local out, cur = {}, id_of["T"] or 0
for _ = 1, 200 do
  local p = W[cur + 1]:exp()
  local u = sn.rand(1)[1] * p:sum():item()
  local probs, acc = p:totable(), 0
  for j = 1, V do
    acc = acc + probs[j]
    if u <= acc or j == V then cur = j - 1; break end
  end
  out[#out + 1] = chars[cur + 1]
end
print("sample: " .. table.concat(out))
