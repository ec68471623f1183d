/* ldelta_rule.c -- core.k_delta_rule_fwd / _bwd / _step (kernels/delta_rule.c), called by
 * sn.F.delta_rule and DeltaNet's decoding. Optional tensors arrive as nil; the kernel checks
 * shapes and names them in its messages. Inputs may be views: only one whose last dim is
 * not unit-stride is copied (a narrow of a fused projection is read in place). Outputs are
 * pushed before the kernel runs, so on an error the collector owns them. */
#include <math.h>

#include "lcheck.h"

static const char *FN = "seqnn.F.delta_rule";

#define CHECK(L, st) do { sn_status st_ = (st); if (st_ != SN_OK) sn_lua_raise(L, FN, st_); } while (0)

/* An f32 tensor argument (NULL for nil when optional); copied when its last dim is strided. */
static sn_tensor *arg(lua_State *L, int idx, const char *name, bool optional) {
  if (optional && lua_isnil(L, idx)) return NULL;
  sn_tensor *t = sn_lua_check_tensor(L, idx, FN, name, SN_F32);
  if (t->ndim == 0 || t->size[t->ndim - 1] <= 1 || t->stride[t->ndim - 1] == 1) return t;
  sn_tensor *c = sn_lua_push_empty_like(L, FN, t, SN_F32);
  CHECK(L, sn_copy(sn_lua_ctx(L), c, t));
  return c;
}

/* The scale at idx and the initial state at h0 (0: none) as the kernels' options. */
static sn_linattn_opts read_opts(lua_State *L, int scale, int h0) {
  if (lua_type(L, scale) != LUA_TNUMBER)
    sn_lua_fail(L, "%s: scale must be a number, got %s", FN, luaL_typename(L, scale));
  double s = lua_tonumber(L, scale);
  if (!isfinite((float)s)) sn_lua_fail(L, "%s: scale must be a finite f32, got %g", FN, s);
  return (sn_linattn_opts){.scale = (float)s, .initial_state = h0 ? arg(L, h0, "initial_state", true) : NULL};
}

/* q (B,T,H,Dk) and v (B,T,H,Dv): the sizes the outputs are made with. */
static void check_ranks(lua_State *L, const sn_tensor *q, const sn_tensor *v, bool step) {
  if (q->ndim != 4) sn_lua_fail(L, "%s: q must be %s, got %s", FN, step ? "(B, 1, H, Dk)" : "(B, T, H, Dk)", SN_SHAPE(q));
  if (v->ndim != 4) sn_lua_fail(L, "%s: v must be %s, got %s", FN, step ? "(B, 1, H, Dv)" : "(B, T, H, Dv)", SN_SHAPE(v));
}

/* o, final_state|nil, chunk_states|nil = k_delta_rule_fwd(q, k, v, beta, scale,
 *   initial_state|nil, want_final, want_chunk_states) */
static int l_delta_rule_fwd(lua_State *L) {
  lua_settop(L, 8);
  sn_tensor *q = arg(L, 1, "q", false), *k = arg(L, 2, "k", false), *v = arg(L, 3, "v", false);
  sn_tensor *beta = arg(L, 4, "beta", false);
  sn_linattn_opts opts = read_opts(L, 5, 6);
  check_ranks(L, q, v, false);
  int64_t B = q->size[0], T = q->size[1], H = q->size[2], Dk = q->size[3], Dv = v->size[3];
  sn_tensor *o = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){B, T, H, Dv}), *final_state = NULL, *chunks = NULL;
  if (lua_toboolean(L, 7)) final_state = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){B, H, Dk, Dv});
  else lua_pushnil(L);
  if (lua_toboolean(L, 8))
    chunks = sn_lua_push_empty(L, FN, SN_F32, 5,
                               (int64_t[]){B, H, (T + SN_LINATTN_CHUNK - 1) / SN_LINATTN_CHUNK, Dk, Dv});
  else lua_pushnil(L);
  CHECK(L, sn_delta_rule_fwd(sn_lua_ctx(L), o, final_state, chunks, q, k, v, beta, &opts));
  return 3;
}

/* dq, dk, dv, dbeta, dh0|nil = k_delta_rule_bwd(dout, dfinal|nil, chunk_states, q, k, v, beta,
 *   scale, initial_state|nil); dh0 is a tensor exactly when initial_state is given. */
static int l_delta_rule_bwd(lua_State *L) {
  lua_settop(L, 9);
  sn_tensor *dout = arg(L, 1, "grad_output", false), *dfinal = arg(L, 2, "grad_final_state", true);
  sn_tensor *chunks = sn_lua_check_tensor(L, 3, FN, "chunk_states", SN_F32);
  sn_tensor *q = arg(L, 4, "q", false), *k = arg(L, 5, "k", false), *v = arg(L, 6, "v", false);
  sn_tensor *beta = arg(L, 7, "beta", false);
  sn_linattn_opts opts = read_opts(L, 8, 9);
  check_ranks(L, q, v, false);
  int64_t B = q->size[0], T = q->size[1], H = q->size[2], Dk = q->size[3], Dv = v->size[3];
  sn_tensor *dq = sn_lua_push_empty(L, FN, SN_F32, 4, q->size), *dk = sn_lua_push_empty(L, FN, SN_F32, 4, q->size);
  sn_tensor *dv = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){B, T, H, Dv});
  sn_tensor *dbeta = sn_lua_push_empty(L, FN, SN_F32, 3, (int64_t[]){B, T, H}), *dh0 = NULL;
  if (opts.initial_state) dh0 = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){B, H, Dk, Dv});
  else lua_pushnil(L);
  CHECK(L, sn_delta_rule_bwd(sn_lua_ctx(L), dq, dk, dv, dbeta, dh0, dout, dfinal, chunks, q, k, v, beta, &opts));
  return 5;
}

/* o = k_delta_rule_step(state, q, k, v, beta, scale): one token; q, k (B,1,H,Dk), v (B,1,H,Dv),
 *   beta (B,1,H); state (B,H,Dk,Dv) contiguous, updated in place. */
static int l_delta_rule_step(lua_State *L) {
  lua_settop(L, 6);
  sn_tensor *state = sn_lua_check_tensor(L, 1, FN, "state", SN_F32);
  sn_tensor *q = arg(L, 2, "q", false), *k = arg(L, 3, "k", false), *v = arg(L, 4, "v", false);
  sn_tensor *beta = arg(L, 5, "beta", false);
  sn_linattn_opts opts = read_opts(L, 6, 0);
  check_ranks(L, q, v, true);
  sn_tensor *o = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){q->size[0], 1, q->size[2], v->size[3]});
  CHECK(L, sn_delta_rule_step(sn_lua_ctx(L), o, state, q, k, v, beta, &opts));
  return 1;
}

static const luaL_Reg delta_rule_fns[] = {{"k_delta_rule_fwd", l_delta_rule_fwd},
                                          {"k_delta_rule_bwd", l_delta_rule_bwd},
                                          {"k_delta_rule_step", l_delta_rule_step},
                                          {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_delta_rule(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, delta_rule_fns, 1);
  lua_pop(L, 1);
}
