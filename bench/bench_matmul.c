/* bench_matmul.c -- sn_matmul against direct cblas_sgemm calls on the same buffers, timed
 * alternately in the same run: large (overhead must vanish), transposed b (no copy),
 * small (per-call overhead), a folded linear-layer batch, an operand that needs the
 * workspace copy, and many tiny matrices (the batch loop). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "simd/gemm.h"

/* cblas_sgemm over `batch` matrices with element strides sa, sb, sc between them. With
 * `omp`, the batch is split over OpenMP threads: the alternative sn_matmul rejects. */
typedef struct {
  CBLAS_TRANSPOSE tb;
  int M, N, K, lda, ldb, batch;
  int64_t sa, sb, sc;
  const float *a, *b;
  float *c;
  bool omp;
} blas_args;

static void gemm(const blas_args *g, int i) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, g->tb, g->M, g->N, g->K, 1.0f, g->a + i * g->sa, g->lda,
              g->b + i * g->sb, g->ldb, 0.0f, g->c + i * g->sc, g->N);
}

static void run_blas(void *p) {
  blas_args *g = p;
  if (g->omp) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < g->batch; i++) gemm(g, i);
  } else {
    for (int i = 0; i < g->batch; i++) gemm(g, i); /* no OpenMP entry cost in the reference */
  }
}

typedef struct {
  sn_ctx *ctx;
  sn_tensor *out;
  const sn_tensor *a, *b;
} mm_args;

static void run_matmul(void *p) {
  mm_args *m = p;
  sn_matmul(m->ctx, m->out, m->a, m->b);
}

/* Element (r, c) of the matrix `batch` of a 3-D (or 2-D, batch 0) view. */
static double elem(const sn_tensor *t, int64_t batch, int64_t r, int64_t c) {
  int nd = t->ndim;
  int64_t off = r * t->stride[nd - 2] + c * t->stride[nd - 1] + (nd == 3 ? batch * t->stride[0] : 0);
  return sn_f32(t)[off];
}

/* Checks up to 512 entries of out against a naive double dot product, each within 1e-5 of
 * the sum of |a_ik * b_kj| it adds up (a 2-D b is shared by every batch). */
static bool matmul_ok(const sn_tensor *out, const sn_tensor *a, const sn_tensor *b, char *why,
                      size_t n) {
  int64_t batch = out->ndim == 3 ? out->size[0] : 1, M = out->size[out->ndim - 2],
          N = out->size[out->ndim - 1], K = a->size[a->ndim - 1];
  int64_t total = batch * M * N, step = total / 512 > 1 ? total / 512 : 1;
  uint64_t s = 88172645463325252ull;
  for (int64_t e = 0; e < total; e += step) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17; /* a random entry within each stride */
    int64_t idx = e + (int64_t)(s % (uint64_t)step), bi = idx / (M * N), i = idx / N % M, j = idx % N;
    double want = 0, scale = 0;
    for (int64_t k = 0; k < K; k++) {
      double p = elem(a, a->ndim == 3 ? bi : 0, i, k) * elem(b, b->ndim == 3 ? bi : 0, k, j);
      want += p, scale += fabs(p);
    }
    double got = sn_f32(out)[idx];
    if (!(fabs(got - want) <= 1e-5 * scale + 1e-30)) {
      snprintf(why, n, "entry %lld is %g, naive loop gives %g", (long long)idx, got, want);
      return false;
    }
  }
  return true;
}

static sn_tensor *new_tensor(sn_ctx *ctx, sn_tensor *t, int ndim, const int64_t *size, uint32_t seed) {
  if (!bench_ok(ctx, sn_tensor_empty(ctx, t, SN_F32, ndim, size), "matmul", "(setup)")) return NULL;
  bench_fill(sn_f32(t), sn_numel(t), seed);
  return t;
}

/* Checks sn_matmul(out, a, b), then times it alternately with `ref` (cblas on the same
 * data) and prints the reference row (unless ref_row is NULL) and the sn_matmul row. */
static void compare(sn_ctx *ctx, const char *shape, sn_tensor *out, const sn_tensor *a,
                    const sn_tensor *b, blas_args *ref, const char *ref_row, const char *ref_name) {
  char why[128];
  double flops = 2.0 * sn_numel(out) * a->size[a->ndim - 1];
  if (!bench_ok(ctx, sn_matmul(ctx, out, a, b), "matmul", shape)) return;
  if (!matmul_ok(out, a, b, why, sizeof why)) {
    bench_mismatch("matmul", shape, why);
    return;
  }
  mm_args m = {ctx, out, a, b};
  double t, tref, x = bench_time2(run_matmul, &m, run_blas, ref, &t, &tref);
  if (ref_row) bench_row(ref_row, shape, tref, flops, 0, 0, "(reference)");
  bench_row("matmul", shape, t, flops, 0, x, ref_name);
}

static void large(sn_ctx *ctx) {
  const int n = 1024;
  sn_tensor a, b, bt, bT, out;
  if (!new_tensor(ctx, &a, 2, (int64_t[]){n, n}, 1) || !new_tensor(ctx, &b, 2, (int64_t[]){n, n}, 2) ||
      !new_tensor(ctx, &bt, 2, (int64_t[]){n, n}, 3) || !new_tensor(ctx, &out, 2, (int64_t[]){n, n}, 4))
    return;
  blas_args g = {.tb = CblasNoTrans, .M = n, .N = n, .K = n, .lda = n, .ldb = n, .batch = 1,
                 .a = sn_f32(&a), .b = sn_f32(&b), .c = sn_f32(&out)};
  compare(ctx, "1024x1024x1024", &out, &a, &b, &g, "cblas_sgemm", "cblas_sgemm");

  sn_transpose(ctx, &bT, &bt, 0, 1); /* strides (1, n): sgemm reads it as Trans */
  g.tb = CblasTrans, g.b = sn_f32(&bt);
  compare(ctx, "1024x1024x1024 b^T", &out, &a, &bT, &g, "cblas_sgemm", "cblas_sgemm Trans");

  /* Every other column of a (1024, 1024, 2) tensor: sn_matmul copies a into its workspace;
   * the reference multiplies a contiguous copy of the same values. */
  sn_tensor wide, a2, acopy;
  if (new_tensor(ctx, &wide, 3, (int64_t[]){n, n, 2}, 5) && new_tensor(ctx, &acopy, 2, (int64_t[]){n, n}, 0)) {
    sn_select(ctx, &a2, &wide, 2, 0);
    sn_copy(ctx, &acopy, &a2);
    g.tb = CblasNoTrans, g.a = sn_f32(&acopy), g.b = sn_f32(&b);
    compare(ctx, "1024^3 a col stride 2", &out, &a2, &b, &g, NULL, "cblas_sgemm contiguous a");
    sn_tensor *more[] = {&wide, &a2, &acopy};
    for (int i = 0; i < 3; i++) sn_tensor_release(more[i]);
  }

  /* (4, 256, 1024) @ (1024, 1024): one 1024-row GEMM, not four. */
  sn_tensor x, y;
  if (new_tensor(ctx, &x, 3, (int64_t[]){4, 256, n}, 6) && new_tensor(ctx, &y, 3, (int64_t[]){4, 256, n}, 0)) {
    g.a = sn_f32(&x), g.c = sn_f32(&y);
    compare(ctx, "4x256x1024 @ 1024x1024", &y, &x, &b, &g, NULL, "cblas_sgemm 1024^3");
    sn_tensor_release(&x);
    sn_tensor_release(&y);
  }
  sn_tensor *all[] = {&a, &b, &bt, &bT, &out};
  for (int i = 0; i < 5; i++) sn_tensor_release(all[i]);
}

/* `batch` products of n x n matrices: the sequential cblas loop is the reference; the
 * OpenMP-split loop is shown for the record (sn_matmul stays sequential, see matmul.c). */
static void batched(sn_ctx *ctx, int n, int batch) {
  char shape[64];
  snprintf(shape, sizeof shape, "%dx %dx%dx%d", batch, n, n, n);
  int64_t size[3] = {batch, n, n};
  sn_tensor a, b, out;
  if (!new_tensor(ctx, &a, 3, size, 7) || !new_tensor(ctx, &b, 3, size, 8) ||
      !new_tensor(ctx, &out, 3, size, 9))
    return;
  int64_t nn = (int64_t)n * n;
  blas_args g = {.tb = CblasNoTrans, .M = n, .N = n, .K = n, .lda = n, .ldb = n, .batch = batch,
                 .sa = nn, .sb = nn, .sc = nn, .a = sn_f32(&a), .b = sn_f32(&b), .c = sn_f32(&out)};
  compare(ctx, shape, &out, &a, &b, &g, "cblas_sgemm loop", "cblas_sgemm loop");
  blas_args split = g;
  split.omp = true;
  double t_seq, t_omp, flops = 2.0 * batch * nn * n;
  double x = bench_time2(run_blas, &split, run_blas, &g, &t_omp, &t_seq);
  bench_row("cblas omp loop", shape, t_omp, flops, 0, x, "cblas_sgemm loop");
  sn_tensor *all[] = {&a, &b, &out};
  for (int i = 0; i < 3; i++) sn_tensor_release(all[i]);
}

/* One n x n x n product: at 64 the call overhead should be a few percent, at 8 it shows. */
static void small(sn_ctx *ctx, int n) {
  char shape[32];
  snprintf(shape, sizeof shape, "%dx%dx%d", n, n, n);
  int64_t size[2] = {n, n};
  sn_tensor a, b, out;
  if (!new_tensor(ctx, &a, 2, size, 10) || !new_tensor(ctx, &b, 2, size, 11) ||
      !new_tensor(ctx, &out, 2, size, 12))
    return;
  blas_args g = {.tb = CblasNoTrans, .M = n, .N = n, .K = n, .lda = n, .ldb = n, .batch = 1,
                 .a = sn_f32(&a), .b = sn_f32(&b), .c = sn_f32(&out)};
  compare(ctx, shape, &out, &a, &b, &g, "cblas_sgemm", "cblas_sgemm");
  sn_tensor *all[] = {&a, &b, &out};
  for (int i = 0; i < 3; i++) sn_tensor_release(all[i]);
}

typedef struct {
  int M, N, K;
  const float *a, *b;
  float *c;
} own_args;

static void run_own(void *p) {
  own_args *g = p;
  sn_sgemm_avx512(false, false, g->M, g->N, g->K, 1.0f, g->a, g->K, g->b, g->N, 0.0f, g->c, g->N);
}

/* seqnn's AVX-512 sgemm called directly against cblas_sgemm, at 1024^3 and the shapes of
 * the small GPT's linear layers; checked against cblas first. */
static void own_gemm(sn_ctx *ctx, int M, int N, int K) {
  if (!sn_gemm_avx512_available()) return;
  char shape[64];
  snprintf(shape, sizeof shape, "%dx%d @ %dx%d", M, K, K, N);
  sn_tensor a, b, c, ref;
  if (!new_tensor(ctx, &a, 2, (int64_t[]){M, K}, 13) || !new_tensor(ctx, &b, 2, (int64_t[]){K, N}, 14) ||
      !new_tensor(ctx, &c, 2, (int64_t[]){M, N}, 0) || !new_tensor(ctx, &ref, 2, (int64_t[]){M, N}, 0))
    return;
  own_args g = {M, N, K, sn_f32(&a), sn_f32(&b), sn_f32(&c)};
  blas_args r = {.tb = CblasNoTrans, .M = M, .N = N, .K = K, .lda = K, .ldb = N, .batch = 1,
                 .a = sn_f32(&a), .b = sn_f32(&b), .c = sn_f32(&ref)};
  run_own(&g);
  run_blas(&r);
  for (int64_t i = 0; i < (int64_t)M * N; i++) {
    if (!(fabsf(sn_f32(&c)[i] - sn_f32(&ref)[i]) <= 1e-4f * (1.0f + fabsf(sn_f32(&ref)[i])))) {
      bench_mismatch("sgemm seqnn", shape, "differs from cblas_sgemm");
      goto done;
    }
  }
  double t, tref, flops = 2.0 * M * N * K, x = bench_time2(run_own, &g, run_blas, &r, &t, &tref);
  bench_row("cblas_sgemm", shape, tref, flops, 0, 0, "(reference)");
  bench_row("sgemm seqnn", shape, t, flops, 0, x, "cblas_sgemm");
done:;
  sn_tensor *all[] = {&a, &b, &c, &ref};
  for (int i = 0; i < 4; i++) sn_tensor_release(all[i]);
}

void bench_matmul(void) {
  sn_ctx ctx;
  sn_ctx_init(&ctx);
  own_gemm(&ctx, 1024, 1024, 1024);
  own_gemm(&ctx, 768, 384, 128);
  own_gemm(&ctx, 768, 128, 512);
  large(&ctx);
  small(&ctx, 64);
  small(&ctx, 8);
  batched(&ctx, 8, 16384);
  batched(&ctx, 32, 2048);
  sn_ctx_free(&ctx);
}
