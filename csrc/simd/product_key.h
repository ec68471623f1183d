/* simd/product_key.h -- internal: the inner loops of kernels/product_key.c, one table per
 * instruction set. product_key_tile.h holds the code once (GCC vector types of one
 * register, plus the compare-to-mask of each ISA for the threshold scan);
 * product_key_{scalar,avx2,avx512}.c compile it with their ISA flags, and product_key.c
 * picks the table matching sn_vec (so SEQNN_SIMD lowers both alike). */
#ifndef SN_SIMD_PRODUCT_KEY_H
#define SN_SIMD_PRODUCT_KEY_H

#include <stdint.h>

typedef struct sn_pkm_ops {
  const char *name;
  /* The first j in [i, n) with x[j] >= thr, or n: the threshold test of top-k selection,
   * which rejects almost every element once the kept set has filled. */
  int64_t (*scan_ge)(const float *x, int64_t i, int64_t n, float thr);
  /* The positions j < n with x[j] >= thr, ascending, into pos; returns their count (NaN
   * never passes). The filter of top-k once a lower bound of the k-th value is known. */
  int64_t (*filter_ge)(int32_t *pos, const float *x, int64_t n, float thr);
  /* out[c] = sum_{j < m} w[j] * base[index[j] * ld + c] for c < D, the terms added in j
   * order (one accumulator per column: the same bits whatever the caller's threading).
   * The weighted gather of the forward (base = values, index = slots) and of the sparse
   * value gradient (base = dy, index = tokens). index[m .. avail) are the rows the caller
   * reads next: they are prefetched too, so the stream of misses does not stall at the
   * start of every call (groups of the value gradient hold ~8 rows). */
  void (*wsum)(float *out, const float *base, int64_t ld, const int64_t *index, const float *w, int64_t m,
               int64_t avail, int64_t D);
  /* out[j] = <base[index[j] * ld + (0..D)], x> for j < m: the gradient of the weights. */
  void (*dots)(float *out, const float *base, int64_t ld, const int64_t *index, const float *x, int64_t m,
               int64_t avail, int64_t D);
} sn_pkm_ops;

extern const sn_pkm_ops sn_pkm_scalar, sn_pkm_avx2, sn_pkm_avx512;

#endif
