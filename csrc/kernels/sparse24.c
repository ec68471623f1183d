/* kernels/sparse24.c -- 2:4 semi-structured sparse weights (format in seqnn.h): compression
 * from a dense matrix, expansion back, and the inference product y = x W^T + bias.
 *
 * matmul, N > S24_DECODE_MAX tokens: tokens are the SIMD lanes. x is packed transposed into
 * panels of up to 8 vectors of tokens (K rows of P floats, zero past the last token); a task
 * is (panel, block of S24_RB output rows). It walks K in chunks of S24_KC inputs (one idx
 * word per row), so the chunk of the panel stays in L1 while the block's rows go over it,
 * and keeps the block's accumulators in a per-thread (S24_RB, P) scratch between chunks.
 * Only the 2 kept inputs of each group are multiplied: half the FMAs of the dense product.
 * The block's results are transposed into y's rows at the end, with the bias.
 * N <= S24_DECODE_MAX (decode): row by row, with the tokens' x rows read directly.
 * Every output element is computed by one task in a fixed order: the same bits for any
 * thread count. The codes are checked first, O(M K / 64) (see check_codes). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "kernels/check.h"
#include "kernels/nn.h"
#include "simd/sparse24.h"
#include "simd/vec.h"

#ifndef S24_RB
#define S24_RB 16 /* output rows per task */
#endif
#define S24_PACK_BYTES (16 << 20) /* panels packed at once: bounds the workspace */

static const char *FN_FROM = "seqnn.sparse.sparse24_from_dense", *FN_TO = "seqnn.sparse.sparse24_to_dense",
                  *FN_MM = "seqnn.sparse.sparse24_matmul";

static const sn_s24_ops *s24_ops(void) {
  const char *n = sn_vec->name;
  return strcmp(n, "avx512") == 0 ? &sn_s24_avx512 : strcmp(n, "avx2") == 0 ? &sn_s24_avx2 : &sn_s24_scalar;
}

/* ---- validation ------------------------------------------------------------------------ */

static int64_t words_for(int64_t K) { return (K + 63) / 64; }

/* A contiguous tensor of dtype dt and shape (rows, cols). */
static sn_status need_2d(sn_ctx *ctx, const char *fn, const char *name, const sn_tensor *t, sn_dtype dt, int64_t rows,
                         int64_t cols) {
  char a[160];
  if (!t) return sn_fail(ctx, SN_EINVAL, "%s: %s must not be NULL", fn, name);
  if (t->dtype == dt && t->ndim == 2 && t->size[0] == rows && t->size[1] == cols && sn_is_contiguous(t))
    return SN_OK;
  return sn_fail(ctx, SN_EINVAL, "%s: %s must be a contiguous %s tensor of shape %lldx%lld, got %s %s%s", fn, name,
                 sn_dtype_name(dt), (long long)rows, (long long)cols, sn_dtype_name(t->dtype),
                 sn_shape_str(t, a, sizeof a),
                 t->ndim == 2 && t->size[0] == rows && t->size[1] == cols && t->dtype == dt ? " (not contiguous)" : "");
}

/* values f32 (M, K/2) and idx i64 (M, ceil(K/64)), both contiguous; K = 2 * values' cols
 * must be a multiple of 4. Sets *M, *K. */
static sn_status need_weights(sn_ctx *ctx, const char *fn, const sn_tensor *values, const sn_tensor *idx, int64_t *M,
                              int64_t *K) {
  char a[160];
  if (!values) return sn_fail(ctx, SN_EINVAL, "%s: values must not be NULL", fn);
  if (values->dtype != SN_F32 || values->ndim != 2)
    return sn_fail(ctx, SN_EINVAL, "%s: values must be a contiguous f32 tensor (M, K/2), got %s %s", fn,
                   sn_dtype_name(values->dtype), sn_shape_str(values, a, sizeof a));
  *M = values->size[0];
  *K = 2 * values->size[1];
  if (*K % 4)
    return sn_fail(ctx, SN_EINVAL, "%s: values must be (M, K/2) with K a multiple of 4, got %s (K = %lld)", fn,
                   sn_shape_str(values, a, sizeof a), (long long)*K);
  sn_status st = need_2d(ctx, fn, "values", values, SN_F32, *M, *K / 2);
  return st == SN_OK ? need_2d(ctx, fn, "idx", idx, SN_I64, *M, words_for(*K)) : st;
}

/* Every code p0 | p1 << 2 has p0 < p1, and the bits past the last group are zero. Per
 * nibble, 4 + p1 - p0 is in 1..7 and is >= 5 exactly when p0 < p1: (that + 3) has bit 3
 * set then, for all 16 nibbles of a word at once (no carry crosses a nibble). */
static sn_status check_codes(sn_ctx *ctx, const char *fn, const sn_tensor *idx, int64_t M, int64_t K) {
  const int64_t G = K / 4, nw = words_for(K);
  const uint64_t lo2 = 0x3333333333333333ull, four = 0x4444444444444444ull, eight = 0x8888888888888888ull;
  const int64_t *w = sn_i64(idx);
  for (int64_t m = 0; m < M; m++)
    for (int64_t j = 0; j < nw; j++) {
      uint64_t word = (uint64_t)w[m * nw + j];
      int used = G - 16 * j < 16 ? (int)(G - 16 * j) : 16;
      uint64_t mask = used == 16 ? ~0ull : (1ull << (4 * used)) - 1;
      uint64_t d = (((word >> 2) & lo2) | four) - (word & lo2);
      if (((d + 0x3333333333333333ull) & eight & mask) == (eight & mask) && !(word & ~mask)) continue;
      for (int g = 0; g < 16; g++) {
        unsigned c = (unsigned)(word >> (4 * g)) & 15, p0 = c & 3, p1 = c >> 2;
        if (g >= used && c)
          return sn_fail(ctx, SN_EINVAL,
                         "%s: idx row %lld word %lld has nonzero bits past the last group (K = %lld has %lld groups; "
                         "unused bits must be zero)",
                         fn, (long long)m, (long long)j, (long long)K, (long long)G);
        if (g < used && p0 >= p1)
          return sn_fail(ctx, SN_EINVAL,
                         "%s: idx has a bad code %u at row %lld, group %lld (positions p0 = %u, p1 = %u; need p0 < p1)",
                         fn, c, (long long)m, (long long)(16 * j + g), p0, p1);
      }
    }
  return SN_OK;
}

/* ---- compression ----------------------------------------------------------------------- */

/* a beats b: larger |.|, NaN beating every number (so it is kept and shows in results). */
static bool beats(float a, float b) { return (isnan(a) && !isnan(b)) || fabsf(a) > fabsf(b); }

sn_status sn_sparse24_from_dense(sn_ctx *ctx, sn_tensor *values, sn_tensor *idx, const sn_tensor *w) {
  char a[160];
  sn_status st = check_in(ctx, FN_FROM, "w", w, "(M, K)", 2, NULL);
  if (st != SN_OK) return st;
  const int64_t M = w->size[0], K = w->size[1];
  if (K % 4)
    return sn_fail(ctx, SN_EINVAL, "%s: w must have K (inputs) a multiple of 4, got %s", FN_FROM,
                   sn_shape_str(w, a, sizeof a));
  if ((st = need_2d(ctx, FN_FROM, "values", values, SN_F32, M, K / 2)) != SN_OK) return st;
  if ((st = need_2d(ctx, FN_FROM, "idx", idx, SN_I64, M, words_for(K))) != SN_OK) return st;
  const int64_t G = K / 4, nw = words_for(K);
  float *pv = sn_f32(values);
  int64_t *pi = sn_i64(idx);
  const float *pw = sn_f32(w);
#pragma omp parallel for schedule(static) if (M * K > NN_PARALLEL_MIN)
  for (int64_t m = 0; m < M; m++) {
    const float *row = pw + m * w->stride[0];
    memset(pi + m * nw, 0, (size_t)nw * sizeof(int64_t));
    for (int64_t g = 0; g < G; g++) {
      const float *q = row + 4 * g;
      /* Scanning upward with a strict test: on ties the lower position wins. */
      int first = 0;
      for (int p = 1; p < 4; p++)
        if (beats(q[p], q[first])) first = p;
      int second = first == 0 ? 1 : 0;
      for (int p = second + 1; p < 4; p++)
        if (p != first && beats(q[p], q[second])) second = p;
      int p0 = first < second ? first : second, p1 = first < second ? second : first;
      pv[m * (K / 2) + 2 * g] = q[p0];
      pv[m * (K / 2) + 2 * g + 1] = q[p1];
      pi[m * nw + g / 16] |= (int64_t)((uint64_t)(p0 | p1 << 2) << (4 * (g % 16)));
    }
  }
  return SN_OK;
}

sn_status sn_sparse24_to_dense(sn_ctx *ctx, sn_tensor *w, const sn_tensor *values, const sn_tensor *idx) {
  int64_t M, K;
  sn_status st = need_weights(ctx, FN_TO, values, idx, &M, &K);
  if (st == SN_OK) st = need_2d(ctx, FN_TO, "w", w, SN_F32, M, K);
  if (st == SN_OK) st = check_codes(ctx, FN_TO, idx, M, K);
  if (st != SN_OK) return st;
  const int64_t G = K / 4, nw = words_for(K);
  const float *pv = sn_f32(values);
  const int64_t *pi = sn_i64(idx);
  float *pw = sn_f32(w);
#pragma omp parallel for schedule(static) if (M * K > NN_PARALLEL_MIN)
  for (int64_t m = 0; m < M; m++) {
    float *row = pw + m * K;
    memset(row, 0, (size_t)K * sizeof(float));
    for (int64_t g = 0; g < G; g++) {
      unsigned c = (unsigned)((uint64_t)pi[m * nw + g / 16] >> (4 * (g % 16))) & 15;
      row[4 * g + (c & 3)] = pv[m * (K / 2) + 2 * g];
      row[4 * g + (c >> 2)] = pv[m * (K / 2) + 2 * g + 1];
    }
  }
  return SN_OK;
}

/* ---- product --------------------------------------------------------------------------- */

sn_status sn_sparse24_matmul(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, const sn_tensor *values,
                             const sn_tensor *idx, const sn_tensor *bias) {
  char a[160], b[160];
  int64_t M, K;
  sn_status st = need_weights(ctx, FN_MM, values, idx, &M, &K);
  if (st == SN_OK) st = check_in(ctx, FN_MM, "x", x, "(N, K)", 2, NULL);
  if (st == SN_OK && x->size[1] != K)
    st = sn_fail(ctx, SN_EINVAL, "%s: x has %lld features but the weight has K = %lld inputs (x: %s, values: %s)",
                 FN_MM, (long long)x->size[1], (long long)K, sn_shape_str(x, a, sizeof a),
                 sn_shape_str(values, b, sizeof b));
  if (st == SN_OK) st = check_opt(ctx, FN_MM, "bias", bias, "(M)", 1, &M);
  if (st == SN_OK) st = check_out(ctx, FN_MM, "y", y, false, 2, (int64_t[]){x->size[0], M});
  if (st == SN_OK) st = check_codes(ctx, FN_MM, idx, M, K);
  if (st != SN_OK) return st;
  const int64_t N = x->size[0], xs = x->stride[0], hk = K / 2, nw = words_for(K), G = K / 4;
  const float *px = sn_f32(x), *pv = sn_f32(values), *pb = bias ? sn_f32(bias) : NULL;
  const int64_t *pi = sn_i64(idx);
  float *py = sn_f32(y);
  if (N == 0 || M == 0) return SN_OK;
  const sn_s24_ops *ops = s24_ops();
  const bool par = N * M * K / 2 > NN_PARALLEL_MIN;

  if (N <= S24_DECODE_MAX || K == 0) {
    /* Blocks of 64 rows: the weights stream once, each row's x read from L1. */
    for (int64_t n0 = 0; n0 < N; n0 += S24_DECODE_MAX) {
      int n = N - n0 < S24_DECODE_MAX ? (int)(N - n0) : S24_DECODE_MAX;
#pragma omp parallel for schedule(static) if (par)
      for (int64_t m0 = 0; m0 < M; m0 += 64)
        ops->rows(py + n0 * M, M, px + n0 * xs, xs, n, pv, pi, K, m0, m0 + 64 < M ? m0 + 64 : M, pb);
    }
    return SN_OK;
  }

  const int64_t VW = ops->vw, PMAX = S24_PANEL_VECS * VW, nrb = (M + S24_RB - 1) / S24_RB;
  const int64_t panel_floats = K * PMAX, npanels = (N + PMAX - 1) / PMAX;
  int64_t batch = S24_PACK_BYTES / (panel_floats * (int64_t)sizeof(float));
  batch = batch < 1 ? 1 : batch > npanels ? npanels : batch;
  const int nt = omp_get_max_threads();
  float *ws = sn_ctx_workspace(ctx, (size_t)(batch * panel_floats + (int64_t)nt * S24_RB * PMAX) * sizeof(float));
  if (!ws) return SN_ENOMEM;
  float *scratch = ws + batch * panel_floats;
  const int64_t nkc = (K + S24_KC - 1) / S24_KC;

  for (int64_t p0 = 0; p0 < npanels; p0 += batch) {
    const int64_t np = npanels - p0 < batch ? npanels - p0 : batch;
#pragma omp parallel num_threads(nt) if (par)
    {
      /* Pack: panel row k holds token t of the panel at lane t, zeros past the last token. */
#pragma omp for schedule(static)
      for (int64_t task = 0; task < np * nkc; task++) {
        int64_t p = task / nkc, k0 = task % nkc * S24_KC, k1 = k0 + S24_KC < K ? k0 + S24_KC : K;
        int64_t n0 = (p0 + p) * PMAX, cnt = N - n0 < PMAX ? N - n0 : PMAX, P = (cnt + VW - 1) / VW * VW;
        float *xt = ws + p * panel_floats;
        for (int64_t t = 0; t < P; t++) {
          const float *xr = px + (n0 + t) * xs;
          if (t < cnt)
            for (int64_t k = k0; k < k1; k++) xt[k * P + t] = xr[k];
          else
            for (int64_t k = k0; k < k1; k++) xt[k * P + t] = 0.0f;
        }
      }
      float *acc = scratch + (int64_t)omp_get_thread_num() * S24_RB * PMAX;
#pragma omp for schedule(static)
      for (int64_t task = 0; task < np * nrb; task++) {
        int64_t p = task / nrb, m0 = task % nrb * S24_RB, m1 = m0 + S24_RB < M ? m0 + S24_RB : M;
        int64_t n0 = (p0 + p) * PMAX, cnt = N - n0 < PMAX ? N - n0 : PMAX, nv = (cnt + VW - 1) / VW, P = nv * VW;
        const float *xt = ws + p * panel_floats;
        for (int64_t kc = 0; kc < nkc; kc++) {
          int64_t k0 = kc * S24_KC, ng = G - k0 / 4 < S24_KC / 4 ? G - k0 / 4 : S24_KC / 4;
          ops->panel(acc, xt + k0 * P, pv + m0 * hk + k0 / 2, hk, pi + m0 * nw + k0 / 64, nw, (int)(k0 % 64), m1 - m0,
                     (int)ng, (int)nv, kc == 0);
        }
        for (int64_t t = 0; t < cnt; t++) {
          float *yr = py + (n0 + t) * M;
          for (int64_t m = m0; m < m1; m++) yr[m] = acc[(m - m0) * P + t] + (pb ? pb[m] : 0.0f);
        }
      }
    }
  }
  return SN_OK;
}
