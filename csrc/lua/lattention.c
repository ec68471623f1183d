/* lattention.c -- core.k_attention_fwd / _bwd / _step (kernels/attention.c), called by
 * sn.F.attention, sn.F.attention_varlen and sn.F.attention_step. Options arrive as
 * positional arguments (causal, window|nil, scale|nil, cu_seqlens_q|nil, cu_seqlens_k|nil);
 * the kernel checks shapes and cu_seqlens and names the shapes in its messages. q, k, v
 * (and grad_output, o) may be views: only one whose last dim is not unit-stride is copied.
 * Outputs are pushed before the kernel runs, so on an error the collector owns them. */
#include <math.h>

#include "lcheck.h"

static const char *FN = "seqnn.F.attention";

#define CHECK(L, st) do { sn_status st_ = (st); if (st_ != SN_OK) sn_lua_raise(L, FN, st_); } while (0)

/* A (B, T, H, Dh) f32 argument; copied when its last dim is strided. */
static sn_tensor *arg_4d(lua_State *L, int idx, const char *name) {
  sn_tensor *t = sn_lua_rows_arg(L, idx, FN, name, false);
  if (t->ndim != 4) sn_lua_fail(L, "%s: %s must be (B, T, H, Dh), got %s", FN, name, SN_SHAPE(t));
  return t;
}

/* The options at these stack indices (0: absent): causal (absent: true, as in the step),
 * window|nil, scale|nil, cu_seqlens_q|nil (and cu_seqlens_k right after it). */
static sn_attention_opts read_opts(lua_State *L, const sn_tensor *q, int causal, int window, int scale, int cu) {
  sn_attention_opts o = {.causal = causal ? lua_toboolean(L, causal) : true, .window = -1};
  if (!lua_isnoneornil(L, window)) {
    o.window = sn_lua_check_int(L, window, FN, "window");
    if (o.window < 0) sn_lua_fail(L, "%s: window must be >= 0 (or nil for none), got %lld", FN, (long long)o.window);
  }
  if (lua_isnoneornil(L, scale)) {
    o.scale = (float)(1.0 / sqrt((double)(q->size[3] > 0 ? q->size[3] : 1)));
  } else {
    double v = luaL_checknumber(L, scale);
    if (!isfinite(v)) sn_lua_fail(L, "%s: scale must be finite, got %g", FN, v);
    o.scale = (float)v;
  }
  if (cu && !lua_isnoneornil(L, cu)) o.cu_seqlens_q = sn_lua_check_tensor(L, cu, FN, "cu_seqlens_q", SN_I64);
  if (cu && !lua_isnoneornil(L, cu + 1)) o.cu_seqlens_k = sn_lua_check_tensor(L, cu + 1, FN, "cu_seqlens_k", SN_I64);
  return o;
}

/* o, lse = k_attention_fwd(q, k, v, causal, window|nil, scale|nil, cu_q|nil, cu_k|nil); lse (B,H,T) */
static int l_attention_fwd(lua_State *L) {
  lua_settop(L, 8);
  sn_tensor *q = arg_4d(L, 1, "q"), *k = arg_4d(L, 2, "k"), *v = arg_4d(L, 3, "v");
  sn_attention_opts opts = read_opts(L, q, 4, 5, 6, 7);
  sn_tensor *o = sn_lua_push_empty_like(L, FN, q, SN_F32);
  sn_tensor *lse = sn_lua_push_empty(L, FN, SN_F32, 3, (int64_t[]){q->size[0], q->size[2], q->size[1]});
  CHECK(L, sn_attention_fwd(sn_lua_ctx(L), o, lse, q, k, v, &opts));
  return 2;
}

/* dq, dk, dv = k_attention_bwd(dout, q, k, v, o, lse, causal, window, scale, cu_q, cu_k
 *                              [, dq, dk, dv]): the gradients are written into the given
 * tensors (views with unit stride on the last dim, e.g. the parts of a packed gradient)
 * when all three are passed, else into new ones. */
static int l_attention_bwd(lua_State *L) {
  lua_settop(L, 14);
  sn_tensor *g = arg_4d(L, 1, "grad_output"), *q = arg_4d(L, 2, "q"), *k = arg_4d(L, 3, "k");
  sn_tensor *v = arg_4d(L, 4, "v"), *o = arg_4d(L, 5, "o");
  sn_tensor *lse = sn_lua_check_tensor(L, 6, FN, "lse", SN_F32);
  sn_attention_opts opts = read_opts(L, q, 7, 8, 9, 10);
  sn_tensor *dq, *dk, *dv;
  if (lua_isnil(L, 12)) {
    dq = sn_lua_push_empty_like(L, FN, q, SN_F32);
    dk = sn_lua_push_empty_like(L, FN, k, SN_F32);
    dv = sn_lua_push_empty_like(L, FN, v, SN_F32);
  } else {
    dq = sn_lua_check_tensor(L, 12, FN, "dq", SN_F32);
    dk = sn_lua_check_tensor(L, 13, FN, "dk", SN_F32);
    dv = sn_lua_check_tensor(L, 14, FN, "dv", SN_F32);
  }
  CHECK(L, sn_attention_bwd(sn_lua_ctx(L), dq, dk, dv, g, q, k, v, o, lse, &opts));
  return 3;
}

/* o = k_attention_step(q, k_new, v_new, k_cache, v_cache, pos, window|nil, scale|nil):
 * writes k_new, v_new into the caches at 0-based pos (in place) */
static int l_attention_step(lua_State *L) {
  lua_settop(L, 8);
  sn_tensor *q = arg_4d(L, 1, "q"), *kn = arg_4d(L, 2, "k_new"), *vn = arg_4d(L, 3, "v_new");
  sn_tensor *kc = sn_lua_check_tensor(L, 4, FN, "k_cache", SN_F32), *vc = sn_lua_check_tensor(L, 5, FN, "v_cache", SN_F32);
  int64_t pos = sn_lua_check_int(L, 6, FN, "pos");
  sn_attention_opts opts = read_opts(L, q, 0, 7, 8, 0);
  sn_tensor *o = sn_lua_push_empty_like(L, FN, q, SN_F32);
  CHECK(L, sn_attention_step(sn_lua_ctx(L), o, kc, vc, q, kn, vn, pos, &opts));
  return 1;
}

static const luaL_Reg attention_fns[] = {
    {"k_attention_fwd", l_attention_fwd}, {"k_attention_bwd", l_attention_bwd},
    {"k_attention_step", l_attention_step}, {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_attention(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, attention_fns, 1);
  lua_pop(L, 1);
}
