/* simd/gemm.h -- internal: seqnn's own sgemm for AVX-512 CPUs, which OpenBLAS 0.3.21 does
 * not recognise (it falls back to its SSE3 kernel there). sn_matmul calls it when
 * sn_gemm_avx512_available() (AVX-512, and SEQNN_GEMM is not "blas") and the product is
 * large enough; OpenBLAS does the rest. */
#ifndef SN_SIMD_GEMM_H
#define SN_SIMD_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* C = alpha * op(A) @ op(B) + beta * C, row-major like cblas_sgemm(CblasRowMajor, ...):
 * op(A) is M x K (A^T when ta), op(B) is K x N (B^T when tb), C is M x N. With beta == 0,
 * C is not read (NaN there is overwritten). Sizes and leading dims at most INT_MAX: if the
 * packing buffers cannot be allocated, it calls cblas_sgemm. Uses OpenMP threads when large. */
void sn_sgemm_avx512(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                     float *C, int64_t ldc);

/* Whether the dispatch level (CPUID, lowered by SEQNN_SIMD) is avx512. */
bool sn_gemm_avx512_available(void);

#endif
