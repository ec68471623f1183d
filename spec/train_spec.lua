-- sn.train, sn.models and the example scripts: loss falls, bit-identical resume, the
-- metrics log, progress lines, checkpoints, plots, sampling and flag parsing.
local sn = require "seqnn"

local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

local function tmpdir()
  local path = os.tmpname()
  os.remove(path)
  assert.is_true(os.execute("mkdir -p '" .. path .. "'"))
  return path
end

local function read_all(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- Runs a Lua script of the checkout with this process's package paths; returns its exit
-- status and everything it printed (stdout and stderr together).
local function run_script(args)
  local q = function(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
  local cmd = ("LUA_PATH=%s LUA_CPATH=%s %s %s 2>&1"):format(q(package.path), q(package.cpath),
    os.getenv("LUA") or "lua5.4", args)
  local p = io.popen(cmd)
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok and 0 or code, out
end

local function corpus_dataset(seq)
  return sn.data.TextDataset{ text = sn.data.default_corpus(), seq = seq }
end

local function small_lm(V, dropout)
  return sn.models.build("mlp", { vocab_size = V, context = 4, embed = 8, hidden = 48, dropout = dropout or 0 })
end

describe("sn.train.fit", function()
  it("makes the loss of a toy regression fall", function()
    sn.manual_seed(3)
    local x = sn.randn(256, 4)
    local y = (x:narrow(2, 1, 1) * 2 - x:narrow(2, 2, 1) + 0.5):contiguous()
    local loader = sn.data.DataLoader(sn.data.TensorDataset(x, y), { batch = 32, shuffle = true })
    local model = sn.nn.MLP{ 4, 32, 1 }
    local opt = sn.optim.AdamW(model:parameters(), { lr = 1e-2, weight_decay = 0 })
    local losses = {}
    sn.train.fit{ model = model, optimizer = opt, data = loader, steps = 200, quiet = true,
      loss = function(m, xb, yb) return sn.F.mse_loss(m(xb), yb) end,
      on_step = function(info) losses[info.step] = info.loss end }
    local first, last = 0, 0
    for i = 1, 10 do first, last = first + losses[i] / 10, last + losses[190 + i] / 10 end
    assert.is_true(last < 0.1 * first, ("loss %.4f -> %.4f"):format(first, last))
  end)

  it("trains a character-level LM well below the uniform loss", function()
    sn.manual_seed(1)
    local ds = corpus_dataset(32)
    local V = ds.tokenizer.vocab_size
    local model = small_lm(V)
    local opt = sn.optim.AdamW(model:parameters(), { lr = 1e-2 })
    local s = sn.train.fit{ model = model, optimizer = opt, data = ds, steps = 150, batch = 16, quiet = true,
      eval_batches = 5 }
    assert.are.equal(150, s.step)
    -- uniform is log(V) ~ 3.85 nats; the model gets to ~2.0 on validation text
    assert.is_true(s.val_loss < math.log(V) - 1.0, ("val loss %.3f, uniform %.3f"):format(s.val_loss, math.log(V)))
    assert.is_true(s.loss < math.log(V) - 1.2, ("train loss %.3f"):format(s.loss))
  end)

  -- One run of 2N steps against N steps, a checkpoint, fresh objects (other init, other
  -- generator state) and N more: parameters and optimizer state must match exactly.
  local function resume_case(make, steps_opts)
    local N = 12
    local function fit(parts, extra)
      local opts = { model = parts.model, optimizer = parts.opt, data = parts.data, schedule = parts.schedule,
                     quiet = true, clip = 0.5 }
      for k, v in pairs(steps_opts) do opts[k] = v end
      for k, v in pairs(extra) do opts[k] = v end
      return sn.train.fit(opts)
    end
    sn.manual_seed(42)
    local a = make()
    fit(a, { steps = 2 * N })
    local rng_a = sn.get_rng_state()

    local dir = tmpdir()
    local ckpt = dir .. "/ckpt.safetensors"
    sn.manual_seed(42)
    local b = make()
    fit(b, { steps = N, checkpoint = ckpt, log = dir .. "/m.jsonl" })
    sn.manual_seed(7)          -- a "fresh process": other weights, other generator state
    sn.randn(100)
    local c = make()
    local s = fit(c, { steps = 2 * N, checkpoint = ckpt, resume = true, log = dir .. "/m.jsonl" })
    assert.are.equal(N, s.resumed_from)
    assert.are.same(rng_a, sn.get_rng_state())

    local sa, sc = a.model:state_dict(), c.model:state_dict()
    for name, t in pairs(sa) do assert.are.same(t:totable(), sc[name]:totable(), name) end
    local ta, na = a.opt:state_dict()
    local tc, nc = c.opt:state_dict()
    for k, t in pairs(ta) do assert.are.same(t:totable(), tc[k]:totable(), k) end
    assert.are.same(na, nc)

    -- The log of the resumed run continues the first one: each step once, in order.
    local last = 0
    for _, r in ipairs(sn.train.Metrics.read(dir .. "/m.jsonl")) do
      assert.is_true(r.step > last)
      last = r.step
    end
    assert.are.equal(2 * N, last)
    os.execute("rm -rf '" .. dir .. "'")
  end

  it("resumes a sampled LM run bit-identically (dropout, validation, schedule)", function()
    local ds = corpus_dataset(16)
    resume_case(function()
      local model = small_lm(ds.tokenizer.vocab_size, 0.2)
      return { model = model, data = ds, opt = sn.optim.AdamW(model:parameters(), { lr = 5e-3 }),
               schedule = sn.optim.schedule.warmup_cosine{ lr = 5e-3, warmup = 3, total = 24 } }
    end, { batch = 8, eval_every = 5, eval_batches = 2, log_every = 4 })
  end)

  it("resumes a shuffled DataLoader run bit-identically (loader position)", function()
    local x, y = sn.randn(40, 3), sn.randn(40, 1)
    resume_case(function()
      local model = sn.nn.MLP{ 3, 8, 1 }
      local loader = sn.data.DataLoader(sn.data.TensorDataset(x, y), { batch = 7, shuffle = true })
      return { model = model, data = loader, opt = sn.optim.SGD(model:parameters(), { lr = 0.05, momentum = 0.9 }) }
    end, { loss = function(m, xb, yb) return sn.F.mse_loss(m(xb), yb) end, accumulate = 2 })
  end)

  it("writes one metrics line per logged step, with validation where evaluated", function()
    local dir = tmpdir()
    sn.manual_seed(1)
    local ds = corpus_dataset(16)
    local model = small_lm(ds.tokenizer.vocab_size)
    sn.train.fit{ model = model, optimizer = sn.optim.AdamW(model:parameters()), data = ds, steps = 20,
      batch = 4, quiet = true, log = dir .. "/m.jsonl", log_every = 5, eval_every = 10, eval_batches = 2 }
    local lines = {}
    for line in io.lines(dir .. "/m.jsonl") do lines[#lines + 1] = line end
    assert.are.equal(4, #lines)
    for i, line in ipairs(lines) do
      local r = sn.train.Metrics.decode(line)
      assert.are.equal(5 * i, r.step)
      assert.are.equal("number", type(r.loss))
      assert.are.equal(i % 2 == 0, r.val_loss ~= nil)
    end
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("prints plain progress lines when the output is not a terminal", function()
    local path = os.tmpname()
    local out = assert(io.open(path, "w"))
    sn.manual_seed(1)
    local ds = corpus_dataset(16)
    local model = small_lm(ds.tokenizer.vocab_size)
    sn.train.fit{ model = model, optimizer = sn.optim.AdamW(model:parameters()), data = ds, steps = 6,
      batch = 4, output = out, log_every = 2, eval_batches = 1 }
    out:close()
    local text = read_all(path)
    os.remove(path)
    assert.is_nil(text:find("[\r\27]"))
    local steps = {}
    for n in text:gmatch("step (%d+)/6  loss %d+%.%d+") do steps[#steps + 1] = tonumber(n) end
    assert.are.same({ 2, 4, 6 }, steps)
    assert.is_truthy(text:find("step 6  validation loss", 1, true))
  end)

  it("names itself and the problem in its errors", function()
    local model = sn.nn.Linear(2, 1)
    local opt = sn.optim.SGD(model:parameters(), { lr = 0.1 })
    local ds = corpus_dataset(8)
    assert.matches("seqnn.train.fit: steps must be a positive integer, got nil",
      err_of(function() sn.train.fit{ model = model, optimizer = opt, data = ds, batch = 2 } end), 1, true)
    assert.matches("seqnn.train.fit: data must be a DataLoader or a sampler",
      err_of(function() sn.train.fit{ model = model, optimizer = opt, data = {}, steps = 1 } end), 1, true)
    assert.matches("train_spec.lua:%d+: seqnn.train.fit: model must be",
      err_of(function() sn.train.fit{ optimizer = opt, data = ds, steps = 1 } end))
  end)
end)

describe("sn.train checkpoints", function()
  it("round-trip the 64-bit generator state, the step and string metadata", function()
    local path = os.tmpname()
    local model = sn.nn.Linear(3, 2)
    local state = { seed = 0x7fffffffffffff01, offset = 0x123456789abcd }
    sn.set_rng_state(state)
    sn.train.save_checkpoint(path, { model = model, step = 17, meta = { note = "hi" } })
    sn.manual_seed(5)
    local other = sn.nn.Linear(3, 2)
    local ck = sn.train.load_checkpoint(path, { model = other, rng = true })
    assert.are.same(state, sn.get_rng_state())
    assert.are.equal(17, ck.step)
    assert.are.equal("hi", ck.meta.note)
    assert.are.same(model.weight:totable(), other.weight:totable())
    os.remove(path)
  end)

  it("refuses reserved metadata keys and files that are not checkpoints", function()
    local path = os.tmpname()
    local model = sn.nn.Linear(3, 2)
    assert.matches("meta key 'step' is reserved",
      err_of(function() sn.train.save_checkpoint(path, { model = model, step = 1, meta = { step = "2" } }) end), 1, true)
    sn.save(path, { w = sn.zeros(2) })
    assert.matches("metadata 'step' must be an integer",
      err_of(function() sn.train.load_checkpoint(path) end), 1, true)
    os.remove(path)
  end)
end)

describe("sn.train.Metrics", function()
  it("encodes flat records in a fixed order and decodes them back", function()
    local line = sn.train.Metrics.encode{ time = 1.5, loss = 2.25, step = 3, name = 'a "b"', val_loss = 0 / 0 }
    assert.are.equal('{"step":3,"loss":2.25,"val_loss":null,"time":1.5,"name":"a \\u0022b\\u0022"}', line)
    assert.are.same({ step = 3, loss = 2.25, time = 1.5, name = 'a "b"' }, sn.train.Metrics.decode(line))
    assert.is_nil(sn.train.Metrics.decode("not json"))
  end)
end)

describe("sn.train.plot", function()
  it("draws a non-empty PNG of one or several runs", function()
    if os.execute("command -v gnuplot >/dev/null 2>&1") ~= true then
      pending("gnuplot is not installed (apt-get install gnuplot-nox)")
      return
    end
    local dir = tmpdir()
    for run = 1, 2 do
      local log = sn.train.Metrics(dir .. "/run" .. run .. ".jsonl")
      for step = 10, 100, 10 do
        log:write{ step = step, loss = 3 / (step + run), val_loss = step % 50 == 0 and 4 / step or nil }
      end
      log:close()
    end
    local out = dir .. "/curves.png"
    sn.train.plot({ dir .. "/run1.jsonl", dir .. "/run2.jsonl" }, out)
    local png = read_all(out)
    assert.is_true(#png > 1000)
    assert.are.equal("\137PNG", png:sub(1, 4))
    local code, text = run_script("bin/seqnn-plot -o " .. dir .. "/cli.png " .. dir .. "/run1.jsonl")
    assert.are.equal(0, code, text)
    assert.is_true(#read_all(dir .. "/cli.png") > 1000)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("says which file is not a metrics log", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write('{"step":1,"loss":2}\nhello\n')
    f:close()
    assert.matches(":2: not a flat JSON object", err_of(function() sn.train.plot(path, path .. ".png") end), 1, true)
    os.remove(path)
  end)
end)

describe("sn.models", function()
  it("builds the MLP LM by name, and again from checkpoint metadata", function()
    sn.manual_seed(1)
    local m = sn.models.build("mlp", { vocab_size = 10, context = 3, hidden = 16 })
    local meta = sn.models.metadata("mlp", m)
    assert.are.equal("3", meta["model.context"])
    local m2, name = sn.models.from_metadata(meta)
    assert.are.equal("mlp", name)
    assert.are.same(m.config, m2.config)
    assert.matches("unknown model 'nope' (known: gpt, mlp", err_of(function() sn.models.build("nope") end), 1, true)
  end)

  it("predicts position t from tokens t-k+1 .. t only", function()
    sn.manual_seed(2)
    local m = sn.models.build("mlp", { vocab_size = 10, context = 3, hidden = 16 }):eval()
    local a = sn.tensor({ { 1, 2, 3, 4, 5, 6 } }, "i64")
    local b = sn.tensor({ { 9, 2, 3, 4, 5, 0 } }, "i64")
    local la, lb = m(a)[1], m(b)[1]
    assert.are_not.same(la[1]:totable(), lb[1]:totable())  -- token 1 differs
    assert.are_not.same(la[3]:totable(), lb[3]:totable())  -- position 3 sees tokens 1..3
    assert.are.same(la[4]:totable(), lb[4]:totable())      -- position 4 sees 2..4: same
    assert.are.same(la[5]:totable(), lb[5]:totable())
  end)
end)

describe("examples", function()
  local dir
  setup(function() dir = tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("train.lua prints usage, rejects bad flags, trains and checkpoints", function()
    local code, out = run_script("examples/train.lua --help")
    assert.are.equal(0, code)
    assert.is_truthy(out:find("usage: lua examples/train.lua", 1, true))
    for _, flag in ipairs({ "--model", "--data", "--steps", "--batch", "--seq", "--lr", "--out", "--resume", "--threads" }) do
      assert.is_truthy(out:find(flag, 1, true), flag)
    end
    code, out = run_script("examples/train.lua --bogus 3")
    assert.are.equal(2, code)
    assert.is_truthy(out:find("train.lua: unknown flag '--bogus' (try --help)", 1, true), out)
    code, out = run_script("examples/train.lua --steps many")
    assert.are.equal(2, code)
    assert.is_truthy(out:find("--steps needs a positive integer, got 'many'", 1, true), out)
    code, out = run_script("examples/train.lua --model nope --out " .. dir)
    assert.are_not.equal(0, code)
    assert.is_truthy(out:find("unknown model 'nope'", 1, true), out)

    code, out = run_script(("examples/train.lua --steps 6 --batch 4 --seq 16 --eval-every 3 --sample 20 --threads 1 --out %s"):format(dir))
    assert.are.equal(0, code, out)
    assert.is_truthy(out:find("validation loss %d+%.%d+ nats/char"), out)
    code, out = run_script(("examples/train.lua --steps 9 --batch 4 --seq 16 --sample 0 --threads 1 --out %s --resume %s/checkpoint.safetensors"):format(dir, dir))
    assert.are.equal(0, code, out)
    assert.is_truthy(out:find("resumed from .* at step 6"), out)
    assert.is_truthy(out:find("after 9 steps", 1, true), out)
  end)

  it("selective_copying.lua and induction_heads.lua train both models and print their table", function()
    local code, out = run_script("examples/selective_copying.lua --steps 4 --batch 4 --length 12 --tokens 3 --vocab 4 --d 8 --eval 1 --threads 1")
    assert.are.equal(0, code, out)
    assert.is_truthy(out:find("Mamba (selective)", 1, true), out)
    assert.is_truthy(out:find("Mamba, no selection", 1, true), out)
    assert.is_truthy(out:find("chance: 25.0%", 1, true), out)
    code, out = run_script("examples/induction_heads.lua --steps 4 --batch 4 --length 12 --vocab 4 --d 8 --tests 1,2 --eval 1 --threads 1 --models mamba,attention")
    assert.are.equal(0, code, out)
    assert.is_truthy(out:find("T=12", 1, true) and out:find("T=24", 1, true), out)
    assert.is_truthy(out:find("\nmamba ") and out:find("\nattention "), out)
    code, out = run_script("examples/induction_heads.lua --tests 0")
    assert.are.equal(2, code)
    assert.is_truthy(out:find("--tests needs positive integers, got '0'", 1, true), out)
  end)

  it("associative_recall.lua trains each mixer and prints accuracy by number of pairs", function()
    local code, out = run_script("examples/associative_recall.lua --steps 3 --batch 4 --length 16 --pairs 2,4 --vocab 21 --d 8 --eval 1 --threads 1 --models deltanet,gla")
    assert.are.equal(0, code, out)
    assert.is_truthy(out:find("2 pairs", 1, true) and out:find("4 pairs", 1, true), out)
    assert.is_truthy(out:find("\ndeltanet ") and out:find("\ngla "), out)
    code, out = run_script("examples/associative_recall.lua --pairs 5 --length 16")
    assert.are.equal(2, code)
    assert.is_truthy(out:find("--pairs needs integers in 1 .. length / 4 = 4, got '5'", 1, true), out)
  end)

  it("sample.lua generates the asked length, the same twice with a seed", function()
    local cmd = ("examples/sample.lua %s/checkpoint.safetensors --length 40 --seed 7 --prompt T --top-k 5 --threads 1"):format(dir)
    local code1, out1 = run_script(cmd)
    local code2, out2 = run_script(cmd)
    assert.are.equal(0, code1, out1)
    assert.are.equal(0, code2)
    assert.are.equal(out1, out2)
    assert.are.equal(41, utf8.len((out1:gsub("\n$", ""))))
    assert.are.equal("T", out1:sub(1, 1))
    local code, out = run_script("examples/sample.lua " .. dir .. "/missing.safetensors")
    assert.are.equal(2, code)
    assert.is_truthy(out:find("missing.safetensors", 1, true), out)
  end)
end)
