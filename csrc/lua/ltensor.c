/* ltensor.c -- the seqnn.Tensor userdata: creation, shape queries, views, indexing,
 * copies and conversion to Lua values. Math lives in lmath.c. */
#include <math.h>
#include <string.h>

#include "lcheck.h"

#define CHECK(L, fn, st) do { sn_status st_ = (st); if (st_ != SN_OK) sn_lua_raise(L, fn, st_); } while (0)

/* ---- creation ------------------------------------------------------------------------ */

/* Shape varargs from idx to the top, with an optional trailing dtype string. */
static int shape_and_dtype(lua_State *L, int idx, const char *fn, int64_t *size, sn_dtype *dt) {
  int top = lua_gettop(L);
  *dt = SN_F32;
  if (top >= idx && lua_type(L, top) == LUA_TSTRING) {
    *dt = sn_lua_opt_dtype(L, top, fn, SN_F32);
    top--;
  }
  if (top >= idx && lua_type(L, idx) == LUA_TTABLE && top > idx)
    sn_lua_fail(L, "%s: give the shape as a table or as integers, not both", fn);
  return sn_lua_check_shape(L, idx, top, fn, size);
}

static int filled(lua_State *L, const char *fn, double v) {
  int64_t size[SN_MAX_DIMS];
  sn_dtype dt;
  int nd = shape_and_dtype(L, 1, fn, size, &dt);
  sn_tensor *t = sn_lua_push_empty(L, fn, dt, nd, size);
  CHECK(L, fn, sn_fill(sn_lua_ctx(L), t, v));
  return 1;
}

static int l_zeros(lua_State *L) { return filled(L, "seqnn.zeros", 0); }
static int l_ones(lua_State *L) { return filled(L, "seqnn.ones", 1); }

static int l_empty(lua_State *L) {
  int64_t size[SN_MAX_DIMS];
  sn_dtype dt;
  int nd = shape_and_dtype(L, 1, "seqnn.empty", size, &dt);
  sn_lua_push_empty(L, "seqnn.empty", dt, nd, size);
  return 1;
}

/* full(shape, value [, dtype]) */
static int l_full(lua_State *L) {
  const char *fn = "seqnn.full";
  int64_t size[SN_MAX_DIMS];
  luaL_checktype(L, 1, LUA_TTABLE);
  double v = luaL_checknumber(L, 2);
  sn_dtype dt = sn_lua_opt_dtype(L, 3, fn, SN_F32);
  int nd = sn_lua_check_shape(L, 1, 1, fn, size);
  sn_tensor *t = sn_lua_push_empty(L, fn, dt, nd, size);
  CHECK(L, fn, sn_fill(sn_lua_ctx(L), t, v));
  return 1;
}

/* arange(n) -> 0..n-1; arange(start, stop [, step]) -> start, start+step, .. < stop.
 * A trailing "i64"/"f32" picks the dtype (f32 by default). */
static int l_arange(lua_State *L) {
  const char *fn = "seqnn.arange";
  int top = lua_gettop(L);
  sn_dtype dt = SN_F32;
  if (top >= 1 && lua_type(L, top) == LUA_TSTRING) dt = sn_lua_opt_dtype(L, top--, fn, SN_F32);
  if (top < 1 || top > 3) return sn_lua_fail(L, "%s: expected (n), (start, stop) or (start, stop, step)", fn);
  double start = 0, stop, step = 1;
  if (top == 1) stop = luaL_checknumber(L, 1);
  else start = luaL_checknumber(L, 1), stop = luaL_checknumber(L, 2);
  if (top == 3) step = luaL_checknumber(L, 3);
  if (step == 0 || !isfinite(start) || !isfinite(stop) || !isfinite(step))
    return sn_lua_fail(L, "%s: start, stop and step must be finite and step non-zero (got %g, %g, %g)", fn, start, stop, step);
  double n = ceil((stop - start) / step);
  if (n < 0) n = 0;
  if (n > 4e18) return sn_lua_fail(L, "%s: %g elements overflow", fn, n);
  int64_t size[1] = {(int64_t)n};
  sn_tensor *t = sn_lua_push_empty(L, fn, dt, 1, size);
  CHECK(L, fn, sn_arange(sn_lua_ctx(L), t, start, step));
  return 1;
}

static int l_rand(lua_State *L) {
  int64_t size[SN_MAX_DIMS];
  sn_dtype dt;
  int nd = shape_and_dtype(L, 1, "seqnn.rand", size, &dt);
  sn_tensor *t = sn_lua_push_empty(L, "seqnn.rand", SN_F32, nd, size);
  CHECK(L, "seqnn.rand", sn_rand(sn_lua_ctx(L), t, 0, 1));
  return 1;
}

static int l_randn(lua_State *L) {
  int64_t size[SN_MAX_DIMS];
  sn_dtype dt;
  int nd = shape_and_dtype(L, 1, "seqnn.randn", size, &dt);
  sn_tensor *t = sn_lua_push_empty(L, "seqnn.randn", SN_F32, nd, size);
  CHECK(L, "seqnn.randn", sn_randn(sn_lua_ctx(L), t, 0, 1));
  return 1;
}

/* randint(lo, hi, shape...) -> i64 uniform in [lo, hi) */
static int l_randint(lua_State *L) {
  const char *fn = "seqnn.randint";
  int64_t lo = sn_lua_check_int(L, 1, fn, "lo"), hi = sn_lua_check_int(L, 2, fn, "hi");
  int64_t size[SN_MAX_DIMS];
  int nd = sn_lua_check_shape(L, 3, lua_gettop(L), fn, size);
  if (hi <= lo) return sn_lua_fail(L, "%s: empty range [%lld, %lld)", fn, (long long)lo, (long long)hi);
  sn_tensor *t = sn_lua_push_empty(L, fn, SN_I64, nd, size);
  CHECK(L, fn, sn_randint(sn_lua_ctx(L), t, lo, hi));
  return 1;
}

/* Walks a nested table to find its shape (first elements), checked later when copying. */
static int table_shape(lua_State *L, int idx, const char *fn, int64_t *size) {
  int nd = 0;
  lua_pushvalue(L, idx);
  while (lua_type(L, -1) == LUA_TTABLE) {
    if (nd == SN_MAX_DIMS) sn_lua_fail(L, "%s: tables nested more than %d deep", fn, SN_MAX_DIMS);
    size[nd++] = (int64_t)luaL_len(L, -1);
    if (size[nd - 1] == 0) break;
    lua_geti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
  return nd;
}

static void fill_from_table(lua_State *L, const char *fn, const sn_tensor *t, int d, int64_t *at, char *path, size_t plen) {
  if (lua_type(L, -1) != LUA_TTABLE || (int64_t)luaL_len(L, -1) != t->size[d])
    sn_lua_fail(L, "%s: ragged table: entry %s should be a table of %lld values (tensor %s)", fn,
                path[0] ? path : "(top)", (long long)t->size[d], SN_SHAPE(t));
  for (int64_t i = 1; i <= t->size[d]; i++) {
    size_t n = strlen(path);
    snprintf(path + n, plen - n, "[%lld]", (long long)i);
    lua_rawgeti(L, -1, i);
    if (d + 1 < t->ndim) {
      fill_from_table(L, fn, t, d + 1, at, path, plen);
    } else {
      int isnum;
      if (t->dtype == SN_F32) {
        lua_Number v = lua_tonumberx(L, -1, &isnum);
        if (!isnum || lua_type(L, -1) != LUA_TNUMBER) goto bad;
        sn_f32(t)[(*at)++] = (float)v;
      } else {
        lua_Integer v = lua_tointegerx(L, -1, &isnum);
        if (!isnum || lua_type(L, -1) != LUA_TNUMBER) goto bad;
        sn_i64(t)[(*at)++] = (int64_t)v;
      }
    }
    lua_pop(L, 1);
    path[n] = 0;
  }
  return;
bad:
  sn_lua_fail(L, "%s: entry %s must be %s, got %s", fn, path,
              t->dtype == SN_F32 ? "a number" : "an integer",
              lua_type(L, -1) == LUA_TNUMBER ? "a non-integral number" : luaL_typename(L, -1));
}

/* tensor(value [, dtype]): a number gives a 0-dim tensor; nested tables give their shape. */
static int l_tensor(lua_State *L) {
  const char *fn = "seqnn.tensor";
  sn_dtype dt = sn_lua_opt_dtype(L, 2, fn, SN_F32);
  if (lua_type(L, 1) == LUA_TNUMBER) {
    sn_tensor *t = sn_lua_push_empty(L, fn, dt, 0, NULL);
    if (dt == SN_I64) {
      int isint;
      lua_Integer v = lua_tointegerx(L, 1, &isint);
      if (!isint) return sn_lua_fail(L, "%s: %g is not an integer (dtype i64)", fn, lua_tonumber(L, 1));
      sn_i64(t)[0] = (int64_t)v;
    } else {
      sn_f32(t)[0] = (float)lua_tonumber(L, 1);
    }
    return 1;
  }
  if (lua_type(L, 1) != LUA_TTABLE)
    return sn_lua_fail(L, "bad argument #1 'data' to '%s' (table or number expected, got %s)", fn, luaL_typename(L, 1));
  int64_t size[SN_MAX_DIMS];
  int nd = table_shape(L, 1, fn, size);
  sn_tensor *t = sn_lua_push_empty(L, fn, dt, nd, size);
  if (sn_numel(t) > 0) {
    char path[256] = "";
    int64_t at = 0;
    lua_pushvalue(L, 1);
    fill_from_table(L, fn, t, 0, &at, path, sizeof path);
    lua_pop(L, 1);
  }
  return 1;
}

/* ---- lifetime ------------------------------------------------------------------------ */

/* __gc, __close and t:free() share this; releasing twice is harmless. */
static int l_free(lua_State *L) {
  sn_tensor *t = sn_lua_test_tensor(L, 1);
  if (t) sn_tensor_release(t);
  return 0;
}

/* ---- queries ------------------------------------------------------------------------- */

static sn_tensor *self(lua_State *L, const char *fn) { return sn_lua_check_tensor(L, 1, fn, "self", -1); }

static int l_dim(lua_State *L) {
  lua_pushinteger(L, self(L, "seqnn.dim")->ndim);
  return 1;
}

static int l_numel(lua_State *L) {
  lua_pushinteger(L, sn_numel(self(L, "seqnn.numel")));
  return 1;
}

static int l_dtype(lua_State *L) {
  lua_pushstring(L, sn_dtype_name(self(L, "seqnn.dtype")->dtype));
  return 1;
}

static int l_shape(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.shape");
  lua_createtable(L, t->ndim, 0);
  for (int d = 0; d < t->ndim; d++) {
    lua_pushinteger(L, t->size[d]);
    lua_rawseti(L, -2, d + 1);
  }
  return 1;
}

static int l_stride(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.stride");
  if (!lua_isnoneornil(L, 2)) {
    lua_pushinteger(L, t->stride[sn_lua_check_dim(L, 2, "seqnn.stride", t, 0)]);
    return 1;
  }
  lua_createtable(L, t->ndim, 0);
  for (int d = 0; d < t->ndim; d++) {
    lua_pushinteger(L, t->stride[d]);
    lua_rawseti(L, -2, d + 1);
  }
  return 1;
}

/* size() -> table like shape(); size(d) -> integer */
static int l_size(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.size");
  if (lua_isnoneornil(L, 2)) return l_shape(L);
  lua_pushinteger(L, t->size[sn_lua_check_dim(L, 2, "seqnn.size", t, 0)]);
  return 1;
}

static int l_is_contiguous(lua_State *L) {
  lua_pushboolean(L, sn_is_contiguous(self(L, "seqnn.is_contiguous")));
  return 1;
}

static void push_element(lua_State *L, const sn_tensor *t, const void *p) {
  if (t->dtype == SN_F32) lua_pushnumber(L, *(const float *)p);
  else lua_pushinteger(L, *(const int64_t *)p);
}

static int l_item(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.item");
  if (sn_numel(t) != 1)
    return sn_lua_fail(L, "seqnn.item: the tensor has %lld elements, item() needs exactly one (%s)",
                       (long long)sn_numel(t), SN_SHAPE(t));
  push_element(L, t, sn_data(t));
  return 1;
}

static void push_table(lua_State *L, const sn_tensor *t, int d, int64_t off) {
  size_t isz = sn_dtype_size(t->dtype);
  const char *base = (const char *)t->storage->data;
  lua_createtable(L, (int)t->size[d], 0);
  for (int64_t i = 0; i < t->size[d]; i++) {
    int64_t o = off + i * t->stride[d];
    if (d + 1 < t->ndim) push_table(L, t, d + 1, o);
    else push_element(L, t, base + o * (int64_t)isz);
    lua_rawseti(L, -2, i + 1);
  }
}

/* totable(): nested Lua tables; a 0-dim tensor gives its number. */
static int l_totable(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.totable");
  if (t->ndim == 0) return l_item(L);
  luaL_checkstack(L, t->ndim + 4, "seqnn.totable");
  push_table(L, t, 0, t->offset);
  return 1;
}

/* ---- views ------------------------------------------------------------------------- */

static int l_view(lua_State *L) {
  const char *fn = "seqnn.view";
  sn_tensor *t = self(L, fn);
  int64_t size[SN_MAX_DIMS];
  int nd = sn_lua_check_shape(L, 2, lua_gettop(L), fn, size);
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_view(sn_lua_ctx(L), v, t, nd, size));
  return 1;
}

/* reshape: a view when the strides allow one, else a contiguous copy. */
static int l_reshape(lua_State *L) {
  const char *fn = "seqnn.reshape";
  sn_ctx *ctx = sn_lua_ctx(L);
  sn_tensor *t = self(L, fn);
  int64_t size[SN_MAX_DIMS];
  int nd = sn_lua_check_shape(L, 2, lua_gettop(L), fn, size);
  CHECK(L, fn, sn_infer_shape(ctx, fn, t, nd, size));
  if (sn_can_view(t, nd, size)) {
    sn_tensor *v = sn_lua_push_tensor(L);
    CHECK(L, fn, sn_view(ctx, v, t, nd, size));
    return 1;
  }
  sn_tensor *c = sn_lua_push_empty(L, fn, t->dtype, t->ndim, t->size);
  CHECK(L, fn, sn_copy(ctx, c, t));
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_view(ctx, v, c, nd, size));
  return 1;
}

static int l_transpose(lua_State *L) {
  const char *fn = "seqnn.transpose";
  sn_tensor *t = self(L, fn);
  int d0, d1;
  if (lua_isnoneornil(L, 2) && t->ndim == 2) d0 = 0, d1 = 1; /* t:transpose() of a matrix */
  else d0 = sn_lua_check_dim(L, 2, fn, t, 0), d1 = sn_lua_check_dim(L, 3, fn, t, 0);
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_transpose(sn_lua_ctx(L), v, t, d0, d1));
  return 1;
}

static int l_t(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.t");
  if (t->ndim != 2) return sn_lua_fail(L, "seqnn.t: expects a 2-dim tensor, got %s", SN_SHAPE(t));
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, "seqnn.t", sn_transpose(sn_lua_ctx(L), v, t, 0, 1));
  return 1;
}

static int l_permute(lua_State *L) {
  const char *fn = "seqnn.permute";
  sn_tensor *t = self(L, fn);
  int64_t order[SN_MAX_DIMS];
  int n = sn_lua_check_shape(L, 2, lua_gettop(L), fn, order);
  if (n != t->ndim)
    return sn_lua_fail(L, "%s: %d dims given for a tensor of %d dims (%s)", fn, n, t->ndim, SN_SHAPE(t));
  int perm[SN_MAX_DIMS];
  for (int d = 0; d < n; d++) {
    int64_t p = order[d] < 0 ? order[d] + n + 1 : order[d];
    perm[d] = (p >= 1 && p <= n) ? (int)p - 1 : -1;
  }
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_permute(sn_lua_ctx(L), v, t, perm));
  return 1;
}

/* narrow(dim, start, length), start 1-based */
static int l_narrow(lua_State *L) {
  const char *fn = "seqnn.narrow";
  sn_tensor *t = self(L, fn);
  int d = sn_lua_check_dim(L, 2, fn, t, 0);
  int64_t start = sn_lua_check_int(L, 3, fn, "start"), len = sn_lua_check_int(L, 4, fn, "length");
  if (start < 0) start += t->size[d] + 1;
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_narrow(sn_lua_ctx(L), v, t, d, start - 1, len));
  return 1;
}

/* select(dim, index), index 1-based, -1 the last */
static int l_select(lua_State *L) {
  const char *fn = "seqnn.select";
  sn_tensor *t = self(L, fn);
  int d = sn_lua_check_dim(L, 2, fn, t, 0);
  int64_t i = sn_lua_check_int(L, 3, fn, "index");
  if (i < 0) i += t->size[d] + 1;
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_select(sn_lua_ctx(L), v, t, d, i - 1));
  return 1;
}

static int l_expand(lua_State *L) {
  const char *fn = "seqnn.expand";
  sn_tensor *t = self(L, fn);
  int64_t size[SN_MAX_DIMS];
  int nd = sn_lua_check_shape(L, 2, lua_gettop(L), fn, size);
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_expand(sn_lua_ctx(L), v, t, nd, size));
  return 1;
}

static int l_unsqueeze(lua_State *L) {
  const char *fn = "seqnn.unsqueeze";
  sn_tensor *t = self(L, fn);
  int d = sn_lua_check_dim(L, 2, fn, t, 1);
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_unsqueeze(sn_lua_ctx(L), v, t, d));
  return 1;
}

static int l_squeeze(lua_State *L) {
  const char *fn = "seqnn.squeeze";
  sn_tensor *t = self(L, fn);
  int d = lua_isnoneornil(L, 2) ? -1 : sn_lua_check_dim(L, 2, fn, t, 0);
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_squeeze(sn_lua_ctx(L), v, t, d));
  return 1;
}

/* alias(): another tensor object over the same memory, shape and strides (detach uses it). */
static int l_alias(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.alias");
  sn_tensor_share(sn_lua_push_tensor(L), t);
  return 1;
}

/* ---- copies ------------------------------------------------------------------------- */

static int copy_as(lua_State *L, const char *fn, sn_tensor *t, sn_dtype dt) {
  sn_tensor *c = sn_lua_push_empty(L, fn, dt, t->ndim, t->size);
  CHECK(L, fn, sn_copy(sn_lua_ctx(L), c, t));
  return 1;
}

static int l_contiguous(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.contiguous");
  if (sn_is_contiguous(t)) {
    lua_settop(L, 1);
    return 1;
  }
  return copy_as(L, "seqnn.contiguous", t, t->dtype);
}

static int l_clone(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.clone");
  return copy_as(L, "seqnn.clone", t, t->dtype);
}

/* float()/long(): the same tensor when the dtype already matches, as in Torch7. */
static int convert(lua_State *L, const char *fn, sn_dtype dt) {
  sn_tensor *t = self(L, fn);
  if (t->dtype == dt) {
    lua_settop(L, 1);
    return 1;
  }
  return copy_as(L, fn, t, dt);
}

static int l_float(lua_State *L) { return convert(L, "seqnn.float", SN_F32); }
static int l_long(lua_State *L) { return convert(L, "seqnn.long", SN_I64); }

static int l_to(lua_State *L) {
  return convert(L, "seqnn.to", sn_lua_opt_dtype(L, 2, "seqnn.to", SN_F32));
}

static bool overlaps(const sn_tensor *a, const sn_tensor *b) {
  return a->storage == b->storage;
}

/* copy_(src): copies src (broadcast, any dtype) into self; returns self. */
static int l_copy_(lua_State *L) {
  const char *fn = "seqnn.copy_";
  sn_tensor *t = self(L, fn), *src = sn_lua_check_tensor(L, 2, fn, "src", -1);
  sn_ctx *ctx = sn_lua_ctx(L);
  if (overlaps(t, src) && src != t) {
    /* Same storage: copy through a temporary so overlapping views cannot corrupt. */
    sn_tensor *tmp = sn_lua_push_empty(L, fn, src->dtype, src->ndim, src->size);
    CHECK(L, fn, sn_copy(ctx, tmp, src));
    src = tmp;
  }
  CHECK(L, fn, sn_copy(ctx, t, src));
  lua_settop(L, 1);
  return 1;
}

static int l_fill_(lua_State *L) {
  const char *fn = "seqnn.fill_";
  sn_tensor *t = self(L, fn);
  double v = luaL_checknumber(L, 2);
  if (t->dtype == SN_I64 && !(v >= -9.2e18 && v <= 9.2e18))
    return sn_lua_fail(L, "%s: %g does not fit an i64 tensor", fn, v);
  CHECK(L, fn, sn_fill(sn_lua_ctx(L), t, v));
  lua_settop(L, 1);
  return 1;
}

static int l_zero_(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.zero_");
  CHECK(L, "seqnn.zero_", sn_fill(sn_lua_ctx(L), t, 0));
  lua_settop(L, 1);
  return 1;
}

/* index_select(dim, index): rows of dim picked by a 1-dim i64 tensor of 0-based ids. */
static int l_index_select(lua_State *L) {
  const char *fn = "seqnn.index_select";
  sn_tensor *t = self(L, fn);
  int d = sn_lua_check_dim(L, 2, fn, t, 0);
  sn_tensor *idx = sn_lua_check_tensor(L, 3, fn, "index", SN_I64);
  if (idx->ndim != 1) return sn_lua_fail(L, "%s: index must be 1-dim, got %s", fn, SN_SHAPE(idx));
  int64_t size[SN_MAX_DIMS];
  memcpy(size, t->size, sizeof size);
  size[d] = idx->size[0];
  sn_tensor *out = sn_lua_push_empty(L, fn, t->dtype, t->ndim, size);
  CHECK(L, fn, sn_index_select(sn_lua_ctx(L), out, t, d, idx));
  return 1;
}

/* ---- t[i] ------------------------------------------------------------------------- */

/* Resolves t[i] to a view of the i-th slice along dim 1 (1-based; -1 the last). */
static void push_slice(lua_State *L, sn_tensor *t, int key_idx, const char *fn) {
  if (t->ndim == 0) sn_lua_fail(L, "%s: a 0-dim tensor cannot be indexed; use item()", fn);
  lua_Integer i = lua_tointeger(L, key_idx);
  if (i < 0) i += t->size[0] + 1;
  if (i < 1 || i > t->size[0])
    sn_lua_fail(L, "%s: index %lld is out of range for dim 1 of size %lld (%s)", fn,
                (long long)lua_tointeger(L, key_idx), (long long)t->size[0], SN_SHAPE(t));
  sn_tensor *v = sn_lua_push_tensor(L);
  CHECK(L, fn, sn_select(sn_lua_ctx(L), v, t, 0, i - 1));
}

static bool is_int_key(lua_State *L, int idx) {
  if (lua_isinteger(L, idx)) return true;
  if (lua_type(L, idx) != LUA_TNUMBER) return false;
  lua_Number n = lua_tonumber(L, idx);
  return n == floor(n);
}

/* __index: integers index the first dim (a number for 1-dim tensors, a view otherwise);
 * names are methods (upvalue 2) or Lua-side fields kept in the user value. */
static int l_index(lua_State *L) {
  sn_tensor *t = (sn_tensor *)lua_touserdata(L, 1);
  if (is_int_key(L, 2)) {
    if (!t->storage) return sn_lua_fail(L, "seqnn.Tensor: tensor was freed");
    push_slice(L, t, 2, "seqnn.Tensor.__index");
    if (t->ndim == 1) {
      sn_tensor *v = sn_lua_test_tensor(L, -1);
      push_element(L, v, sn_data(v));
    }
    return 1;
  }
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE) return 0;
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

/* __newindex: t[i] = number fills the slice, t[i] = tensor copies into it; names store
 * Lua-side fields (grad, ...) in the user value table. */
static int l_newindex(lua_State *L) {
  sn_tensor *t = (sn_tensor *)lua_touserdata(L, 1);
  const char *fn = "seqnn.Tensor.__newindex";
  if (is_int_key(L, 2)) {
    if (!t->storage) return sn_lua_fail(L, "%s: tensor was freed", fn);
    push_slice(L, t, 2, fn);
    sn_tensor *v = sn_lua_test_tensor(L, -1);
    sn_ctx *ctx = sn_lua_ctx(L);
    sn_tensor *src = sn_lua_test_tensor(L, 3);
    if (src) {
      if (!src->storage) return sn_lua_fail(L, "%s: the value tensor was freed", fn);
      if (src->storage == t->storage) {
        sn_tensor *tmp = sn_lua_push_empty(L, fn, src->dtype, src->ndim, src->size);
        CHECK(L, fn, sn_copy(ctx, tmp, src));
        src = tmp;
      }
      CHECK(L, fn, sn_copy(ctx, v, src));
    } else if (lua_type(L, 3) == LUA_TNUMBER) {
      CHECK(L, fn, sn_fill(ctx, v, lua_tonumber(L, 3)));
    } else {
      return sn_lua_fail(L, "%s: a number or a seqnn.Tensor can be assigned, got %s", fn, luaL_typename(L, 3));
    }
    return 0;
  }
  if (lua_type(L, 2) != LUA_TSTRING)
    return sn_lua_fail(L, "%s: keys are integers or field names, got %s", fn, luaL_typename(L, 2));
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL)
    return sn_lua_fail(L, "%s: '%s' is a method and cannot be assigned", fn, lua_tostring(L, 2));
  lua_pop(L, 1);
  if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, 1);
  }
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  return 0;
}

static int l_len(lua_State *L) {
  sn_tensor *t = self(L, "seqnn.Tensor.__len");
  lua_pushinteger(L, t->ndim == 0 ? 0 : t->size[0]);
  return 1;
}

static const luaL_Reg module_fns[] = {
    {"zeros", l_zeros}, {"ones", l_ones}, {"empty", l_empty}, {"full", l_full},
    {"arange", l_arange}, {"rand", l_rand}, {"randn", l_randn}, {"randint", l_randint},
    {"tensor", l_tensor}, {NULL, NULL}};

static const luaL_Reg methods[] = {
    {"free", l_free}, {"dim", l_dim}, {"numel", l_numel}, {"nelement", l_numel},
    {"dtype", l_dtype}, {"shape", l_shape}, {"size", l_size}, {"stride", l_stride},
    {"is_contiguous", l_is_contiguous}, {"item", l_item}, {"totable", l_totable},
    {"view", l_view}, {"reshape", l_reshape}, {"transpose", l_transpose}, {"t", l_t},
    {"permute", l_permute}, {"narrow", l_narrow}, {"select", l_select}, {"expand", l_expand},
    {"unsqueeze", l_unsqueeze}, {"squeeze", l_squeeze}, {"alias", l_alias}, {"contiguous", l_contiguous},
    {"clone", l_clone}, {"float", l_float}, {"long", l_long}, {"to", l_to},
    {"copy_", l_copy_}, {"fill_", l_fill_}, {"zero_", l_zero_}, {"index_select", l_index_select},
    {NULL, NULL}};

static const luaL_Reg metamethods[] = {
    {"__gc", l_free}, {"__close", l_free}, {"__newindex", l_newindex}, {"__len", l_len}, {NULL, NULL}};

/* Stack on entry: ..., module table, ctx; `methods` is the absolute index of the methods table. */
void sn_lua_open_tensor(lua_State *L, int methods_idx) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, module_fns, 1);
  lua_pop(L, 1);
  lua_pushvalue(L, methods_idx);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, methods, 1);
  lua_pop(L, 1);

  luaL_getmetatable(L, SN_TENSOR_MT);
  lua_pushvalue(L, ctx);
  lua_pushvalue(L, methods_idx);
  luaL_setfuncs(L, metamethods, 2);
  lua_pushvalue(L, ctx);
  lua_pushvalue(L, methods_idx);
  lua_pushcclosure(L, l_index, 2);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
