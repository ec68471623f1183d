/* kernels/softmax.c -- softmax, log_softmax and cross-entropy over the last dim (math in
 * seqnn.h). Rows are independent and split among threads; every row pass goes through
 * sn_vec (max, exp, sums accumulated in double), with the output row as scratch.
 * Stability: exponentials are always of x - max(x) <= 0. Logits of +-1e30 or -inf are
 * fine; a row whose max is +inf, -inf or NaN gives NaN (or inf loss), as in PyTorch. */
#include <math.h>
#include <string.h>

#include "kernels/nn.h"
#include "simd/vec.h"

/* log sum_c exp(x[c]) in double; an infinite or NaN max is the result itself. */
static double row_lse(const float *x, int64_t C) {
  float m = sn_vec->max(x, C);
  return isfinite(m) ? m + log(sn_vec->sumexp(x, m, C)) : m;
}

static sn_status check_pair(sn_ctx *ctx, const char *fn, const char *an, const sn_tensor *a,
                            const char *bn, const sn_tensor *b, const char *cn, const sn_tensor *c) {
  if (a->ndim < 1) return sn_fail(ctx, SN_EINVAL, "%s: '%s' must have at least 1 dim, got a scalar", fn, an);
  sn_status st = nn_need(ctx, fn, an, a, SN_F32, sn_numel(a));
  if (st == SN_OK) st = nn_need(ctx, fn, bn, b, SN_F32, sn_numel(a));
  if (st == SN_OK && c) st = nn_need(ctx, fn, cn, c, SN_F32, sn_numel(a));
  return st;
}

sn_status sn_softmax_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x) {
  sn_status st = check_pair(ctx, "seqnn.F.softmax", "x", x, "y", y, NULL, NULL);
  if (st != SN_OK) return st;
  int64_t C = sn_last_dim(x), rows = C ? sn_numel(x) / C : 0;
  const float *px = sn_f32(x);
  float *py = sn_f32(y);
#pragma omp parallel for schedule(static) if (rows * C > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = px + r * C;
    float *yr = py + r * C;
    sn_vec->binary_scalar(SN_SUB, yr, xr, sn_vec->max(xr, C), C, false);
    sn_vec->unary(SN_EXP, yr, yr, C);
    sn_vec->binary_scalar(SN_MUL, yr, yr, (float)(1.0 / sn_vec->sum(yr, C)), C, false);
  }
  return SN_OK;
}

sn_status sn_softmax_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *y, const sn_tensor *gy) {
  sn_status st = check_pair(ctx, "seqnn.F.softmax", "y", y, "grad_output", gy, "grad_input", gx);
  if (st != SN_OK) return st;
  int64_t C = sn_last_dim(y), rows = C ? sn_numel(y) / C : 0;
  const float *py = sn_f32(y), *pgy = sn_f32(gy);
  float *pgx = sn_f32(gx);
#pragma omp parallel for schedule(static) if (rows * C > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *yr = py + r * C, *gyr = pgy + r * C;
    float *gxr = pgx + r * C;
    sn_vec->binary(SN_MUL, gxr, gyr, yr, C);
    float s = (float)sn_vec->sum(gxr, C);
    sn_vec->binary_scalar(SN_SUB, gxr, gyr, s, C, false);
    sn_vec->binary(SN_MUL, gxr, gxr, yr, C);
  }
  return SN_OK;
}

sn_status sn_log_softmax_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x) {
  sn_status st = check_pair(ctx, "seqnn.F.log_softmax", "x", x, "y", y, NULL, NULL);
  if (st != SN_OK) return st;
  int64_t C = sn_last_dim(x), rows = C ? sn_numel(x) / C : 0;
  const float *px = sn_f32(x);
  float *py = sn_f32(y);
#pragma omp parallel for schedule(static) if (rows * C > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++)
    sn_vec->binary_scalar(SN_SUB, py + r * C, px + r * C, (float)row_lse(px + r * C, C), C, false);
  return SN_OK;
}

sn_status sn_log_softmax_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *y, const sn_tensor *gy) {
  sn_status st = check_pair(ctx, "seqnn.F.log_softmax", "y", y, "grad_output", gy, "grad_input", gx);
  if (st != SN_OK) return st;
  int64_t C = sn_last_dim(y), rows = C ? sn_numel(y) / C : 0;
  const float *py = sn_f32(y), *pgy = sn_f32(gy);
  float *pgx = sn_f32(gx);
#pragma omp parallel for schedule(static) if (rows * C > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *yr = py + r * C, *gyr = pgy + r * C;
    float *gxr = pgx + r * C;
    sn_vec->unary(SN_EXP, gxr, yr, C);
    sn_vec->binary_scalar(SN_MUL, gxr, gxr, (float)sn_vec->sum(gyr, C), C, false);
    sn_vec->binary(SN_SUB, gxr, gyr, gxr, C);
  }
  return SN_OK;
}

/* logits (N, V), targets (N) with every target in [0, V) or ignore_index. */
static sn_status check_ce(sn_ctx *ctx, const sn_tensor *logits, const sn_tensor *targets,
                          int64_t ignore_index) {
  const char *fn = "seqnn.F.cross_entropy";
  char sl[160], st_[160];
  if (logits->ndim != 2 || targets->ndim != 1 || targets->size[0] != logits->size[0])
    return sn_fail(ctx, SN_EINVAL, "%s: logits must be N x V and targets N (logits: %s, targets: %s)", fn,
                   sn_shape_str(logits, sl, sizeof sl), sn_shape_str(targets, st_, sizeof st_));
  int64_t N = logits->size[0], V = logits->size[1];
  sn_status st = nn_need(ctx, fn, "logits", logits, SN_F32, N * V);
  if (st == SN_OK) st = nn_need(ctx, fn, "targets", targets, SN_I64, N);
  if (st != SN_OK) return st;
  const int64_t *t = sn_i64(targets);
  for (int64_t r = 0; r < N; r++)
    if (t[r] != ignore_index && (t[r] < 0 || t[r] >= V))
      return sn_fail(ctx, SN_EINVAL, "%s: target %lld at row %lld is out of range for %lld classes "
                     "(valid: 0..%lld, or ignore_index %lld)", fn, (long long)t[r], (long long)r,
                     (long long)V, (long long)V - 1, (long long)ignore_index);
  return SN_OK;
}

sn_status sn_cross_entropy_fwd(sn_ctx *ctx, sn_tensor *loss, sn_tensor *lse, double *total,
                               int64_t *count, const sn_tensor *logits, const sn_tensor *targets,
                               int64_t ignore_index) {
  const char *fn = "seqnn.F.cross_entropy";
  sn_status st = check_ce(ctx, logits, targets, ignore_index);
  if (st != SN_OK) return st;
  int64_t N = logits->size[0], V = logits->size[1];
  st = nn_need(ctx, fn, "loss", loss, SN_F32, N);
  if (st == SN_OK) st = nn_need(ctx, fn, "lse", lse, SN_F32, N);
  if (st != SN_OK) return st;
  const float *px = sn_f32(logits);
  const int64_t *t = sn_i64(targets);
  float *pl = sn_f32(loss), *plse = sn_f32(lse);
#pragma omp parallel for schedule(static) if (N * V > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < N; r++) {
    double l = V ? row_lse(px + r * V, V) : -INFINITY;
    plse[r] = (float)l;
    /* The loss is formed in double: lse and the target logit may both be ~1e30. */
    pl[r] = t[r] == ignore_index ? 0.0f : (float)(l - px[r * V + t[r]]);
  }
  double sum = 0;
  int64_t n = 0;
  for (int64_t r = 0; r < N; r++) {
    sum += pl[r];
    n += t[r] != ignore_index;
  }
  *total = sum;
  *count = n;
  return SN_OK;
}

sn_status sn_cross_entropy_bwd(sn_ctx *ctx, sn_tensor *glogits, const sn_tensor *lse,
                               const sn_tensor *g, const sn_tensor *logits,
                               const sn_tensor *targets, int64_t ignore_index, float scale) {
  const char *fn = "seqnn.F.cross_entropy";
  sn_status st = check_ce(ctx, logits, targets, ignore_index);
  if (st != SN_OK) return st;
  int64_t N = logits->size[0], V = logits->size[1];
  int64_t ng = sn_numel(g) == 1 && N != 1 ? 1 : N; /* one value for every row, or one per row */
  st = nn_need(ctx, fn, "grad_logits", glogits, SN_F32, N * V);
  if (st == SN_OK) st = nn_need(ctx, fn, "lse", lse, SN_F32, N);
  if (st == SN_OK) st = nn_need(ctx, fn, "grad_output", g, SN_F32, ng);
  if (st != SN_OK) return st;
  const float *px = sn_f32(logits), *plse = sn_f32(lse), *pg = sn_f32(g);
  const int64_t *t = sn_i64(targets);
  float *pgx = sn_f32(glogits);
#pragma omp parallel for schedule(static) if (N * V > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < N; r++) {
    float *gr = pgx + r * V;
    if (t[r] == ignore_index) {
      memset(gr, 0, (size_t)V * sizeof(float));
      continue;
    }
    sn_vec->binary_scalar(SN_SUB, gr, px + r * V, plse[r], V, false);
    sn_vec->unary(SN_EXP, gr, gr, V);
    gr[t[r]] -= 1.0f; /* before scaling: p - 1 keeps its precision when p is near 1 */
    sn_vec->binary_scalar(SN_MUL, gr, gr, scale * pg[ng == 1 ? 0 : r], V, false);
  }
  return SN_OK;
}
