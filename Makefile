# seqnn -- build, test, bench, install.
#
#   make            build/seqnn/core.so (the Lua module's C part) and build/libseqnn.a
#   make test       Criterion tests of the C core, then the busted specs (Lua 5.4)
#   make asan       both again under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      one table of timings (see bench/README.md)
#   make install    core.so -> $(LIBDIR)/seqnn, lua/seqnn -> $(LUADIR)/seqnn, REPL -> $(BINDIR)
#   make lint       cppcheck over csrc/
#   make fuzz       libFuzzer over the safetensors parser for FUZZ_SECONDS (needs clang)
#   make MPI=0      no build/seqnn/mpi.so (sn.dist); the default is MPI=1 where mpicc exists
#
# luarocks passes CFLAGS, LIBFLAG, LUA_INCDIR, LIBDIR, LUADIR and BINDIR (rocks/*.rockspec).

CC         ?= gcc
CFLAGS     ?= -O2 -g
LIBFLAG    ?= -shared
LUA        ?= lua5.4
LUA_INCDIR ?= /usr/include/lua5.4
BUILD      ?= build
PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib/lua/5.4
LUADIR     ?= $(PREFIX)/share/lua/5.4
BINDIR     ?= $(PREFIX)/bin

# sn.dist's collectives live in their own module, build/seqnn/mpi.so, built with mpicc and
# linked against MPI only, so core.so never depends on MPI (see csrc/mpi/lmpi.c).
MPICC      ?= mpicc
MPI        ?= $(if $(shell command -v $(MPICC) 2>/dev/null),1,0)
MPI_SO     := $(if $(filter 1,$(MPI)),$(BUILD)/seqnn/mpi.so)
MPI_BENCH  := $(if $(filter 1,$(MPI)),$(BUILD)/bench/mpi_allreduce)

# OpenBLAS's OpenMP build shares our OpenMP thread pool. With the default pthread build,
# its spinning threads and OpenMP's fought over the cores: a 2-thread training step ran
# 4x slower than a 1-thread one. The rpath makes core.so load this build whatever
# library update-alternatives has made the system default.
OPENBLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
PKGS       := sleef libcjson
PKG_CFLAGS := -I/usr/include/x86_64-linux-gnu/openblas-openmp $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   := -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR) -lopenblas $(shell pkg-config --libs $(PKGS))

# Always on, whatever CFLAGS the caller gives. Never -ffast-math: kernels must see NaN/inf.
SN_CFLAGS  := -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC -fopenmp -Wall -Wextra \
              -Wno-unused-parameter -Icsrc $(PKG_CFLAGS) $(if $(CI),-Werror)
SN_LIBS    := $(PKG_LIBS) -fopenmp -lm

# ISA flags go only on the files that are dispatched to at run time.
AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c
VNNI_FLAGS   := $(AVX512_FLAGS) -mavx512vnni

CORE_SRC := $(sort $(wildcard csrc/*.c csrc/simd/*.c csrc/ops/*.c csrc/kernels/*.c csrc/io/*.c))
LUA_SRC  := $(sort $(wildcard csrc/lua/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
BENCH_SRC:= $(sort $(wildcard bench/bench_*.c))
HEADERS  := $(wildcard csrc/*.h csrc/*/*.h)

CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
LUA_OBJ  := $(LUA_SRC:%.c=$(BUILD)/obj/%.o)

.PHONY: all test test-c test-lua asan fuzz bench install lint clean
all: $(BUILD)/seqnn/core.so $(BUILD)/libseqnn.a $(MPI_SO)

$(BUILD)/obj/csrc/simd/%_avx2.o: csrc/simd/%_avx2.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SN_CFLAGS) $(AVX2_FLAGS) -c $< -o $@

$(BUILD)/obj/csrc/simd/%_avx512.o: csrc/simd/%_avx512.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SN_CFLAGS) $(AVX512_FLAGS) -c $< -o $@

$(BUILD)/obj/csrc/simd/%_vnni.o: csrc/simd/%_vnni.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SN_CFLAGS) $(VNNI_FLAGS) -c $< -o $@

$(BUILD)/obj/csrc/lua/%.o: csrc/lua/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SN_CFLAGS) -I$(LUA_INCDIR) -c $< -o $@

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SN_CFLAGS) -c $< -o $@

$(BUILD)/libseqnn.a: $(CORE_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# Never linked against liblua: the interpreter provides the symbols. -z nodelete keeps
# core.so (and so libgomp) loaded at lua_close, while OpenMP's worker threads still run.
$(BUILD)/seqnn/core.so: $(CORE_OBJ) $(LUA_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LIBFLAG) -Wl,-z,nodelete -o $@ $^ $(SN_LIBS)

# Includes seqnn.h for the sn_tensor struct only; links MPI, never core.so or liblua.
$(BUILD)/seqnn/mpi.so: csrc/mpi/lmpi.c csrc/seqnn.h
	@mkdir -p $(@D)
	$(MPICC) $(CFLAGS) -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC -Wall -Wextra -Wno-unused-parameter \
	  $(if $(CI),-Werror) -Icsrc -I$(LUA_INCDIR) $(LIBFLAG) -o $@ $<

$(BUILD)/bench/mpi_allreduce: bench/mpi_allreduce.c
	@mkdir -p $(@D)
	$(MPICC) $(CFLAGS) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -o $@ $<

$(BUILD)/tests/seqnn_tests: $(TEST_SRC) $(BUILD)/libseqnn.a $(wildcard tests/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SN_CFLAGS) -Itests -o $@ $(TEST_SRC) $(BUILD)/libseqnn.a $(SN_LIBS) -lcriterion

$(BUILD)/bench/seqnn_bench: $(BENCH_SRC) $(BUILD)/libseqnn.a bench/bench.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SN_CFLAGS) -Ibench -o $@ $(BENCH_SRC) $(BUILD)/libseqnn.a $(SN_LIBS)

# The specs see the checkout's Lua files and this build's core.so, never an installed copy.
LUA_ENV := LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" \
           LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"

test: all $(BUILD)/tests/seqnn_tests
	@BUILD=$(BUILD) LUA=$(LUA) tests/run-all

test-c: $(BUILD)/tests/seqnn_tests
	$(BUILD)/tests/seqnn_tests

test-lua: all
	$(LUA_ENV) $(LUA) $$(command -v busted) --lua=$(LUA) spec

# The sanitizers need their runtime loaded before the (uninstrumented) interpreter.
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
asan:
	$(MAKE) BUILD=build-asan CFLAGS="$(ASAN_FLAGS)" LIBFLAG="-shared -fsanitize=address,undefined" \
	  all build-asan/tests/seqnn_tests
	@BUILD=build-asan LUA=$(LUA) SN_SANITIZE=1 tests/run-all

# libFuzzer with ASan+UBSan over fuzz/fuzz_safetensors.c; the core is rebuilt with clang in
# build-fuzz. New inputs go to fuzz/corpus (seeded from tests/fuzz_corpus), crashes to
# fuzz/findings/; copy a reproducer into tests/fuzz_corpus once its bug is fixed.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 600
FUZZ_FLAGS   := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
fuzz:
	$(MAKE) BUILD=build-fuzz CC=$(FUZZ_CC) CFLAGS="$(FUZZ_FLAGS) -fsanitize=fuzzer-no-link" \
	  build-fuzz/fuzz/fuzz_safetensors
	mkdir -p fuzz/corpus fuzz/findings
	cp -n tests/fuzz_corpus/* fuzz/corpus/
	build-fuzz/fuzz/fuzz_safetensors -max_total_time=$(FUZZ_SECONDS) -dict=fuzz/safetensors.dict \
	  -artifact_prefix=fuzz/findings/ fuzz/corpus

$(BUILD)/fuzz/fuzz_safetensors: fuzz/fuzz_safetensors.c $(BUILD)/libseqnn.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -fsanitize=fuzzer $(SN_CFLAGS) -o $@ $< $(BUILD)/libseqnn.a $(SN_LIBS)

bench: all $(BUILD)/bench/seqnn_bench $(MPI_BENCH)
	@$(BUILD)/bench/seqnn_bench
	@$(LUA_ENV) $(LUA) bench/bench_lua.lua
	@$(LUA_ENV) $(LUA) bench/bench_train.lua
	@$(LUA_ENV) $(LUA) bench/bench_gpt.lua
	@$(LUA_ENV) $(LUA) bench/bench_mamba.lua
	@$(LUA_ENV) $(LUA) bench/bench_linear_attention.lua
	@$(LUA_ENV) $(LUA) bench/bench_peers.lua
	@$(LUA_ENV) SEQNN_GEMM=blas $(LUA) bench/bench_sparse.lua
	@$(LUA_ENV) SEQNN_GEMM=blas $(LUA) bench/bench_memory_layer.lua
	@$(LUA_ENV) $(LUA) bench/bench_ecoformer.lua
	@$(LUA_ENV) $(LUA) bench/bench_pkm.lua
	@$(LUA_ENV) BUILD=$(BUILD) $(LUA) bench/bench_dist.lua

install: all
	install -d $(DESTDIR)$(LIBDIR)/seqnn $(DESTDIR)$(LUADIR)/seqnn $(DESTDIR)$(BINDIR)
	install -m 755 $(BUILD)/seqnn/core.so $(DESTDIR)$(LIBDIR)/seqnn/core.so
	$(if $(MPI_SO),install -m 755 $(MPI_SO) $(DESTDIR)$(LIBDIR)/seqnn/mpi.so)
	cd lua && find seqnn -name '*.lua' -exec install -D -m 644 {} $(DESTDIR)$(LUADIR)/{} \;
	install -m 755 bin/seqnn $(DESTDIR)$(BINDIR)/seqnn
	install -m 755 bin/seqnn-plot $(DESTDIR)$(BINDIR)/seqnn-plot

lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --inline-suppr --suppress=missingIncludeSystem -Icsrc $(PKG_CFLAGS:-I%=-I%) csrc

clean:
	rm -rf build build-asan build-fuzz
