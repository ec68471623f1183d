/* simd/vec.h -- internal: kernels over contiguous f32 runs, one table per instruction set.
 *
 * elementwise.c and reduce.c reduce every layout to runs of n contiguous floats and call
 * through `sn_vec`, chosen once at load by sn_vec_init (scalar, avx2+fma, avx512f/bw/dq/vl;
 * SEQNN_SIMD=scalar|avx2|avx512 asks for a lower level). Every entry takes any n >= 0 unless
 * noted, handles the tail itself, and gives NaN wherever an input NaN reaches the result.
 * Results may differ between tables in the last bits (SLEEF vs libm, summation order), but
 * each table is deterministic: a result depends only on the values, never on alignment. */
#ifndef SN_SIMD_VEC_H
#define SN_SIMD_VEC_H

#include <stdbool.h>
#include <stdint.h>

#include "seqnn.h"

/* Elements summed in float lanes before the lanes are added into a double. */
#define SN_VEC_SUM_BLOCK 4096
/* lse keeps its reference m within this of the max: terms exp(x - m) stay below e^16. */
#define SN_LSE_SLACK 16.0f
/* lse prefetches this many floats ahead: the hardware prefetcher stops at 4 KiB pages and
 * alone leaves the exps waiting on memory (measured: 1.7x faster from memory). */
#define SN_LSE_PREFETCH 1024

/* Polynomials of the vector tables' own exp, tanh and GELU (coefficients highest degree
 * first), fitted by mpmath.chebyfit (near-minimax); errors are of the real-valued fit.
 * exp:  e^r = EXP(r), |r| <= ln2/2, degree 6 ending in 1 + r; relative error 1.1e-8.
 * tanh: tanh(x) = x + x^3 TANH(x^2), |x| < SN_TANH_SMALL; abs error of TANH 4.3e-8. */
#define SN_EXP_POLY 0.00139261761f, 0.00836317307f, 0.0416665547f, 0.16666577f, 0.5f, 1.0f, 1.0f
#define SN_TANH_SMALL 0.625f
#define SN_TANH_POLY -0.00609671417f, 0.020997179f, -0.0538509096f, 0.133327697f, -0.333333289f
/* GELU(x) = x Phi(x), Phi the normal CDF.
 *   |x| < 1: Phi(x) = 1/2 + x GELU_SMALL(x^2); abs error of the fit 2.7e-10.
 *   |x| >= 1: q = Phi(-|x|) = exp(-x^2/2) t GELU_TAIL(t), t = 1/(1 + |x|/4), fitted for
 *     |x| in [1, 15] (beyond, q underflows); relative error of the fit 6e-8. Then
 *     Phi(x) = q for x < 0 and 1 - q for x > 0: no 1 + erf cancellation for negative x. */
/* 1/sqrt(2 pi): the normal density is exp(-x^2/2) / sqrt(2 pi). */
#define SN_INV_SQRT_2PI 0.398942280401432677940f
#define SN_GELU_POLY_SMALL \
  -7.66053817e-06f, 0.000113502296f, -0.00118634399f, 0.00997332848f, -0.0664903606f, 0.39894228f
#define SN_GELU_POLY_TAIL                                                                    \
  -0.0470154353f, 0.110392408f, -0.0243293702f, 0.0940464196f, 0.0726457752f, 0.0948733237f, \
      0.0996140928f, 0.0997399975f

typedef struct sn_vec_ops {
  const char *name; /* "scalar", "avx2", "avx512" */
  /* y[i] = op(x[i]); y may equal x. */
  void (*unary)(sn_unop op, float *y, const float *x, int64_t n);
  /* y[i] = a[i] op b[i]; y may equal a or b. SN_MAX/SN_MIN give NaN if either is NaN. */
  void (*binary)(sn_binop op, float *y, const float *a, const float *b, int64_t n);
  /* y[i] = a[i] op s, or s op a[i] when scalar_first; y may equal a. */
  void (*binary_scalar)(sn_binop op, float *y, const float *a, float s, int64_t n,
                        bool scalar_first);
  /* gx[i] = gy[i] * GELU'(x[i]) = gy[i] * (Phi(x) + x phi(x)), phi the normal density;
   * gx may equal gy. */
  void (*gelu_grad)(float *gx, const float *gy, const float *x, int64_t n);
  /* sum of x[0..n) into a double; the vector tables add float lanes within
   * SN_VEC_SUM_BLOCK elements (error ~ block/width ulps), then blocks in double. */
  double (*sum)(const float *x, int64_t n);
  /* sum of exp(x[i] - m), accumulated like sum; m finite. */
  double (*sumexp)(const float *x, float m, int64_t n);
  /* Logsumexp of x[0..n) in one read, as m + log(s), s = sum exp(x[i] - m) accumulated
   * like sum; n >= 1. m is a reference that moves up (rescaling s) only when an element
   * exceeds it by more than SN_LSE_SLACK, not necessarily the max. Made for finite x: an inf
   * or NaN element (or -inf ones ahead of every finite one) makes m or s non-finite, and
   * the caller then redoes the run with max and sumexp. */
  void (*lse)(const float *x, int64_t n, float *m, double *s);
  /* Largest / smallest of x[0..n), NaN if any is NaN; n >= 1. */
  float (*max)(const float *x, int64_t n);
  float (*min)(const float *x, int64_t n);
  /* First i with x[i] == v (with isnan(x[i]) when v is NaN), or n if there is none. */
  int64_t (*find)(const float *x, int64_t n, float v);
  /* Strided accumulation, for reducing a dim that is not the last one: row r of the
   * reduced dim updates acc[j] for j < n. acc_add takes `rows` rows at once (row r at
   * x + r*rstride): acc[j] += x[j] + ... in row order, in double; several rows per call
   * keep acc in registers and several prefetch streams going. */
  void (*acc_add)(double *acc, const float *x, int64_t rstride, int64_t rows, int64_t n);
  /* Running sum in double, row by row: acc[j] += x[r*xstride + j], then y[r*ystride + j] =
   * (float)acc[j], for r < rows and j < n. Negative strides run from the last row (pass
   * pointers at it): the gate sums of the linear-attention kernels, forward and reverse. */
  void (*acc_scan)(double *acc, float *y, int64_t ystride, const float *x, int64_t xstride, int64_t rows,
                   int64_t n);
  /* acc[j] += exp(x[j] - m[j]) (in double); m[j] finite wherever the sum is used. */
  void (*acc_sumexp)(double *acc, const float *x, const float *m, int64_t n);
  /* Where x[j] beats best[j] (strictly greater / less, or x[j] is the first NaN):
   * best[j] = x[j], idx[j] = r. Strictness keeps the first extreme's index. */
  void (*acc_argmax)(float *best, int64_t *idx, const float *x, int64_t r, int64_t n);
  void (*acc_argmin)(float *best, int64_t *idx, const float *x, int64_t r, int64_t n);
} sn_vec_ops;

extern const sn_vec_ops sn_vec_scalar, sn_vec_avx2, sn_vec_avx512;

/* The table in use; never NULL. */
extern const sn_vec_ops *sn_vec;

/* Picks the best table the CPU supports, lowered by SEQNN_SIMD if set. Runs at load; tests
 * call it again after changing SEQNN_SIMD (not while other threads run kernels). */
void sn_vec_init(void);

#endif /* SN_SIMD_VEC_H */
