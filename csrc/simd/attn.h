/* simd/attn.h -- internal: the tile operations of kernels/attention.c, one table per
 * instruction set. attn_tile.h holds the code once, written with GCC vector types of 16
 * floats; attn_{scalar,avx2,avx512}.c compile it with their ISA flags, and attention.c
 * picks the table matching sn_vec (so SEQNN_SIMD lowers both alike).
 *
 * Row lengths of the tile operations are multiples of ATTN_W: callers pad packed tiles with
 * zeros (and scores with -inf), so those have no tail. dot and axpy, for the decode step
 * over unpadded cache rows, take any n. */
#ifndef SN_SIMD_ATTN_H
#define SN_SIMD_ATTN_H

#include <stdbool.h>
#include <stdint.h>

#define ATTN_W 16

typedef struct sn_attn_ops {
  const char *name;
  /* C[i][0..N) = alpha * sum_k A(i,k) B[k][0..N)  (+ C[i][..] when acc), i < M, k < K,
   * with A(i,k) = A[i*ars + k*aks] (ars = lda, aks = 1: A; ars = 1, aks = lda: A^T).
   * N is a multiple of ATTN_W; rows of B and C are ldb / ldc floats apart. */
  void (*mm)(float *C, int64_t ldc, const float *A, int64_t ars, int64_t aks, const float *B,
             int64_t ldb, int M, int N, int K, float alpha, bool acc);
  /* Largest of x[0..n). */
  float (*max)(const float *x, int n);
  /* x[j] = 2^(x[j] - m), exactly 0 where x[j] - m < -126 (so -inf gives 0); returns the sum
   * of the new x in float. */
  float (*exp2)(float *x, int n, float m);
  /* dp[j] = p[j] * (dp[j] - d): the softmax backward with d = rowsum(dO * O). */
  void (*dsoftmax)(float *dp, const float *p, float d, int n);
  /* x[j] *= a */
  void (*scale)(float *x, float a, int n);
  /* sum_j a[j] b[j] (any n) */
  float (*dot)(const float *a, const float *b, int n);
  /* y[j] += a x[j] (any n) */
  void (*axpy)(float *y, float a, const float *x, int n);
} sn_attn_ops;

extern const sn_attn_ops sn_attn_scalar, sn_attn_avx2, sn_attn_avx512;

/* The table of the current dispatch level (sn_vec's, so SEQNN_SIMD lowers both alike). Its
 * mm is also the small single-threaded product of the chunked linear-attention kernels. */
const sn_attn_ops *sn_attn_current(void);

#endif
