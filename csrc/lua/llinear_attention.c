/* llinear_attention.c -- core.k_gated_linear_attention_fwd / _bwd / _step
 * (kernels/linear_attention.c), called by sn.F.gated_linear_attention and the decoding of
 * the linear-time mixers. Optional tensors arrive as nil (g, initial_state, grad_final_state);
 * scale is a finite number (the Lua side defaults it to 1/sqrt(Dk)). The kernel checks shapes
 * and names them in its messages. Inputs may be views: only one whose last dim is not
 * unit-stride is copied (a narrow of a fused projection is read in place). Outputs are pushed
 * before the kernel runs, so on an error the collector owns them. */
#include <math.h>

#include "lcheck.h"

static const char *FN = "seqnn.F.gated_linear_attention";

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

/* scale: any finite number. */
static float read_scale(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TNUMBER) sn_lua_fail(L, "%s: scale must be a number, got %s", FN, luaL_typename(L, idx));
  double s = lua_tonumber(L, idx);
  if (!isfinite(s)) sn_lua_fail(L, "%s: scale must be finite, got %g", FN, s);
  return (float)s;
}

/* q and v must be 4-dim: the outputs are made from their sizes. */
static void check_ranks(lua_State *L, const sn_tensor *q, const sn_tensor *v, const char *t) {
  if (q->ndim != 4) sn_lua_fail(L, "%s: q must be (B, %s, H, Dk), got %s", FN, t, SN_SHAPE(q));
  if (v->ndim != 4) sn_lua_fail(L, "%s: v must be (B, %s, H, Dv), got %s", FN, t, SN_SHAPE(v));
}

/* o, final|nil, chunk_states|nil = k_gated_linear_attention_fwd(q, k, v, g|nil, scale,
 *   initial_state|nil, want_final, want_chunk_states) */
static int l_gla_fwd(lua_State *L) {
  lua_settop(L, 8);
  sn_tensor *q = arg(L, 1, "q", false), *k = arg(L, 2, "k", false), *v = arg(L, 3, "v", false);
  sn_tensor *g = arg(L, 4, "g", true);
  sn_linattn_opts opts = {.scale = read_scale(L, 5), .initial_state = arg(L, 6, "initial_state", true)};
  check_ranks(L, q, v, "T");
  int64_t B = q->size[0], T = q->size[1], H = q->size[2], Dk = q->size[3], Dv = v->size[3];
  sn_tensor *o = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){B, T, H, Dv}), *final_state = NULL, *chunks = NULL;
  if (lua_toboolean(L, 7)) final_state = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){B, H, Dk, Dv});
  else lua_pushnil(L);
  if (lua_toboolean(L, 8))
    chunks = sn_lua_push_empty(L, FN, SN_F32, 5,
                               (int64_t[]){B, H, (T + SN_LINATTN_CHUNK - 1) / SN_LINATTN_CHUNK, Dk, Dv});
  else lua_pushnil(L);
  CHECK(L, sn_gated_linear_attention_fwd(sn_lua_ctx(L), o, final_state, chunks, q, k, v, g, &opts));
  return 3;
}

/* dq, dk, dv, dg|nil, dh0|nil = k_gated_linear_attention_bwd(dout, dfinal|nil, chunk_states,
 *   q, k, v, g|nil, scale, initial_state|nil): dg is a tensor exactly when g is given, dh0
 *   exactly when initial_state is. */
static int l_gla_bwd(lua_State *L) {
  lua_settop(L, 9);
  sn_tensor *dout = arg(L, 1, "grad_output", false), *dfinal = arg(L, 2, "grad_final_state", true);
  sn_tensor *chunks = sn_lua_check_tensor(L, 3, FN, "chunk_states", SN_F32);
  sn_tensor *q = arg(L, 4, "q", false), *k = arg(L, 5, "k", false), *v = arg(L, 6, "v", false);
  sn_tensor *g = arg(L, 7, "g", true);
  sn_linattn_opts opts = {.scale = read_scale(L, 8), .initial_state = arg(L, 9, "initial_state", true)};
  check_ranks(L, q, v, "T");
  int64_t B = q->size[0], H = q->size[2], Dk = q->size[3], Dv = v->size[3];
  sn_tensor *dq = sn_lua_push_empty(L, FN, SN_F32, 4, q->size), *dk = sn_lua_push_empty(L, FN, SN_F32, 4, q->size);
  sn_tensor *dv = sn_lua_push_empty(L, FN, SN_F32, 4, v->size), *dg = NULL, *dh0 = NULL;
  if (g) {
    if (g->ndim != 3 && g->ndim != 4)
      sn_lua_fail(L, "%s: g must be (B, T, H) or (B, T, H, Dk), got %s", FN, SN_SHAPE(g));
    dg = sn_lua_push_empty(L, FN, SN_F32, g->ndim, g->size);
  } else {
    lua_pushnil(L);
  }
  if (opts.initial_state) dh0 = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){B, H, Dk, Dv});
  else lua_pushnil(L);
  CHECK(L, sn_gated_linear_attention_bwd(sn_lua_ctx(L), dq, dk, dv, dg, dh0, dout, dfinal, chunks, q, k, v, g, &opts));
  return 5;
}

/* o = k_gated_linear_attention_step(state, q, k, v, g|nil, scale): one token; q, k
 *   (B,1,H,Dk), v (B,1,H,Dv), g (B,1,H) or (B,1,H,Dk); state (B,H,Dk,Dv) contiguous, updated
 *   in place. */
static int l_gla_step(lua_State *L) {
  lua_settop(L, 6);
  sn_tensor *state = sn_lua_check_tensor(L, 1, FN, "state", SN_F32);
  sn_tensor *q = arg(L, 2, "q", false), *k = arg(L, 3, "k", false), *v = arg(L, 4, "v", false);
  sn_tensor *g = arg(L, 5, "g", true);
  sn_linattn_opts opts = {.scale = read_scale(L, 6)};
  check_ranks(L, q, v, "1");
  sn_tensor *o = sn_lua_push_empty(L, FN, SN_F32, 4, v->size);
  CHECK(L, sn_gated_linear_attention_step(sn_lua_ctx(L), o, state, q, k, v, g, &opts));
  return 1;
}

static const luaL_Reg fns[] = {{"k_gated_linear_attention_fwd", l_gla_fwd},
                               {"k_gated_linear_attention_bwd", l_gla_bwd},
                               {"k_gated_linear_attention_step", l_gla_step},
                               {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_linear_attention(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, fns, 1);
  lua_pop(L, 1);
}
