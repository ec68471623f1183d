/* lscan.c -- core.k_selective_scan_fwd / _bwd / _step (kernels/selective_scan.c), called by
 * sn.F.selective_scan and the Mamba block's decoding. Optional tensors arrive as nil (the
 * options Dskip, z, delta_bias, initial_state in that order, then delta_softplus); the
 * kernel checks shapes and names them in its messages. Inputs may be views: only one
 * whose last dim is not unit-stride is copied (a narrow of a projection is read in place).
 * Outputs are pushed before the kernel runs, so on an error the collector owns them. */
#include "lcheck.h"

static const char *FN = "seqnn.F.selective_scan";

#define CHECK(L, st) do { sn_status st_ = (st); if (st_ != SN_OK) sn_lua_raise(L, FN, st_); } while (0)

static sn_tensor *arg(lua_State *L, int idx, const char *name, bool optional) {
  return sn_lua_rows_arg(L, idx, FN, name, optional);
}

/* Dskip|nil, z|nil, delta_bias|nil, delta_softplus and, when h0 > 0, initial_state|nil. */
static sn_scan_opts read_opts(lua_State *L, int first, int h0) {
  sn_scan_opts o = {.Dskip = arg(L, first, "Dskip", true), .z = arg(L, first + 1, "z", true),
                    .delta_bias = arg(L, first + 2, "delta_bias", true), .delta_softplus = lua_toboolean(L, first + 3)};
  if (h0) o.initial_state = arg(L, h0, "initial_state", true);
  return o;
}

/* u (batch, T, D) and A (D, N): the sizes the outputs are made with. */
static void check_ranks(lua_State *L, const sn_tensor *u, const sn_tensor *A, int u_ndim) {
  if (u->ndim != u_ndim)
    sn_lua_fail(L, "%s: u must be %s, got %s", FN, u_ndim == 3 ? "(batch, T, D)" : "(batch, D)", SN_SHAPE(u));
  if (A->ndim != 2) sn_lua_fail(L, "%s: A must be (D, N), got %s", FN, SN_SHAPE(A));
}

/* y, final_state|nil, chunk_states|nil = k_selective_scan_fwd(u, delta, A, B, C, Dskip|nil,
 *   z|nil, delta_bias|nil, delta_softplus, initial_state|nil, want_final, want_chunks) */
static int l_scan_fwd(lua_State *L) {
  lua_settop(L, 12);
  sn_tensor *u = arg(L, 1, "u", false), *delta = arg(L, 2, "delta", false), *A = arg(L, 3, "A", false);
  sn_tensor *Bm = arg(L, 4, "B", false), *Cm = arg(L, 5, "C", false);
  sn_scan_opts opts = read_opts(L, 6, 10);
  check_ranks(L, u, A, 3);
  int64_t B = u->size[0], T = u->size[1], D = u->size[2], N = A->size[1];
  sn_tensor *y = sn_lua_push_empty(L, FN, SN_F32, 3, u->size), *final_state = NULL, *chunks = NULL;
  if (lua_toboolean(L, 11)) final_state = sn_lua_push_empty(L, FN, SN_F32, 3, (int64_t[]){B, D, N});
  else lua_pushnil(L);
  if (lua_toboolean(L, 12))
    chunks = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){B, (T + SN_SCAN_CHUNK - 1) / SN_SCAN_CHUNK, D, N});
  else lua_pushnil(L);
  CHECK(L, sn_selective_scan_fwd(sn_lua_ctx(L), y, final_state, chunks, u, delta, A, Bm, Cm, &opts));
  return 3;
}

/* du, ddelta, dA, dB, dC, dDskip|nil, ddelta_bias|nil, dz|nil, dh0|nil =
 *   k_selective_scan_bwd(dout, dfinal|nil, chunk_states, u, delta, A, B, C, Dskip|nil, z|nil,
 *                        delta_bias|nil, delta_softplus, initial_state|nil)
 * Each optional gradient is a tensor exactly when its input was given. */
static int l_scan_bwd(lua_State *L) {
  lua_settop(L, 13);
  sn_tensor *dout = arg(L, 1, "grad_output", false), *dfinal = arg(L, 2, "grad_final_state", true);
  sn_tensor *chunks = sn_lua_check_tensor(L, 3, FN, "chunk_states", SN_F32);
  sn_tensor *u = arg(L, 4, "u", false), *delta = arg(L, 5, "delta", false), *A = arg(L, 6, "A", false);
  sn_tensor *Bm = arg(L, 7, "B", false), *Cm = arg(L, 8, "C", false);
  sn_scan_opts opts = read_opts(L, 9, 13);
  check_ranks(L, u, A, 3);
  int64_t B = u->size[0], T = u->size[1], D = u->size[2], N = A->size[1];
  sn_tensor *du = sn_lua_push_empty(L, FN, SN_F32, 3, u->size), *ddelta = sn_lua_push_empty(L, FN, SN_F32, 3, u->size);
  sn_tensor *dA = sn_lua_push_empty(L, FN, SN_F32, 2, (int64_t[]){D, N});
  sn_tensor *dBm = sn_lua_push_empty(L, FN, SN_F32, 3, (int64_t[]){B, T, N});
  sn_tensor *dCm = sn_lua_push_empty(L, FN, SN_F32, 3, (int64_t[]){B, T, N});
  sn_tensor *opt[4] = {NULL, NULL, NULL, NULL};
  const sn_tensor *given[4] = {opts.Dskip, opts.delta_bias, opts.z, opts.initial_state};
  const int64_t *shape[4] = {&D, &D, u->size, (int64_t[]){B, D, N}};
  const int ndim[4] = {1, 1, 3, 3};
  for (int i = 0; i < 4; i++) {
    if (given[i]) opt[i] = sn_lua_push_empty(L, FN, SN_F32, ndim[i], shape[i]);
    else lua_pushnil(L);
  }
  CHECK(L, sn_selective_scan_bwd(sn_lua_ctx(L), du, ddelta, dA, dBm, dCm, opt[0], opt[1], opt[2], opt[3], dout, dfinal,
                                 chunks, u, delta, A, Bm, Cm, &opts));
  return 9;
}

/* y = k_selective_scan_step(state, u, delta, A, B, C, Dskip|nil, z|nil, delta_bias|nil,
 *   delta_softplus): one token; u, delta, z (batch, D), B, C (batch, N); state (batch, D, N)
 *   contiguous, updated in place. */
static int l_scan_step(lua_State *L) {
  lua_settop(L, 10);
  sn_tensor *state = sn_lua_check_tensor(L, 1, FN, "state", SN_F32);
  sn_tensor *u = arg(L, 2, "u", false), *delta = arg(L, 3, "delta", false), *A = arg(L, 4, "A", false);
  sn_tensor *Bm = arg(L, 5, "B", false), *Cm = arg(L, 6, "C", false);
  sn_scan_opts opts = read_opts(L, 7, 0);
  check_ranks(L, u, A, 2);
  sn_tensor *y = sn_lua_push_empty(L, FN, SN_F32, 2, u->size);
  CHECK(L, sn_selective_scan_step(sn_lua_ctx(L), y, state, u, delta, A, Bm, Cm, &opts));
  return 1;
}

static const luaL_Reg scan_fns[] = {{"k_selective_scan_fwd", l_scan_fwd},
                                    {"k_selective_scan_bwd", l_scan_bwd},
                                    {"k_selective_scan_step", l_scan_step},
                                    {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_scan(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, scan_fns, 1);
  lua_pop(L, 1);
}
