/* simd/sparse24_tile.h -- the 2:4 matmul inner loops (simd/sparse24.h), included once by each
 * of sparse24_{scalar,avx2,avx512}.c with S24_TABLE and S24_NAME naming the table. Written
 * with GCC vector types of VW floats, one register of the ISA; contraction is on here so
 * that a*b + c becomes one FMA where the ISA has it.
 *
 * panel: tokens are the lanes. Per group, two broadcasts of the kept weights and 2 nv
 * FMAs whose other operand is the panel row of the kept input: only the 2 kept inputs of
 * each 4 are touched, half the FMAs of the dense product. The nv accumulators of a row stay
 * in registers over the chunk (nv = 8: 8 independent chains, enough to cover the FMA
 * latency); the chunk of the panel (64 rows) stays in L1 across the rows of a block.
 * rows: the AVX-512 table gathers the kept inputs of 8 groups with one two-source permute
 * from a 32-float window of x (the codes expanded to lane indices by a variable shift), so
 * one FMA covers 16 kept weights; the other tables run the plain loop. */
#pragma GCC optimize("fp-contract=fast")

#include "simd/sparse24.h"
#include "simd/tile_vec.h"

/* ---- token panel ----------------------------------------------------------------------- */

INLINE void panel_nv(float *acc, const float *xt, const float *vals, int64_t hk, const int64_t *idx, int64_t nw,
                     int shift, int64_t nrows, int ng, int first, const int NV) {
  const int64_t P = (int64_t)NV * VW;
  for (int64_t r = 0; r < nrows; r++) {
    vf a[S24_PANEL_VECS];
    float *ar = acc + r * P;
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) a[j] = first ? splat(0.0f) : ld(ar + j * VW);
    const float *v = vals + r * hk;
    uint64_t w = (uint64_t)idx[r * nw] >> shift;
    for (int g = 0; g < ng; g++, w >>= 4) {
      const float *x0 = xt + (4 * g + (int)(w & 3)) * P, *x1 = xt + (4 * g + (int)((w >> 2) & 3)) * P;
      vf b0 = splat(v[2 * g]), b1 = splat(v[2 * g + 1]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) {
        a[j] += b0 * ld(x0 + j * VW);
        a[j] += b1 * ld(x1 + j * VW);
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) st(ar + j * VW, a[j]);
  }
}

static void panel(float *acc, const float *xt, const float *vals, int64_t hk, const int64_t *idx, int64_t nw,
                  int shift, int64_t nrows, int ng, int nv, int first) {
  switch (nv) {
  case 1: panel_nv(acc, xt, vals, hk, idx, nw, shift, nrows, ng, first, 1); break;
  case 2: panel_nv(acc, xt, vals, hk, idx, nw, shift, nrows, ng, first, 2); break;
  case 3: panel_nv(acc, xt, vals, hk, idx, nw, shift, nrows, ng, first, 3); break;
  case 4: panel_nv(acc, xt, vals, hk, idx, nw, shift, nrows, ng, first, 4); break;
  case 5: panel_nv(acc, xt, vals, hk, idx, nw, shift, nrows, ng, first, 5); break;
  case 6: panel_nv(acc, xt, vals, hk, idx, nw, shift, nrows, ng, first, 6); break;
  case 7: panel_nv(acc, xt, vals, hk, idx, nw, shift, nrows, ng, first, 7); break;
  default: panel_nv(acc, xt, vals, hk, idx, nw, shift, nrows, ng, first, 8); break;
  }
}

/* ---- row-wise (decode) ----------------------------------------------------------------- */

#if defined(__AVX512F__)

/* Window of 8 groups at input 4g: lane 2i takes x[4(g+i) + p0_i], lane 2i+1 x[4(g+i) + p1_i]
 * (codes: the 8 nibbles of `codes`). ng < 8 masks the loads past the row's end; the codes
 * of missing groups are 0 and their values load as 0. */
static void rows(float *y, int64_t ys, const float *x, int64_t xs, int n, const float *vals, const int64_t *idx,
                 int64_t K, int64_t m0, int64_t m1, const float *bias) {
  const int64_t G = K / 4, hk = K / 2, nw = (K + 63) / 64;
  const __m512i shift = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i three = _mm512_set1_epi32(3);
  for (int64_t m = m0; m < m1; m++) {
    const float *v = vals + m * hk;
    const int64_t *iw = idx + m * nw;
    __m512 acc[S24_DECODE_MAX];
    for (int i = 0; i < n; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g += 8) {
      int ng = G - g < 8 ? (int)(G - g) : 8;
      uint32_t codes = (uint32_t)((uint64_t)iw[g / 16] >> (4 * (g % 16)));
      __m512i lane = _mm512_add_epi32(
          _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)codes), shift), three), base);
      __mmask16 mv = (__mmask16)((1u << (2 * ng)) - 1);
      __mmask16 mlo = ng >= 4 ? 0xffff : (__mmask16)((1u << (4 * ng)) - 1);
      __mmask16 mhi = ng >= 8 ? 0xffff : ng <= 4 ? 0 : (__mmask16)((1u << (4 * ng - 16)) - 1);
      __m512 wv = _mm512_maskz_loadu_ps(mv, v + 2 * g);
      for (int i = 0; i < n; i++) {
        const float *xi = x + i * xs + 4 * g;
        __m512 lo = _mm512_maskz_loadu_ps(mlo, xi), hi = _mm512_maskz_loadu_ps(mhi, xi + 16);
        acc[i] = _mm512_fmadd_ps(wv, _mm512_permutex2var_ps(lo, lane, hi), acc[i]);
      }
    }
    for (int i = 0; i < n; i++) y[i * ys + m] = (bias ? bias[m] : 0.0f) + _mm512_reduce_add_ps(acc[i]);
  }
}

#else

static void rows(float *y, int64_t ys, const float *x, int64_t xs, int n, const float *vals, const int64_t *idx,
                 int64_t K, int64_t m0, int64_t m1, const float *bias) {
  const int64_t G = K / 4, hk = K / 2, nw = (K + 63) / 64;
  for (int64_t m = m0; m < m1; m++) {
    const float *v = vals + m * hk;
    const int64_t *iw = idx + m * nw;
    for (int i = 0; i < n; i++) {
      const float *xi = x + i * xs;
      float s = 0;
      for (int64_t g = 0; g < G; g++) {
        unsigned c = (unsigned)((uint64_t)iw[g / 16] >> (4 * (g % 16))) & 15;
        s += v[2 * g] * xi[4 * g + (c & 3)] + v[2 * g + 1] * xi[4 * g + (c >> 2)];
      }
      y[i * ys + m] = (bias ? bias[m] : 0.0f) + s;
    }
  }
}

#endif

const sn_s24_ops S24_TABLE = {S24_NAME, VW, panel, rows};
