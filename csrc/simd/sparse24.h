/* simd/sparse24.h -- internal: the inner loops of kernels/sparse24.c (2:4 semi-structured
 * matmul), one table per instruction set. sparse24_tile.h holds the code once, written with
 * GCC vector types of one register; sparse24_{scalar,avx2,avx512}.c compile it with their
 * ISA flags, and sparse24.c picks the table matching sn_vec (so SEQNN_SIMD lowers it too).
 *
 * Weights: row m holds vals[m * K/2 ..] (two kept weights per group of 4 inputs, lower
 * position first) and idx[m * nw ..] (nw = ceil(K/64) words of 16 4-bit codes p0 | p1 << 2),
 * codes already checked (p0 < p1). */
#ifndef SN_SIMD_SPARSE24_H
#define SN_SIMD_SPARSE24_H

#include <stdint.h>

#define S24_PANEL_VECS 8 /* vectors of tokens per panel row: 128 tokens with AVX-512 */
#ifndef S24_KC
#define S24_KC 64 /* inputs per K chunk (divides 64): a 32 KiB panel chunk (AVX-512) */
#endif
#define S24_DECODE_MAX 4 /* up to this many tokens the row-wise (GEMV) kernel runs */

typedef struct sn_s24_ops {
  const char *name;
  int vw; /* floats per vector: the panel holds nv * vw tokens */
  /* Token-panel product over one K chunk: for rows r < nrows,
   *   acc[r][t] (+)= sum_{g < ng} v[2g] xt[(4g+p0)][t] + v[2g+1] xt[(4g+p1)][t]
   * with v = vals + r * hk (the chunk's first value), the codes in word idx[r * nw] from bit
   * `shift` on, xt the
   * chunk's panel rows (nv * vw floats each), acc rows nv * vw floats; first: acc starts at 0.
   * 1 <= nv <= S24_PANEL_VECS, ng <= 16. */
  void (*panel)(float *acc, const float *xt, const float *vals, int64_t hk, const int64_t *idx, int64_t nw,
                int shift, int64_t nrows, int ng, int nv, int first);
  /* Rows [m0, m1) for n <= S24_DECODE_MAX tokens: y[i * ys + m] = bias[m] (or 0) +
   * sum over the row's groups of v0 x[i*xs + 4g+p0] + v1 x[i*xs + 4g+p1]. */
  void (*rows)(float *y, int64_t ys, const float *x, int64_t xs, int n, const float *vals, const int64_t *idx,
               int64_t K, int64_t m0, int64_t m1, const float *bias);
} sn_s24_ops;

extern const sn_s24_ops sn_s24_scalar, sn_s24_avx2, sn_s24_avx512;

#endif
