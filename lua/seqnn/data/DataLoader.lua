-- seqnn.data.DataLoader(dataset, {batch = B [, shuffle = false] [, seed = s] [, drop_last = false]}):
-- batches of an index dataset (len/get), epoch after epoch.
--
--   for x, y in loader:batches() do ... end   -- the rest of the current epoch
--   local x, y = loader:next()                -- the next batch, starting epochs as needed
--
-- Its position is three integers, state() = {epoch, cursor, seed} (+ size, to check it is
-- restored on the same dataset); set_state(s) on a new loader continues with exactly the
-- batches the old one would have given.
--
-- loader:shard(rank, world) (data-parallel training, sn.dist): the ranks walk the same
-- epoch order in steps of a global batch of world x B samples, and rank r takes the samples
-- r*B+1 .. (r+1)*B of each, so two ranks with batch B see exactly the rows of one loader
-- with batch 2B. An epoch's last, partial global batch of `left` samples gives every rank
-- floor(left / world) of them (equal shares keep the mean of the ranks' means the global
-- mean; up to world - 1 samples are skipped), or nothing with drop_last. The position
-- (cursor) counts global samples, so state() is the same on every rank and restores on any
-- number of ranks.
local sn = require "seqnn"
local class = require "seqnn.class"
local Dataset = require "seqnn.data.Dataset"
local DataLoader = sn.class("seqnn.data.DataLoader")

-- The order of epoch e is a Fisher-Yates shuffle driven by splitmix64 started from (seed, e):
-- the loader never draws from seqnn's generator, and no order needs to be saved.
local GOLDEN = 0x9E3779B97F4A7C15 -- integer literals wrap to 64 bits, as does arithmetic

local function mix(z)
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return z ~ (z >> 31)
end

local function shuffled(n, seed, epoch)
  local order, s = {}, mix(seed) ~ mix(epoch + GOLDEN)
  for i = 1, n do order[i] = i end
  for i = n, 2, -1 do
    s = s + GOLDEN
    local j = (mix(s) >> 11) % i + 1 -- 53 random bits: the modulo bias is negligible
    order[i], order[j] = order[j], order[i]
  end
  return order
end

local function check_option(ok, fn, name, want, got)
  if not ok then error(("%s: %s must be %s, got %s"):format(fn, name, want, tostring(got)), 4) end
end

function DataLoader:__init(dataset, opts)
  local fn = "seqnn.data.DataLoader"
  if not class.is_instance(dataset, Dataset) then
    error(("%s: dataset must be a seqnn.data.Dataset, got %s"):format(fn, tostring(dataset)), 3)
  end
  opts = opts or {}
  local B, shuffle, drop_last, seed = opts.batch, opts.shuffle or false, opts.drop_last or false, opts.seed
  check_option(math.type(B) == "integer" and B >= 1, fn, "batch", "a positive integer", B)
  check_option(type(shuffle) == "boolean", fn, "shuffle", "a boolean", shuffle)
  check_option(type(drop_last) == "boolean", fn, "drop_last", "a boolean", drop_last)
  check_option(seed == nil or math.type(seed) == "integer", fn, "seed", "an integer", seed)
  local n = dataset:len()
  if n < 1 or (drop_last and n < B) then
    error(("%s: the dataset has %d samples, too few for one batch of %d%s"):format(fn, n, B,
      drop_last and " with drop_last" or ""), 3)
  end
  if shuffle and seed == nil then seed = sn.randint(0, 0x7fffffff, 1)[1] end -- follows sn.manual_seed
  self.dataset, self.size, self.batch_size = dataset, n, B
  self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
  self.epoch, self.cursor = 1, 0 -- cursor: samples of this epoch already given out (all ranks')
  self.rank, self.world = 0, 1
end

-- shard(rank, world) -> self: this loader gives rank's share of each global batch (see
-- above); shard(0, 1) undoes it.
function DataLoader:shard(rank, world)
  local fn = "seqnn.data.DataLoader:shard"
  if math.type(world) ~= "integer" or world < 1 then
    error(("%s: world must be a positive integer, got %s"):format(fn, tostring(world)), 2)
  end
  if math.type(rank) ~= "integer" or rank < 0 or rank >= world then
    error(("%s: rank must be an integer in 0..%d, got %s"):format(fn, world - 1, tostring(rank)), 2)
  end
  if self.size < world then
    error(("%s: the dataset has %d samples, fewer than the %d ranks"):format(fn, self.size, world), 2)
  end
  self.rank, self.world = rank, world
  return self
end

-- Batches per epoch (this rank's).
function DataLoader:len()
  local global = self.batch_size * self.world
  local full, left = self.size // global, self.size % global
  if self.drop_last then return full end
  return full + (left >= self.world and 1 or 0)
end

-- The size of this rank's next batch of this epoch, 0 when the epoch is over.
local function next_count(self)
  local left = self.size - self.cursor
  if self.drop_last and left < self.batch_size * self.world then return 0 end
  return math.min(left // self.world, self.batch_size)
end

local function start_next_epoch(self)
  self.epoch, self.cursor = self.epoch + 1, 0
end

-- The order of the current epoch: cached, since an epoch asks for it once per batch.
local function epoch_order(self)
  if self.order_epoch ~= self.epoch then
    self.order, self.order_epoch = shuffled(self.size, self.seed, self.epoch), self.epoch
  end
  return self.order
end

local function take(self, count)
  local order = self.shuffle and epoch_order(self)
  local indices, base = {}, self.cursor + self.rank * count
  for k = 1, count do
    local i = base + k
    indices[k] = order and order[i] or i
  end
  self.cursor = self.cursor + count * self.world
  return self.dataset:collate(indices)
end

-- next(): x, y of the next batch; after the last batch of an epoch comes the next epoch.
function DataLoader:next()
  if next_count(self) == 0 then start_next_epoch(self) end
  return take(self, next_count(self))
end

-- batches(): an iterator over the rest of the current epoch, or over the next epoch when
-- the current one is over.
function DataLoader:batches()
  if next_count(self) == 0 then start_next_epoch(self) end
  return function()
    local count = next_count(self)
    if count > 0 then return take(self, count) end
  end
end

function DataLoader:state()
  return { epoch = self.epoch, cursor = self.cursor, seed = self.seed, size = self.size }
end

local function to_integer(v) -- an integer or its decimal string; anything else gives nil
  local num = tonumber(v)
  return num and math.tointeger(num)
end

-- set_state(s): values may be integers or their decimal strings (checkpoint metadata).
function DataLoader:set_state(s)
  local fn = "seqnn.data.DataLoader:set_state"
  if type(s) ~= "table" then error(("%s: expected a table from state(), got %s"):format(fn, type(s)), 2) end
  local v = {}
  for _, key in ipairs({ "epoch", "cursor", "seed", "size" }) do
    v[key] = to_integer(s[key])
  end
  if v.size ~= self.size then
    error(("%s: the state is for a dataset of %s samples, this one has %d"):format(fn, tostring(s.size), self.size), 2)
  end
  if not v.epoch or v.epoch < 1 or not v.cursor or v.cursor < 0 or v.cursor > self.size then
    error(("%s: bad epoch %s or cursor %s"):format(fn, tostring(s.epoch), tostring(s.cursor)), 2)
  end
  if self.shuffle and not v.seed then
    error(("%s: a shuffling loader needs the seed, got %s"):format(fn, tostring(s.seed)), 2)
  end
  self.epoch, self.cursor, self.seed = v.epoch, v.cursor, v.seed
end

function DataLoader:__tostring()
  return ("seqnn.data.DataLoader(%d samples, batch %d%s%s%s)"):format(self.size, self.batch_size,
    self.shuffle and (", shuffle, seed " .. self.seed) or "", self.drop_last and ", drop_last" or "",
    self.world > 1 and (", shard %d of %d"):format(self.rank, self.world) or "")
end

return DataLoader
