/* kernels/norm.c -- LayerNorm and RMSNorm over the last dimension (math in seqnn.h).
 *
 * Forward: one row per iteration, rows split among threads; the row passes go through
 * sn_vec, statistics are accumulated in double (nn_dot, sn_vec->sum).
 * Backward: gx needs only its own row; the weight (and bias) gradients sum over rows. Rows
 * are cut into blocks fixed by the shape; each block sums into its own double partials, and
 * the partials are added in block order, so gw is bitwise the same for any thread count. */
#include <math.h>
#include <string.h>

#include "kernels/nn.h"
#include "simd/vec.h"

/* At most this many row blocks for the weight gradients (enough to keep threads busy). */
#define MAX_BLOCKS 64
/* Partial sums may use up to this many doubles (32 MiB): very wide rows get fewer blocks. */
#define MAX_PARTIALS ((int64_t)1 << 22)

static int64_t row_blocks(int64_t rows, int64_t C, int nparts) {
  int64_t n = rows < MAX_BLOCKS ? rows : MAX_BLOCKS;
  int64_t fit = C * nparts > 0 ? MAX_PARTIALS / (C * nparts) : n;
  if (n > fit) n = fit > 1 ? fit : 1;
  return n;
}

/* out[c] = sum over blocks b, in order, of part[b*stride + c]. */
static void sum_blocks(float *out, const double *part, int64_t nblk, int64_t C, int64_t stride) {
#pragma omp parallel for schedule(static) if (nblk * C > NN_PARALLEL_MIN)
  for (int64_t c = 0; c < C; c++) {
    double s = 0;
    for (int64_t b = 0; b < nblk; b++) s += part[b * stride + c];
    out[c] = (float)s;
  }
}

/* Checks shared by the four entry points: x (rows, C) and its row-shaped companions. */
static sn_status check_rows(sn_ctx *ctx, const char *fn, const sn_tensor *x, const sn_tensor *w,
                            const sn_tensor *b) {
  if (x->ndim < 1) return sn_fail(ctx, SN_EINVAL, "%s: x must have at least 1 dim, got a scalar", fn);
  int64_t C = sn_last_dim(x);
  sn_status st = nn_need(ctx, fn, "x", x, SN_F32, sn_numel(x));
  if (st == SN_OK && w) st = nn_need(ctx, fn, "weight", w, SN_F32, C);
  if (st == SN_OK && b) st = nn_need(ctx, fn, "bias", b, SN_F32, C);
  return st;
}

sn_status sn_layer_norm_fwd(sn_ctx *ctx, sn_tensor *y, sn_tensor *mean, sn_tensor *rstd,
                            const sn_tensor *x, const sn_tensor *w, const sn_tensor *b, float eps) {
  const char *fn = "seqnn.F.layer_norm";
  sn_status st = check_rows(ctx, fn, x, w, b);
  int64_t C = sn_last_dim(x), rows = sn_rows(x);
  if (st == SN_OK) st = nn_need(ctx, fn, "y", y, SN_F32, rows * C);
  if (st == SN_OK) st = nn_need(ctx, fn, "mean", mean, SN_F32, rows);
  if (st == SN_OK) st = nn_need(ctx, fn, "rstd", rstd, SN_F32, rows);
  if (st != SN_OK) return st;
  const float *px = sn_f32(x), *pw = w ? sn_f32(w) : NULL, *pb = b ? sn_f32(b) : NULL;
  float *py = sn_f32(y), *pm = sn_f32(mean), *pr = sn_f32(rstd);
#pragma omp parallel for schedule(static) if (rows * C > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = px + r * C;
    float *yr = py + r * C;
    float m = (float)(sn_vec->sum(xr, C) / (double)C);
    /* Variance around the stored (rounded) mean, two-pass: no cancellation for large means. */
    float rs = (float)(1.0 / sqrt(nn_dot(xr, m, xr, m, C) / (double)C + eps));
    pm[r] = m;
    pr[r] = rs;
    sn_vec->binary_scalar(SN_SUB, yr, xr, m, C, false);
    sn_vec->binary_scalar(SN_MUL, yr, yr, rs, C, false);
    if (pw) sn_vec->binary(SN_MUL, yr, yr, pw, C);
    if (pb) sn_vec->binary(SN_ADD, yr, yr, pb, C);
  }
  return SN_OK;
}

sn_status sn_layer_norm_bwd(sn_ctx *ctx, sn_tensor *gx, sn_tensor *gw, sn_tensor *gb,
                            const sn_tensor *mean, const sn_tensor *rstd, const sn_tensor *gy,
                            const sn_tensor *x, const sn_tensor *w) {
  const char *fn = "seqnn.F.layer_norm";
  sn_status st = check_rows(ctx, fn, x, w, NULL);
  int64_t C = sn_last_dim(x), rows = sn_rows(x);
  if (st == SN_OK) st = nn_need(ctx, fn, "grad_output", gy, SN_F32, rows * C);
  if (st == SN_OK) st = nn_need(ctx, fn, "grad_input", gx, SN_F32, rows * C);
  if (st == SN_OK) st = nn_need(ctx, fn, "mean", mean, SN_F32, rows);
  if (st == SN_OK) st = nn_need(ctx, fn, "rstd", rstd, SN_F32, rows);
  if (st == SN_OK && gw) st = nn_need(ctx, fn, "grad_weight", gw, SN_F32, C);
  if (st == SN_OK && gb) st = nn_need(ctx, fn, "grad_bias", gb, SN_F32, C);
  if (st != SN_OK) return st;
  int nparts = (gw != NULL) + (gb != NULL);
  int64_t nblk = row_blocks(rows, C, nparts);
  double *part = NULL;
  if (nparts) {
    part = sn_ctx_workspace(ctx, (size_t)(nblk * C * nparts + 1) * sizeof(double)); /* +1: never 0 bytes */
    if (!part) return SN_ENOMEM;
  }
  const float *pgy = sn_f32(gy), *px = sn_f32(x), *pw = w ? sn_f32(w) : NULL;
  const float *pm = sn_f32(mean), *pr = sn_f32(rstd);
  float *pgx = sn_f32(gx);
#pragma omp parallel for schedule(static) if (rows * C > NN_PARALLEL_MIN)
  for (int64_t blk = 0; blk < nblk; blk++) {
    double *aw = gw ? part + blk * C * nparts : NULL;
    double *ab = gb ? part + blk * C * nparts + (gw ? C : 0) : NULL;
    if (nparts) memset(part + blk * C * nparts, 0, (size_t)(C * nparts) * sizeof(double));
    for (int64_t r = rows * blk / nblk; r < rows * (blk + 1) / nblk; r++) {
      const float *gyr = pgy + r * C, *xr = px + r * C;
      float *gxr = pgx + r * C, m = pm[r], rs = pr[r];
      /* g = gy * w, kept in gx's row until gx overwrites it. */
      if (pw) sn_vec->binary(SN_MUL, gxr, gyr, pw, C);
      else memcpy(gxr, gyr, (size_t)C * sizeof(float));
      float mean_g = (float)(sn_vec->sum(gxr, C) / (double)C);
      float k = (float)((double)rs * rs * nn_dot(gxr, 0, xr, m, C) / (double)C);
#pragma omp simd
      for (int64_t c = 0; c < C; c++) gxr[c] = rs * (gxr[c] - mean_g - (xr[c] - m) * k);
      if (aw) {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) aw[c] += gyr[c] * ((xr[c] - m) * rs);
      }
      if (ab) {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) ab[c] += gyr[c];
      }
    }
  }
  /* Block b's partials: gw's at part[b*C*nparts], gb's C further. */
  if (gw) sum_blocks(sn_f32(gw), part, nblk, C, C * nparts);
  if (gb) sum_blocks(sn_f32(gb), part + (gw ? C : 0), nblk, C, C * nparts);
  return SN_OK;
}

sn_status sn_rms_norm_fwd(sn_ctx *ctx, sn_tensor *y, sn_tensor *rstd, const sn_tensor *x,
                          const sn_tensor *w, float eps) {
  const char *fn = "seqnn.F.rms_norm";
  sn_status st = check_rows(ctx, fn, x, w, NULL);
  int64_t C = sn_last_dim(x), rows = sn_rows(x);
  if (st == SN_OK) st = nn_need(ctx, fn, "y", y, SN_F32, rows * C);
  if (st == SN_OK) st = nn_need(ctx, fn, "rstd", rstd, SN_F32, rows);
  if (st != SN_OK) return st;
  const float *px = sn_f32(x), *pw = w ? sn_f32(w) : NULL;
  float *py = sn_f32(y), *pr = sn_f32(rstd);
#pragma omp parallel for schedule(static) if (rows * C > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = px + r * C;
    float *yr = py + r * C;
    float rs = (float)(1.0 / sqrt(nn_dot(xr, 0, xr, 0, C) / (double)C + eps));
    pr[r] = rs;
    sn_vec->binary_scalar(SN_MUL, yr, xr, rs, C, false);
    if (pw) sn_vec->binary(SN_MUL, yr, yr, pw, C);
  }
  return SN_OK;
}

sn_status sn_rms_norm_bwd(sn_ctx *ctx, sn_tensor *gx, sn_tensor *gw, const sn_tensor *rstd,
                          const sn_tensor *gy, const sn_tensor *x, const sn_tensor *w) {
  const char *fn = "seqnn.F.rms_norm";
  sn_status st = check_rows(ctx, fn, x, w, NULL);
  int64_t C = sn_last_dim(x), rows = sn_rows(x);
  if (st == SN_OK) st = nn_need(ctx, fn, "grad_output", gy, SN_F32, rows * C);
  if (st == SN_OK) st = nn_need(ctx, fn, "grad_input", gx, SN_F32, rows * C);
  if (st == SN_OK) st = nn_need(ctx, fn, "rstd", rstd, SN_F32, rows);
  if (st == SN_OK && gw) st = nn_need(ctx, fn, "grad_weight", gw, SN_F32, C);
  if (st != SN_OK) return st;
  int64_t nblk = row_blocks(rows, C, gw != NULL);
  double *part = NULL;
  if (gw) {
    part = sn_ctx_workspace(ctx, (size_t)(nblk * C + 1) * sizeof(double));
    if (!part) return SN_ENOMEM;
  }
  const float *pgy = sn_f32(gy), *px = sn_f32(x), *pw = w ? sn_f32(w) : NULL, *pr = sn_f32(rstd);
  float *pgx = sn_f32(gx);
#pragma omp parallel for schedule(static) if (rows * C > NN_PARALLEL_MIN)
  for (int64_t blk = 0; blk < nblk; blk++) {
    double *aw = gw ? part + blk * C : NULL;
    if (aw) memset(aw, 0, (size_t)C * sizeof(double));
    for (int64_t r = rows * blk / nblk; r < rows * (blk + 1) / nblk; r++) {
      const float *gyr = pgy + r * C, *xr = px + r * C;
      float *gxr = pgx + r * C, rs = pr[r];
      if (pw) sn_vec->binary(SN_MUL, gxr, gyr, pw, C);
      else memcpy(gxr, gyr, (size_t)C * sizeof(float));
      float k = (float)((double)rs * rs * nn_dot(gxr, 0, xr, 0, C) / (double)C);
#pragma omp simd
      for (int64_t c = 0; c < C; c++) gxr[c] = rs * (gxr[c] - xr[c] * k);
      if (aw) {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) aw[c] += gyr[c] * (xr[c] * rs);
      }
    }
  }
  if (gw) sum_blocks(sn_f32(gw), part, nblk, C, C);
  return SN_OK;
}
