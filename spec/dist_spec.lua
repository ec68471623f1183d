-- sn.dist in one process: the error of a build without MPI, argument checks, a world of
-- one rank (MPI's singleton mode: plain `lua`, no mpirun), DataLoader sharding and the
-- boolean flags of sn.cli. Several ranks: tests/run-dist (mpirun), run by make test.
local sn = require "seqnn"

local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

local NO_MPI = "this build has no MPI (install libopenmpi-dev and rebuild, or run without --dist)"
local has_mpi = sn.dist.available()
-- Under the sanitizers, LeakSanitizer would report Open MPI's allocations live at exit.
local can_init = has_mpi and os.getenv("SN_SANITIZE") ~= "1"

-- A fresh seqnn.dist that cannot find seqnn.mpi, as in a build without MPI.
local function without_mpi(fn)
  local saved_dist, saved_mpi, saved_cpath = package.loaded["seqnn.dist"], package.loaded["seqnn.mpi"], package.cpath
  package.loaded["seqnn.dist"], package.loaded["seqnn.mpi"] = nil, nil
  package.cpath = "/nonexistent/?.so"
  local ok, err = pcall(function() fn(require("seqnn.dist")) end)
  package.loaded["seqnn.dist"], package.loaded["seqnn.mpi"], package.cpath = saved_dist, saved_mpi, saved_cpath
  if not ok then error(err, 0) end
end

describe("sn.dist without MPI", function()
  it("loads, and says so when a script asks for it", function()
    without_mpi(function(dist)
      assert.is_false(dist.available())
      assert.is_false(dist.is_initialized())
      assert.matches("seqnn.dist.init: " .. NO_MPI, err_of(function() dist.init() end), 1, true)
      assert.matches("seqnn.dist.allreduce: " .. NO_MPI, err_of(function() dist.allreduce(sn.ones(2)) end), 1, true)
      assert.matches("seqnn.dist.broadcast: " .. NO_MPI, err_of(function() dist.broadcast(sn.ones(2)) end), 1, true)
      assert.matches("seqnn.dist.world_size: " .. NO_MPI, err_of(function() dist.world_size() end), 1, true)
    end)
  end)

  it("leaves train.fit a plain loop, and dist = true names what is missing", function()
    without_mpi(function(dist)
      local saved = rawget(sn, "dist")
      rawset(sn, "dist", dist)
      local ds = sn.data.TextDataset{ text = sn.data.default_corpus(), seq = 8 }
      local model = sn.models.build("mlp", { vocab_size = ds.tokenizer.vocab_size })
      local ok, msg = pcall(sn.train.fit, { model = model, optimizer = sn.optim.SGD(model:parameters(), { lr = 0.1 }),
        data = ds, steps = 1, batch = 2, quiet = true, dist = true, eval_batches = 0 })
      local plain = sn.train.fit{ model = model, optimizer = sn.optim.SGD(model:parameters(), { lr = 0.1 }),
        data = ds, steps = 1, batch = 2, quiet = true, eval_batches = 0 }
      rawset(sn, "dist", saved)
      assert.is_false(ok)
      assert.matches("seqnn.train.fit: dist = true needs seqnn.dist.init() first", msg, 1, true)
      assert.equals(1, plain.world_size)
    end)
  end)

  it("examples/train.lua --dist exits with the message", function()
    local q = function(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
    -- core.so only: a directory holding a link to it and no mpi.so.
    local dir = os.tmpname()
    os.remove(dir)
    local core = package.searchpath("seqnn.core", package.cpath)
    if core:sub(1, 1) ~= "/" then core = os.getenv("PWD") .. "/" .. core end
    assert.is_true(os.execute(("mkdir -p %s/seqnn && ln -s %s %s/seqnn/core.so"):format(q(dir), q(core), q(dir))))
    local p = io.popen(("LUA_PATH=%s LUA_CPATH=%s %s examples/train.lua --dist --steps 1 2>&1"):format(
      q(package.path), q(dir .. "/?.so"), os.getenv("LUA") or "lua5.4"))
    local out = p:read("a")
    local _, _, code = p:close()
    os.execute("rm -rf " .. q(dir))
    assert.is_not.equals(0, code)
    assert.matches("examples/train.lua: --dist: seqnn.dist.init: " .. NO_MPI, out, 1, true)
  end)
end)

local describe_mpi = has_mpi and describe or pending
describe_mpi("sn.dist argument checks", function()
  local dist = sn.dist
  it("name the function and the argument", function()
    assert.matches("seqnn.dist.allreduce: tensors must be a seqnn.Tensor or a list of them, got nil",
      err_of(function() dist.allreduce(nil) end), 1, true)
    assert.matches("seqnn.dist.allreduce: tensors[2] must be a seqnn.Tensor, got number",
      err_of(function() dist.allreduce({ sn.ones(2), 3 }) end), 1, true)
    assert.matches('seqnn.dist.allreduce: op must be "sum" or "mean", got "max"',
      err_of(function() dist.allreduce(sn.ones(2), "max") end), 1, true)
    assert.matches('seqnn.dist.allreduce: op must be "sum" or "mean", got number',
      err_of(function() dist.allreduce(sn.ones(2), 1) end), 1, true)
    assert.matches("seqnn.dist.allreduce: tensors[2] is not contiguous (3x2 view)",
      err_of(function() dist.allreduce({ sn.ones(2), sn.ones(2, 3):t() }, "sum") end), 1, true)
    assert.matches('seqnn.dist.allreduce: tensors[1] is i64: op "mean" needs f32 tensors',
      err_of(function() dist.allreduce({ sn.ones(2, "i64") }, "mean") end), 1, true)
    local w = sn.ones(4, 4)
    assert.matches("seqnn.dist.allreduce: tensors[1] and tensors[3] share memory",
      err_of(function() dist.allreduce({ w, sn.ones(2), w:narrow(1, 2, 1) }) end), 1, true)
    assert.matches("seqnn.dist.allreduce: opts.bucket_bytes must be an integer >= 64, got 8",
      err_of(function() dist.allreduce(sn.ones(2), "sum", { bucket_bytes = 8 }) end), 1, true)
    assert.matches("seqnn.dist.broadcast: root must be an integer rank, got x",
      err_of(function() dist.broadcast(sn.ones(2), "x") end), 1, true)
    assert.matches("seqnn.dist.broadcast: tensors[1]: tensor was freed", err_of(function()
      local t = sn.ones(2)
      t:free()
      dist.broadcast({ t })
    end), 1, true)
  end)

  it("say init comes first", function()
    if dist.is_initialized() then return end
    assert.matches("seqnn.dist.allreduce: call seqnn.dist.init() first",
      err_of(function() dist.allreduce(sn.ones(2)) end), 1, true)
    assert.matches("seqnn.dist.rank: call seqnn.dist.init() first", err_of(function() dist.rank() end), 1, true)
    assert.matches("seqnn.dist.barrier: call seqnn.dist.init() first", err_of(function() dist.barrier() end), 1, true)
  end)
end)

local describe_init = can_init and describe or pending
describe_init("sn.dist in a world of one rank", function()
  local dist = sn.dist
  setup(function() dist.init() end)
  teardown(function() dist.finalize() end) -- before any other spec file runs train.fit

  it("init is idempotent and gives rank 0 of 1", function()
    local r, n = dist.init()
    assert.equals(0, r)
    assert.equals(1, n)
    assert.equals(0, dist.rank())
    assert.equals(1, dist.world_size())
    assert.is_true(dist.is_initialized())
    assert.matches("MPI", dist.library())
    dist.barrier()
  end)

  it("allreduce and broadcast leave one rank's tensors as they are", function()
    local a, b, c = sn.tensor({ 1, 2, 3 }), sn.tensor({ 5, -7 }, "i64"), sn.randn(1000)
    local c0 = c:clone()
    assert.equals(a, dist.allreduce(a, "mean"))
    dist.allreduce({ a, b, c }, "sum", { bucket_bytes = 64 })
    dist.broadcast({ a, b, c }, 0)
    assert.same({ 1, 2, 3 }, a:totable())
    assert.same({ 5, -7 }, b:totable())
    assert.is_true(sn.allclose(c, c0, 0, 0))
    assert.matches("seqnn.dist.broadcast: root must be a rank in 0..0, got 1",
      err_of(function() dist.broadcast(a, 1) end), 1, true)
  end)

  it("train.fit with dist = true on one rank trains exactly like the plain loop", function()
    local ds = sn.data.TextDataset{ text = sn.data.default_corpus(), seq = 8 }
    local function run(flag)
      sn.manual_seed(4)
      local model = sn.models.build("gpt", { vocab_size = ds.tokenizer.vocab_size, d = 16, layers = 1, heads = 2,
                                             context = 8 })
      local s = sn.train.fit{ model = model, optimizer = sn.optim.AdamW(model:parameters(), { lr = 1e-2 }),
        data = ds, steps = 4, batch = 3, clip = 1.0, quiet = true, eval_batches = 2, dist = flag }
      return model:parameters(), s
    end
    local pd, sd = run(true)
    local pp, sp = run(false)
    for i = 1, #pd do assert.is_true(sn.allclose(pd[i], pp[i], 0, 0), "parameter " .. i) end
    assert.equals(0, sd.rank)
    assert.equals(1, sd.world_size)
    assert.near(sp.loss, sd.loss, 1e-6 * sp.loss) -- the dist loss went through an f32 allreduce
    assert.near(sp.val_loss, sd.val_loss, 1e-6 * sp.val_loss)
  end)

  it("fit detects an initialized sn.dist (dist = nil)", function()
    local ds = sn.data.TextDataset{ text = sn.data.default_corpus(), seq = 8 }
    local model = sn.models.build("mlp", { vocab_size = ds.tokenizer.vocab_size })
    local s = sn.train.fit{ model = model, optimizer = sn.optim.SGD(model:parameters(), { lr = 0.1 }), data = ds,
      steps = 1, batch = 2, quiet = true, eval_batches = 0 }
    assert.equals(1, s.world_size)
    assert.matches("seqnn.train.fit: dist must be a boolean, got yes", err_of(function()
      sn.train.fit{ model = model, optimizer = sn.optim.SGD(model:parameters(), { lr = 0.1 }), data = ds,
        steps = 1, batch = 2, quiet = true, dist = "yes" }
    end), 1, true)
  end)
end)

if can_init then
  describe("sn.dist after finalize", function()
    it("cannot be initialized again, and says why", function()
      assert.is_false(sn.dist.is_initialized())
      assert.matches("seqnn.dist.init: seqnn.dist.finalize() was called", err_of(function() sn.dist.init() end), 1, true)
      assert.matches("seqnn.dist.allreduce: seqnn.dist.finalize() was called",
        err_of(function() sn.dist.allreduce(sn.ones(1)) end), 1, true)
    end)
  end)
end

describe("seqnn.data.DataLoader:shard", function()
  local N, B = 23, 3
  local ds = sn.data.TensorDataset(sn.arange(N):view(N, 1), sn.arange(N))
  local function ids(y) return y:totable() end

  it("gives rank r the rows r*B+1 .. (r+1)*B of the global batch, over epochs", function()
    for _, drop in ipairs({ false, true }) do
      local one = sn.data.DataLoader(ds, { batch = 2 * B, shuffle = true, seed = 9, drop_last = drop })
      local r0 = sn.data.DataLoader(ds, { batch = B, shuffle = true, seed = 9, drop_last = drop }):shard(0, 2)
      local r1 = sn.data.DataLoader(ds, { batch = B, shuffle = true, seed = 9, drop_last = drop }):shard(1, 2)
      assert.equals(r0:len(), r1:len())
      assert.equals(drop and 3 or 4, r0:len()) -- 23 = 3 x 6 + 5: the last 5 give each rank 2
      for _ = 1, 2 * r0:len() + 1 do -- into the third epoch
        local _, y = one:next()
        local _, y0 = r0:next()
        local _, y1 = r1:next()
        local whole, half = ids(y), #ids(y0)
        assert.equals(#ids(y0), #ids(y1))
        local want0, want1 = {}, {}
        for k = 1, half do want0[k], want1[k] = whole[k], whole[half + k] end
        assert.same(want0, ids(y0))
        assert.same(want1, ids(y1))
        -- Global positions, restorable on any world size (the sharded loaders skip the odd
        -- sample of a partial global batch of 5).
        if #whole == 2 * half then assert.same(one:state(), r0:state()) end
      end
    end
  end)

  it("rejects bad ranks and worlds", function()
    local dl = sn.data.DataLoader(ds, { batch = B })
    assert.matches("seqnn.data.DataLoader:shard: rank must be an integer in 0..1, got 2",
      err_of(function() dl:shard(2, 2) end), 1, true)
    assert.matches("seqnn.data.DataLoader:shard: world must be a positive integer, got 0",
      err_of(function() dl:shard(0, 0) end), 1, true)
    assert.matches("seqnn.data.DataLoader:shard: the dataset has 23 samples, fewer than the 24 ranks",
      err_of(function() dl:shard(0, 24) end), 1, true)
    assert.matches("shard 1 of 2", tostring(dl:shard(1, 2)), 1, true)
    dl:shard(0, 1)
    assert.equals(8, dl:len())
  end)
end)

describe("sn.cli boolean flags", function()
  local FLAGS = { { "dist", "boolean", false, "data-parallel" }, { "steps", "integer", 5, "steps" } }
  it("are true when given, false by default, and take =true / =false", function()
    assert.is_true(sn.cli.parse("p", FLAGS, { "--dist", "--steps", "3" }).dist)
    assert.is_false(sn.cli.parse("p", FLAGS, {}).dist)
    assert.is_false(sn.cli.parse("p", FLAGS, { "--dist=false" }).dist)
    assert.equals(3, sn.cli.parse("p", FLAGS, { "--dist=true", "--steps=3" }).steps)
  end)
end)
