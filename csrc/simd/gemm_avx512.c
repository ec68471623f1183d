/* simd/gemm_avx512.c -- sn_sgemm_avx512: Goto/BLIS-style blocked sgemm.
 *
 * Loops, outer to inner: NC columns of C -> KC slice of K (pack B, KC x NC) -> MC rows
 * (pack A, MC x KC) -> NR-column micro-panel of B -> MR-row micro-panel of A -> micro-kernel.
 * The micro-kernel keeps an MR x NR tile of C in 28 zmm accumulators (14 rows x 2 vectors),
 * loads 2 vectors of B per k and broadcasts each A value into its FMAs: 28 FMAs per 2 loads
 * and 14 broadcasts, which leaves 2 of the 32 zmm free. Transposes are absorbed by the
 * packing; edges are zero-padded when packing and masked when storing. */
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>

#include "simd/gemm.h"

#define MR 14
#define NR 32
/* B micro-panel KC x NR = 32 KiB stays in the 48 KiB L1d while the MR panels of A stream
 * past it; the A block MC x KC = 336 KiB sits in the 2 MiB L2; B block KC x NC = 2 MiB. */
#define KC 256
#define MC (MR * 24)
#define NC 2048
/* Below this many multiply-adds one thread is faster than waking a second one. */
#define PARALLEL_MIN (128 * 128 * 128)

static __mmask16 cols_mask(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* In-register transpose: r[i] lane j becomes r[j] lane i. Unpacks pair rows, shuffle_ps
 * forms 4x4 blocks inside each 128-bit lane, shuffle_f32x4 moves the blocks into place. */
static inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; j++) {
    __m512 v = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), w = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    __m512 v2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88), w2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_f32x4(v, v2, 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(v, v2, 0xDD);
    r[4 + j] = _mm512_shuffle_f32x4(w, w2, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(w, w2, 0xDD);
  }
}

/* Writes the transpose of a rows x kc block (row i at src + i*ld, contiguous along k;
 * rows <= 16) k-major: dst[k*dstride + i], lanes i < 16 under `lanes`, rows past `rows`
 * zero. Used where packing must turn rows into columns: A as stored, B transposed. */
static void pack_transposed(float *dst, int64_t dstride, __mmask16 lanes, const float *src,
                            int64_t ld, int64_t rows, int64_t kc) {
  for (int64_t k = 0; k < kc; k += 16) {
    int64_t kn = kc - k < 16 ? kc - k : 16;
    __mmask16 m = cols_mask(kn);
    __m512 r[16];
    for (int64_t i = 0; i < 16; i++)
      r[i] = i < rows ? _mm512_maskz_loadu_ps(m, src + i * ld + k) : _mm512_setzero_ps();
    transpose16(r);
    for (int64_t q = 0; q < kn; q++) _mm512_mask_storeu_ps(dst + (k + q) * dstride, lanes, r[q]);
  }
}

/* Writes rows [0, kc) of a matrix whose rows are contiguous (row k at src + k*ld) as
 * width-float rows of dst, columns [0, cols) copied and the rest zero (width 14 or 32). */
static void pack_copied(float *dst, int64_t width, const float *src, int64_t ld, int64_t cols,
                        int64_t kc) {
  __mmask16 m0 = cols_mask(cols), m1 = cols_mask(cols - 16);
  __mmask16 w0 = cols_mask(width), w1 = cols_mask(width - 16);
  for (int64_t k = 0; k < kc; k++) {
    const float *s = src + k * ld;
    _mm512_mask_storeu_ps(dst, w0, _mm512_maskz_loadu_ps(m0, s));
    if (width > 16) _mm512_mask_storeu_ps(dst + 16, w1, _mm512_maskz_loadu_ps(m1, s + 16));
    dst += width;
  }
}

/* Packs rows [0, mc) x cols [0, kc) of op(A) into MR-row micro-panels, k-major within a
 * panel (MR floats per k), rows past mc zero. */
static void pack_a(float *dst, bool ta, const float *A, int64_t lda, int64_t mc, int64_t kc) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    int64_t mr = mc - i0 < MR ? mc - i0 : MR;
    if (ta)
      pack_copied(dst, MR, A + i0, lda, mr, kc);
    else
      pack_transposed(dst, MR, cols_mask(MR), A + i0 * lda, lda, mr, kc);
    dst += MR * kc;
  }
}

/* Packs rows [0, kc) x cols [0, nc) of op(B) into NR-column micro-panels, k-major within a
 * panel (NR floats per k), columns past nc zero. */
static void pack_b(float *dst, bool tb, const float *B, int64_t ldb, int64_t kc, int64_t nc) {
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    int64_t nr = nc - j0 < NR ? nc - j0 : NR;
    if (tb) {
      pack_transposed(dst, NR, 0xFFFF, B + j0 * ldb, ldb, nr, kc);
      pack_transposed(dst + 16, NR, 0xFFFF, B + (j0 + 16) * ldb, ldb, nr - 16, kc);
    } else {
      pack_copied(dst, NR, B + j0, ldb, nr, kc);
    }
    dst += NR * kc;
  }
}


/* C[0..mr) x [0..nr) = alpha * (packed a panel @ packed b panel) + beta * C; C not read
 * when beta == 0. */
static void kernel(int64_t kc, const float *a, const float *b, float *C, int64_t ldc, int64_t mr,
                   int64_t nr, float alpha, float beta) {
  __m512 acc[MR][2];
#pragma GCC unroll 14
  for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) {
      __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += MR;
    b += NR;
  }
  __mmask16 m0 = cols_mask(nr), m1 = cols_mask(nr - 16);
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 14
  for (int i = 0; i < MR; i++) {
    if (i >= mr) break;
    float *c = C + i * ldc;
    __m512 r0 = _mm512_mul_ps(va, acc[i][0]), r1 = _mm512_mul_ps(va, acc[i][1]);
    if (beta != 0.0f) {
      r0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), r0);
      r1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16), r1);
    }
    _mm512_mask_storeu_ps(c, m0, r0);
    _mm512_mask_storeu_ps(c + 16, m1, r1);
  }
}

/* One thread's share: the whole blocked product on its rows/columns, with its own
 * buffers pa (MC x KC) and pb (KC x NC, rounded up to NR). */
static void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                        float *C, int64_t ldc, float *pa, float *pb) {
  for (int64_t jc = 0; jc < N; jc += NC) {
    int64_t nc = N - jc < NC ? N - jc : NC;
    for (int64_t pc = 0; pc < K; pc += KC) {
      int64_t kc = K - pc < KC ? K - pc : KC;
      float bet = pc == 0 ? beta : 1.0f; /* later K slices add to the first */
      pack_b(pb, tb, tb ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, kc, nc);
      for (int64_t ic = 0; ic < M; ic += MC) {
        int64_t mc = M - ic < MC ? M - ic : MC;
        pack_a(pa, ta, ta ? A + pc * lda + ic : A + ic * lda + pc, lda, mc, kc);
        for (int64_t jr = 0; jr < nc; jr += NR)
          for (int64_t ir = 0; ir < mc; ir += MR)
            kernel(kc, pa + ir * kc, pb + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc,
                   mc - ir < MR ? mc - ir : MR, nc - jr < NR ? nc - jr : NR, alpha, bet);
      }
    }
  }
}

/* The calling thread's packing buffer, kept between calls and grown when needed: a fresh
 * allocation per call page-faulted ~1 MiB each time, which cost a model's small products
 * a third of their time. One per calling thread, so concurrent callers never share. */
static float *pack_buffer(size_t floats) {
  static _Thread_local float *buf;
  static _Thread_local size_t cap;
  if (floats > cap) {
    free(buf);
    buf = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
    cap = buf ? floats : 0;
  }
  return buf;
}

void sn_sgemm_avx512(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                     float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K == 0 || alpha == 0.0f) { /* no product term: C = beta * C */
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  int nt = (double)M * N * K >= PARALLEL_MIN ? omp_get_max_threads() : 1;
  /* Each thread takes a band of whole micro-panels along the longer side of C and packs its
   * own operands: re-packing the shared one costs 1/(band size) of the FLOPs. */
  bool split_m = M >= N;
  int64_t unit = split_m ? MR : NR, len = split_m ? M : N;
  int64_t units = (len + unit - 1) / unit;
  if (nt > units) nt = (int)units;
  int64_t nb_max = (N < NC ? N : NC) + NR, pa_len = (int64_t)MC * KC, pb_len = KC * nb_max;
  float *buf = pack_buffer((size_t)nt * (pa_len + pb_len));
  if (!buf) { /* no memory for packing: let OpenBLAS do it in place */
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
    return;
  }
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int t = omp_get_thread_num(), n = omp_get_num_threads();
    int64_t u0 = units * t / n, u1 = units * (t + 1) / n;
    int64_t lo = u0 * unit, hi = u1 * unit < len ? u1 * unit : len;
    float *pa = buf + t * (pa_len + pb_len), *pb = pa + pa_len;
    if (lo < hi) {
      if (split_m)
        gemm_serial(ta, tb, hi - lo, N, K, alpha, ta ? A + lo : A + lo * lda, lda, B, ldb, beta,
                    C + lo * ldc, ldc, pa, pb);
      else
        gemm_serial(ta, tb, M, hi - lo, K, alpha, A, lda, tb ? B + lo * ldb : B + lo, ldb, beta,
                    C + lo, ldc, pa, pb);
    }
  }
}
