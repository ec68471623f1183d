/* simd/spmm.h -- internal: the inner loops of kernels/block_sparse.c, one table per
 * instruction set. spmm_tile.h holds the code once, written with GCC vector types of one
 * register; spmm_{scalar,avx2,avx512}.c compile it with their ISA flags, and
 * block_sparse.c picks the table matching sn_vec (so SEQNN_SIMD lowers both alike).
 *
 * Lanes are tokens. The caller packs a chunk of tokens transposed: xt (K rows) and dyt
 * (M rows), row i of n tokens at xt + i * ld, ld a multiple of the table's panel width
 * with zeros past the chunk's last token. Blocks are BSR (seqnn.h): block b is
 * vals[b * ro * ri ..], row-major (ro, ri). */
#ifndef SN_SIMD_SPMM_H
#define SN_SIMD_SPMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SPMM_PWMAX 64 /* tokens of the widest panel (4 AVX-512 vectors) */

typedef struct sn_spmm_ops {
  const char *name;
  int pw; /* tokens per panel: the packed rows' ld is a multiple of it */
  /* One block-row, one panel of n <= pw tokens (lanes 0 .. n-1 of the packed rows):
   * y[t * ldy + r] = bias[r] (0 if bias is NULL) + sum over blocks b in [b0, b1) (in order)
   * and c < ri of vals[b][r][c] * xt[(bcol[b] * ri + c) * ld + t], for r < ro, t < n. */
  void (*fwd)(float *y, int64_t ldy, const float *bias, int n, const float *xt, int64_t ld, const float *vals,
              const int64_t *bcol, int64_t b0, int64_t b1, int ro, int ri);
  /* One block-column, one panel of n <= pw tokens: dx[t * ldx + c] = sum over the column's
   * entries e in [e0, e1) (in order) and r < ro of vals[blk[e]][r][c] *
   * dyt[(brow[e] * ro + r) * ld + t], for c < ri, t < n. */
  void (*dx)(float *dx, int64_t ldx, int n, const float *dyt, int64_t ld, const float *vals, const int64_t *blk,
             const int64_t *brow, int64_t e0, int64_t e1, int ro, int ri);
  /* dx^T by block-rows, one panel of pw lanes: dxt[(bcol[b] * ri + c) * ld + t] +=
   * vals[b][r][c] * dyt[(ob * ro + r) * ld + t] for every block b of every block-row ob in
   * order (rows in groups of 4), c < ri, t < pw; dxt holds the caller's starting values.
   * The rows of a block-row stay in registers: for 1-column blocks this reads and writes
   * dx^T once per block instead of reading ro dy^T rows. */
  void (*dx_rows)(float *dxt, int64_t ld, const float *dyt, const float *vals, const int64_t *browptr,
                  const int64_t *bcol, int64_t Mb, int ro, int ri);
  /* Block-row ob, blocks [b0, b1), lanes [0, nlanes) (a multiple of pw): dv[b][r][c] (+)=
   * sum over lanes of
   * dyt[(ob * ro + r) * ld + t] * xt[(bcol[b] * ri + c) * ld + t]; `add` adds to dv,
   * else overwrites it. The lanes' float sums are added by a fixed tree. */
  void (*dw)(float *dv, const float *dyt, const float *xt, int64_t ld, int64_t nlanes, const int64_t *bcol,
             int64_t ob, int64_t b0, int64_t b1, int ro, int ri, bool add);
} sn_spmm_ops;

extern const sn_spmm_ops sn_spmm_scalar, sn_spmm_avx2, sn_spmm_avx512;

/* dst[j * ds + i] = src[i * ss + j] (+ add[i] when add is not NULL) for i, j < 4: a 4x4
 * transpose in registers, for packing tokens transposed and writing outputs back (one
 * float at a time these were most of a 90%-sparse forward's fixed cost). */
typedef float spmm_v4 __attribute__((vector_size(16)));
typedef float spmm_v4u __attribute__((vector_size(16), aligned(4)));
static inline void spmm_tr4(float *dst, int64_t ds, const float *src, int64_t ss, const float *add) {
  spmm_v4 a = *(const spmm_v4u *)src, b = *(const spmm_v4u *)(src + ss), c = *(const spmm_v4u *)(src + 2 * ss),
          d = *(const spmm_v4u *)(src + 3 * ss);
  spmm_v4 ab0 = __builtin_shufflevector(a, b, 0, 4, 1, 5), ab1 = __builtin_shufflevector(a, b, 2, 6, 3, 7);
  spmm_v4 cd0 = __builtin_shufflevector(c, d, 0, 4, 1, 5), cd1 = __builtin_shufflevector(c, d, 2, 6, 3, 7);
  spmm_v4 r[4] = {__builtin_shufflevector(ab0, cd0, 0, 1, 4, 5), __builtin_shufflevector(ab0, cd0, 2, 3, 6, 7),
                  __builtin_shufflevector(ab1, cd1, 0, 1, 4, 5), __builtin_shufflevector(ab1, cd1, 2, 3, 6, 7)};
  if (add)
    for (int j = 0; j < 4; j++) r[j] += *(const spmm_v4u *)add;
  for (int j = 0; j < 4; j++) *(spmm_v4u *)(dst + j * ds) = r[j];
}

#endif
