-- sn.dist: data-parallel collectives over MPI (docs/dist.md).
--
--   mpirun -np 2 lua train.lua
--   local rank, world = sn.dist.init()        -- MPI_Init; idempotent
--   sn.dist.broadcast(model:parameters(), 0)   -- rank 0's values everywhere, in place
--   sn.dist.allreduce(grads, "mean")           -- "sum" | "mean", in place, bucketed
--   sn.dist.barrier()  sn.dist.rank()  sn.dist.world_size()  sn.dist.is_initialized()
--   sn.dist.finalize()                         -- at the end of every rank's script
--
-- The collectives are in a separate C module, seqnn.mpi (build/seqnn/mpi.so), built only
-- where MPI is (make MPI=1, the default when mpicc exists), so `require "seqnn"` and
-- everything else work in a build without MPI; only these functions then raise.
-- A rank whose script ends without finalize (an uncaught error included) aborts the whole
-- job with a message, so the other ranks never wait forever in a collective.
local sn = require "seqnn"

local dist = {}

-- Tensors smaller than this are packed together into buffers of this size, one MPI call
-- per buffer; larger ones are reduced in place by themselves (PyTorch DDP's default, 25 MB).
dist.bucket_bytes = 25 * 1024 * 1024

local mpi -- the C module, once loaded

local NO_MPI = "this build has no MPI (install libopenmpi-dev and rebuild, or run without --dist)"

-- available(): true when seqnn.mpi can be found (the build has MPI); never raises.
function dist.available()
  return mpi ~= nil or package.searchpath("seqnn.mpi", package.cpath) ~= nil
end

local function backend(fn)
  if mpi then return mpi end
  if package.searchpath("seqnn.mpi", package.cpath) == nil then
    error(("%s: %s"):format(fn, NO_MPI), 3)
  end
  local ok, m = pcall(require, "seqnn.mpi")
  if not ok then error(("%s: seqnn.mpi (MPI) failed to load: %s"):format(fn, tostring(m)), 3) end
  -- mpi.so reads tensors through seqnn.h's struct without linking core.so: check that the
  -- struct it was built with is the loaded core's, once, before any tensor reaches it.
  if not m.layout_check(sn.tensor({ 1, 2, 3 })) then
    error(("%s: seqnn.mpi was built against another seqnn.h than the loaded seqnn.core: rebuild both (make)"):format(fn), 3)
  end
  mpi = m
  return m
end

-- init() -> rank (0-based), world_size. Under mpirun each process gets its rank; a plain
-- `lua script.lua` is a world of one.
function dist.init()
  return backend("seqnn.dist.init").init()
end

-- is_initialized(): init() was called and finalize() was not; false in a build without MPI.
function dist.is_initialized()
  return mpi ~= nil and mpi.initialized()
end

function dist.rank() return backend("seqnn.dist.rank").rank() end
function dist.world_size() return backend("seqnn.dist.world_size").size() end
function dist.barrier() return backend("seqnn.dist.barrier").barrier() end
function dist.finalize() return backend("seqnn.dist.finalize").finalize() end

-- The MPI library's name and version, e.g. "Open MPI v4.1.4".
function dist.library() return backend("seqnn.dist.library").library() end

local function bucket_option(fn, opts)
  if opts == nil then return dist.bucket_bytes end
  if type(opts) ~= "table" then error(("%s: opts must be a table, got %s"):format(fn, type(opts)), 3) end
  local b = opts.bucket_bytes or dist.bucket_bytes
  if math.type(b) ~= "integer" or b < 64 then
    error(("%s: opts.bucket_bytes must be an integer >= 64, got %s"):format(fn, tostring(b)), 3)
  end
  return b
end

-- allreduce(tensors [, op = "sum"] [, {bucket_bytes = n}]) -> tensors: every rank's
-- tensors become the element-wise sum (or mean) over ranks, in place. tensors is one
-- tensor or a list; each contiguous, f32 (i64 for "sum" too), no two sharing memory, and
-- every rank passes the same shapes in the same order (checked: all ranks raise together).
function dist.allreduce(tensors, op, opts)
  local fn = "seqnn.dist.allreduce"
  local m = backend(fn)
  if op ~= nil and type(op) ~= "string" then
    error(("%s: op must be \"sum\" or \"mean\", got %s"):format(fn, type(op)), 2)
  end
  m.allreduce(fn, tensors, op or "sum", bucket_option(fn, opts))
  return tensors
end

-- broadcast(tensors [, root = 0] [, {bucket_bytes = n}]) -> tensors: root's values copied
-- into every rank's tensors, in place (f32 or i64, contiguous).
function dist.broadcast(tensors, root, opts)
  local fn = "seqnn.dist.broadcast"
  local m = backend(fn)
  if root ~= nil and math.type(root) ~= "integer" then
    error(("%s: root must be an integer rank, got %s"):format(fn, tostring(root)), 2)
  end
  m.broadcast(fn, tensors, root or 0, bucket_option(fn, opts))
  return tensors
end

-- abort([message] [, code = 1]): ends every rank of the job now (MPI_Abort).
function dist.abort(message, code)
  backend("seqnn.dist.abort").abort(code or 1, message)
end

return dist
