-- sn.save / sn.load: safetensors checkpoints. Round trips, a reference file written by an
-- independent writer (tests/fixtures/make_safetensors_fixture.py), error messages that name
-- the path and the reason, atomic writes, and zero-copy loading through mmap.
local sn = require "seqnn"

local spec_dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local fixture = spec_dir .. "/fixtures/reference.safetensors"

local function read_bytes(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write_bytes(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function listdir(dir)
  local names = {}
  local p = assert(io.popen("ls -A '" .. dir .. "'"))
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

-- A file in safetensors layout with the given header text and data bytes.
local function st_bytes(header, data)
  header = header .. string.rep(" ", -#header % 8)
  return string.pack("<I8", #header) .. header .. (data or "")
end

local helpers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "helpers.lua")
local err_of = helpers.err_of

describe("seqnn.save / seqnn.load", function()
  local dir
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir '" .. dir .. "'"))
  end)
  after_each(function()
    sn.set_memory_limit(0)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("round-trips dtypes, shapes, 0-dim and empty tensors, views and metadata", function()
    local path = dir .. "/ckpt.safetensors"
    local m = sn.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    local tensors = {
      weight = m,
      ["layers.0.bias"] = sn.tensor({ -1.5, 0.25 }),
      ids = sn.tensor({ 3, -7, 9007199254740993 }, "i64"),
      loss = sn.tensor(0.75),
      step = sn.tensor(1200, "i64"),
      empty = sn.zeros(0, 4),
      transposed = m:t(),
      ["名前 \"quoted\"\n"] = sn.ones(1),
    }
    sn.save(path, tensors, { epoch = "3", note = "caf\u{e9}" })
    local t, meta = sn.load(path)
    assert.are.same({ epoch = "3", note = "caf\u{e9}" }, meta)
    local names = {}
    for k in pairs(t) do names[#names + 1] = k end
    table.sort(names)
    local want = {}
    for k in pairs(tensors) do want[#want + 1] = k end
    table.sort(want)
    assert.are.same(want, names)
    for k, v in pairs(tensors) do
      assert.are.equal(v:dtype(), t[k]:dtype(), k)
      assert.are.same(v:shape(), t[k]:shape(), k)
      assert.are.same(v:totable(), t[k]:totable(), k)
    end
    assert.are.same({ { 1, 4 }, { 2, 5 }, { 3, 6 } }, t.transposed:totable())
    assert.are.equal(0, t.loss:dim())
    assert.are.equal(1200, t.step:item())
    assert.are.equal(9007199254740993, t.ids:totable()[3])
  end)

  it("writes the same bytes for the same tensors, metadata optional", function()
    local a, b = dir .. "/a.safetensors", dir .. "/b.safetensors"
    sn.save(a, { x = sn.arange(5), y = sn.ones(2, 2), z = sn.tensor(1, "i64") })
    sn.save(b, { z = sn.tensor(1, "i64"), y = sn.ones(2, 2), x = sn.arange(5) })
    assert.are.equal(read_bytes(a), read_bytes(b))
    local header_len = string.unpack("<I8", read_bytes(a))
    assert.are.equal(0, header_len % 8)
    local _, meta = sn.load(a)
    assert.are.same({}, meta)
  end)

  it("loads a file written independently of seqnn, with exact values", function()
    local t, meta = sn.load(fixture)
    assert.are.same({ format = "pt", step = "1200", note = "caf\u{e9} \u{2713}" }, meta)
    assert.are.equal("f32", t.weight:dtype())
    assert.are.same({ 2, 3 }, t.weight:shape())
    local w = t.weight:totable()
    assert.are.same({ 1.0, -2.0, 0.5 }, w[1])
    assert.are.equal(3.25, w[2][1])
    assert.are.equal(-0.125, w[2][2])
    assert.is_true(math.abs(w[2][3] - 1e-3) < 1e-10)
    -- F16 and BF16 become f32 exactly, including the largest, subnormal and infinite values
    assert.are.equal("f32", t.half:dtype())
    assert.are.same({ 1.0, -2.5, 65504.0, 2.0 ^ -24, math.huge }, t.half:totable())
    assert.are.same({ 1.0, -3.140625 }, t.brain:totable())
    -- F64 -> f32, 0-dim
    assert.are.equal(0, t.scale:dim())
    assert.is_true(math.abs(t.scale:item() - 0.1) < 1e-8)
    -- integers -> i64, exact
    assert.are.equal("i64", t.ids:dtype())
    assert.are.same({ { 0, -1 }, { 2147483647, -2147483648 } }, t.ids:totable())
    local big = t.big:totable()
    assert.are.equal((1 << 40) + 1, big[1])
    assert.are.equal(-(1 << 53) - 1, big[2])
    assert.are.equal(math.maxinteger, big[3])
    assert.are.same({ -32768, 123 }, t.short:totable())
    assert.are.same({ -128, 0, 127 }, t.tiny:totable())
    assert.are.same({ 0, 255 }, t.bytes:totable())
    assert.are.same({ 1, 0, 0, 1 }, t.mask:totable())
    assert.are.same({ 0, 2 }, t.empty:shape())
  end)

  it("names the path and the system's reason for a missing file", function()
    local path = dir .. "/missing.safetensors"
    assert.are.equal("seqnn.load: " .. path .. ": No such file or directory", err_of(function() sn.load(path) end))
    assert.are.equal("seqnn.load: " .. dir .. ": not a regular file", err_of(function() sn.load(dir) end))
    assert.are.equal("bad argument #1 'path' to 'seqnn.load' (string expected, got nil)",
      err_of(function() sn.load(nil) end))
  end)

  it("explains what is wrong with a corrupt file", function()
    local path = dir .. "/bad.safetensors"
    local function load_err(bytes)
      write_bytes(path, bytes)
      local msg = err_of(function() sn.load(path) end)
      assert.are.equal("seqnn.load: " .. path .. ": ", msg:sub(1, #path + 14))
      return msg:sub(#path + 15)
    end
    local good = read_bytes(fixture)
    assert.are.equal("truncated: the file has 5 bytes, less than the 8-byte header length", load_err("hello"))
    assert.are.equal("truncated: header says 4096 bytes but the file has 92 after the 8-byte length",
      load_err(string.pack("<I8", 4096) .. good:sub(9, 100)))
    assert.matches("^truncated: tensor '%w+' has data_offsets", load_err(good:sub(1, #good - 1)))
    assert.matches("^header is not valid JSON", load_err(st_bytes('{"w": {"dtype": ')))
    assert.are.equal("header is an array, expected a JSON object", load_err(st_bytes("[1, 2]")))
    assert.are.equal("tensor 'w': dtype F8_E4M3 is not supported (F32, F64, F16, BF16, I64, I32, I16, I8, U32, U16, U8 and BOOL are)",
      load_err(st_bytes('{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}', "\0\0")))
    assert.are.equal("tensor 'w': data_offsets [0, 12] hold 12 bytes but F32 3x2 needs 24",
      load_err(st_bytes('{"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,12]}}', string.rep("\0", 12))))
    assert.are.equal("__metadata__ 'step' is a number; metadata values must be strings",
      load_err(st_bytes('{"__metadata__":{"step":3}}')))
  end)

  it("rejects bad arguments to save by name, before touching the file", function()
    local path = dir .. "/x.safetensors"
    assert.are.equal("seqnn.save: tensors['w'] must be a seqnn.Tensor, got number",
      err_of(function() sn.save(path, { w = 3 }) end))
    assert.are.equal("seqnn.save: tensors has a number key (1); keys must be strings",
      err_of(function() sn.save(path, { sn.ones(1) }) end))
    assert.are.equal("seqnn.save: metadata['step'] must be a string, got number",
      err_of(function() sn.save(path, {}, { step = 3 }) end))
    assert.are.equal("bad argument #2 'tensors' to 'seqnn.save' (table of name -> seqnn.Tensor expected, got nil)",
      err_of(function() sn.save(path, nil) end))
    local freed = sn.ones(2)
    freed:free()
    assert.are.equal("seqnn.save: tensors['f'] was freed", err_of(function() sn.save(path, { f = freed }) end))
    assert.are.equal("seqnn.save: " .. path .. ": '__metadata__' is reserved and cannot name a tensor",
      err_of(function() sn.save(path, { __metadata__ = sn.ones(1) }) end))
    assert.are.same({}, listdir(dir))
  end)

  it("leaves the previous file byte-identical when a save fails", function()
    local path = dir .. "/model.safetensors"
    sn.save(path, { a = sn.arange(10), b = sn.ones(3, 3) }, { v = "1" })
    local before = read_bytes(path)
    -- a non-tensor among valid tensors
    err_of(function() sn.save(path, { a = sn.ones(4), b = sn.ones(2), c = "oops", d = sn.ones(1) }) end)
    assert.are.equal(before, read_bytes(path))
    -- out of memory midway: the header is written, then copying a transposed tensor fails
    local big = sn.ones(256, 512):t()
    sn.set_memory_limit(sn.memory().live + 1024)
    local msg = err_of(function() sn.save(path, { a = sn.ones(2), z = big }) end)
    sn.set_memory_limit(0)
    assert.matches("copying non-contiguous tensor 'z' failed", msg, 1, true)
    assert.are.equal(before, read_bytes(path))
    -- a directory that does not exist
    local missing = dir .. "/no/such/dir/m.safetensors"
    assert.matches("^seqnn%.save: " .. missing:gsub("%p", "%%%0") .. ": cannot create .*No such file or directory$",
      err_of(function() sn.save(missing, { a = sn.ones(1) }) end))
    assert.are.same({ "model.safetensors" }, listdir(dir)) -- no temporary file left behind
  end)

  it("maps a large file instead of copying it, copy-on-write", function()
    local path = dir .. "/large.safetensors"
    local n = 16 * 1024 * 1024 -- 64 MiB of f32
    do
      local x = sn.arange(n)
      sn.save(path, { x = x })
      x:free()
    end
    collectgarbage()
    local before = sn.memory().live
    local t = sn.load(path)
    -- mapped storages are not tensor allocations: live grows by far less than 64 MiB
    assert.is_true(sn.memory().live - before < 1024 * 1024,
      ("live grew by %d bytes"):format(sn.memory().live - before))
    assert.are.equal(n, t.x:numel())
    assert.are.equal(n - 1, t.x[n])
    -- writing to a mapped tensor changes memory, never the file
    t.x:fill_(7)
    assert.are.equal(7, t.x[1])
    assert.are.equal(0, sn.load(path).x[1])
    -- the tensors outlive the mapping's file: an atomic save replaces it under them
    sn.save(path, { x = sn.zeros(1) })
    assert.are.equal(7, t.x[n])
    assert.are.same({ 1 }, sn.load(path).x:shape())
  end)
end)
