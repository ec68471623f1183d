/* lconv1d.c -- core.k_causal_conv1d_fwd / _bwd / _step (kernels/conv1d.c), called by
 * sn.F.causal_conv1d and the Mamba decode step:
 *   y = k_causal_conv1d_fwd(x, w, bias|nil, silu)                x (B,T,C), w (C,W)
 *   dx, dw, dbias|nil = k_causal_conv1d_bwd(dy, x, w, bias|nil, silu)  dbias iff bias
 *   y = k_causal_conv1d_step(state, x, w, bias|nil, silu)        x (B,C); state (B,W-1,C)
 *                                                                 updated in place
 * The kernel checks the shapes and names them in its messages. x and dy may be views: only
 * one whose last dim is not unit-stride is copied. Outputs are pushed before the kernel
 * runs, so on an error the collector owns them. */
#include "lcheck.h"

static const char *FN = "seqnn.F.causal_conv1d", *FN_STEP = "seqnn.F.causal_conv1d_step";

static sn_tensor *arg_rows(lua_State *L, int idx, const char *fn, const char *name) {
  return sn_lua_rows_arg(L, idx, fn, name, false);
}

static sn_tensor *opt_bias(lua_State *L, int idx, const char *fn) {
  return lua_isnil(L, idx) ? NULL : sn_lua_check_tensor(L, idx, fn, "bias", SN_F32);
}

static int l_fwd(lua_State *L) {
  lua_settop(L, 4);
  sn_tensor *x = arg_rows(L, 1, FN, "x"), *w = sn_lua_check_tensor(L, 2, FN, "w", SN_F32), *bias = opt_bias(L, 3, FN);
  sn_tensor *y = sn_lua_push_empty_like(L, FN, x, SN_F32);
  sn_status st = sn_causal_conv1d_fwd(sn_lua_ctx(L), y, x, w, bias, lua_toboolean(L, 4));
  if (st != SN_OK) sn_lua_raise(L, FN, st);
  return 1;
}

static int l_bwd(lua_State *L) {
  lua_settop(L, 5);
  sn_tensor *dy = arg_rows(L, 1, FN, "grad_output"), *x = arg_rows(L, 2, FN, "x");
  sn_tensor *w = sn_lua_check_tensor(L, 3, FN, "w", SN_F32), *bias = opt_bias(L, 4, FN);
  sn_tensor *dx = sn_lua_push_empty_like(L, FN, x, SN_F32), *dw = sn_lua_push_empty_like(L, FN, w, SN_F32);
  sn_tensor *db = NULL;
  if (bias) db = sn_lua_push_empty_like(L, FN, bias, SN_F32);
  else lua_pushnil(L);
  sn_status st = sn_causal_conv1d_bwd(sn_lua_ctx(L), dx, dw, db, dy, x, w, bias, lua_toboolean(L, 5));
  if (st != SN_OK) sn_lua_raise(L, FN, st);
  return 3;
}

static int l_step(lua_State *L) {
  lua_settop(L, 5);
  sn_tensor *state = sn_lua_check_tensor(L, 1, FN_STEP, "state", SN_F32), *x = arg_rows(L, 2, FN_STEP, "x");
  sn_tensor *w = sn_lua_check_tensor(L, 3, FN_STEP, "w", SN_F32), *bias = opt_bias(L, 4, FN_STEP);
  sn_tensor *y = sn_lua_push_empty_like(L, FN_STEP, x, SN_F32);
  sn_status st = sn_causal_conv1d_step(sn_lua_ctx(L), y, state, x, w, bias, lua_toboolean(L, 5));
  if (st != SN_OK) sn_lua_raise(L, FN_STEP, st);
  return 1;
}

static const luaL_Reg conv1d_fns[] = {{"k_causal_conv1d_fwd", l_fwd},
                                      {"k_causal_conv1d_bwd", l_bwd},
                                      {"k_causal_conv1d_step", l_step},
                                      {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_conv1d(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, conv1d_fns, 1);
  lua_pop(L, 1);
}
