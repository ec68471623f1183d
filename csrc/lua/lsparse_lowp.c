/* lsparse_lowp.c -- the 2:4 and int8 block-sparse inference kernels (kernels/sparse24.c,
 * kernels/sparse_int8.c):
 *   values, idx = k_sparse24_from_dense(w)          w (M, K) f32, K % 4 == 0
 *   w = k_sparse24_to_dense(values, idx)            values (M, K/2) f32, idx (M, ceil(K/64)) i64
 *   y = k_sparse24_matmul(x, values, idx, bias|nil) x (N, K): y (N, M) = x W^T + bias
 *   w8 = k_bsr_i8_new(values, browptr, bcol, K)     a seqnn.BSRInt8 (quantized BSR weight)
 *   y = k_bsr_i8_matmul(x, w8, bias|nil)            x (N, K): y (N, M)
 * A seqnn.BSRInt8 is a full userdata owning the kernel's object: :bytes(), :size() -> M, K,
 * tostring, and __gc / __close free it (a closed one raises when used). Argument types and
 * ranks are checked here (outputs are made from them); the kernels check shapes and codes and
 * name them. x may be a view: one whose last dim is not unit-stride is copied. */
#include <stdio.h>

#include "lcheck.h"

#define BSR_I8_MT "seqnn.BSRInt8"

static const char *FN_FROM = "seqnn.sparse.sparse24_from_dense", *FN_TO = "seqnn.sparse.sparse24_to_dense",
                  *FN_MM24 = "seqnn.sparse.sparse24_matmul", *FN_NEW = "seqnn.sparse.bsr_i8_new",
                  *FN_MM8 = "seqnn.sparse.bsr_i8_matmul";

/* The userdata: the kernel's object (NULL once freed) and the shape it was made for. */
typedef struct {
  sn_bsr_i8 *w;
  int64_t M, K, nnzb;
} lbsr_i8;

static void need_rank(lua_State *L, const char *fn, const char *arg, const sn_tensor *t, int nd, const char *layout) {
  if (t->ndim != nd) sn_lua_fail(L, "%s: %s must be %s, got %s", fn, arg, layout, SN_SHAPE(t));
}

/* ---- 2:4 ----------------------------------------------------------------------------------- */

static int l_s24_from_dense(lua_State *L) {
  sn_tensor *w = sn_lua_rows_arg(L, 1, FN_FROM, "w", false);
  need_rank(L, FN_FROM, "w", w, 2, "(M, K)");
  int64_t M = w->size[0], K = w->size[1];
  if (K % 4) sn_lua_fail(L, "%s: w must have K (inputs) a multiple of 4, got %s", FN_FROM, SN_SHAPE(w));
  sn_tensor *values = sn_lua_push_empty(L, FN_FROM, SN_F32, 2, (int64_t[]){M, K / 2});
  sn_tensor *idx = sn_lua_push_empty(L, FN_FROM, SN_I64, 2, (int64_t[]){M, (K + 63) / 64});
  sn_status st = sn_sparse24_from_dense(sn_lua_ctx(L), values, idx, w);
  if (st != SN_OK) sn_lua_raise(L, FN_FROM, st);
  return 2;
}

static int l_s24_to_dense(lua_State *L) {
  sn_tensor *values = sn_lua_check_tensor(L, 1, FN_TO, "values", SN_F32);
  sn_tensor *idx = sn_lua_check_tensor(L, 2, FN_TO, "idx", SN_I64);
  need_rank(L, FN_TO, "values", values, 2, "(M, K/2)");
  sn_tensor *w = sn_lua_push_empty(L, FN_TO, SN_F32, 2, (int64_t[]){values->size[0], 2 * values->size[1]});
  sn_status st = sn_sparse24_to_dense(sn_lua_ctx(L), w, values, idx);
  if (st != SN_OK) sn_lua_raise(L, FN_TO, st);
  return 1;
}

static int l_s24_matmul(lua_State *L) {
  lua_settop(L, 4);
  sn_tensor *x = sn_lua_rows_arg(L, 1, FN_MM24, "x", false);
  sn_tensor *values = sn_lua_check_tensor(L, 2, FN_MM24, "values", SN_F32);
  sn_tensor *idx = sn_lua_check_tensor(L, 3, FN_MM24, "idx", SN_I64);
  sn_tensor *bias = sn_lua_rows_arg(L, 4, FN_MM24, "bias", true);
  need_rank(L, FN_MM24, "x", x, 2, "(N, K)");
  need_rank(L, FN_MM24, "values", values, 2, "(M, K/2)");
  sn_tensor *y = sn_lua_push_empty(L, FN_MM24, SN_F32, 2, (int64_t[]){x->size[0], values->size[0]});
  sn_status st = sn_sparse24_matmul(sn_lua_ctx(L), y, x, values, idx, bias);
  if (st != SN_OK) sn_lua_raise(L, FN_MM24, st);
  return 1;
}

/* ---- int8 BSR -------------------------------------------------------------------------------- */

/* The BSRInt8 at idx, not freed. */
static lbsr_i8 *check_bsr_i8(lua_State *L, int idx, const char *fn, const char *arg) {
  lbsr_i8 *u = luaL_testudata(L, idx, BSR_I8_MT);
  if (!u) {
    const char *got = luaL_getmetafield(L, idx, "__name") == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, idx);
    sn_lua_fail(L, "bad argument #%d '%s' to '%s' (%s expected, got %s)", idx, arg, fn, BSR_I8_MT, got);
  }
  if (!u->w) sn_lua_fail(L, "%s: argument '%s': %s was freed", fn, arg, BSR_I8_MT);
  return u;
}

static int l_bsr_i8_new(lua_State *L) {
  sn_tensor *values = sn_lua_check_tensor(L, 1, FN_NEW, "values", SN_F32);
  sn_tensor *browptr = sn_lua_check_tensor(L, 2, FN_NEW, "browptr", SN_I64);
  sn_tensor *bcol = sn_lua_check_tensor(L, 3, FN_NEW, "bcol", SN_I64);
  int64_t K = sn_lua_check_int(L, 4, FN_NEW, "K");
  /* The userdata first (w NULL, safe for __gc), so the object is owned once it exists. */
  lbsr_i8 *u = lua_newuserdatauv(L, sizeof *u, 0);
  *u = (lbsr_i8){0};
  luaL_setmetatable(L, BSR_I8_MT);
  sn_status st = sn_bsr_i8_new(sn_lua_ctx(L), &u->w, values, browptr, bcol, K);
  if (st != SN_OK) sn_lua_raise(L, FN_NEW, st);
  /* bsr_check passed: values is (nnzb, ro, ri) and browptr (M/ro + 1). */
  *u = (lbsr_i8){u->w, (browptr->size[0] - 1) * values->size[1], K, values->size[0]};
  return 1;
}

static int l_bsr_i8_matmul(lua_State *L) {
  lua_settop(L, 3);
  sn_tensor *x = sn_lua_rows_arg(L, 1, FN_MM8, "x", false);
  lbsr_i8 *u = check_bsr_i8(L, 2, FN_MM8, "w");
  sn_tensor *bias = sn_lua_rows_arg(L, 3, FN_MM8, "bias", true);
  need_rank(L, FN_MM8, "x", x, 2, "(N, K)");
  sn_tensor *y = sn_lua_push_empty(L, FN_MM8, SN_F32, 2, (int64_t[]){x->size[0], u->M});
  sn_status st = sn_bsr_i8_matmul(sn_lua_ctx(L), y, x, u->w, bias);
  if (st != SN_OK) sn_lua_raise(L, FN_MM8, st);
  return 1;
}

/* __gc, __close and :free(): idempotent. */
static int l_bsr_i8_release(lua_State *L) {
  lbsr_i8 *u = luaL_checkudata(L, 1, BSR_I8_MT);
  sn_bsr_i8_free(u->w);
  u->w = NULL;
  return 0;
}

static int l_bsr_i8_tostring(lua_State *L) {
  lbsr_i8 *u = luaL_checkudata(L, 1, BSR_I8_MT);
  char buf[128];
  if (u->w)
    snprintf(buf, sizeof buf, "BSRInt8(%lldx%lld, nnzb=%lld, bytes=%lld)", (long long)u->M, (long long)u->K,
             (long long)u->nnzb, (long long)sn_bsr_i8_bytes(u->w));
  else
    snprintf(buf, sizeof buf, "BSRInt8(freed)");
  lua_pushstring(L, buf);
  return 1;
}

static int l_bsr_i8_bytes(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sn_bsr_i8_bytes(check_bsr_i8(L, 1, "seqnn.BSRInt8:bytes", "self")->w));
  return 1;
}

static int l_bsr_i8_size(lua_State *L) {
  lbsr_i8 *u = check_bsr_i8(L, 1, "seqnn.BSRInt8:size", "self");
  lua_pushinteger(L, (lua_Integer)u->M);
  lua_pushinteger(L, (lua_Integer)u->K);
  return 2;
}

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_sparse_lowp(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  static const luaL_Reg methods[] = {{"bytes", l_bsr_i8_bytes}, {"size", l_bsr_i8_size}, {"free", l_bsr_i8_release},
                                     {NULL, NULL}};
  luaL_newmetatable(L, BSR_I8_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_bsr_i8_release);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_bsr_i8_release);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, l_bsr_i8_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"k_sparse24_from_dense", l_s24_from_dense},
                                 {"k_sparse24_to_dense", l_s24_to_dense},
                                 {"k_sparse24_matmul", l_s24_matmul},
                                 {"k_bsr_i8_new", l_bsr_i8_new},
                                 {"k_bsr_i8_matmul", l_bsr_i8_matmul},
                                 {NULL, NULL}};
  for (const luaL_Reg *f = fns; f->name; f++) {
    lua_pushvalue(L, ctx);
    lua_pushcclosure(L, f->func, 1);
    lua_setfield(L, module, f->name);
  }
}
