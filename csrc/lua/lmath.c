/* lmath.c -- elementwise arithmetic (methods and metamethods), unary math, reductions,
 * matmul and allclose, with dtype promotion: f32 wins over i64, division and powers give f32. */
#include <math.h>
#include <string.h>

#include "lcheck.h"

#define CHECK(L, fn, st) do { sn_status st_ = (st); if (st_ != SN_OK) sn_lua_raise(L, fn, st_); } while (0)

/* A contiguous copy of t as dtype dt, pushed on the stack. */
static sn_tensor *pushed_copy(lua_State *L, const char *fn, sn_tensor *t, sn_dtype dt) {
  sn_tensor *c = sn_lua_push_empty(L, fn, dt, t->ndim, t->size);
  CHECK(L, fn, sn_copy(sn_lua_ctx(L), c, t));
  return c;
}

/* t itself when it already has dtype dt, else a converted copy. */
static sn_tensor *as_dtype(lua_State *L, const char *fn, sn_tensor *t, sn_dtype dt) {
  return t->dtype == dt ? t : pushed_copy(L, fn, t, dt);
}

static bool is_integral(lua_State *L, int idx) {
  if (lua_isinteger(L, idx)) return true;
  lua_Number v = lua_tonumber(L, idx);
  return v == floor(v) && fabs(v) < 9.2e18;
}

/* ---- binary ------------------------------------------------------------------------ */

static const char *const binop_fn[] = {"seqnn.add", "seqnn.sub", "seqnn.mul", "seqnn.div",
                                       "seqnn.pow", "seqnn.maximum", "seqnn.minimum"};
static const char *const binop_fn_[] = {"seqnn.add_", "seqnn.sub_", "seqnn.mul_", "seqnn.div_",
                                        "seqnn.pow_", "seqnn.maximum_", "seqnn.minimum_"};

/* The value at idx as a tensor operand or a number; raises otherwise. */
static sn_tensor *operand(lua_State *L, int idx, const char *fn, const char *arg, double *num) {
  if (lua_type(L, idx) == LUA_TNUMBER) {
    *num = lua_tonumber(L, idx);
    return NULL;
  }
  return sn_lua_check_tensor(L, idx, fn, arg, -1);
}

/* a op b for a, b at stack 1 and 2 (either may be a number). In place writes into a. */
static int binary(lua_State *L, sn_binop op, bool inplace) {
  const char *fn = inplace ? binop_fn_[op] : binop_fn[op];
  sn_ctx *ctx = sn_lua_ctx(L);
  double na = 0, nb = 0;
  lua_settop(L, 2);
  sn_tensor *a = operand(L, 1, fn, "self", &na), *b = operand(L, 2, fn, "other", &nb);
  if (!a && !b) return sn_lua_fail(L, "%s: at least one operand must be a seqnn.Tensor", fn);
  if (inplace && !a) return sn_lua_fail(L, "%s: self must be a seqnn.Tensor", fn);
  bool want_f32 = op == SN_DIV || op == SN_POW || (a && a->dtype == SN_F32) || (b && b->dtype == SN_F32) ||
                  (!a && !is_integral(L, 1)) || (!b && !is_integral(L, 2));
  sn_dtype dt = want_f32 ? SN_F32 : SN_I64;
  if (inplace && a->dtype != dt)
    return sn_lua_fail(L, "%s: the result is %s and cannot be stored in self (%s %s)", fn, sn_dtype_name(dt),
                       sn_dtype_name(a->dtype), SN_SHAPE(a));
  sn_tensor *ca = a ? as_dtype(L, fn, a, dt) : NULL, *cb = b ? as_dtype(L, fn, b, dt) : NULL;
  if (ca && cb) {
    int nd;
    int64_t size[SN_MAX_DIMS];
    CHECK(L, fn, sn_broadcast_shape(ctx, fn, ca, cb, &nd, size));
    sn_tensor *out;
    if (inplace) {
      out = a;
      /* b sharing a's memory through another view would be overwritten while being read. */
      if (cb->storage == a->storage && !(cb->offset == a->offset && memcmp(cb->stride, a->stride, sizeof a->stride) == 0))
        cb = pushed_copy(L, fn, cb, dt);
      lua_pushvalue(L, 1);
    } else {
      out = sn_lua_push_empty(L, fn, dt, nd, size);
    }
    CHECK(L, fn, sn_binary(ctx, out, ca, cb, op));
    return 1;
  }
  sn_tensor *t = ca ? ca : cb;
  sn_tensor *out = inplace ? a : sn_lua_push_empty(L, fn, dt, t->ndim, t->size);
  if (inplace) lua_pushvalue(L, 1);
  CHECK(L, fn, sn_binary_scalar(ctx, out, t, ca ? nb : na, op, ca == NULL));
  return 1;
}

static int l_add(lua_State *L) { return binary(L, SN_ADD, false); }
static int l_sub(lua_State *L) { return binary(L, SN_SUB, false); }
static int l_mul(lua_State *L) { return binary(L, SN_MUL, false); }
static int l_div(lua_State *L) { return binary(L, SN_DIV, false); }
static int l_pow(lua_State *L) { return binary(L, SN_POW, false); }
static int l_maximum(lua_State *L) { return binary(L, SN_MAX, false); }
static int l_minimum(lua_State *L) { return binary(L, SN_MIN, false); }
static int l_add_(lua_State *L) { return binary(L, SN_ADD, true); }
static int l_sub_(lua_State *L) { return binary(L, SN_SUB, true); }
static int l_mul_(lua_State *L) { return binary(L, SN_MUL, true); }
static int l_div_(lua_State *L) { return binary(L, SN_DIV, true); }

static int l_unm(lua_State *L) {
  sn_tensor *t = sn_lua_check_tensor(L, 1, "seqnn.neg", "self", -1);
  sn_tensor *out = sn_lua_push_empty(L, "seqnn.neg", t->dtype, t->ndim, t->size);
  CHECK(L, "seqnn.neg", sn_unary(sn_lua_ctx(L), out, t, SN_NEG));
  return 1;
}

/* ---- unary ------------------------------------------------------------------------- */

static int unary(lua_State *L, sn_unop op, const char *fn) {
  sn_tensor *t = sn_lua_check_tensor(L, 1, fn, "self", -1);
  bool keeps_int = op == SN_ABS || op == SN_NEG;
  sn_tensor *x = keeps_int ? t : as_dtype(L, fn, t, SN_F32);
  sn_tensor *out = sn_lua_push_empty(L, fn, x->dtype, x->ndim, x->size);
  CHECK(L, fn, sn_unary(sn_lua_ctx(L), out, x, op));
  return 1;
}

#define UNARY(name, op) static int l_##name(lua_State *L) { return unary(L, op, "seqnn." #name); }
UNARY(exp, SN_EXP)
UNARY(log, SN_LOG)
UNARY(tanh, SN_TANH)
UNARY(sigmoid, SN_SIGMOID)
UNARY(silu, SN_SILU)
UNARY(gelu, SN_GELU)
UNARY(softplus, SN_SOFTPLUS)
UNARY(sqrt, SN_SQRT)
UNARY(rsqrt, SN_RSQRT)
UNARY(abs, SN_ABS)
UNARY(neg, SN_NEG)

/* ---- reductions -------------------------------------------------------------------- */

/* t:op() over everything -> 0-dim; t:op(dim [, keepdim]) -> the dim removed (or kept as 1). */
static sn_tensor *reduce_into(lua_State *L, const char *fn, sn_tensor *x, int dim, bool keepdim, sn_redop op) {
  int64_t size[SN_MAX_DIMS];
  int nd = 0;
  if (dim >= 0) {
    for (int d = 0; d < x->ndim; d++) {
      if (d != dim) size[nd++] = x->size[d];
      else if (keepdim) size[nd++] = 1;
    }
  }
  sn_dtype dt = (op == SN_ARGMAX || op == SN_ARGMIN) ? SN_I64 : x->dtype;
  sn_tensor *out = sn_lua_push_empty(L, fn, dt, nd, size);
  CHECK(L, fn, sn_reduce(sn_lua_ctx(L), out, x, dim, op));
  return out;
}

static int reduction(lua_State *L, sn_redop op, const char *fn) {
  sn_tensor *t = sn_lua_check_tensor(L, 1, fn, "self", -1);
  int dim = lua_isnoneornil(L, 2) ? -1 : sn_lua_check_dim(L, 2, fn, t, 0);
  bool keepdim = lua_toboolean(L, 3);
  bool needs_f32 = op == SN_MEAN || op == SN_LOGSUMEXP;
  sn_tensor *x = needs_f32 ? as_dtype(L, fn, t, SN_F32) : t;
  if ((op == SN_RMAX || op == SN_RMIN || op == SN_ARGMAX || op == SN_ARGMIN) && sn_numel(x) == 0)
    return sn_lua_fail(L, "%s: the tensor is empty (%s)", fn, SN_SHAPE(x));
  if ((op == SN_RMAX || op == SN_RMIN || op == SN_ARGMAX || op == SN_ARGMIN) && dim >= 0 && x->size[dim] == 0)
    return sn_lua_fail(L, "%s: dim %d is empty (%s)", fn, dim + 1, SN_SHAPE(x));
  reduce_into(L, fn, x, dim, keepdim, op);
  /* max(dim)/min(dim) also return the 0-based indices, as in Torch7 and PyTorch. */
  if (dim >= 0 && (op == SN_RMAX || op == SN_RMIN)) {
    reduce_into(L, fn, x, dim, keepdim, op == SN_RMAX ? SN_ARGMAX : SN_ARGMIN);
    return 2;
  }
  return 1;
}

#define REDUCTION(name, op) static int l_##name(lua_State *L) { return reduction(L, op, "seqnn." #name); }
REDUCTION(sum, SN_SUM)
REDUCTION(mean, SN_MEAN)
REDUCTION(max, SN_RMAX)
REDUCTION(min, SN_RMIN)
REDUCTION(argmax, SN_ARGMAX)
REDUCTION(argmin, SN_ARGMIN)
REDUCTION(logsumexp, SN_LOGSUMEXP)

/* ---- matmul ------------------------------------------------------------------------ */

/* matmul(a, b): 1-dim operands are treated as a row (a) or a column (b) vector and that
 * dim is dropped from the result, as in PyTorch; batch dims broadcast. */
static int l_matmul(lua_State *L) {
  const char *fn = "seqnn.matmul";
  sn_ctx *ctx = sn_lua_ctx(L);
  sn_tensor *a = sn_lua_check_tensor(L, 1, fn, "a", SN_F32), *b = sn_lua_check_tensor(L, 2, fn, "b", SN_F32);
  lua_settop(L, 2);
  if (a->ndim == 0 || b->ndim == 0)
    return sn_lua_fail(L, "%s: operands need at least 1 dim (a: %s, b: %s)", fn, SN_SHAPE(a), SN_SHAPE(b));
  sn_tensor a2 = *a, b2 = *b; /* borrowed views with a vector dim added; no refcount taken */
  if (a->ndim == 1) {
    a2.ndim = 2, a2.size[0] = 1, a2.size[1] = a->size[0], a2.stride[0] = a->size[0] * a->stride[0], a2.stride[1] = a->stride[0];
  }
  if (b->ndim == 1) {
    b2.ndim = 2, b2.size[0] = b->size[0], b2.size[1] = 1, b2.stride[0] = b->stride[0], b2.stride[1] = 1;
  }
  int64_t M = a2.size[a2.ndim - 2], K = a2.size[a2.ndim - 1], K2 = b2.size[b2.ndim - 2], N = b2.size[b2.ndim - 1];
  if (K != K2)
    return sn_lua_fail(L, "%s: a is %s but b is %s (inner dims %lld and %lld differ)", fn, SN_SHAPE(a),
                       SN_SHAPE(b), (long long)K, (long long)K2);
  /* Broadcast the batch dims. */
  sn_tensor ba = a2, bb = b2;
  ba.ndim -= 2, bb.ndim -= 2;
  int nb = 0;
  int64_t size[SN_MAX_DIMS + 2];
  CHECK(L, fn, sn_broadcast_shape(ctx, fn, &ba, &bb, &nb, size));
  if (nb + 2 > SN_MAX_DIMS) return sn_lua_fail(L, "%s: result would have more than %d dims", fn, SN_MAX_DIMS);
  size[nb] = M, size[nb + 1] = N;
  sn_tensor *out = sn_lua_push_empty(L, fn, SN_F32, nb + 2, size);
  CHECK(L, fn, sn_matmul(ctx, out, &a2, &b2));
  if (a->ndim == 1 || b->ndim == 1) {
    /* Drop the vector dims: the result is contiguous, so a plain view does it. */
    int nd = 0;
    int64_t vs[SN_MAX_DIMS];
    for (int d = 0; d < nb; d++) vs[nd++] = size[d];
    if (a->ndim != 1) vs[nd++] = M;
    if (b->ndim != 1) vs[nd++] = N;
    sn_tensor *v = sn_lua_push_tensor(L);
    CHECK(L, fn, sn_view(ctx, v, out, nd, vs));
  }
  return 1;
}

/* allclose(a, b [, rtol=1e-5, atol=1e-8]): |a - b| <= atol + rtol*|b| everywhere, shapes
 * broadcast; NaN is never close. */
static int l_allclose(lua_State *L) {
  const char *fn = "seqnn.allclose";
  sn_ctx *ctx = sn_lua_ctx(L);
  sn_tensor *a = sn_lua_check_tensor(L, 1, fn, "a", -1), *b = sn_lua_check_tensor(L, 2, fn, "b", -1);
  double rtol = luaL_optnumber(L, 3, 1e-5), atol = luaL_optnumber(L, 4, 1e-8);
  lua_settop(L, 4);
  int nd;
  int64_t size[SN_MAX_DIMS];
  CHECK(L, fn, sn_broadcast_shape(ctx, fn, a, b, &nd, size));
  sn_tensor *ca = sn_lua_push_empty(L, fn, SN_F32, nd, size);
  CHECK(L, fn, sn_copy(ctx, ca, a));
  sn_tensor *cb = sn_lua_push_empty(L, fn, SN_F32, nd, size);
  CHECK(L, fn, sn_copy(ctx, cb, b));
  const float *x = sn_f32(ca), *y = sn_f32(cb);
  bool close = true;
  for (int64_t i = 0, n = sn_numel(ca); i < n && close; i++)
    close = fabs((double)x[i] - y[i]) <= atol + rtol * fabs((double)y[i]) || (x[i] == y[i]); /* inf == inf */
  sn_tensor_release(ca);
  sn_tensor_release(cb);
  lua_pushboolean(L, close);
  return 1;
}

static const luaL_Reg math_fns[] = {
    {"add", l_add}, {"sub", l_sub}, {"mul", l_mul}, {"div", l_div}, {"pow", l_pow},
    {"maximum", l_maximum}, {"minimum", l_minimum},
    {"exp", l_exp}, {"log", l_log}, {"tanh", l_tanh}, {"sigmoid", l_sigmoid}, {"silu", l_silu},
    {"gelu", l_gelu}, {"softplus", l_softplus}, {"sqrt", l_sqrt}, {"rsqrt", l_rsqrt},
    {"abs", l_abs}, {"neg", l_neg},
    {"sum", l_sum}, {"mean", l_mean}, {"max", l_max}, {"min", l_min}, {"argmax", l_argmax},
    {"argmin", l_argmin}, {"logsumexp", l_logsumexp}, {"matmul", l_matmul}, {"allclose", l_allclose},
    {NULL, NULL}};

static const luaL_Reg inplace_fns[] = {
    {"add_", l_add_}, {"sub_", l_sub_}, {"mul_", l_mul_}, {"div_", l_div_}, {NULL, NULL}};

static const luaL_Reg metamethods[] = {
    {"__add", l_add}, {"__sub", l_sub}, {"__mul", l_mul}, {"__div", l_div}, {"__pow", l_pow},
    {"__unm", l_unm}, {NULL, NULL}};

/* Stack on entry: ..., module table, ctx. The same functions serve as sn.f(t, ...) and t:f(...). */
void sn_lua_open_math(lua_State *L, int methods_idx) {
  int ctx = lua_gettop(L), module = ctx - 1;
  const int targets[2] = {module, methods_idx};
  for (int i = 0; i < 2; i++) {
    lua_pushvalue(L, targets[i]);
    lua_pushvalue(L, ctx);
    luaL_setfuncs(L, math_fns, 1);
    lua_pop(L, 1);
  }
  lua_pushvalue(L, methods_idx);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, inplace_fns, 1);
  lua_pop(L, 1);
  luaL_getmetatable(L, SN_TENSOR_MT);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, metamethods, 1);
  lua_pop(L, 1);
}
