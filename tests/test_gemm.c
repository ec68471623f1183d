/* test_gemm.c -- sn_sgemm_avx512 against a naive double loop: all four transpose combos,
 * odd sizes in each of M, N, K (tails of the 14-row and 32-column tiles), sizes past the
 * K, M and N blocks and the threading threshold, alpha/beta, padded leading dims, and
 * beta = 0 overwriting NaN. Skipped below the avx512 dispatch level. */
#include <stdlib.h>
#include <string.h>

#include "simd/gemm.h"
#include "testutil.h"

static float *rand_buf(int64_t n, uint32_t seed) {
  float *x = malloc((size_t)n * sizeof(float));
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = (float)((seed >> 8) / 16777216.0 * 2.0 - 1.0);
  }
  return x;
}

/* Runs one case and checks every entry of C within 1e-5 of the sum of |terms| plus |beta C|. */
static void check(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  /* Stored shapes: A is M x K (K x M when ta), B is K x N (N x K when tb); pad each ld. */
  int64_t arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
  int64_t lda = acols + 3, ldb = bcols + 5, ldc = N + 7;
  float *A = rand_buf(arows * lda, 1), *B = rand_buf(brows * ldb, 2), *C = rand_buf(M * ldc, 3);
  float *C0 = malloc((size_t)(M * ldc) * sizeof(float));
  if (beta == 0.0f)
    for (int64_t i = 0; i < M * ldc; i++) C[i] = NAN; /* must be overwritten, not read */
  for (int64_t i = 0; i < M * ldc; i++) C0[i] = C[i];
  sn_sgemm_avx512(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  int bad = 0;
  for (int64_t i = 0; i < M && bad < 3; i++)
    for (int64_t j = 0; j < ldc && bad < 3; j++) {
      float got = C[i * ldc + j];
      if (j >= N) { /* padding between rows stays untouched */
        if (memcmp(&got, &C0[i * ldc + j], sizeof got) != 0) bad++;
        cr_expect(memcmp(&got, &C0[i * ldc + j], sizeof got) == 0,
                  "ta %d tb %d %lldx%lldx%lld: C[%lld][%lld] past N was written", ta, tb,
                  (long long)M, (long long)N, (long long)K, (long long)i, (long long)j);
        continue;
      }
      double want = 0, scale = 0;
      for (int64_t k = 0; k < K; k++) {
        double p = (double)(ta ? A[k * lda + i] : A[i * lda + k]) *
                   (tb ? B[j * ldb + k] : B[k * ldb + j]);
        want += p, scale += fabs(p);
      }
      want *= alpha, scale *= fabs(alpha);
      if (beta != 0.0f) {
        want += (double)beta * C0[i * ldc + j];
        scale += fabs((double)beta * C0[i * ldc + j]);
      }
      bool ok = fabs(got - want) <= 1e-5 * scale + 1e-6;
      if (!ok) bad++;
      cr_expect(ok, "ta %d tb %d %lldx%lldx%lld alpha %g beta %g: C[%lld][%lld] = %g, want %g",
                ta, tb, (long long)M, (long long)N, (long long)K, alpha, beta, (long long)i,
                (long long)j, got, want);
    }
  free(A), free(B), free(C), free(C0);
}

static const int64_t odd[] = {1, 3, 13, 17, 31, 33, 100, 257};

Test(gemm, odd_sizes_all_transposes) {
  if (!sn_gemm_avx512_available()) cr_skip_test("no avx512 at this dispatch level");
  for (int t = 0; t < 4; t++)
    for (size_t s = 0; s < sizeof odd / sizeof odd[0]; s++) {
      int64_t n = odd[s];
      check(t & 1, t & 2, n, 33, 17, 1.0f, 0.0f);
      check(t & 1, t & 2, 17, n, 33, 0.75f, -1.25f);
      check(t & 1, t & 2, 33, 17, n, -2.0f, 0.5f);
    }
}

/* Past KC = 256 (later K slices add to C), MC = 336, NC = 2048, and over the threading
 * threshold split by rows (M >= N) and by columns. */
Test(gemm, blocks_and_threads) {
  if (!sn_gemm_avx512_available()) cr_skip_test("no avx512 at this dispatch level");
  for (int t = 0; t < 4; t++) {
    check(t & 1, t & 2, 257, 257, 257, 1.0f, 0.0f);
    check(t & 1, t & 2, 700, 33, 300, 0.5f, 2.0f);
    check(t & 1, t & 2, 3, 2100, 5, 1.0f, 1.0f);
    check(t & 1, t & 2, 100, 2100, 17, 1.5f, 0.0f);
  }
}

Test(gemm, degenerate) {
  if (!sn_gemm_avx512_available()) cr_skip_test("no avx512 at this dispatch level");
  check(false, false, 5, 7, 0, 1.0f, 0.0f);  /* empty sum: C = 0 */
  check(false, true, 5, 7, 0, 1.0f, 3.0f);   /* C = beta C */
  check(true, false, 5, 7, 9, 0.0f, -1.0f);  /* alpha 0 */
  sn_sgemm_avx512(false, false, 0, 4, 4, 1.0f, NULL, 4, NULL, 4, 0.0f, NULL, 4); /* no-op */
}
