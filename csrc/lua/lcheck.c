/* lcheck.c -- argument checking, error raising and GC-paced allocation for the binding. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "lcheck.h"

int sn_lua_fail(lua_State *L, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  /* The message is data, never a format string; level 1 adds no position of ours. */
  lua_pushstring(L, msg);
  lua_error(L);
  __builtin_unreachable(); /* lua_error longjmps; Lua's header does not say noreturn */
}

int sn_lua_raise(lua_State *L, const char *fn, sn_status st) {
  const char *msg = sn_lua_ctx(L)->err;
  size_t n = strlen(fn);
  if (strncmp(msg, fn, n) == 0 && msg[n] == ':') sn_lua_fail(L, "%s", msg);
  /* The core names its own entry point ("seqnn.add: ..."); the user called fn. */
  const char *colon = strstr(msg, ": ");
  if (strncmp(msg, "seqnn", 5) == 0 && colon && !memchr(msg, ' ', (size_t)(colon - msg)))
    msg = colon + 2;
  sn_lua_fail(L, "%s: %s", fn, msg);
}

/* The metatable also lives in the registry under this address: looking it up by pointer
 * avoids the string lookups of luaL_testudata on every call. */
static const char metatable_key = 0;

void sn_lua_register_metatable(lua_State *L, int idx) {
  lua_pushvalue(L, idx);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &metatable_key);
}

sn_tensor *sn_lua_test_tensor(lua_State *L, int idx) {
  void *p = lua_touserdata(L, idx);
  if (!p || !lua_getmetatable(L, idx)) return NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &metatable_key);
  bool ours = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return ours ? (sn_tensor *)p : NULL;
}

static const char *typename_at(lua_State *L, int idx) {
  if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING) {
    const char *n = lua_tostring(L, -1);
    lua_pop(L, 1);
    return n;
  }
  return luaL_typename(L, idx);
}

sn_tensor *sn_lua_check_tensor(lua_State *L, int idx, const char *fn, const char *arg, int dtype) {
  sn_tensor *t = sn_lua_test_tensor(L, idx);
  if (!t)
    sn_lua_fail(L, "bad argument #%d '%s' to '%s' (seqnn.Tensor expected, got %s)", idx, arg, fn,
                typename_at(L, idx));
  if (!t->storage) sn_lua_fail(L, "%s: argument '%s': tensor was freed", fn, arg);
  if (dtype >= 0 && t->dtype != (sn_dtype)dtype)
    sn_lua_fail(L, "%s: argument '%s' must be %s, got %s (%s)", fn, arg, sn_dtype_name((sn_dtype)dtype),
                sn_dtype_name(t->dtype), SN_SHAPE(t));
  return t;
}

sn_tensor *sn_lua_rows_arg(lua_State *L, int idx, const char *fn, const char *arg, bool optional) {
  if (optional && lua_isnil(L, idx)) return NULL;
  sn_tensor *t = sn_lua_check_tensor(L, idx, fn, arg, SN_F32);
  if (t->ndim == 0 || t->size[t->ndim - 1] <= 1 || t->stride[t->ndim - 1] == 1) return t;
  sn_tensor *c = sn_lua_push_empty_like(L, fn, t, SN_F32);
  sn_status st = sn_copy(sn_lua_ctx(L), c, t);
  if (st != SN_OK) sn_lua_raise(L, fn, st);
  return c;
}

sn_tensor *sn_lua_push_tensor(lua_State *L) {
  /* One user value: a table for Lua-side fields (grad, requires_grad, ...). */
  sn_tensor *t = (sn_tensor *)lua_newuserdatauv(L, sizeof(sn_tensor), 1);
  memset(t, 0, sizeof *t);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &metatable_key);
  lua_setmetatable(L, -2);
  return t;
}

sn_tensor *sn_lua_push_empty(lua_State *L, const char *fn, sn_dtype dt, int ndim, const int64_t *size) {
  sn_ctx *ctx = sn_lua_ctx(L);
  if (sn_check_shape(ctx, fn, dt, ndim, size, NULL) != SN_OK) sn_lua_fail(L, "%s", ctx->err);
  sn_tensor *t = sn_lua_push_tensor(L);
  sn_status st = sn_tensor_empty(ctx, t, dt, ndim, size);
  if (st == SN_ENOMEM) {
    /* Garbage may hold the memory we need: collect everything, then try once more. */
    lua_gc(L, LUA_GCCOLLECT);
    st = sn_tensor_empty(ctx, t, dt, ndim, size);
  }
  if (st != SN_OK) sn_lua_raise(L, fn, st);
  /* Lua's collector sees a small userdata, not the tensor memory behind it. Collect fully
   * once the tensors allocated since the last collection outgrow what that collection left
   * live (and 64 MiB): tensor memory then stays under about twice the live set, and each
   * collection's cost is spread over at least that much allocation. */
  sn_lua_state *ls = (sn_lua_state *)ctx;
  ls->allocated_since_collect += t->storage->nbytes;
  int64_t floor = (int64_t)64 << 20;
  if (ls->allocated_since_collect > (ls->live_after_collect > floor ? ls->live_after_collect : floor)) {
    lua_gc(L, LUA_GCCOLLECT);
    ls->allocated_since_collect = 0;
    ls->live_after_collect = ctx->live_bytes;
  }
  return t;
}

sn_tensor *sn_lua_push_empty_like(lua_State *L, const char *fn, const sn_tensor *like, sn_dtype dt) {
  return sn_lua_push_empty(L, fn, dt, like->ndim, like->size);
}

sn_tensor *sn_lua_contiguous(lua_State *L, const char *fn, sn_tensor *t) {
  if (sn_is_contiguous(t)) return t;
  sn_tensor *c = sn_lua_push_empty_like(L, fn, t, t->dtype);
  sn_status st = sn_copy(sn_lua_ctx(L), c, t);
  if (st != SN_OK) sn_lua_raise(L, fn, st);
  return c;
}

/* Integers, and floats with an integral value (2.0), as Lua's own string.rep does. */
static int64_t to_int(lua_State *L, int idx, int *ok) {
  int isnum;
  lua_Integer v = lua_tointegerx(L, idx, &isnum);
  *ok = isnum && lua_type(L, idx) == LUA_TNUMBER;
  return (int64_t)v;
}

int sn_lua_check_shape(lua_State *L, int idx, int last, const char *fn, int64_t *size) {
  int ok, ndim = 0;
  if (lua_type(L, idx) == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, idx);
    if (n > SN_MAX_DIMS) sn_lua_fail(L, "%s: %lld dims requested, at most %d are supported", fn, (long long)n, SN_MAX_DIMS);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, idx, i);
      size[ndim++] = to_int(L, -1, &ok);
      if (!ok) sn_lua_fail(L, "%s: shape entry %lld must be an integer, got %s", fn, (long long)i, luaL_typename(L, -1));
      lua_pop(L, 1);
    }
  } else {
    for (int i = idx; i <= last; i++) {
      if (ndim == SN_MAX_DIMS) sn_lua_fail(L, "%s: %d dims requested, at most %d are supported", fn, last - idx + 1, SN_MAX_DIMS);
      size[ndim++] = to_int(L, i, &ok);
      if (!ok) sn_lua_fail(L, "bad argument #%d to '%s' (size must be an integer, got %s)", i, fn, luaL_typename(L, i));
    }
  }
  return ndim;
}

int sn_lua_check_dim(lua_State *L, int idx, const char *fn, const sn_tensor *t, int extra) {
  int ok;
  int64_t d = to_int(L, idx, &ok);
  if (!ok) sn_lua_fail(L, "bad argument #%d 'dim' to '%s' (integer expected, got %s)", idx, fn, luaL_typename(L, idx));
  int64_t n = t->ndim + (extra ? 1 : 0);
  if (d < 0) d += n + 1;
  if (d < 1 || d > n)
    sn_lua_fail(L, "%s: dim %lld is out of range for a tensor of %d dims (%s)", fn,
                (long long)to_int(L, idx, &ok), t->ndim, SN_SHAPE(t));
  return (int)(d - 1);
}

int64_t sn_lua_check_int(lua_State *L, int idx, const char *fn, const char *arg) {
  int ok;
  int64_t v = to_int(L, idx, &ok);
  if (!ok) sn_lua_fail(L, "bad argument #%d '%s' to '%s' (integer expected, got %s)", idx, arg, fn,
                       lua_type(L, idx) == LUA_TNUMBER ? "a non-integral number" : luaL_typename(L, idx));
  return v;
}

sn_dtype sn_lua_opt_dtype(lua_State *L, int idx, const char *fn, sn_dtype def) {
  if (lua_isnoneornil(L, idx)) return def;
  const char *s = lua_tostring(L, idx);
  if (lua_type(L, idx) == LUA_TSTRING) {
    if (strcmp(s, "f32") == 0 || strcmp(s, "float") == 0) return SN_F32;
    if (strcmp(s, "i64") == 0 || strcmp(s, "long") == 0) return SN_I64;
  }
  sn_lua_fail(L, "bad argument #%d 'dtype' to '%s' (\"f32\" or \"i64\" expected, got %s)", idx, fn,
              lua_type(L, idx) == LUA_TSTRING ? s : luaL_typename(L, idx));
  return def;
}
