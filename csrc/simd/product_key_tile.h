/* simd/product_key_tile.h -- the product-key memory inner loops (see product_key.h),
 * included once per ISA by product_key_{scalar,avx2,avx512}.c with PKM_TABLE and PKM_NAME
 * defined. */
#include "simd/product_key.h"
#include "simd/tile_vec.h"

/* Accumulators per column block: 8 registers (128 floats with AVX-512) stay in registers
 * while the block walks every selected row. */
#define NB 8
/* Rows ahead to prefetch: far enough to hide a DRAM miss behind ~8 rows of FMAs. */
#define PF 8

static int64_t scan_ge(const float *x, int64_t i, int64_t n, float thr) {
#if defined(__AVX512F__)
  __m512 t = _mm512_set1_ps(thr);
  for (; i + 16 <= n; i += 16) {
    __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), t, _CMP_GE_OQ);
    if (m) return i + __builtin_ctz((unsigned)m);
  }
#elif defined(__AVX2__)
  __m256 t = _mm256_set1_ps(thr);
  for (; i + 8 <= n; i += 8) {
    int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), t, _CMP_GE_OQ));
    if (m) return i + __builtin_ctz((unsigned)m);
  }
#endif
  for (; i < n; i++)
    if (x[i] >= thr) return i;
  return n;
}

static int64_t filter_ge(int32_t *pos, const float *x, int64_t n, float thr) {
  int64_t m = 0, i = 0;
#if defined(__AVX512F__)
  __m512 t = _mm512_set1_ps(thr);
  __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; i + 16 <= n; i += 16) {
    __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), t, _CMP_GE_OQ);
    _mm512_mask_compressstoreu_epi32(pos + m, k, _mm512_add_epi32(lane, _mm512_set1_epi32((int)i)));
    m += __builtin_popcount((unsigned)k);
  }
#elif defined(__AVX2__)
  __m256 t = _mm256_set1_ps(thr);
  for (; i + 8 <= n; i += 8) {
    unsigned k = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), t, _CMP_GE_OQ));
    while (k) {
      pos[m++] = (int32_t)(i + __builtin_ctz(k));
      k &= k - 1;
    }
  }
#endif
  for (; i < n; i++)
    if (x[i] >= thr) pos[m++] = (int32_t)i;
  return m;
}

static void wsum(float *out, const float *base, int64_t lds, const int64_t *index, const float *w, int64_t m,
                 int64_t avail, int64_t D) {
  int64_t c0 = 0;
  for (; c0 + NB * VW <= D; c0 += NB * VW) {
    vf acc[NB];
    for (int b = 0; b < NB; b++) acc[b] = (vf){0};
    for (int64_t j = 0; j < m; j++) {
      /* The first column block fetches whole rows ahead (all of D): the later blocks then
       * find the m rows in L2 (128 rows of 2 KB at the PKM defaults) instead of each
       * missing to memory again. */
      if (c0 == 0 && j + PF < avail) {
        const char *nx = (const char *)(base + index[j + PF] * lds);
        for (int64_t b = 0; b < D * 4; b += 64) __builtin_prefetch(nx + b, 0, 3);
      }
      const float *row = base + index[j] * lds + c0;
      vf wj = splat(w[j]);
      for (int b = 0; b < NB; b++) acc[b] += wj * ld(row + b * VW);
    }
    for (int b = 0; b < NB; b++) st(out + c0 + b * VW, acc[b]);
  }
  for (; c0 + VW <= D; c0 += VW) {
    vf acc = (vf){0};
    for (int64_t j = 0; j < m; j++) acc += splat(w[j]) * ld(base + index[j] * lds + c0);
    st(out + c0, acc);
  }
  for (; c0 < D; c0++) {
    float acc = 0;
    for (int64_t j = 0; j < m; j++) acc += w[j] * base[index[j] * lds + c0];
    out[c0] = acc;
  }
}

static void dots(float *out, const float *base, int64_t lds, const int64_t *index, const float *x, int64_t m,
                 int64_t avail, int64_t D) {
  for (int64_t j = 0; j < m; j++) {
    if (j + PF < avail) {
      const char *nx = (const char *)(base + index[j + PF] * lds);
      for (int64_t b = 0; b < D * 4; b += 64) __builtin_prefetch(nx + b, 0, 3);
    }
    const float *row = base + index[j] * lds;
    vf a0 = (vf){0}, a1 = (vf){0}, a2 = (vf){0}, a3 = (vf){0};
    int64_t c = 0;
    for (; c + 4 * VW <= D; c += 4 * VW) {
      a0 += ld(row + c) * ld(x + c);
      a1 += ld(row + c + VW) * ld(x + c + VW);
      a2 += ld(row + c + 2 * VW) * ld(x + c + 2 * VW);
      a3 += ld(row + c + 3 * VW) * ld(x + c + 3 * VW);
    }
    for (; c + VW <= D; c += VW) a0 += ld(row + c) * ld(x + c);
    vf s = (a0 + a1) + (a2 + a3);
    float acc = 0;
    for (int l = 0; l < VW; l++) acc += s[l];
    for (; c < D; c++) acc += row[c] * x[c];
    out[j] = acc;
  }
}

const sn_pkm_ops PKM_TABLE = {PKM_NAME, scan_ge, filter_ge, wsum, dots};
