-- tests/dist/rank_dies.lua MODE -- mpirun -np 2: rank 1 dies mid-training while rank 0
-- waits in the gradient allreduce. MODE "exit": os.exit(1) (no finalize, no Lua cleanup);
-- "error": an uncaught Lua error (the interpreter closes the state: seqnn.mpi's finalizer
-- aborts the job). tests/run-dist expects the job to end within its timeout, non-zero, with
-- a message naming the rank; rank 0 must never print "survived".
local sn = require "seqnn"
local mode = arg[1] or "exit"
local rank = sn.dist.init()
sn.set_num_threads(1)
local ds = sn.data.TextDataset{ text = sn.data.default_corpus(), seq = 16 }
sn.manual_seed(1)
local model = sn.models.build("gpt", { vocab_size = ds.tokenizer.vocab_size, d = 16, layers = 1, heads = 2, context = 16 })
local opt = sn.optim.AdamW(model:parameters(), { lr = 1e-3 })
sn.train.fit{ model = model, optimizer = opt, data = ds, steps = 1000000, batch = 2, quiet = true,
  eval_batches = 0, on_step = function(s)
    if rank == 1 and s.step == 3 then
      if mode == "error" then error("rank 1: a deliberate error at step 3") end
      io.stderr:write("rank 1: exiting at step 3\n")
      os.exit(1)
    end
  end }
print("survived: rank " .. rank .. " finished a million steps")
sn.dist.finalize()
