/* lnn.c -- raw bindings of the nn kernels (csrc/kernels/) as core.k_<kernel>_<fwd|bwd|step>.
 * sn.F and sn.optim (Lua) call these; every error names what the user called
 * ("seqnn.F.rms_norm", "seqnn.optim.AdamW"). Inputs that are not contiguous are copied into
 * pushed temporaries; outputs are pushed before any kernel runs, so on an error the
 * collector owns everything. Saved tensors (mean, rstd, lse, the dropout seed and offset)
 * are returned to Lua for the backward call. Each function first fixes its argument count
 * (lua_settop), so pushed temporaries never occupy an absent optional argument's slot. */
#include <math.h>
#include <string.h>

#include "lcheck.h"

#define CHECK(L, fn, st) do { sn_status st_ = (st); if (st_ != SN_OK) sn_lua_raise(L, fn, st_); } while (0)

/* An f32 tensor argument made contiguous. */
static sn_tensor *arg_f32(lua_State *L, int idx, const char *fn, const char *arg) {
  return sn_lua_contiguous(L, fn, sn_lua_check_tensor(L, idx, fn, arg, SN_F32));
}

/* An f32 tensor that is updated in place: it must already be contiguous. */
static sn_tensor *arg_inplace(lua_State *L, int idx, const char *fn, const char *arg) {
  sn_tensor *t = sn_lua_check_tensor(L, idx, fn, arg, SN_F32);
  if (!sn_is_contiguous(t))
    sn_lua_fail(L, "%s: %s (%s) is updated in place and must be contiguous", fn, arg, SN_SHAPE(t));
  return t;
}

/* a has b's shape (gradients against what they differentiate). */
static void need_same_shape(lua_State *L, const char *fn, const char *an, const sn_tensor *a,
                            const char *bn, const sn_tensor *b) {
  if (!sn_same_shape(a, b)) sn_lua_fail(L, "%s: %s is %s but %s is %s", fn, an, SN_SHAPE(a), bn, SN_SHAPE(b));
}

/* x with at least one dim: the kernels normalize over the last one. */
static void need_features(lua_State *L, const char *fn, const sn_tensor *x) {
  if (x->ndim < 1) sn_lua_fail(L, "%s: x must have at least 1 dim (features last), got a scalar", fn);
}

/* An optional 1-dim parameter with one value per feature of x, or NULL for nil. */
static sn_tensor *opt_feature_param(lua_State *L, int idx, const char *fn, const char *arg, const sn_tensor *x) {
  if (lua_isnoneornil(L, idx)) return NULL;
  sn_tensor *w = sn_lua_check_tensor(L, idx, fn, arg, SN_F32);
  int64_t C = sn_last_dim(x);
  if (w->ndim != 1 || w->size[0] != C)
    sn_lua_fail(L, "%s: %s has %lld elements but the last dim of x is %lld (x: %s, %s: %s)", fn, arg,
                (long long)sn_numel(w), (long long)C, SN_SHAPE(x), arg, SN_SHAPE(w));
  return sn_lua_contiguous(L, fn, w);
}

static sn_tensor *push_rows(lua_State *L, const char *fn, const sn_tensor *x) {
  return sn_lua_push_empty(L, fn, SN_F32, 1, (int64_t[]){sn_rows(x)});
}

/* ---- normalization -------------------------------------------------------------------- */

/* y, mean, rstd = k_layer_norm_fwd(x, weight|nil, bias|nil [, eps=1e-5]); mean, rstd: (rows) */
static int l_layer_norm_fwd(lua_State *L) {
  lua_settop(L, 4);
  const char *fn = "seqnn.F.layer_norm";
  sn_tensor *x = arg_f32(L, 1, fn, "x");
  need_features(L, fn, x);
  sn_tensor *w = opt_feature_param(L, 2, fn, "weight", x), *b = opt_feature_param(L, 3, fn, "bias", x);
  float eps = (float)luaL_optnumber(L, 4, 1e-5);
  sn_tensor *y = sn_lua_push_empty_like(L, fn, x, SN_F32);
  sn_tensor *mean = push_rows(L, fn, x), *rstd = push_rows(L, fn, x);
  CHECK(L, fn, sn_layer_norm_fwd(sn_lua_ctx(L), y, mean, rstd, x, w, b, eps));
  return 3;
}

/* gx, gw|nil, gb|nil = k_layer_norm_bwd(gy, x, weight|nil, mean, rstd, has_bias) */
static int l_layer_norm_bwd(lua_State *L) {
  lua_settop(L, 6);
  const char *fn = "seqnn.F.layer_norm";
  sn_tensor *gy = arg_f32(L, 1, fn, "grad_output"), *x = arg_f32(L, 2, fn, "x");
  need_features(L, fn, x);
  need_same_shape(L, fn, "grad_output", gy, "x", x);
  sn_tensor *w = opt_feature_param(L, 3, fn, "weight", x);
  sn_tensor *mean = arg_f32(L, 4, fn, "mean"), *rstd = arg_f32(L, 5, fn, "rstd");
  bool has_bias = lua_toboolean(L, 6);
  sn_tensor *gx = sn_lua_push_empty_like(L, fn, x, SN_F32);
  sn_tensor *gw = NULL, *gb = NULL;
  if (w) gw = sn_lua_push_empty_like(L, fn, w, SN_F32);
  else lua_pushnil(L);
  if (has_bias) gb = sn_lua_push_empty(L, fn, SN_F32, 1, (int64_t[]){sn_last_dim(x)});
  else lua_pushnil(L);
  CHECK(L, fn, sn_layer_norm_bwd(sn_lua_ctx(L), gx, gw, gb, mean, rstd, gy, x, w));
  return 3;
}

/* y, rstd = k_rms_norm_fwd(x, weight|nil [, eps=1e-6]); rstd: (rows) */
static int l_rms_norm_fwd(lua_State *L) {
  lua_settop(L, 3);
  const char *fn = "seqnn.F.rms_norm";
  sn_tensor *x = arg_f32(L, 1, fn, "x");
  need_features(L, fn, x);
  sn_tensor *w = opt_feature_param(L, 2, fn, "weight", x);
  float eps = (float)luaL_optnumber(L, 3, 1e-6);
  sn_tensor *y = sn_lua_push_empty_like(L, fn, x, SN_F32), *rstd = push_rows(L, fn, x);
  CHECK(L, fn, sn_rms_norm_fwd(sn_lua_ctx(L), y, rstd, x, w, eps));
  return 2;
}

/* gx, gw|nil = k_rms_norm_bwd(gy, x, weight|nil, rstd) */
static int l_rms_norm_bwd(lua_State *L) {
  lua_settop(L, 4);
  const char *fn = "seqnn.F.rms_norm";
  sn_tensor *gy = arg_f32(L, 1, fn, "grad_output"), *x = arg_f32(L, 2, fn, "x");
  need_features(L, fn, x);
  need_same_shape(L, fn, "grad_output", gy, "x", x);
  sn_tensor *w = opt_feature_param(L, 3, fn, "weight", x), *rstd = arg_f32(L, 4, fn, "rstd");
  sn_tensor *gx = sn_lua_push_empty_like(L, fn, x, SN_F32), *gw = NULL;
  if (w) gw = sn_lua_push_empty_like(L, fn, w, SN_F32);
  else lua_pushnil(L);
  CHECK(L, fn, sn_rms_norm_bwd(sn_lua_ctx(L), gx, gw, rstd, gy, x, w));
  return 2;
}

/* ---- softmax family ------------------------------------------------------------------- */

typedef sn_status (*row_fwd)(sn_ctx *, sn_tensor *, const sn_tensor *);
typedef sn_status (*row_bwd)(sn_ctx *, sn_tensor *, const sn_tensor *, const sn_tensor *);

/* y = f(x) over the last dim */
static int softmax_fwd(lua_State *L, const char *fn, row_fwd f) {
  lua_settop(L, 1);
  sn_tensor *x = arg_f32(L, 1, fn, "x");
  need_features(L, fn, x);
  sn_tensor *y = sn_lua_push_empty_like(L, fn, x, SN_F32);
  CHECK(L, fn, f(sn_lua_ctx(L), y, x));
  return 1;
}

/* gx = f(y, gy), arguments (gy, y) */
static int softmax_bwd(lua_State *L, const char *fn, row_bwd f) {
  lua_settop(L, 2);
  sn_tensor *gy = arg_f32(L, 1, fn, "grad_output"), *y = arg_f32(L, 2, fn, "y");
  need_same_shape(L, fn, "grad_output", gy, "y", y);
  sn_tensor *gx = sn_lua_push_empty_like(L, fn, y, SN_F32);
  CHECK(L, fn, f(sn_lua_ctx(L), gx, y, gy));
  return 1;
}

static int l_softmax_fwd(lua_State *L) { return softmax_fwd(L, "seqnn.F.softmax", sn_softmax_fwd); }
static int l_softmax_bwd(lua_State *L) { return softmax_bwd(L, "seqnn.F.softmax", sn_softmax_bwd); }
static int l_log_softmax_fwd(lua_State *L) { return softmax_fwd(L, "seqnn.F.log_softmax", sn_log_softmax_fwd); }
static int l_log_softmax_bwd(lua_State *L) { return softmax_bwd(L, "seqnn.F.log_softmax", sn_log_softmax_bwd); }

typedef enum { RED_MEAN, RED_SUM, RED_NONE } reduction;

static reduction check_reduction(lua_State *L, int idx, const char *fn) {
  const char *s = luaL_optstring(L, idx, "mean");
  if (strcmp(s, "mean") == 0) return RED_MEAN;
  if (strcmp(s, "sum") == 0) return RED_SUM;
  if (strcmp(s, "none") == 0) return RED_NONE;
  sn_lua_fail(L, "%s: reduction must be 'mean', 'sum' or 'none', got '%s'", fn, s);
  return RED_MEAN;
}

/* logits (N, V) f32 and targets (N) i64, made contiguous. */
static void check_logits_targets(lua_State *L, int idx, const char *fn, sn_tensor **logits, sn_tensor **targets) {
  sn_tensor *x = sn_lua_check_tensor(L, idx, fn, "logits", SN_F32);
  sn_tensor *t = sn_lua_check_tensor(L, idx + 1, fn, "targets", SN_I64);
  if (x->ndim != 2) sn_lua_fail(L, "%s: logits must be N x V (rows x classes), got %s", fn, SN_SHAPE(x));
  if (t->ndim != 1 || t->size[0] != x->size[0])
    sn_lua_fail(L, "%s: targets has %lld elements but logits has %lld rows (logits: %s, targets: %s)", fn,
                (long long)sn_numel(t), (long long)x->size[0], SN_SHAPE(x), SN_SHAPE(t));
  *logits = sn_lua_contiguous(L, fn, x);
  *targets = sn_lua_contiguous(L, fn, t);
}

/* loss, lse, count = k_cross_entropy_fwd(logits, targets [, ignore_index=-100 [, reduction='mean']])
 * loss: 0-dim for 'mean' (NaN when count is 0) and 'sum', (N) for 'none' (0 on ignored
 * rows); lse (N) and count (rows not ignored) are saved for backward. */
static int l_cross_entropy_fwd(lua_State *L) {
  lua_settop(L, 4);
  const char *fn = "seqnn.F.cross_entropy";
  sn_tensor *logits, *targets;
  check_logits_targets(L, 1, fn, &logits, &targets);
  int64_t ignore = lua_isnoneornil(L, 3) ? -100 : sn_lua_check_int(L, 3, fn, "ignore_index");
  reduction red = check_reduction(L, 4, fn);
  int64_t N = logits->size[0];
  sn_tensor *rows = sn_lua_push_empty(L, fn, SN_F32, 1, &N);
  int rows_idx = lua_gettop(L);
  sn_tensor *lse = sn_lua_push_empty(L, fn, SN_F32, 1, &N);
  int lse_idx = lua_gettop(L);
  sn_tensor *loss = red == RED_NONE ? rows : sn_lua_push_empty(L, fn, SN_F32, 0, NULL);
  int loss_idx = red == RED_NONE ? rows_idx : lua_gettop(L);
  double total;
  int64_t count;
  CHECK(L, fn, sn_cross_entropy_fwd(sn_lua_ctx(L), rows, lse, &total, &count, logits, targets, ignore));
  if (red == RED_SUM) sn_f32(loss)[0] = (float)total;
  if (red == RED_MEAN) sn_f32(loss)[0] = count ? (float)(total / (double)count) : NAN;
  lua_pushvalue(L, loss_idx);
  lua_pushvalue(L, lse_idx);
  lua_pushinteger(L, (lua_Integer)count);
  return 3;
}

/* glogits = k_cross_entropy_bwd(gy, logits, targets, lse, ignore_index, reduction, count)
 * gy: one value for 'mean'/'sum', (N) for 'none'. */
static int l_cross_entropy_bwd(lua_State *L) {
  lua_settop(L, 7);
  const char *fn = "seqnn.F.cross_entropy";
  sn_tensor *logits, *targets;
  check_logits_targets(L, 2, fn, &logits, &targets);
  sn_tensor *gy = arg_f32(L, 1, fn, "grad_output"), *lse = arg_f32(L, 4, fn, "lse");
  int64_t ignore = sn_lua_check_int(L, 5, fn, "ignore_index");
  reduction red = check_reduction(L, 6, fn);
  int64_t count = sn_lua_check_int(L, 7, fn, "count"), N = logits->size[0];
  int64_t want = red == RED_NONE ? N : 1;
  if (sn_numel(gy) != want)
    return sn_lua_fail(L, "%s: grad_output has %lld elements but reduction '%s' needs %lld (grad_output: %s)", fn,
                       (long long)sn_numel(gy), red == RED_NONE ? "none" : red == RED_SUM ? "sum" : "mean",
                       (long long)want, SN_SHAPE(gy));
  /* 'mean' with every row ignored: no row takes a gradient, the scale is never used. */
  float scale = red == RED_MEAN && count > 0 ? (float)(1.0 / (double)count) : 1.0f;
  sn_tensor *gx = sn_lua_push_empty_like(L, fn, logits, SN_F32);
  CHECK(L, fn, sn_cross_entropy_bwd(sn_lua_ctx(L), gx, lse, gy, logits, targets, ignore, scale));
  return 1;
}

/* ---- embedding ------------------------------------------------------------------------ */

/* out = k_embedding_fwd(weight, ids): out has ids' shape with D appended */
static int l_embedding_fwd(lua_State *L) {
  lua_settop(L, 2);
  const char *fn = "seqnn.F.embedding";
  sn_tensor *w = arg_f32(L, 1, fn, "weight");
  sn_tensor *ids = sn_lua_contiguous(L, fn, sn_lua_check_tensor(L, 2, fn, "ids", SN_I64));
  if (w->ndim != 2) return sn_lua_fail(L, "%s: weight must be V x D (embeddings x dim), got %s", fn, SN_SHAPE(w));
  if (ids->ndim >= SN_MAX_DIMS)
    return sn_lua_fail(L, "%s: ids has %d dims; at most %d are supported", fn, ids->ndim, SN_MAX_DIMS - 1);
  int64_t size[SN_MAX_DIMS];
  memcpy(size, ids->size, (size_t)ids->ndim * sizeof(int64_t));
  size[ids->ndim] = w->size[1];
  sn_tensor *out = sn_lua_push_empty(L, fn, SN_F32, ids->ndim + 1, size);
  CHECK(L, fn, sn_embedding_fwd(sn_lua_ctx(L), out, w, ids));
  return 1;
}

/* gweight = k_embedding_bwd(gy, ids, num_embeddings): gweight (V, D), D = gy's last dim */
static int l_embedding_bwd(lua_State *L) {
  lua_settop(L, 3);
  const char *fn = "seqnn.F.embedding";
  sn_tensor *gy = arg_f32(L, 1, fn, "grad_output");
  sn_tensor *ids = sn_lua_contiguous(L, fn, sn_lua_check_tensor(L, 2, fn, "ids", SN_I64));
  int64_t V = sn_lua_check_int(L, 3, fn, "num_embeddings"), D = sn_last_dim(gy);
  if (V < 0) return sn_lua_fail(L, "%s: num_embeddings must be >= 0, got %lld", fn, (long long)V);
  bool ok = gy->ndim == ids->ndim + 1;
  for (int d = 0; ok && d < ids->ndim; d++) ok = gy->size[d] == ids->size[d];
  if (!ok)
    return sn_lua_fail(L, "%s: grad_output must be ids' shape with the embedding dim appended (ids: %s, grad_output: %s)",
                       fn, SN_SHAPE(ids), SN_SHAPE(gy));
  sn_tensor *gw = sn_lua_push_empty(L, fn, SN_F32, 2, (int64_t[]){V, D});
  CHECK(L, fn, sn_embedding_bwd(sn_lua_ctx(L), gw, gy, ids));
  return 1;
}

/* ---- activations and dropout ----------------------------------------------------------- */

/* gx = k_<op>_bwd(gy, in): in is x for gelu, silu, softplus and y for tanh, sigmoid */
static int activation_bwd(lua_State *L, sn_unop op, const char *fn, const char *in_name) {
  lua_settop(L, 2);
  sn_tensor *gy = arg_f32(L, 1, fn, "grad_output"), *in = arg_f32(L, 2, fn, in_name);
  need_same_shape(L, fn, "grad_output", gy, in_name, in);
  sn_tensor *gx = sn_lua_push_empty_like(L, fn, in, SN_F32);
  CHECK(L, fn, sn_activation_bwd(sn_lua_ctx(L), gx, gy, in, op));
  return 1;
}

static int l_gelu_bwd(lua_State *L) { return activation_bwd(L, SN_GELU, "seqnn.F.gelu", "x"); }
static int l_silu_bwd(lua_State *L) { return activation_bwd(L, SN_SILU, "seqnn.F.silu", "x"); }
static int l_softplus_bwd(lua_State *L) { return activation_bwd(L, SN_SOFTPLUS, "seqnn.F.softplus", "x"); }
static int l_tanh_bwd(lua_State *L) { return activation_bwd(L, SN_TANH, "seqnn.F.tanh", "y"); }
static int l_sigmoid_bwd(lua_State *L) { return activation_bwd(L, SN_SIGMOID, "seqnn.F.sigmoid", "y"); }

static float check_p(lua_State *L, int idx, const char *fn) {
  double p = luaL_checknumber(L, idx);
  if (!(p >= 0 && p < 1)) sn_lua_fail(L, "%s: p must be in [0, 1), got %g", fn, p);
  return (float)p;
}

/* y, seed, offset = k_dropout_fwd(x, p): draws numel(x) words from the generator; seed and
 * offset are saved for backward */
static int l_dropout_fwd(lua_State *L) {
  lua_settop(L, 2);
  const char *fn = "seqnn.F.dropout";
  sn_tensor *x = arg_f32(L, 1, fn, "x");
  float p = check_p(L, 2, fn);
  sn_ctx *ctx = sn_lua_ctx(L);
  uint64_t seed = ctx->seed, offset = ctx->rng_offset;
  sn_tensor *y = sn_lua_push_empty_like(L, fn, x, SN_F32);
  CHECK(L, fn, sn_dropout_fwd(ctx, y, x, p, seed, offset));
  ctx->rng_offset += (uint64_t)sn_numel(x);
  lua_pushinteger(L, (lua_Integer)seed);
  lua_pushinteger(L, (lua_Integer)offset);
  return 3;
}

/* gx = k_dropout_bwd(gy, p, seed, offset) */
static int l_dropout_bwd(lua_State *L) {
  lua_settop(L, 4);
  const char *fn = "seqnn.F.dropout";
  sn_tensor *gy = arg_f32(L, 1, fn, "grad_output");
  float p = check_p(L, 2, fn);
  uint64_t seed = (uint64_t)sn_lua_check_int(L, 3, fn, "seed"), offset = (uint64_t)sn_lua_check_int(L, 4, fn, "offset");
  sn_tensor *gx = sn_lua_push_empty_like(L, fn, gy, SN_F32);
  CHECK(L, fn, sn_dropout_bwd(sn_lua_ctx(L), gx, gy, p, seed, offset));
  return 1;
}

/* ---- optimizers ----------------------------------------------------------------------- */

/* `t` has as many elements as the parameter */
static void need_param_numel(lua_State *L, const char *fn, const char *name, const sn_tensor *t, const sn_tensor *p) {
  if (sn_numel(t) != sn_numel(p))
    sn_lua_fail(L, "%s: %s has %lld elements but param has %lld (param: %s, %s: %s)", fn, name,
                (long long)sn_numel(t), (long long)sn_numel(p), SN_SHAPE(p), name, SN_SHAPE(t));
}

static double check_range(lua_State *L, int idx, const char *fn, const char *name, double lo, double hi) {
  double v = luaL_checknumber(L, idx);
  if (!(v >= lo && v < hi)) sn_lua_fail(L, "%s: %s must be in [%g, %g), got %g", fn, name, lo, hi, v);
  return v;
}

/* k_adamw_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step):
 * updates param, exp_avg, exp_avg_sq in place (step >= 1, counting this one) */
static int l_adamw_step(lua_State *L) {
  lua_settop(L, 10);
  const char *fn = "seqnn.optim.AdamW";
  sn_tensor *p = arg_inplace(L, 1, fn, "param"), *g = sn_lua_check_tensor(L, 2, fn, "grad", SN_F32);
  sn_tensor *m = arg_inplace(L, 3, fn, "exp_avg"), *v = arg_inplace(L, 4, fn, "exp_avg_sq");
  need_param_numel(L, fn, "grad", g, p);
  need_param_numel(L, fn, "exp_avg", m, p);
  need_param_numel(L, fn, "exp_avg_sq", v, p);
  double lr = check_range(L, 5, fn, "lr", 0, HUGE_VAL);
  double b1 = check_range(L, 6, fn, "beta1", 0, 1), b2 = check_range(L, 7, fn, "beta2", 0, 1);
  double eps = check_range(L, 8, fn, "eps", 0, HUGE_VAL), wd = check_range(L, 9, fn, "weight_decay", 0, HUGE_VAL);
  int64_t step = sn_lua_check_int(L, 10, fn, "step");
  g = sn_lua_contiguous(L, fn, g);
  CHECK(L, fn, sn_adamw_step(sn_lua_ctx(L), p, m, v, g, lr, b1, b2, eps, wd, step));
  return 0;
}

/* k_sgd_step(param, grad, momentum_buffer|nil, lr, momentum, dampening, weight_decay,
 * nesterov, first): updates param (and the buffer) in place; `first` fills the buffer */
static int l_sgd_step(lua_State *L) {
  lua_settop(L, 9);
  const char *fn = "seqnn.optim.SGD";
  sn_tensor *p = arg_inplace(L, 1, fn, "param"), *g = sn_lua_check_tensor(L, 2, fn, "grad", SN_F32);
  sn_tensor *buf = lua_isnoneornil(L, 3) ? NULL : arg_inplace(L, 3, fn, "momentum_buffer");
  need_param_numel(L, fn, "grad", g, p);
  if (buf) need_param_numel(L, fn, "momentum_buffer", buf, p);
  double lr = check_range(L, 4, fn, "lr", 0, HUGE_VAL), mom = check_range(L, 5, fn, "momentum", 0, HUGE_VAL);
  double damp = check_range(L, 6, fn, "dampening", 0, HUGE_VAL), wd = check_range(L, 7, fn, "weight_decay", 0, HUGE_VAL);
  bool nesterov = lua_toboolean(L, 8), first = lua_toboolean(L, 9);
  g = sn_lua_contiguous(L, fn, g);
  CHECK(L, fn, sn_sgd_step(sn_lua_ctx(L), p, buf, g, lr, mom, damp, wd, nesterov, first));
  return 0;
}

/* Row-sparse gradients (rows i64 (n), values f32 (n, ...)) of a parameter whose first dim
 * is R; see seqnn.h. values must hold n rows of numel(param) / R. */
static void need_rows_grad(lua_State *L, const char *fn, const sn_tensor *p, const sn_tensor *rows,
                           const sn_tensor *values) {
  if (p->ndim < 1 || p->size[0] < 1)
    sn_lua_fail(L, "%s: a row-sparse gradient needs a parameter with rows, got %s", fn, SN_SHAPE(p));
  if (rows->ndim != 1)
    sn_lua_fail(L, "%s: the gradient's rows must be a vector, got %s", fn, SN_SHAPE(rows));
  int64_t D = sn_numel(p) / p->size[0], n = rows->size[0];
  if (values->ndim < 1 || values->size[0] != n || sn_numel(values) != n * D)
    sn_lua_fail(L, "%s: the gradient's values must be %lld rows of %lld (param: %s, rows: %s, values: %s)", fn,
                (long long)n, (long long)D, SN_SHAPE(p), SN_SHAPE(rows), SN_SHAPE(values));
}

/* k_adamw_rows_step(param, rows, values, exp_avg, exp_avg_sq, row_step, lr, beta1, beta2,
 * eps, weight_decay): the lazy AdamW step on the touched rows (row_step i64 (R) counts) */
static int l_adamw_rows_step(lua_State *L) {
  lua_settop(L, 11);
  const char *fn = "seqnn.optim.AdamW";
  sn_tensor *p = arg_inplace(L, 1, fn, "param");
  sn_tensor *rows = sn_lua_check_tensor(L, 2, fn, "rows", SN_I64), *vals = sn_lua_check_tensor(L, 3, fn, "values", SN_F32);
  sn_tensor *m = arg_inplace(L, 4, fn, "exp_avg"), *v = arg_inplace(L, 5, fn, "exp_avg_sq");
  sn_tensor *steps = sn_lua_check_tensor(L, 6, fn, "row_step", SN_I64);
  need_rows_grad(L, fn, p, rows, vals);
  need_param_numel(L, fn, "exp_avg", m, p);
  need_param_numel(L, fn, "exp_avg_sq", v, p);
  if (!sn_is_contiguous(steps) || sn_numel(steps) != p->size[0])
    sn_lua_fail(L, "%s: row_step must be a contiguous i64 vector of the %lld rows of param, got %s", fn,
                (long long)p->size[0], SN_SHAPE(steps));
  double lr = check_range(L, 7, fn, "lr", 0, HUGE_VAL);
  double b1 = check_range(L, 8, fn, "beta1", 0, 1), b2 = check_range(L, 9, fn, "beta2", 0, 1);
  double eps = check_range(L, 10, fn, "eps", 0, HUGE_VAL), wd = check_range(L, 11, fn, "weight_decay", 0, HUGE_VAL);
  rows = sn_lua_contiguous(L, fn, rows), vals = sn_lua_contiguous(L, fn, vals);
  CHECK(L, fn, sn_adamw_rows_step(sn_lua_ctx(L), p, m, v, steps, rows, vals, lr, b1, b2, eps, wd));
  return 0;
}

/* k_sgd_rows_step(param, rows, values, momentum_buffer|nil, row_step|nil, lr, momentum,
 * dampening, weight_decay, nesterov) */
static int l_sgd_rows_step(lua_State *L) {
  lua_settop(L, 10);
  const char *fn = "seqnn.optim.SGD";
  sn_tensor *p = arg_inplace(L, 1, fn, "param");
  sn_tensor *rows = sn_lua_check_tensor(L, 2, fn, "rows", SN_I64), *vals = sn_lua_check_tensor(L, 3, fn, "values", SN_F32);
  sn_tensor *buf = lua_isnoneornil(L, 4) ? NULL : arg_inplace(L, 4, fn, "momentum_buffer");
  sn_tensor *steps = lua_isnoneornil(L, 5) ? NULL : sn_lua_check_tensor(L, 5, fn, "row_step", SN_I64);
  need_rows_grad(L, fn, p, rows, vals);
  if (buf) need_param_numel(L, fn, "momentum_buffer", buf, p);
  if (steps && (!sn_is_contiguous(steps) || sn_numel(steps) != p->size[0]))
    sn_lua_fail(L, "%s: row_step must be a contiguous i64 vector of the %lld rows of param, got %s", fn,
                (long long)p->size[0], SN_SHAPE(steps));
  double lr = check_range(L, 6, fn, "lr", 0, HUGE_VAL), mom = check_range(L, 7, fn, "momentum", 0, HUGE_VAL);
  double damp = check_range(L, 8, fn, "dampening", 0, HUGE_VAL), wd = check_range(L, 9, fn, "weight_decay", 0, HUGE_VAL);
  bool nesterov = lua_toboolean(L, 10);
  rows = sn_lua_contiguous(L, fn, rows), vals = sn_lua_contiguous(L, fn, vals);
  CHECK(L, fn, sn_sgd_rows_step(sn_lua_ctx(L), p, buf, steps, rows, vals, lr, mom, damp, wd, nesterov));
  return 0;
}

/* rows2, values2 = k_rows_coalesce(rows, values, R): duplicates summed, rows ascending;
 * values2 keeps values' trailing dims. */
static int l_rows_coalesce(lua_State *L) {
  lua_settop(L, 3);
  const char *fn = "seqnn.sparse_grad";
  sn_tensor *rows = sn_lua_check_tensor(L, 1, fn, "rows", SN_I64), *vals = sn_lua_check_tensor(L, 2, fn, "values", SN_F32);
  int64_t R = sn_lua_check_int(L, 3, fn, "R");
  if (rows->ndim != 1 || vals->ndim < 1 || vals->size[0] != rows->size[0])
    sn_lua_fail(L, "%s: rows must be a vector and values have as many rows (rows: %s, values: %s)", fn,
                SN_SHAPE(rows), SN_SHAPE(vals));
  rows = sn_lua_contiguous(L, fn, rows), vals = sn_lua_contiguous(L, fn, vals);
  int64_t U;
  CHECK(L, fn, sn_rows_count(sn_lua_ctx(L), &U, rows, R));
  int64_t size[SN_MAX_DIMS];
  memcpy(size, vals->size, sizeof size);
  size[0] = U;
  sn_tensor *orow = sn_lua_push_empty(L, fn, SN_I64, 1, &U);
  sn_tensor *ov = sn_lua_push_empty(L, fn, SN_F32, vals->ndim, size);
  CHECK(L, fn, sn_rows_coalesce(sn_lua_ctx(L), orow, ov, rows, vals, R));
  return 2;
}

/* k_rows_scatter_add(dense, rows, values): dense (R, ...) += the rows, in place */
static int l_rows_scatter_add(lua_State *L) {
  lua_settop(L, 3);
  const char *fn = "seqnn.sparse_grad";
  sn_tensor *d = arg_inplace(L, 1, fn, "dense");
  sn_tensor *rows = sn_lua_check_tensor(L, 2, fn, "rows", SN_I64), *vals = sn_lua_check_tensor(L, 3, fn, "values", SN_F32);
  need_rows_grad(L, fn, d, rows, vals);
  rows = sn_lua_contiguous(L, fn, rows), vals = sn_lua_contiguous(L, fn, vals);
  CHECK(L, fn, sn_rows_scatter_add(sn_lua_ctx(L), d, rows, vals));
  return 0;
}

static const luaL_Reg nn_fns[] = {
    {"k_layer_norm_fwd", l_layer_norm_fwd}, {"k_layer_norm_bwd", l_layer_norm_bwd},
    {"k_rms_norm_fwd", l_rms_norm_fwd}, {"k_rms_norm_bwd", l_rms_norm_bwd},
    {"k_softmax_fwd", l_softmax_fwd}, {"k_softmax_bwd", l_softmax_bwd},
    {"k_log_softmax_fwd", l_log_softmax_fwd}, {"k_log_softmax_bwd", l_log_softmax_bwd},
    {"k_cross_entropy_fwd", l_cross_entropy_fwd}, {"k_cross_entropy_bwd", l_cross_entropy_bwd},
    {"k_embedding_fwd", l_embedding_fwd}, {"k_embedding_bwd", l_embedding_bwd},
    {"k_gelu_bwd", l_gelu_bwd}, {"k_silu_bwd", l_silu_bwd}, {"k_softplus_bwd", l_softplus_bwd},
    {"k_tanh_bwd", l_tanh_bwd}, {"k_sigmoid_bwd", l_sigmoid_bwd},
    {"k_dropout_fwd", l_dropout_fwd}, {"k_dropout_bwd", l_dropout_bwd},
    {"k_adamw_step", l_adamw_step}, {"k_sgd_step", l_sgd_step},
    {"k_adamw_rows_step", l_adamw_rows_step}, {"k_sgd_rows_step", l_sgd_rows_step},
    {"k_rows_coalesce", l_rows_coalesce}, {"k_rows_scatter_add", l_rows_scatter_add},
    {NULL, NULL}};

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_nn(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  lua_pushvalue(L, module);
  lua_pushvalue(L, ctx);
  luaL_setfuncs(L, nn_fns, 1);
  lua_pop(L, 1);
}
