-- seqnn rock: `luarocks --lua-version 5.4 make rocks/seqnn-scm-1.rockspec [--tree DIR]`
-- from the checkout. The Makefile does the work: `make all` with luarocks' compiler
-- variables, then `make install` into the rock's own directories (LIBDIR, LUADIR, BINDIR),
-- which luarocks deploys to the tree: lib/lua/5.4/seqnn/core.so, share/lua/5.4/seqnn/*.lua,
-- and bin/seqnn (a Lua script, so luarocks wraps it with the tree's package paths).
-- Where mpicc exists (Open MPI: apt-get install libopenmpi-dev), the Makefile also builds
-- and installs lib/lua/5.4/seqnn/mpi.so, the MPI collectives of sn.dist; MPI=0 in the
-- environment of `luarocks make` (or no mpicc) leaves it out and sn.dist says so when used.
rockspec_format = "3.0"
package = "seqnn"
version = "scm-1"

source = {
  url = "git+file://.",  -- not fetched by `luarocks make`, which builds the checkout it runs in
}

description = {
  summary = "Neural sequence engine for CPUs: fused SIMD kernels driven from Lua",
  detailed = [[
    Strided tensors with SIMD math (AVX2/AVX-512, SLEEF), OpenBLAS matmul and OpenMP
    threads, exposed to Lua 5.4 with Torch7-style ergonomics and a REPL (`seqnn`).
  ]],
  license = "MIT",
}

dependencies = {
  "lua >= 5.4",
}

build = {
  type = "make",
  build_target = "all",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    LUA = "$(LUA)",
  },
  install_target = "install",
  install_variables = {
    LIBDIR = "$(LIBDIR)",
    LUADIR = "$(LUADIR)",
    BINDIR = "$(BINDIR)",
    PREFIX = "$(PREFIX)",
  },
}

test = {
  type = "command",
  command = "make test",
}
