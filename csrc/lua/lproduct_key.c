/* lproduct_key.c -- the product-key memory kernels of kernels/product_key.c (seqnn.h), for
 * sn.F.product_key_* and sn.nn.ProductKeyMemory:
 *   idx, val     = k_product_key_topk(scores, k)               scores (..., n) -> (..., k)
 *   slot, score  = k_product_key_select(s1, s2, knn)           s1, s2 (..., n) -> (..., knn)
 *   ds1, ds2     = k_product_key_select_bwd(dscore, slot, n)   (..., knn) -> (..., n)
 *   y            = k_product_key_gather(values, idx, w)        values (S, D), idx/w (..., J) -> (..., D)
 *   dw|nil, rows|nil, drows|nil = k_product_key_gather_bwd(dy, values, idx, w, want_dw, want_dvalues)
 * Leading dims are flattened into rows; inputs that are not contiguous are copied into
 * pushed temporaries, and outputs are pushed before a kernel runs, so on an error the
 * collector owns everything. */
#include <string.h>

#include "lcheck.h"

#define FN_TOPK "seqnn.F.product_key_topk"
#define FN_SEL "seqnn.F.product_key_select"
#define FN_GATHER "seqnn.F.product_key_gather"

#define CHECK(L, fn, st) do { sn_status st_ = (st); if (st_ != SN_OK) sn_lua_raise(L, fn, st_); } while (0)

/* A tensor argument with at least one dim (the last is what the kernels work along). */
static sn_tensor *arg_rows(lua_State *L, int idx, const char *fn, const char *arg, sn_dtype dt) {
  sn_tensor *t = sn_lua_check_tensor(L, idx, fn, arg, (int)dt);
  if (t->ndim < 1) sn_lua_fail(L, "%s: %s must have at least 1 dim, got a scalar", fn, arg);
  return t;
}

/* The (rows, last) matrix of the contiguous t, leading dims flattened: a borrowed struct
 * over t's storage (no reference taken, never released), valid while t is on the stack. */
static sn_tensor flat2(const sn_tensor *t) {
  sn_tensor v = *t;
  int64_t rows = 1, last = t->size[t->ndim - 1];
  for (int d = 0; d < t->ndim - 1; d++) rows *= t->size[d];
  v.ndim = 2;
  v.size[0] = rows, v.size[1] = last;
  v.stride[0] = last, v.stride[1] = 1;
  return v;
}

/* A new tensor with t's shape but the last dim `last`, pushed. */
static sn_tensor *push_last(lua_State *L, const char *fn, const sn_tensor *t, sn_dtype dt, int64_t last) {
  int64_t size[SN_MAX_DIMS];
  memcpy(size, t->size, sizeof size);
  size[t->ndim - 1] = last;
  return sn_lua_push_empty(L, fn, dt, t->ndim, size);
}

static void same_shape_arg(lua_State *L, const char *fn, const char *an, const sn_tensor *a, const char *bn,
                           const sn_tensor *b) {
  if (!sn_same_shape(a, b)) sn_lua_fail(L, "%s: %s and %s must have the same shape (%s: %s, %s: %s)", fn, an, bn, an,
                                        SN_SHAPE(a), bn, SN_SHAPE(b));
}

/* idx, val = k_product_key_topk(scores, k) */
static int l_topk(lua_State *L) {
  lua_settop(L, 2);
  sn_tensor *s = arg_rows(L, 1, FN_TOPK, "scores", SN_F32);
  int64_t k = sn_lua_check_int(L, 2, FN_TOPK, "k"), n = s->size[s->ndim - 1];
  if (k < 1 || k > n)
    sn_lua_fail(L, "%s: k = %lld must be in [1, %lld], the size of the last dim (scores: %s)", FN_TOPK,
                (long long)k, (long long)n, SN_SHAPE(s));
  s = sn_lua_contiguous(L, FN_TOPK, s);
  sn_tensor *idx = push_last(L, FN_TOPK, s, SN_I64, k), *val = push_last(L, FN_TOPK, s, SN_F32, k);
  sn_tensor s2 = flat2(s), i2 = flat2(idx), v2 = flat2(val);
  CHECK(L, FN_TOPK, sn_product_key_topk(sn_lua_ctx(L), &i2, &v2, &s2, k));
  return 2;
}

/* slot, score = k_product_key_select(s1, s2, knn) */
static int l_select(lua_State *L) {
  lua_settop(L, 3);
  sn_tensor *s1 = arg_rows(L, 1, FN_SEL, "s1", SN_F32), *s2 = arg_rows(L, 2, FN_SEL, "s2", SN_F32);
  same_shape_arg(L, FN_SEL, "s1", s1, "s2", s2);
  int64_t k = sn_lua_check_int(L, 3, FN_SEL, "knn"), n = s1->size[s1->ndim - 1];
  if (k < 1 || k > n)
    sn_lua_fail(L, "%s: knn = %lld must be in [1, %lld], the number of sub-keys (s1: %s)", FN_SEL, (long long)k,
                (long long)n, SN_SHAPE(s1));
  if (n > 3037000499LL) sn_lua_fail(L, "%s: %lld sub-keys: n^2 slots overflow", FN_SEL, (long long)n);
  s1 = sn_lua_contiguous(L, FN_SEL, s1), s2 = sn_lua_contiguous(L, FN_SEL, s2);
  sn_tensor *slot = push_last(L, FN_SEL, s1, SN_I64, k), *score = push_last(L, FN_SEL, s1, SN_F32, k);
  sn_tensor a = flat2(s1), b = flat2(s2), o = flat2(slot), v = flat2(score);
  CHECK(L, FN_SEL, sn_product_key_select(sn_lua_ctx(L), &o, &v, &a, &b, k));
  return 2;
}

/* ds1, ds2 = k_product_key_select_bwd(dscore, slot, n) */
static int l_select_bwd(lua_State *L) {
  lua_settop(L, 3);
  sn_tensor *g = arg_rows(L, 1, FN_SEL, "grad_score", SN_F32), *slot = arg_rows(L, 2, FN_SEL, "slot", SN_I64);
  same_shape_arg(L, FN_SEL, "grad_score", g, "slot", slot);
  int64_t n = sn_lua_check_int(L, 3, FN_SEL, "n");
  if (n < 1 || n > 3037000499LL) sn_lua_fail(L, "%s: n = %lld sub-keys is out of range", FN_SEL, (long long)n);
  g = sn_lua_contiguous(L, FN_SEL, g), slot = sn_lua_contiguous(L, FN_SEL, slot);
  sn_tensor *d1 = push_last(L, FN_SEL, g, SN_F32, n), *d2 = push_last(L, FN_SEL, g, SN_F32, n);
  sn_tensor a = flat2(d1), b = flat2(d2), gg = flat2(g), ss = flat2(slot);
  CHECK(L, FN_SEL, sn_product_key_select_bwd(sn_lua_ctx(L), &a, &b, &gg, &ss));
  return 2;
}

/* values (S, D), idx i64 and w f32 of one shape (..., J); both made contiguous. */
static void gather_args(lua_State *L, int at, sn_tensor **values, sn_tensor **idx, sn_tensor **w) {
  *values = sn_lua_check_tensor(L, at, FN_GATHER, "values", SN_F32);
  *idx = arg_rows(L, at + 1, FN_GATHER, "idx", SN_I64);
  *w = arg_rows(L, at + 2, FN_GATHER, "w", SN_F32);
  if ((*values)->ndim != 2) sn_lua_fail(L, "%s: values must be (slots, D), got %s", FN_GATHER, SN_SHAPE(*values));
  same_shape_arg(L, FN_GATHER, "idx", *idx, "w", *w);
  *values = sn_lua_contiguous(L, FN_GATHER, *values);
  *idx = sn_lua_contiguous(L, FN_GATHER, *idx);
  *w = sn_lua_contiguous(L, FN_GATHER, *w);
}

/* y = k_product_key_gather(values, idx, w) */
static int l_gather(lua_State *L) {
  lua_settop(L, 3);
  sn_tensor *values, *idx, *w;
  gather_args(L, 1, &values, &idx, &w);
  sn_tensor *y = push_last(L, FN_GATHER, idx, SN_F32, values->size[1]);
  sn_tensor yy = flat2(y), ii = flat2(idx), ww = flat2(w);
  CHECK(L, FN_GATHER, sn_product_key_gather_fwd(sn_lua_ctx(L), &yy, values, &ii, &ww));
  return 1;
}

/* dw|nil, rows|nil, drows|nil = k_product_key_gather_bwd(dy, values, idx, w, want_dw, want_dvalues) */
static int l_gather_bwd(lua_State *L) {
  lua_settop(L, 6);
  sn_tensor *values, *idx, *w;
  gather_args(L, 2, &values, &idx, &w);
  sn_tensor *dy = arg_rows(L, 1, FN_GATHER, "grad_output", SN_F32);
  int64_t D = values->size[1];
  if (dy->ndim != idx->ndim || dy->size[dy->ndim - 1] != D)
    sn_lua_fail(L, "%s: grad_output must be idx's shape with the last dim D = %lld (grad_output: %s, idx: %s)",
                FN_GATHER, (long long)D, SN_SHAPE(dy), SN_SHAPE(idx));
  for (int d = 0; d < idx->ndim - 1; d++)
    if (dy->size[d] != idx->size[d])
      sn_lua_fail(L, "%s: grad_output must be idx's shape with the last dim D = %lld (grad_output: %s, idx: %s)",
                  FN_GATHER, (long long)D, SN_SHAPE(dy), SN_SHAPE(idx));
  dy = sn_lua_contiguous(L, FN_GATHER, dy);
  bool want_dw = lua_toboolean(L, 5), want_dv = lua_toboolean(L, 6);
  sn_ctx *ctx = sn_lua_ctx(L);
  sn_tensor ii = flat2(idx), ww = flat2(w), gy = flat2(dy);
  sn_tensor *dw = NULL, *rows = NULL, *drows = NULL, dw2;
  if (want_dw) {
    dw = push_last(L, FN_GATHER, idx, SN_F32, idx->size[idx->ndim - 1]);
    dw2 = flat2(dw);
  } else {
    lua_pushnil(L);
  }
  if (want_dv) {
    int64_t U;
    CHECK(L, FN_GATHER, sn_product_key_gather_rows(ctx, &U, &ii, values->size[0]));
    rows = sn_lua_push_empty(L, FN_GATHER, SN_I64, 1, &U);
    drows = sn_lua_push_empty(L, FN_GATHER, SN_F32, 2, (int64_t[]){U, D});
  } else {
    lua_pushnil(L);
    lua_pushnil(L);
  }
  CHECK(L, FN_GATHER, sn_product_key_gather_bwd(ctx, dw ? &dw2 : NULL, rows, drows, &gy, values, &ii, &ww));
  return 3;
}

static const luaL_Reg fns[] = {
    {"k_product_key_topk", l_topk},     {"k_product_key_select", l_select},
    {"k_product_key_select_bwd", l_select_bwd}, {"k_product_key_gather", l_gather},
    {"k_product_key_gather_bwd", l_gather_bwd}, {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_product_key(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, fns, 1);
  lua_pop(L, 1);
}
