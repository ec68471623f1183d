/* lseqnn.c -- luaopen_seqnn_core: the per-state context, the tensor metatable, and the
 * module-level functions for threads, random state, memory and configuration. */
#include <omp.h>
#include <string.h>
#include <time.h>

#include "lcheck.h"

static int ctx_gc(lua_State *L) {
  sn_ctx_free((sn_ctx *)lua_touserdata(L, 1));
  return 0;
}

static int l_manual_seed(lua_State *L) {
  int64_t seed = sn_lua_check_int(L, 1, "seqnn.manual_seed", "seed");
  sn_manual_seed(sn_lua_ctx(L), (uint64_t)seed);
  return 0;
}

/* get_rng_state() -> {seed = s, offset = n}; restoring it continues the stream exactly. */
static int l_get_rng_state(lua_State *L) {
  sn_ctx *ctx = sn_lua_ctx(L);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)ctx->seed);
  lua_setfield(L, -2, "seed");
  lua_pushinteger(L, (lua_Integer)ctx->rng_offset);
  lua_setfield(L, -2, "offset");
  return 1;
}

static int l_set_rng_state(lua_State *L) {
  const char *fn = "seqnn.set_rng_state";
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "seed");
  lua_getfield(L, 1, "offset");
  int64_t seed = sn_lua_check_int(L, -2, fn, "state.seed"), off = sn_lua_check_int(L, -1, fn, "state.offset");
  sn_ctx *ctx = sn_lua_ctx(L);
  ctx->seed = (uint64_t)seed;
  ctx->rng_offset = (uint64_t)off;
  return 0;
}

static int l_set_num_threads(lua_State *L) {
  int64_t n = sn_lua_check_int(L, 1, "seqnn.set_num_threads", "n");
  if (n < 1 || n > 1024) return sn_lua_fail(L, "seqnn.set_num_threads: n must be in 1..1024, got %lld", (long long)n);
  sn_set_num_threads((int)n);
  return 0;
}

static int l_get_num_threads(lua_State *L) {
  lua_pushinteger(L, sn_get_num_threads());
  return 1;
}

/* memory() -> {live = bytes, peak = bytes, limit = bytes or 0} */
static int l_memory(lua_State *L) {
  sn_ctx *ctx = sn_lua_ctx(L);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, ctx->live_bytes);
  lua_setfield(L, -2, "live");
  lua_pushinteger(L, ctx->peak_bytes);
  lua_setfield(L, -2, "peak");
  lua_pushinteger(L, ctx->limit_bytes);
  lua_setfield(L, -2, "limit");
  return 1;
}

/* reset_peak_memory(): the peak starts again from the live bytes. */
static int l_reset_peak_memory(lua_State *L) {
  sn_ctx *ctx = sn_lua_ctx(L);
  ctx->peak_bytes = ctx->live_bytes;
  return 0;
}

/* set_memory_limit(bytes): tensor allocations beyond it collect garbage, then fail. 0 = none. */
static int l_set_memory_limit(lua_State *L) {
  int64_t n = sn_lua_check_int(L, 1, "seqnn.set_memory_limit", "bytes");
  if (n < 0) return sn_lua_fail(L, "seqnn.set_memory_limit: bytes must be >= 0, got %lld", (long long)n);
  sn_lua_ctx(L)->limit_bytes = n;
  return 0;
}

static int l_config(lua_State *L) {
  lua_createtable(L, 0, 5);
  lua_pushstring(L, sn_simd_level());
  lua_setfield(L, -2, "simd");
  lua_pushinteger(L, sn_get_num_threads());
  lua_setfield(L, -2, "threads");
  lua_pushstring(L, sn_blas_config());
  lua_setfield(L, -2, "blas");
  lua_pushstring(L, sn_blas_core());
  lua_setfield(L, -2, "blas_core");
  lua_pushinteger(L, omp_get_num_procs());
  lua_setfield(L, -2, "cores");
  return 1;
}

/* clock(): monotonic wall-clock seconds (os.clock counts the CPU time of every thread). */
static int l_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + ts.tv_nsec * 1e-9);
  return 1;
}

static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, sn_lua_test_tensor(L, 1) != NULL);
  return 1;
}

static const luaL_Reg module_fns[] = {
    {"manual_seed", l_manual_seed}, {"get_rng_state", l_get_rng_state}, {"set_rng_state", l_set_rng_state},
    {"set_num_threads", l_set_num_threads}, {"get_num_threads", l_get_num_threads},
    {"memory", l_memory}, {"reset_peak_memory", l_reset_peak_memory}, {"set_memory_limit", l_set_memory_limit},
    {"config", l_config}, {"clock", l_clock}, {"is_tensor", l_is_tensor}, {NULL, NULL}};

int luaopen_seqnn_core(lua_State *L) {
  lua_newtable(L); /* module */
  int module = lua_gettop(L);
  luaL_newmetatable(L, SN_TENSOR_MT); /* sets __name, used in error messages */
  sn_lua_register_metatable(L, -1);
  lua_pop(L, 1);
  lua_newtable(L); /* methods */
  int methods = lua_gettop(L);

  sn_lua_state *state = (sn_lua_state *)lua_newuserdatauv(L, sizeof(sn_lua_state), 0);
  sn_ctx_init(&state->ctx);
  state->allocated_since_collect = 0;
  state->live_after_collect = 0;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, ctx_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  /* Keep ctx alive as long as the state: every function holds it as upvalue 1 anyway. */
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "seqnn.ctx");

  /* The open functions expect: module, ctx on top. */
  lua_pushvalue(L, module);
  lua_pushvalue(L, -2);
  sn_lua_open_tensor(L, methods);
  sn_lua_open_math(L, methods);
  sn_lua_open_nn(L);
  sn_lua_open_attention(L);
  sn_lua_open_io(L, methods);
  sn_lua_open_rope(L);
  sn_lua_open_scan(L);
  sn_lua_open_conv1d(L);
  sn_lua_open_linear_attention(L);
  sn_lua_open_sparse(L);
  sn_lua_open_sparse_lowp(L);
  sn_lua_open_product_key(L);
  sn_lua_open_hash_memory(L);
  sn_lua_open_binary_attention(L);
  lua_pop(L, 2);

  lua_pushvalue(L, module);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, module_fns, 1);
  lua_pop(L, 2); /* module copy, ctx */

  lua_pushvalue(L, methods);
  lua_setfield(L, module, "methods");
  luaL_getmetatable(L, SN_TENSOR_MT);
  lua_setfield(L, module, "metatable");
  lua_pop(L, 1); /* methods */

  /* Our OpenMP loops and OpenBLAS start with the same thread count. */
  sn_set_num_threads(omp_get_max_threads());
  return 1;
}
