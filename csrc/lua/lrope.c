/* lrope.c -- binding of kernels/rope.c as core.k_rope_fwd / core.k_rope_bwd (sn.F.rope).
 *   y  = k_rope_fwd(x, offset, base)     x (B,T,H,Dh) f32, Dh even
 *   gx = k_rope_bwd(gy, offset, base [, out])    the inverse rotation
 * Inputs may be strided views (a narrow of a fused QKV output) as long as the last dim is
 * contiguous; otherwise they are copied first. Outputs are new contiguous tensors, or `out`
 * (a view with a contiguous last dim, gy itself for in place) when given. */
#include <math.h>

#include "lcheck.h"

static int rope(lua_State *L, bool backward) {
  lua_settop(L, 4);
  const char *fn = "seqnn.F.rope";
  const char *arg = backward ? "grad_output" : "x";
  sn_tensor *x = sn_lua_check_tensor(L, 1, fn, arg, SN_F32);
  int64_t offset = sn_lua_check_int(L, 2, fn, "offset");
  double base = luaL_checknumber(L, 3);
  if (x->ndim != 4) sn_lua_fail(L, "%s: %s must be (B,T,H,Dh), got %s", fn, arg, SN_SHAPE(x));
  if (x->size[3] % 2 != 0)
    sn_lua_fail(L, "%s: head dim Dh must be even (element i pairs with i + Dh/2), got %lld (%s: %s)", fn,
                (long long)x->size[3], arg, SN_SHAPE(x));
  if (offset < 0) sn_lua_fail(L, "%s: offset must be >= 0, got %lld", fn, (long long)offset);
  if (!(base > 0) || isinf(base)) sn_lua_fail(L, "%s: base must be a finite number > 0, got %g", fn, base);
  sn_ctx *ctx = sn_lua_ctx(L);
  if (x->size[3] > 1 && x->stride[3] != 1) {
    sn_tensor *c = sn_lua_push_empty_like(L, fn, x, SN_F32);
    sn_status st = sn_copy(ctx, c, x);
    if (st != SN_OK) sn_lua_raise(L, fn, st);
    x = c;
  }
  sn_tensor *y = lua_isnil(L, 4) ? sn_lua_push_empty_like(L, fn, x, SN_F32)
                                 : (lua_pushvalue(L, 4), sn_lua_check_tensor(L, 4, fn, "out", SN_F32));
  sn_status st = backward ? sn_rope_bwd(ctx, y, x, offset, base) : sn_rope_fwd(ctx, y, x, offset, base);
  if (st != SN_OK) sn_lua_raise(L, fn, st);
  return 1;
}

static int l_rope_fwd(lua_State *L) { return rope(L, false); }
static int l_rope_bwd(lua_State *L) { return rope(L, true); }

static const luaL_Reg rope_fns[] = {{"k_rope_fwd", l_rope_fwd}, {"k_rope_bwd", l_rope_bwd}, {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_rope(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, rope_fns, 1);
  lua_pop(L, 1);
}
