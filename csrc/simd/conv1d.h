/* simd/conv1d.h -- internal: the inner loops of kernels/conv1d.c, one table per instruction
 * set. conv1d_tile.h holds the code once, written with GCC vector types of one register;
 * conv1d_{scalar,avx2,avx512}.c compile it with their ISA flags, and conv1d.c picks the
 * table matching sn_vec (so SEQNN_SIMD lowers both alike).
 *
 * Lanes are channels. The weights, bias and the backward's buffers are the caller's,
 * padded with zeros to Cp (C rounded up to CONV_PAD) channels per row; x, dy and the
 * outputs are rows of C, read and written with a partial vector at the tail. */
#ifndef SN_SIMD_CONV1D_H
#define SN_SIMD_CONV1D_H

#include <stdbool.h>
#include <stdint.h>

#define CONV_PAD 16 /* channels of the widest vector */
#define CONV_WMAX 8

/* One backward task: steps [t0, t1) of one sequence of T steps. */
typedef struct conv_bwd_task {
  int W;
  int64_t C, Cp, T, t0, t1;
  const float *wt, *bt;   /* [W][Cp]: wt[k][c] = w[c, k]; [Cp]: bias or zeros */
  const float *x, *dy;    /* row t at x + t * sx, dy + t * sdy */
  int64_t sx, sdy;
  bool silu;
  float *dx;              /* row t at dx + t * C; rows [t0, t1) written */
  float *acc;             /* [W+1][Cp], overwritten: sums over the task's steps of
                           * dpre[t] x[t-W+1+k] (row k < W) and of dpre[t] (row W) */
  float *ring;            /* [W-1][Cp] of scratch */
} conv_bwd_task;

typedef struct sn_conv1d_ops {
  const char *name;
  /* out[c] = act(bt[c] + sum_k wt[k][c] rows[k][c]) for c < C, the taps added in order
   * k = 0..W-1 (wt rows Cp floats apart), act silu or none: one row of the forward or of
   * the step. */
  void (*row)(float *out, const float *const *rows, const float *wt, const float *bt, int64_t C, int64_t Cp,
              int W, bool silu);
  /* dpre = dy silu'(pre) (pre recomputed from x) or dy; dx[t] = sum_k w[k] dpre[t+W-1-k]
   * (dpre past T is zero); the sums into acc. */
  void (*bwd)(const conv_bwd_task *t);
} sn_conv1d_ops;

extern const sn_conv1d_ops sn_conv1d_scalar, sn_conv1d_avx2, sn_conv1d_avx512;

#endif
