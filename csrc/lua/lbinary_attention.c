/* lbinary_attention.c -- core.k_binary_attention_fwd / _bwd / _step (kernels/binary_attention.c),
 * called by sn.F.binary_attention and sn.F.binary_attention_step:
 *   out, den, codes, final|nil = k_binary_attention_fwd(y, v, initial_state|nil, want_state)
 *       y (B,T,H,bits) hash pre-activations, packed here into codes (bit n: y_n >= 0)
 *   dy, dv, dinitial|nil = k_binary_attention_bwd(dout, dfinal|nil, out, den, codes, y, v,
 *                                                 initial_state|nil, want_dinitial)
 *       dy = the features' gradient times 1[|y| < 1] (straight-through)
 *   out = k_binary_attention_step(state, y, v)   y (B,1,H,bits), v (B,1,H,Dv); state
 *       (B,H,bits+1,Dv+1) updated in place
 * Here y and v are checked against each other (the message shows both shapes); the kernel
 * checks the rest and names it. Outputs are pushed before the kernel runs, so on an error
 * the collector owns them. Views whose last dim is not unit-stride are copied. */
#include "lcheck.h"

static const char *FN = "seqnn.F.binary_attention", *FN_STEP = "seqnn.F.binary_attention_step";

/* y and v: rank 4, bits = y's last dim in 1..64, the same (B, T, H). Returns bits. */
static int check_yv(lua_State *L, const char *fn, const sn_tensor *y, const sn_tensor *v) {
  if (y->ndim != 4) sn_lua_fail(L, "%s: y must be (B, T, H, bits), got %s", fn, SN_SHAPE(y));
  if (v->ndim != 4) sn_lua_fail(L, "%s: v must be (B, T, H, Dv), got %s", fn, SN_SHAPE(v));
  if (y->size[3] < 1 || y->size[3] > 64)
    sn_lua_fail(L, "%s: y has %lld bits in its last dim, not 1..64 (y: %s)", fn, (long long)y->size[3], SN_SHAPE(y));
  if (y->size[0] != v->size[0] || y->size[1] != v->size[1] || y->size[2] != v->size[2])
    sn_lua_fail(L, "%s: y and v must agree in (B, T, H) (y: %s, v: %s)", fn, SN_SHAPE(y), SN_SHAPE(v));
  if (v->size[3] < 1) sn_lua_fail(L, "%s: v must have a head dim >= 1 (v: %s)", fn, SN_SHAPE(v));
  return (int)y->size[3];
}

static sn_tensor *pack(lua_State *L, const char *fn, const sn_tensor *y) {
  sn_tensor *codes = sn_lua_push_empty(L, fn, SN_I64, 3, y->size);
  sn_status st = sn_binary_attention_pack(sn_lua_ctx(L), codes, y);
  if (st != SN_OK) sn_lua_raise(L, fn, st);
  return codes;
}

static sn_tensor *opt_state(lua_State *L, int idx, const char *fn, const char *name) {
  return lua_isnil(L, idx) ? NULL : sn_lua_check_tensor(L, idx, fn, name, SN_F32);
}

static int l_fwd(lua_State *L) {
  lua_settop(L, 4);
  sn_tensor *y = sn_lua_rows_arg(L, 1, FN, "y", false), *v = sn_lua_rows_arg(L, 2, FN, "v", false);
  sn_tensor *s0 = opt_state(L, 3, FN, "initial_state");
  int bits = check_yv(L, FN, y, v);
  int64_t B = v->size[0], H = v->size[2], Dv = v->size[3];
  sn_tensor *out = sn_lua_push_empty(L, FN, SN_F32, 4, v->size);
  sn_tensor *den = sn_lua_push_empty(L, FN, SN_F32, 3, v->size);
  sn_tensor *codes = pack(L, FN, y);
  sn_tensor *fin = NULL;
  if (lua_toboolean(L, 4)) fin = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){B, H, bits + 1, Dv + 1});
  else lua_pushnil(L);
  sn_status st = sn_binary_attention_fwd(sn_lua_ctx(L), out, den, fin, codes, v, s0, bits);
  if (st != SN_OK) sn_lua_raise(L, FN, st);
  return 4;
}

static int l_bwd(lua_State *L) {
  lua_settop(L, 9);
  sn_tensor *dout = sn_lua_rows_arg(L, 1, FN, "grad_output", false);
  sn_tensor *dfin = opt_state(L, 2, FN, "grad_final_state");
  sn_tensor *out = sn_lua_check_tensor(L, 3, FN, "out", SN_F32), *den = sn_lua_check_tensor(L, 4, FN, "den", SN_F32);
  sn_tensor *codes = sn_lua_check_tensor(L, 5, FN, "codes", SN_I64);
  sn_tensor *y = sn_lua_rows_arg(L, 6, FN, "y", false), *v = sn_lua_rows_arg(L, 7, FN, "v", false);
  sn_tensor *s0 = opt_state(L, 8, FN, "initial_state");
  int bits = check_yv(L, FN, y, v);
  sn_tensor *dy = sn_lua_push_empty(L, FN, SN_F32, 4, y->size);
  sn_tensor *dv = sn_lua_push_empty(L, FN, SN_F32, 4, v->size);
  sn_tensor *ds0 = NULL;
  if (lua_toboolean(L, 9)) ds0 = sn_lua_push_empty(L, FN, SN_F32, 4, (int64_t[]){v->size[0], v->size[2], bits + 1, v->size[3] + 1});
  else lua_pushnil(L);
  sn_status st = sn_binary_attention_bwd(sn_lua_ctx(L), dv, dy, ds0, out, den, dout, dfin, codes, v, s0, y, bits);
  if (st != SN_OK) sn_lua_raise(L, FN, st);
  return 3;
}

static int l_step(lua_State *L) {
  lua_settop(L, 3);
  sn_tensor *state = sn_lua_check_tensor(L, 1, FN_STEP, "state", SN_F32);
  sn_tensor *y = sn_lua_rows_arg(L, 2, FN_STEP, "y", false), *v = sn_lua_rows_arg(L, 3, FN_STEP, "v", false);
  int bits = check_yv(L, FN_STEP, y, v);
  if (v->size[1] != 1) sn_lua_fail(L, "%s: one token at a time: v must be (B, 1, H, Dv), got %s", FN_STEP, SN_SHAPE(v));
  sn_tensor *out = sn_lua_push_empty(L, FN_STEP, SN_F32, 4, v->size);
  sn_tensor *codes = pack(L, FN_STEP, y);
  sn_status st = sn_binary_attention_step(sn_lua_ctx(L), out, state, codes, v, bits);
  if (st != SN_OK) sn_lua_raise(L, FN_STEP, st);
  lua_pop(L, 1);
  return 1;
}

static const luaL_Reg fns[] = {{"k_binary_attention_fwd", l_fwd},
                               {"k_binary_attention_bwd", l_bwd},
                               {"k_binary_attention_step", l_step},
                               {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_binary_attention(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, fns, 1);
  lua_pop(L, 1);
}
