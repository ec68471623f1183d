/* bench_hash_memory.c -- kernels/hash_memory.c, MemoryFormer's memory layer, on the issue's
 * shape (d_in = d_out = 1024, N = 4096 tokens, 8 bits: K = 128 tables of 256 rows, 128 MiB
 * of f32 tables) and on the FFN's second layer at d = 512 (K = 64 tables of 10 bits, 640 ->
 * 512, 160 MiB).
 *
 * Each kernel is first checked against a naive loop (per token: hash with libm, then add
 * the K full rows; bwd likewise, row by row), then timed against it and against dense
 * cblas_sgemm products of the same shape, alternately, sample by sample (x_ref: the
 * reference's time over ours): fwd y = x W^T against one sgemm, fwd+bwd against the three
 * of a Linear's training step. GFLOP/s count the layer's own work, 2 N K d_out per pass
 * (the weighted row sums; the dense product does 2 N d_in d_out, bits times more); GB/s the
 * table bytes the tokens read, N K d_out 4. "packed" reads the inference copy of
 * sn_hash_linear_pack instead of packing panels per call. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static sn_ctx ctx;

typedef struct {
  int64_t N, din, dout, K, R;
  int bits;
  sn_tensor x, tab, pk, bias, y, codes, p, dy, dx, dtab, db, w, wdx, wdw;
  float *ref, *ref_dx, *ref_dtab;
} hm_case;

static bool make_case(hm_case *c, int64_t N, int64_t din, int64_t dout, int bits, const char *shape) {
  *c = (hm_case){.N = N, .din = din, .dout = dout, .K = din / bits, .R = (int64_t)1 << bits, .bits = bits};
  int64_t nx[] = {N, din}, nt[] = {c->K * c->R, dout}, ny[] = {N, dout}, nk[] = {N, c->K}, nw[] = {dout, din};
  int64_t npk[] = {(dout + SN_HASH_PANEL - 1) / SN_HASH_PANEL, c->K * c->R, SN_HASH_PANEL};
  struct {
    sn_tensor *t;
    int nd;
    int64_t *s;
    sn_dtype dt;
  } ts[] = {{&c->x, 2, nx, SN_F32},   {&c->tab, 2, nt, SN_F32},  {&c->pk, 3, npk, SN_F32}, {&c->bias, 1, &dout, SN_F32},
            {&c->y, 2, ny, SN_F32},   {&c->codes, 2, nk, SN_I64}, {&c->p, 2, nk, SN_F32},  {&c->dy, 2, ny, SN_F32},
            {&c->dx, 2, nx, SN_F32},  {&c->dtab, 2, nt, SN_F32}, {&c->db, 1, &dout, SN_F32}, {&c->w, 2, nw, SN_F32},
            {&c->wdx, 2, nx, SN_F32}, {&c->wdw, 2, nw, SN_F32}};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) {
    if (!bench_ok(&ctx, sn_tensor_empty(&ctx, ts[i].t, ts[i].dt, ts[i].nd, ts[i].s), "hash_linear", shape))
      return false;
    if (ts[i].dt == SN_F32) bench_fill(sn_f32(ts[i].t), sn_numel(ts[i].t), (uint32_t)i + 31);
  }
  c->ref = malloc(sizeof(float) * (size_t)(N * dout));
  c->ref_dx = malloc(sizeof(float) * (size_t)(N * din));
  c->ref_dtab = malloc(sizeof(float) * (size_t)(c->K * c->R * dout));
  return c->ref && c->ref_dx && c->ref_dtab &&
         bench_ok(&ctx, sn_hash_linear_pack(&ctx, &c->pk, &c->tab), "hash_linear pack", shape);
}

static void release_case(hm_case *c) {
  sn_tensor *ts[] = {&c->x, &c->tab, &c->pk, &c->bias, &c->y, &c->codes, &c->p, &c->dy, &c->dx, &c->dtab, &c->db,
                     &c->w, &c->wdx, &c->wdw};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sn_tensor_release(ts[i]);
  free(c->ref), free(c->ref_dx), free(c->ref_dtab);
}

/* ---- the timed work -------------------------------------------------------------------- */

static void run_fwd(void *a) {
  hm_case *c = a;
  sn_hash_linear_fwd(&ctx, &c->y, NULL, NULL, &c->x, &c->tab, NULL, &c->bias, c->bits, SN_HASH_SCORE_CODE);
}
static void run_fwd_packed(void *a) {
  hm_case *c = a;
  sn_hash_linear_fwd(&ctx, &c->y, NULL, NULL, &c->x, &c->tab, &c->pk, &c->bias, c->bits, SN_HASH_SCORE_CODE);
}
static void run_train(void *a) {
  hm_case *c = a;
  sn_hash_linear_fwd(&ctx, &c->y, &c->codes, &c->p, &c->x, &c->tab, NULL, &c->bias, c->bits, SN_HASH_SCORE_CODE);
  sn_hash_linear_bwd(&ctx, &c->dx, &c->dtab, &c->db, &c->dy, &c->codes, &c->p, &c->x, &c->tab, c->bits,
                     SN_HASH_SCORE_CODE);
}

/* Dense Linear of the same shape: y = x W^T; dx = dy W; dW = dy^T x. */
static void run_sgemm_fwd(void *a) {
  hm_case *c = a;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->N, (int)c->dout, (int)c->din, 1, sn_f32(&c->x),
              (int)c->din, sn_f32(&c->w), (int)c->din, 0, sn_f32(&c->y), (int)c->dout);
}
static void run_sgemm_train(void *a) {
  hm_case *c = a;
  run_sgemm_fwd(c);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c->N, (int)c->din, (int)c->dout, 1, sn_f32(&c->dy),
              (int)c->dout, sn_f32(&c->w), (int)c->din, 0, sn_f32(&c->wdx), (int)c->din);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)c->dout, (int)c->din, (int)c->N, 1, sn_f32(&c->dy),
              (int)c->dout, sn_f32(&c->x), (int)c->din, 0, sn_f32(&c->wdw), (int)c->din);
}

/* ---- naive loops ----------------------------------------------------------------------- */

/* Code and released-code score of chunk z; dz (or NULL) = d score / dz. */
static void naive_chunk(const float *z, int bits, int64_t *h, float *p, float *dz) {
  float prod = 1, S = 0;
  *h = 0;
  for (int i = 0; i < bits; i++) {
    if (z[i] >= 0) *h |= (int64_t)1 << i;
    prod *= 1.0f / (1.0f + expf(-2.0f * fabsf(z[i])));
    S += fabsf(z[i]);
  }
  *p = S * prod;
  for (int i = 0; dz && i < bits; i++)
    dz[i] = (z[i] >= 0 ? 1.0f : -1.0f) * prod * (1.0f + 2.0f * S / (1.0f + expf(2.0f * fabsf(z[i]))));
}

static void naive_fwd(void *a) {
  hm_case *c = a;
  const float *x = sn_f32(&c->x), *tab = sn_f32(&c->tab), *bias = sn_f32(&c->bias);
  for (int64_t n = 0; n < c->N; n++) {
    float *y = c->ref + n * c->dout;
    memcpy(y, bias, sizeof(float) * (size_t)c->dout);
    for (int64_t k = 0; k < c->K; k++) {
      int64_t h;
      float p;
      naive_chunk(x + n * c->din + k * c->bits, c->bits, &h, &p, NULL);
      const float *row = tab + (k * c->R + h) * c->dout;
      for (int64_t j = 0; j < c->dout; j++) y[j] += p * row[j];
    }
  }
}

/* fwd's codes and scores are recomputed, as the kernel's bwd is given them (it does not
 * time them either way: naive_train is fwd + this). */
static void naive_bwd(void *a) {
  hm_case *c = a;
  const float *x = sn_f32(&c->x), *tab = sn_f32(&c->tab), *dy = sn_f32(&c->dy);
  float dz[16];
  memset(c->ref_dtab, 0, sizeof(float) * (size_t)(c->K * c->R * c->dout));
  for (int64_t n = 0; n < c->N; n++)
    for (int64_t k = 0; k < c->K; k++) {
      int64_t h;
      float p, dp = 0;
      naive_chunk(x + n * c->din + k * c->bits, c->bits, &h, &p, dz);
      const float *row = tab + (k * c->R + h) * c->dout, *g = dy + n * c->dout;
      float *drow = c->ref_dtab + (k * c->R + h) * c->dout;
      for (int64_t j = 0; j < c->dout; j++) dp += row[j] * g[j], drow[j] += p * g[j];
      for (int i = 0; i < c->bits; i++) c->ref_dx[n * c->din + k * c->bits + i] = dp * dz[i];
    }
}

static void naive_train(void *a) {
  naive_fwd(a);
  naive_bwd(a);
}

/* max |out - ref| / max |ref| <= tol, else a MISMATCH row. */
static bool close(const sn_tensor *out, const float *ref, double tol, const char *kernel, const char *shape) {
  double worst = 0, scale = 1e-30;
  for (int64_t i = 0; i < sn_numel(out); i++) scale = fmax(scale, fabs((double)ref[i]));
  for (int64_t i = 0; i < sn_numel(out); i++) {
    double e = fabs((double)sn_f32(out)[i] - ref[i]) / scale;
    if (!(e <= worst)) worst = e;
  }
  if (worst <= tol) return true;
  char why[96];
  snprintf(why, sizeof why, "error %.3g of the output's scale against the naive loop", worst);
  bench_mismatch(kernel, shape, why);
  return false;
}

static void case_rows(int64_t N, int64_t din, int64_t dout, int bits) {
  hm_case c;
  char shape[64], ref[80];
  snprintf(shape, sizeof shape, "%lld->%lld N%lld b%d", (long long)din, (long long)dout, (long long)N, bits);
  if (!make_case(&c, N, din, dout, bits, shape)) {
    release_case(&c);
    return;
  }
  const double work = 2.0 * N * c.K * dout, bytes = 4.0 * N * c.K * dout, dense = 2.0 * N * din * dout;
  printf("# %s: %lld tables of %lld x %lld f32 (%.0f MiB); per token %.0f FLOPs (dense: %.0f), %.0f KiB of rows\n",
         shape, (long long)c.K, (long long)c.R, (long long)dout, c.K * c.R * dout * 4.0 / (1 << 20),
         work / N + 5.0 * din, dense / N, bytes / N / 1024);
  naive_fwd(&c);
  run_fwd(&c);
  bool ok = close(&c.y, c.ref, 1e-5, "hash_linear fwd", shape);
  run_fwd_packed(&c);
  ok = close(&c.y, c.ref, 1e-5, "hash_linear fwd pk", shape) && ok;
  run_train(&c);
  naive_bwd(&c);
  ok = close(&c.dx, c.ref_dx, 1e-4, "hash_linear bwd dx", shape) && ok;
  ok = close(&c.dtab, c.ref_dtab, 1e-5, "hash_linear bwd dT", shape) && ok;
  if (ok) {
    double t, tr;
    double x = bench_time2(run_fwd, &c, naive_fwd, &c, &t, &tr);
    bench_row("hash_linear fwd", shape, t, work, bytes, x, "naive");
    x = bench_time2(run_fwd, &c, run_sgemm_fwd, &c, &t, &tr);
    snprintf(ref, sizeof ref, "sgemm dense (%.1f GFLOP/s)", dense / tr * 1e-9);
    bench_row("hash_linear fwd", shape, t, work, bytes, x, ref);
    x = bench_time2(run_fwd_packed, &c, run_sgemm_fwd, &c, &t, &tr);
    snprintf(ref, sizeof ref, "sgemm dense (%.1f GFLOP/s)", dense / tr * 1e-9);
    bench_row("hash_linear fwd pk", shape, t, work, bytes, x, ref);
    x = bench_time2(run_train, &c, naive_train, &c, &t, &tr);
    bench_row("hash_linear f+b", shape, t, 3 * work, 3 * bytes, x, "naive");
    x = bench_time2(run_train, &c, run_sgemm_train, &c, &t, &tr);
    snprintf(ref, sizeof ref, "3 sgemm dense (%.1f GFLOP/s)", 3 * dense / tr * 1e-9);
    bench_row("hash_linear f+b", shape, t, 3 * work, 3 * bytes, x, ref);
  }
  release_case(&c);
}

void bench_hash_memory(void) {
  sn_ctx_init(&ctx);
  bench_sgemm_rate();
  case_rows(4096, 1024, 1024, 8);
  case_rows(2048, 640, 512, 10);
  sn_ctx_free(&ctx);
}
