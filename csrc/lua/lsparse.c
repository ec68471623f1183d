/* lsparse.c -- the f32 block-sparse (BSR) kernels of kernels/block_sparse.c (format in
 * seqnn.h), for sn.sparse:
 *   mask = k_bsr_mask(w, ro, ri, sparsity)            w (M, K) f32; mask (M/ro, K/ri)
 *   values, browptr, bcol = k_bsr_pack(w, mask)        block shape M/rows(mask) x K/cols(mask)
 *   w = k_bsr_to_dense(values, browptr, bcol, K)       w (M, K), M = #browptr - 1 times ro
 *   y = k_bsr_matmul(x, values, browptr, bcol, bias|nil)           x (N, K); K from x
 *   dx|nil, dvalues|nil, dbias|nil = k_bsr_matmul_bwd(dy, x, values, browptr, bcol,
 *                                                     want_dx, want_dvalues, want_dbias)
 * Here only what the output shapes need is checked; the kernels check the index (every
 * entry, in O(nnzb)) and the shapes, and name them. Outputs are pushed before the kernel
 * runs, so on an error the collector owns them. x and dy whose last dim is not unit-stride
 * are copied. */
#include <math.h>
#include <stdint.h>

#include "lcheck.h"

#define FN_MASK "seqnn.sparse.bsr_mask"
#define FN_PACK "seqnn.sparse.bsr_pack"
#define FN_DENSE "seqnn.sparse.bsr_to_dense"
#define FN_MM "seqnn.sparse.bsr_matmul"
#define FN_BWD "seqnn.sparse.bsr_matmul_bwd"

/* A 2-D f32 tensor argument. */
static sn_tensor *matrix_arg(lua_State *L, int idx, const char *fn, const char *arg, const char *layout) {
  sn_tensor *t = sn_lua_check_tensor(L, idx, fn, arg, SN_F32);
  if (t->ndim != 2) sn_lua_fail(L, "%s: %s must be %s, got %s", fn, arg, layout, SN_SHAPE(t));
  return t;
}

/* values, browptr and bcol at idx .. idx+2; returns M = (#browptr - 1) * ro, for the output
 * shapes (the kernel checks the rest). */
static int64_t bsr_args(lua_State *L, int idx, const char *fn, sn_tensor **values, sn_tensor **browptr,
                        sn_tensor **bcol) {
  *values = sn_lua_check_tensor(L, idx, fn, "values", SN_F32);
  *browptr = sn_lua_check_tensor(L, idx + 1, fn, "browptr", SN_I64);
  *bcol = sn_lua_check_tensor(L, idx + 2, fn, "bcol", SN_I64);
  const sn_tensor *v = *values, *bp = *browptr;
  if (v->ndim != 3 || v->size[1] < 1 || v->size[2] < 1)
    sn_lua_fail(L, "%s: values must be (nnzb, ro, ri) with ro, ri >= 1, got %s", fn, SN_SHAPE(v));
  if (bp->ndim != 1 || bp->size[0] < 1)
    sn_lua_fail(L, "%s: browptr must be a vector of M/ro + 1 >= 1 entries, got %s", fn, SN_SHAPE(bp));
  if ((*bcol)->ndim != 1 || (*bcol)->size[0] != v->size[0])
    sn_lua_fail(L, "%s: bcol must be a vector of nnzb = %lld (values' first dim), got %s", fn, (long long)v->size[0],
                SN_SHAPE(*bcol));
  int64_t Mb = bp->size[0] - 1, ro = v->size[1];
  if (Mb > INT64_MAX / ro)
    sn_lua_fail(L, "%s: M = %lld block-rows x ro = %lld overflows", fn, (long long)Mb, (long long)ro);
  return Mb * ro;
}

/* An integer argument >= lo. */
static int64_t int_arg(lua_State *L, int idx, const char *fn, const char *arg, int64_t lo) {
  int64_t v = sn_lua_check_int(L, idx, fn, arg);
  if (v < lo) sn_lua_fail(L, "%s: %s must be >= %lld, got %lld", fn, arg, (long long)lo, (long long)v);
  return v;
}

static int l_mask(lua_State *L) {
  sn_tensor *w = matrix_arg(L, 1, FN_MASK, "w", "(M, K)");
  int64_t ro = int_arg(L, 2, FN_MASK, "ro", 1), ri = int_arg(L, 3, FN_MASK, "ri", 1);
  if (lua_type(L, 4) != LUA_TNUMBER)
    sn_lua_fail(L, "bad argument #4 'sparsity' to '%s' (number expected, got %s)", FN_MASK, luaL_typename(L, 4));
  double sp = lua_tonumber(L, 4);
  if (!(sp >= 0 && sp <= 1)) sn_lua_fail(L, "%s: sparsity must be in [0, 1], got %g", FN_MASK, sp);
  if (w->size[0] % ro || w->size[1] % ri)
    sn_lua_fail(L, "%s: w's shape %s must be a multiple of the block ro x ri = %lld x %lld", FN_MASK, SN_SHAPE(w),
                (long long)ro, (long long)ri);
  sn_tensor *m = sn_lua_push_empty(L, FN_MASK, SN_F32, 2, (int64_t[]){w->size[0] / ro, w->size[1] / ri});
  sn_status st = sn_bsr_mask(sn_lua_ctx(L), m, w, ro, ri, sp);
  if (st != SN_OK) sn_lua_raise(L, FN_MASK, st);
  return 1;
}

static int l_pack(lua_State *L) {
  sn_tensor *w = matrix_arg(L, 1, FN_PACK, "w", "(M, K)");
  sn_tensor *m = matrix_arg(L, 2, FN_PACK, "mask", "(M/ro, K/ri)");
  const int64_t M = w->size[0], K = w->size[1], Mb = m->size[0], Kb = m->size[1];
  const int64_t ro = Mb > 0 ? M / Mb : 0, ri = Kb > 0 ? K / Kb : 0;
  if (ro < 1 || ri < 1 || ro * Mb != M || ri * Kb != K)
    sn_lua_fail(L, "%s: mask must be (M/ro, K/ri) for w %s, got %s (its sizes must divide w's)", FN_PACK,
                SN_SHAPE(w), SN_SHAPE(m));
  const float *pm = sn_f32(m);
  int64_t nnzb = 0;
  for (int64_t i = 0; i < Mb; i++)
    for (int64_t j = 0; j < Kb; j++) nnzb += pm[i * m->stride[0] + j * m->stride[1]] != 0;
  sn_tensor *v = sn_lua_push_empty(L, FN_PACK, SN_F32, 3, (int64_t[]){nnzb, ro, ri});
  sn_tensor *bp = sn_lua_push_empty(L, FN_PACK, SN_I64, 1, (int64_t[]){Mb + 1});
  sn_tensor *bc = sn_lua_push_empty(L, FN_PACK, SN_I64, 1, &nnzb);
  sn_status st = sn_bsr_pack(sn_lua_ctx(L), v, bp, bc, w, m);
  if (st != SN_OK) sn_lua_raise(L, FN_PACK, st);
  return 3;
}

static int l_to_dense(lua_State *L) {
  sn_tensor *v, *bp, *bc;
  int64_t M = bsr_args(L, 1, FN_DENSE, &v, &bp, &bc), K = int_arg(L, 4, FN_DENSE, "K", 0);
  sn_tensor *w = sn_lua_push_empty(L, FN_DENSE, SN_F32, 2, (int64_t[]){M, K});
  sn_status st = sn_bsr_to_dense(sn_lua_ctx(L), w, v, bp, bc);
  if (st != SN_OK) sn_lua_raise(L, FN_DENSE, st);
  return 1;
}

static int l_matmul(lua_State *L) {
  lua_settop(L, 5);
  sn_tensor *v, *bp, *bc;
  int64_t M = bsr_args(L, 2, FN_MM, &v, &bp, &bc);
  sn_tensor *x = sn_lua_rows_arg(L, 1, FN_MM, "x", false), *bias = sn_lua_rows_arg(L, 5, FN_MM, "bias", true);
  if (x->ndim != 2) sn_lua_fail(L, "%s: x must be (N, K), got %s", FN_MM, SN_SHAPE(x));
  if (x->size[1] % v->size[2])
    sn_lua_fail(L, "%s: x must be (N, K) with K a multiple of the block's ri = %lld, got %s", FN_MM,
                (long long)v->size[2], SN_SHAPE(x));
  sn_tensor *y = sn_lua_push_empty(L, FN_MM, SN_F32, 2, (int64_t[]){x->size[0], M});
  sn_status st = sn_bsr_matmul(sn_lua_ctx(L), y, x, v, bp, bc, bias);
  if (st != SN_OK) sn_lua_raise(L, FN_MM, st);
  return 1;
}

static int l_matmul_bwd(lua_State *L) {
  lua_settop(L, 8);
  sn_tensor *v, *bp, *bc;
  int64_t M = bsr_args(L, 3, FN_BWD, &v, &bp, &bc);
  sn_tensor *dy = sn_lua_rows_arg(L, 1, FN_BWD, "dy", false), *x = sn_lua_rows_arg(L, 2, FN_BWD, "x", false);
  if (x->ndim != 2) sn_lua_fail(L, "%s: x must be (N, K), got %s", FN_BWD, SN_SHAPE(x));
  if (x->size[1] % v->size[2])
    sn_lua_fail(L, "%s: x must be (N, K) with K a multiple of the block's ri = %lld, got %s", FN_BWD,
                (long long)v->size[2], SN_SHAPE(x));
  if (dy->ndim != 2 || dy->size[0] != x->size[0] || dy->size[1] != M)
    sn_lua_fail(L, "%s: dy must be (N, M) = (%lld, %lld), got %s", FN_BWD, (long long)x->size[0], (long long)M,
                SN_SHAPE(dy));
  sn_tensor *out[3] = {NULL, NULL, NULL};
  if (lua_toboolean(L, 6)) out[0] = sn_lua_push_empty(L, FN_BWD, SN_F32, 2, x->size);
  else lua_pushnil(L);
  if (lua_toboolean(L, 7)) out[1] = sn_lua_push_empty(L, FN_BWD, SN_F32, 3, v->size);
  else lua_pushnil(L);
  if (lua_toboolean(L, 8)) out[2] = sn_lua_push_empty(L, FN_BWD, SN_F32, 1, &M);
  else lua_pushnil(L);
  sn_status st = sn_bsr_matmul_bwd(sn_lua_ctx(L), out[0], out[1], out[2], dy, x, v, bp, bc);
  if (st != SN_OK) sn_lua_raise(L, FN_BWD, st);
  return 3;
}

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_sparse(lua_State *L) {
  static const luaL_Reg fns[] = {{"k_bsr_mask", l_mask},       {"k_bsr_pack", l_pack},
                                 {"k_bsr_to_dense", l_to_dense}, {"k_bsr_matmul", l_matmul},
                                 {"k_bsr_matmul_bwd", l_matmul_bwd}, {NULL, NULL}};
  int ctx = lua_gettop(L), module = ctx - 1;
  for (const luaL_Reg *f = fns; f->name; f++) {
    lua_pushvalue(L, ctx);
    lua_pushcclosure(L, f->func, 1);
    lua_setfield(L, module, f->name);
  }
}
