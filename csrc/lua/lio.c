/* lio.c -- checkpoints: core.save(path, tensors [, metadata]) and core.load(path) over the
 * safetensors reader and writer of csrc/io/safetensors.c. */
#include <string.h>

#include "lcheck.h"

#define ST_FILE_MT "seqnn.SafetensorsFile"

/* A path argument: a string without NUL bytes (the file system would cut it short). */
static const char *check_path(lua_State *L, int idx, const char *fn) {
  size_t len = 0;
  const char *path = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &len) : NULL;
  if (!path)
    sn_lua_fail(L, "bad argument #%d 'path' to '%s' (string expected, got %s)", idx, fn, luaL_typename(L, idx));
  else if (strlen(path) != len)
    sn_lua_fail(L, "%s: the path contains a NUL byte", fn);
  return path;
}

/* A string key (key == NULL) or the value what[key] of a table argument. */
static const char *check_string(lua_State *L, int idx, const char *fn, const char *what, const char *key) {
  size_t len = 0;
  if (lua_type(L, idx) != LUA_TSTRING) {
    if (key) sn_lua_fail(L, "%s: %s['%s'] must be a string, got %s", fn, what, key, luaL_typename(L, idx));
    const char *type = luaL_typename(L, idx);
    sn_lua_fail(L, "%s: %s has a %s key (%s); keys must be strings", fn, what, type, luaL_tolstring(L, idx, NULL));
  }
  const char *s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len) {
    if (key) sn_lua_fail(L, "%s: %s['%s'] contains a NUL byte", fn, what, key);
    sn_lua_fail(L, "%s: %s key '%s...' contains a NUL byte", fn, what, s);
  }
  return s;
}

/* core.save(path, tensors, metadata): tensors maps names to seqnn.Tensor, metadata (nil or
 * a table) strings to strings. Everything is checked before the file is touched. */
static int l_save(lua_State *L) {
  const char *fn = "seqnn.save";
  const char *path = check_path(L, 1, fn);
  if (lua_type(L, 2) != LUA_TTABLE)
    return sn_lua_fail(L, "bad argument #2 'tensors' to '%s' (table of name -> seqnn.Tensor expected, got %s)",
                       fn, luaL_typename(L, 2));
  if (!lua_isnoneornil(L, 3) && lua_type(L, 3) != LUA_TTABLE)
    return sn_lua_fail(L, "bad argument #3 'metadata' to '%s' (table of string -> string expected, got %s)",
                       fn, luaL_typename(L, 3));
  bool has_meta = lua_type(L, 3) == LUA_TTABLE;
  lua_settop(L, 3);

  int64_t n = 0, nmeta = 0;
  for (lua_pushnil(L); lua_next(L, 2); lua_pop(L, 1)) n++;
  for (lua_pushnil(L); has_meta && lua_next(L, 3); lua_pop(L, 1)) nmeta++;
  /* Arrays in userdata: the collector frees them if a check below raises. Keys and values
   * stay alive in the argument tables, so their pointers remain valid. */
  const char **names = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *names, 0);
  const sn_tensor **tensors = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *tensors, 0);
  const char **keys = lua_newuserdatauv(L, (size_t)(nmeta + 1) * sizeof *keys, 0);
  const char **vals = lua_newuserdatauv(L, (size_t)(nmeta + 1) * sizeof *vals, 0);

  int64_t i = 0;
  for (lua_pushnil(L); lua_next(L, 2); lua_pop(L, 1), i++) {
    names[i] = check_string(L, -2, fn, "tensors", NULL);
    sn_tensor *t = sn_lua_test_tensor(L, -1);
    if (!t)
      return sn_lua_fail(L, "%s: tensors['%s'] must be a seqnn.Tensor, got %s", fn, names[i], luaL_typename(L, -1));
    if (!t->storage) return sn_lua_fail(L, "%s: tensors['%s'] was freed", fn, names[i]);
    tensors[i] = t;
  }
  i = 0;
  for (lua_pushnil(L); has_meta && lua_next(L, 3); lua_pop(L, 1), i++) {
    keys[i] = check_string(L, -2, fn, "metadata", NULL);
    vals[i] = check_string(L, -1, fn, "metadata", keys[i]);
  }
  sn_status st = sn_safetensors_save(sn_lua_ctx(L), path, names, tensors, n, keys, vals, nmeta);
  if (st != SN_OK) return sn_lua_raise(L, fn, st);
  return 0;
}

static int st_file_gc(lua_State *L) {
  sn_safetensors_close((sn_st_file *)luaL_checkudata(L, 1, ST_FILE_MT));
  return 0;
}

/* core.load(path) -> tensors (name -> seqnn.Tensor), metadata (string -> string).
 * Aligned F32/I64 data is viewed in place in the file's mapping (not counted by
 * seqnn.memory()); other dtypes are converted into new f32/i64 tensors. */
static int l_load(lua_State *L) {
  const char *fn = "seqnn.load";
  sn_ctx *ctx = sn_lua_ctx(L);
  const char *path = check_path(L, 1, fn);
  /* The index lives in a userdata so that an error below still frees it. */
  sn_st_file *f = lua_newuserdatauv(L, sizeof *f, 0);
  memset(f, 0, sizeof *f);
  luaL_setmetatable(L, ST_FILE_MT);
  sn_status st = sn_safetensors_load(ctx, f, path);
  if (st != SN_OK) return sn_lua_raise(L, fn, st);

  lua_createtable(L, 0, (int)f->n);
  for (int64_t i = 0; i < f->n; i++) {
    const sn_st_entry *e = &f->entries[i];
    sn_tensor *t;
    if (sn_safetensors_can_view(f, i)) {
      t = sn_lua_push_tensor(L);
      st = sn_safetensors_view(ctx, t, f, i);
    } else {
      t = sn_lua_push_empty(L, fn, sn_safetensors_load_dtype(e->dtype), e->ndim, e->size);
      st = sn_safetensors_read(ctx, t, f, i);
    }
    if (st != SN_OK) return sn_lua_raise(L, fn, st);
    lua_setfield(L, -2, e->name);
  }
  lua_createtable(L, 0, (int)f->nmeta);
  for (int64_t i = 0; i < f->nmeta; i++) {
    lua_pushstring(L, f->meta_vals[i]);
    lua_setfield(L, -2, f->meta_keys[i]);
  }
  sn_safetensors_close(f); /* the tensors keep the mapping */
  return 2;
}

static const luaL_Reg io_fns[] = {{"save", l_save}, {"load", l_load}, {NULL, NULL}};

void sn_lua_open_io(lua_State *L, int methods) {
  int ctx = lua_gettop(L), module = ctx - 1;
  luaL_newmetatable(L, ST_FILE_MT);
  lua_pushcfunction(L, st_file_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, io_fns, 1);
  lua_pop(L, 1);
}
