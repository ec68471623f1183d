/* lhash_memory.c -- core.k_hash_linear_fwd / _bwd (kernels/hash_memory.c), called by
 * sn.F.hash_linear:
 *   y, codes|nil, p|nil = k_hash_linear_fwd(x, tables, bias|nil, bits, paper, save, packed|nil)
 *       x (..., d_in), tables (K*2^bits, d_out), bias (d_out); y (..., d_out); codes i64 and
 *       p f32 (N, K) only when save (the state backward needs); packed from k_hash_linear_pack
 *   packed = k_hash_linear_pack(tables [, bf16])   f32 (ceil(d_out/64), K*2^bits, 64), or
 *       with bf16 i64 (ceil(d_out/32), K*2^bits, 8) of bf16 pairs: read by fwd instead of
 *       tables (the caller keeps it current)
 *   dx|nil, dtables|nil, dbias|nil = k_hash_linear_bwd(dy, x, tables, codes, p, bits, paper,
 *                                                      want_dx, want_dtables, want_dbias)
 * Every argument is checked here, with messages naming the function, the argument and the
 * shapes; the kernel checks again (and every code). Inputs that are not contiguous are
 * copied (pushed, so the collector owns the copies); outputs are pushed before the kernel
 * runs, so on an error the collector owns them. */
#include <stdint.h>

#include "lcheck.h"

static const char *FN = "seqnn.F.hash_linear";

/* A contiguous f32 tensor from argument idx: itself, or a pushed copy. */
static sn_tensor *contiguous_arg(lua_State *L, int idx, const char *arg) {
  sn_tensor *t = sn_lua_check_tensor(L, idx, FN, arg, SN_F32);
  if (sn_is_contiguous(t)) return t;
  sn_tensor *c = sn_lua_push_empty_like(L, FN, t, SN_F32);
  sn_status st = sn_copy(sn_lua_ctx(L), c, t);
  if (st != SN_OK) sn_lua_raise(L, FN, st);
  return c;
}

static int bits_arg(lua_State *L, int idx) {
  int64_t bits = sn_lua_check_int(L, idx, FN, "bits");
  if (bits < 1 || bits > SN_HASH_MAX_BITS)
    sn_lua_fail(L, "%s: bits must be an integer in 1..%d, got %lld", FN, SN_HASH_MAX_BITS, (long long)bits);
  return (int)bits;
}

/* x (..., d_in) with d_in % bits == 0 and tables (K * 2^bits, d_out); returns K. */
static int64_t check_shapes(lua_State *L, const sn_tensor *x, const sn_tensor *tables, int bits) {
  if (x->ndim < 1) sn_lua_fail(L, "%s: x must have at least one dim (..., d_in), got a scalar", FN);
  int64_t din = x->size[x->ndim - 1];
  if (din % bits != 0)
    sn_lua_fail(L, "%s: x has %lld features, not a multiple of bits %d (x: %s)", FN, (long long)din, bits,
                SN_SHAPE(x));
  int64_t K = din / bits, R = (int64_t)1 << bits;
  if (tables->ndim != 2)
    sn_lua_fail(L, "%s: tables must be (K * 2^bits, d_out) = (%lld * %lld, d_out), got %s", FN, (long long)K,
                (long long)R, SN_SHAPE(tables));
  if (K > INT64_MAX / R)
    sn_lua_fail(L, "%s: K * 2^bits = %lld * %lld table rows overflow (x: %s)", FN, (long long)K, (long long)R,
                SN_SHAPE(x));
  if (tables->size[0] != K * R)
    sn_lua_fail(L, "%s: tables has %lld rows, not K * 2^bits = %lld * %lld = %lld for x's %lld features and bits %d "
                "(x: %s, tables: %s)", FN, (long long)tables->size[0], (long long)K, (long long)R, (long long)(K * R),
                (long long)din, bits, SN_SHAPE(x), SN_SHAPE(tables));
  return K;
}

/* The number of rows (tokens): the product of x's leading dims (checked: with d_in = 0 it
 * is not bounded by x's numel). */
static int64_t rows_of(lua_State *L, const sn_tensor *x) {
  int64_t N = 1;
  for (int d = 0; d + 1 < x->ndim; d++) {
    if (x->size[d] > 0 && N > INT64_MAX / x->size[d])
      sn_lua_fail(L, "%s: x's leading dims overflow (x: %s)", FN, SN_SHAPE(x));
    N *= x->size[d];
  }
  return N;
}

/* x's shape with the last dim replaced by `last`. */
static void shape_with_last(int64_t *size, const sn_tensor *x, int64_t last) {
  for (int d = 0; d < x->ndim; d++) size[d] = x->size[d];
  size[x->ndim - 1] = last;
}

static int l_fwd(lua_State *L) {
  lua_settop(L, 7);
  sn_tensor *x = contiguous_arg(L, 1, "x"), *tables = contiguous_arg(L, 2, "tables"), *bias = NULL, *packed = NULL;
  if (!lua_isnil(L, 3)) bias = contiguous_arg(L, 3, "bias");
  if (!lua_isnil(L, 7)) packed = sn_lua_check_tensor(L, 7, FN, "packed", -1);
  int bits = bits_arg(L, 4);
  sn_hash_score score = lua_toboolean(L, 5) ? SN_HASH_SCORE_PAPER : SN_HASH_SCORE_CODE;
  bool save = lua_toboolean(L, 6);
  int64_t K = check_shapes(L, x, tables, bits), dout = tables->size[1];
  if (bias && (bias->ndim != 1 || bias->size[0] != dout))
    sn_lua_fail(L, "%s: bias has shape %s but tables have d_out = %lld columns (bias: %s, tables: %s)", FN,
                SN_SHAPE(bias), (long long)dout, SN_SHAPE(bias), SN_SHAPE(tables));
  int64_t ysize[SN_MAX_DIMS], N = rows_of(L, x);
  shape_with_last(ysize, x, dout);
  sn_tensor *y = sn_lua_push_empty(L, FN, SN_F32, x->ndim, ysize), *codes = NULL, *p = NULL;
  if (save) {
    codes = sn_lua_push_empty(L, FN, SN_I64, 2, (int64_t[]){N, K});
    p = sn_lua_push_empty(L, FN, SN_F32, 2, (int64_t[]){N, K});
  } else {
    lua_pushnil(L), lua_pushnil(L);
  }
  sn_status st = sn_hash_linear_fwd(sn_lua_ctx(L), y, codes, p, x, tables, packed, bias, bits, score);
  if (st != SN_OK) sn_lua_raise(L, FN, st);
  return 3;
}

static int l_pack(lua_State *L) {
  sn_tensor *tables = contiguous_arg(L, 1, "tables");
  if (tables->ndim != 2) sn_lua_fail(L, "%s: tables must be (K * 2^bits, d_out), got %s", FN, SN_SHAPE(tables));
  bool bf16 = lua_toboolean(L, 2);
  int64_t width = bf16 ? SN_HASH_PANEL_BF16 : SN_HASH_PANEL, ncb = (tables->size[1] + width - 1) / width;
  sn_tensor *packed = sn_lua_push_empty(L, FN, bf16 ? SN_I64 : SN_F32, 3,
                                        (int64_t[]){ncb, tables->size[0], bf16 ? width / 4 : width});
  sn_status st = sn_hash_linear_pack(sn_lua_ctx(L), packed, tables);
  if (st != SN_OK) sn_lua_raise(L, FN, st);
  return 1;
}

static int l_bwd(lua_State *L) {
  lua_settop(L, 10);
  sn_tensor *dy = contiguous_arg(L, 1, "grad_output"), *x = contiguous_arg(L, 2, "x");
  sn_tensor *tables = contiguous_arg(L, 3, "tables");
  sn_tensor *codes = sn_lua_check_tensor(L, 4, FN, "codes", SN_I64), *p = sn_lua_check_tensor(L, 5, FN, "p", SN_F32);
  int bits = bits_arg(L, 6);
  sn_hash_score score = lua_toboolean(L, 7) ? SN_HASH_SCORE_PAPER : SN_HASH_SCORE_CODE;
  int64_t K = check_shapes(L, x, tables, bits), dout = tables->size[1];
  int64_t want[SN_MAX_DIMS];
  shape_with_last(want, x, dout);
  bool same = dy->ndim == x->ndim;
  for (int d = 0; same && d < x->ndim; d++) same = dy->size[d] == want[d];
  if (!same)
    sn_lua_fail(L, "%s: grad_output must have x's shape with d_out = %lld last (x: %s, grad_output: %s)", FN,
                (long long)dout, SN_SHAPE(x), SN_SHAPE(dy));
  int64_t N = rows_of(L, x);
  if (codes->ndim != 2 || codes->size[0] != N || codes->size[1] != K || !sn_is_contiguous(codes))
    sn_lua_fail(L, "%s: codes must be a contiguous (N, K) = (%lld, %lld) i64 tensor, got %s", FN, (long long)N,
                (long long)K, SN_SHAPE(codes));
  if (p->ndim != 2 || p->size[0] != N || p->size[1] != K || !sn_is_contiguous(p))
    sn_lua_fail(L, "%s: p must be a contiguous (N, K) = (%lld, %lld) f32 tensor, got %s", FN, (long long)N,
                (long long)K, SN_SHAPE(p));
  sn_tensor *dx = NULL, *dt = NULL, *db = NULL;
  if (lua_toboolean(L, 8)) dx = sn_lua_push_empty_like(L, FN, x, SN_F32);
  else lua_pushnil(L);
  if (lua_toboolean(L, 9)) dt = sn_lua_push_empty_like(L, FN, tables, SN_F32);
  else lua_pushnil(L);
  if (lua_toboolean(L, 10)) db = sn_lua_push_empty(L, FN, SN_F32, 1, &dout);
  else lua_pushnil(L);
  sn_status st = sn_hash_linear_bwd(sn_lua_ctx(L), dx, dt, db, dy, codes, p, x, tables, bits, score);
  if (st != SN_OK) sn_lua_raise(L, FN, st);
  return 3;
}

static const luaL_Reg hash_memory_fns[] = {{"k_hash_linear_fwd", l_fwd},
                                           {"k_hash_linear_bwd", l_bwd},
                                           {"k_hash_linear_pack", l_pack},
                                           {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_hash_memory(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, hash_memory_fns, 1);
  lua_pop(L, 1);
}
