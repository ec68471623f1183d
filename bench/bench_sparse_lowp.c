/* bench_sparse_lowp.c -- kernels/sparse24.c and kernels/sparse_int8.c at a transformer MLP
 * projection: W 4096 x 1024 (M outputs x K inputs), x 128 tokens (and 1, decode).
 *
 * 2:4 rows: sn_sparse24_matmul against cblas_sgemm on the dense weight (x_ref = sgemm's
 * time over ours, timed alternately; N = 1 against cblas_sgemv). int8 rows: sn_bsr_i8_matmul on a BSR 4x1 weight at
 * 50..95% block sparsity (blocks drawn by a hash) against sn_bsr_matmul (f32, same BSR;
 * ref bsr_f32) and against cblas_sgemm. GFLOP/s count 2 flops per stored weight and token
 * (the nonzero work). Each kernel is first checked once against a naive loop over a
 * sample of outputs (every 7th): f32 kernels to 1e-4 relative, int8 to 5% of the output's
 * RMS (8-bit steps of x and w each add ~0.4% RMS noise; the worst of ~600 samples at 95%
 * sparsity, where x's scale is set by inputs the row does not use, measured 3.1%). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static sn_ctx ctx;

#define M_ 4096
#define K_ 1024

typedef struct {
  int64_t N;
  sn_tensor x, y, yref, wd, bias;         /* wd: the dense weight the sparse one expands to */
  sn_tensor v24, idx24;                   /* 2:4 */
  sn_tensor values, browptr, bcol;        /* BSR 4x1 */
  sn_bsr_i8 *w8;
  int64_t nnz;                            /* stored weights */
} lowp_case;

static void run_s24(void *p) {
  lowp_case *c = p;
  sn_sparse24_matmul(&ctx, &c->y, &c->x, &c->v24, &c->idx24, &c->bias);
}

static void run_i8(void *p) {
  lowp_case *c = p;
  sn_bsr_i8_matmul(&ctx, &c->y, &c->x, c->w8, &c->bias);
}

static void run_bsr(void *p) {
  lowp_case *c = p;
  sn_bsr_matmul(&ctx, &c->yref, &c->x, &c->values, &c->browptr, &c->bcol, &c->bias);
}

static void run_sgemm(void *p) {
  lowp_case *c = p;
  if (c->N == 1)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, M_, K_, 1, sn_f32(&c->wd), K_, sn_f32(&c->x), 1, 0, sn_f32(&c->yref), 1);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->N, M_, K_, 1, sn_f32(&c->x), K_, sn_f32(&c->wd), K_,
                0, sn_f32(&c->yref), M_);
}

/* Worst |y - naive| over every 7th output, relative to the sample's RMS (rms_rel) or to
 * 1e-4 (1 + |naive|) (per-element, f32). */
static double check(const lowp_case *c, const float *y, bool rms_rel) {
  const float *x = sn_f32(&c->x), *w = sn_f32(&c->wd), *b = sn_f32(&c->bias);
  double worst = 0, ss = 0, cnt = 0, *ref = malloc(sizeof(double) * (size_t)(c->N * M_));
  for (int64_t n = 0; n < c->N; n++)
    for (int64_t m = n % 7; m < M_; m += 7) {
      double s = b[m];
      for (int64_t k = 0; k < K_; k++) s += (double)x[n * K_ + k] * w[m * K_ + k];
      ref[n * M_ + m] = s;
      ss += s * s, cnt++;
    }
  double rms = sqrt(ss / (cnt > 0 ? cnt : 1));
  for (int64_t n = 0; n < c->N; n++)
    for (int64_t m = n % 7; m < M_; m += 7) {
      double d = fabs(y[n * M_ + m] - ref[n * M_ + m]);
      double e = rms_rel ? d / (0.05 * rms) : d / (1e-4 * (1 + fabs(ref[n * M_ + m])));
      if (!(e <= worst)) worst = e;
    }
  free(ref);
  return worst;
}

static bool setup(lowp_case *c, int64_t N) {
  *c = (lowp_case){.N = N};
  int64_t xs[] = {N, K_}, ys[] = {N, M_}, ws[] = {M_, K_}, bs[] = {M_};
  if (sn_tensor_empty(&ctx, &c->x, SN_F32, 2, xs) || sn_tensor_empty(&ctx, &c->y, SN_F32, 2, ys) ||
      sn_tensor_empty(&ctx, &c->yref, SN_F32, 2, ys) || sn_tensor_empty(&ctx, &c->wd, SN_F32, 2, ws) ||
      sn_tensor_empty(&ctx, &c->bias, SN_F32, 1, bs))
    return false;
  bench_fill(sn_f32(&c->x), N * K_, 1);
  bench_fill(sn_f32(&c->bias), M_, 2);
  return true;
}

static void release(lowp_case *c) {
  sn_tensor *ts[] = {&c->x, &c->y, &c->yref, &c->wd, &c->bias, &c->v24, &c->idx24, &c->values, &c->browptr, &c->bcol};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sn_tensor_release(ts[i]);
  sn_bsr_i8_free(c->w8);
}

/* ---- 2:4 ---------------------------------------------------------------------------------- */

static void row_24(int64_t N) {
  lowp_case c;
  char shape[64], kernel[32] = "sparse24 fwd", why[96];
  snprintf(shape, sizeof shape, "%dx%d N%lld", M_, K_, (long long)N);
  int64_t hs[] = {M_, K_ / 2}, is[] = {M_, (K_ + 63) / 64};
  if (!setup(&c, N) || sn_tensor_empty(&ctx, &c.v24, SN_F32, 2, hs) || sn_tensor_empty(&ctx, &c.idx24, SN_I64, 2, is)) {
    bench_ok(&ctx, SN_ENOMEM, kernel, shape);
    release(&c);
    return;
  }
  bench_fill(sn_f32(&c.wd), M_ * K_, 3);
  if (!bench_ok(&ctx, sn_sparse24_from_dense(&ctx, &c.v24, &c.idx24, &c.wd), kernel, shape) ||
      !bench_ok(&ctx, sn_sparse24_to_dense(&ctx, &c.wd, &c.v24, &c.idx24), kernel, shape))
    goto done;
  run_s24(&c);
  double e = check(&c, sn_f32(&c.y), false);
  if (!(e <= 1)) {
    snprintf(why, sizeof why, "error %.3g x tolerance against the naive loop", e);
    bench_mismatch(kernel, shape, why);
    goto done;
  }
  double t, tr, x = bench_time2(run_s24, &c, run_sgemm, &c, &t, &tr);
  bench_row(kernel, shape, t, 2.0 * N * M_ * (K_ / 2), 0, x, N == 1 ? "sgemv" : "sgemm");
done:
  release(&c);
}

/* ---- int8 BSR 4x1 -------------------------------------------------------------------------- */

/* BSR 4x1 with each block kept when a hash falls below 1 - sparsity; wd its dense form. */
static bool make_bsr(lowp_case *c, double sparsity) {
  const int64_t Mb = M_ / 4;
  int64_t *cols = malloc(sizeof(int64_t) * (size_t)(Mb * K_)), nnzb = 0, bps[] = {Mb + 1};
  if (!cols || sn_tensor_empty(&ctx, &c->browptr, SN_I64, 1, bps)) return free(cols), false;
  int64_t *bp = sn_i64(&c->browptr);
  bp[0] = 0;
  for (int64_t br = 0; br < Mb; br++) {
    for (int64_t k = 0; k < K_; k++) {
      uint64_t h = sn_rng_word(42, (uint64_t)(br * K_ + k));
      if ((double)(h >> 11) * 0x1p-53 >= sparsity) cols[nnzb++] = k;
    }
    bp[br + 1] = nnzb;
  }
  int64_t vs[] = {nnzb, 4, 1}, cs[] = {nnzb};
  bool ok = sn_tensor_empty(&ctx, &c->values, SN_F32, 3, vs) == SN_OK &&
            sn_tensor_empty(&ctx, &c->bcol, SN_I64, 1, cs) == SN_OK;
  if (ok) {
    memcpy(sn_i64(&c->bcol), cols, sizeof(int64_t) * (size_t)nnzb);
    bench_fill(sn_f32(&c->values), nnzb * 4, 5);
    float *wd = sn_f32(&c->wd);
    memset(wd, 0, sizeof(float) * M_ * K_);
    for (int64_t br = 0; br < Mb; br++)
      for (int64_t b = bp[br]; b < bp[br + 1]; b++)
        for (int r = 0; r < 4; r++) wd[(br * 4 + r) * K_ + cols[b]] = sn_f32(&c->values)[b * 4 + r];
    c->nnz = nnzb * 4;
  }
  free(cols);
  return ok;
}

static void row_i8(int64_t N, double sparsity) {
  lowp_case c;
  char shape[64], kernel[32] = "bsr_i8 4x1 fwd", why[160];
  snprintf(shape, sizeof shape, "%dx%d s%.0f%% N%lld", M_, K_, sparsity * 100, (long long)N);
  if (!setup(&c, N) || !make_bsr(&c, sparsity)) {
    bench_ok(&ctx, SN_ENOMEM, kernel, shape);
    release(&c);
    return;
  }
  if (!bench_ok(&ctx, sn_bsr_i8_new(&ctx, &c.w8, &c.values, &c.browptr, &c.bcol, K_), kernel, shape) ||
      !bench_ok(&ctx, sn_bsr_i8_matmul(&ctx, &c.y, &c.x, c.w8, &c.bias), kernel, shape) ||
      !bench_ok(&ctx, sn_bsr_matmul(&ctx, &c.yref, &c.x, &c.values, &c.browptr, &c.bcol, &c.bias), "bsr_f32", shape))
    goto done;
  double e8 = check(&c, sn_f32(&c.y), true), ef = check(&c, sn_f32(&c.yref), false);
  if (!(e8 <= 1) || !(ef <= 1)) {
    snprintf(why, sizeof why, "int8 error %.3g x 5%% of RMS, bsr_f32 error %.3g x tolerance, against the naive loop",
             e8, ef);
    bench_mismatch(kernel, shape, why);
    goto done;
  }
  double flops = 2.0 * N * c.nnz, t, tr, x = bench_time2(run_i8, &c, run_bsr, &c, &t, &tr);
  bench_row(kernel, shape, t, flops, 0, x, "bsr_f32");
  x = bench_time2(run_i8, &c, run_sgemm, &c, &t, &tr);
  bench_row(kernel, shape, t, flops, 0, x, N == 1 ? "sgemv" : "sgemm");
done:
  release(&c);
}

void bench_sparse_lowp(void) {
  sn_ctx_init(&ctx);
  row_24(128);
  row_24(1);
  static const double sp[] = {0.5, 0.7, 0.8, 0.9, 0.95};
  for (size_t i = 0; i < sizeof sp / sizeof *sp; i++) row_i8(128, sp[i]);
  row_i8(1, 0.9);
  sn_ctx_free(&ctx);
}
