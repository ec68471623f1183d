/* simd/conv1d_tile.h -- the causal conv1d inner loops (simd/conv1d.h), included once by
 * each of conv1d_{scalar,avx2,avx512}.c with CONV_TABLE and CONV_NAME naming the table.
 * Written with GCC vector types of VW floats, one register of the ISA (16 with AVX-512, 8
 * with AVX2, 4 with SSE2): the backward keeps 3W+2 vectors live, which a 16-float type
 * split over AVX2's 16 registers spilled (3x slower than this). Floating-point contraction
 * is turned on here (C11 mode turns it off) so that a*b + c becomes one FMA where the ISA
 * has it; the partial vector at a row's tail runs the same operations as the full ones.
 *
 * bwd: steps in blocks of BLOCK. Within a block each vector of channels keeps its x taps,
 * its last W values of dpre and its W+1 sums in registers from step to step, and hands
 * dpre and the sums to the next block through the task's ring and acc: one load and store
 * of those per block instead of per step. The vectors of a block go left to right, so x,
 * dy and dx are read and written as BLOCK streams of whole rows. */
#pragma GCC optimize("fp-contract=fast")

#include <string.h>

#include "simd/conv1d.h"
#include "simd/tile_vec.h"
#include "simd/vec.h"

_Static_assert(CONV_PAD % VW == 0, "padded rows hold whole vectors");

#define WMAX CONV_WMAX
/* Steps per block: a block streams 3 x BLOCK rows at once. 8 and 16 ran alike, 32 (96
 * streams, more than the L2 prefetcher follows) 2-3x slower. */
#define BLOCK 8


/* f(args..., W) with W a constant 1..WMAX, so that the tap loops unroll. */
#define WITH_W(W, f, ...)            \
  switch (W) {                       \
  case 1: f(__VA_ARGS__, 1); break;  \
  case 2: f(__VA_ARGS__, 2); break;  \
  case 3: f(__VA_ARGS__, 3); break;  \
  case 4: f(__VA_ARGS__, 4); break;  \
  case 5: f(__VA_ARGS__, 5); break;  \
  case 6: f(__VA_ARGS__, 6); break;  \
  case 7: f(__VA_ARGS__, 7); break;  \
  default: f(__VA_ARGS__, 8); break; \
  }

/* The vector of a row at p: all VW lanes, or at the tail its first m (the rest zero). */
INLINE void get(vf *v, const float *p, int m, const bool tail) {
  if (tail) {
    *v = splat(0.0f);
    memcpy(v, p, (size_t)m * sizeof(float));
  } else {
    *v = ld(p);
  }
}

INLINE void put(float *p, const vf *v, int m, const bool tail) {
  if (tail) memcpy(p, v, (size_t)m * sizeof(float));
  else st(p, *v);
}

/* ---- forward and step rows ------------------------------------------------------------- */

INLINE void row_vec(float *out, const float *const *rows, const float *wt, const float *bt, int64_t c, int64_t Cp,
                    bool silu, int m, const int W, const bool tail) {
  vf a = ld(bt + c);
#pragma GCC unroll 8
  for (int k = 0; k < W; k++) {
    vf x;
    get(&x, rows[k] + c, m, tail);
    a += ld(wt + k * Cp + c) * x;
  }
  if (silu) {
    vf s = a;
    vsigmoid(&s);
    a *= s;
  }
  put(out + c, &a, m, tail);
}

INLINE void row_w(float *out, const float *const *rows, const float *wt, const float *bt, int64_t C, int64_t Cp,
                  bool silu, const int W) {
  int64_t c = 0;
  for (; c + VW <= C; c += VW) row_vec(out, rows, wt, bt, c, Cp, silu, VW, W, false);
  if (c < C) row_vec(out, rows, wt, bt, c, Cp, silu, (int)(C - c), W, true);
}

static void row(float *out, const float *const *rows, const float *wt, const float *bt, int64_t C, int64_t Cp,
                int W, bool silu) {
  WITH_W(W, row_w, out, rows, wt, bt, C, Cp, silu)
}

/* ---- backward -------------------------------------------------------------------------- */

/* Channels [c, c + m) of steps [r0, r1) (see the file comment). Step r makes dpre[r] and,
 * once the task has dpre[r - W + 1 .. r], dx[r - W + 1]. */
INLINE void bwd_vec(const conv_bwd_task *a, int64_t c, int m, int64_t r0, int64_t r1, const int W, const bool tail) {
  const int64_t Cp = a->Cp;
  /* xw: the taps x[r-W+1 .. r]; dw: dpre[r-W+1 .. r] */
  vf w[WMAX], xw[WMAX], dw[WMAX], acc[WMAX + 1], b = ld(a->bt + c);
#pragma GCC unroll 8
  for (int k = 0; k < W; k++) w[k] = ld(a->wt + k * Cp + c);
#pragma GCC unroll 9
  for (int k = 0; k <= W; k++) acc[k] = ld(a->acc + k * Cp + c);
  /* Before step r0 the windows hold rows r0-W+1 .. r0-1 in 1 .. W-1 (0 is shifted out). */
  xw[0] = dw[0] = splat(0.0f);
#pragma GCC unroll 8
  for (int k = 1; k < W; k++) {
    int64_t r = r0 - W + k;
    dw[k] = ld(a->ring + (k - 1) * Cp + c);
    xw[k] = splat(0.0f);
    if (r >= 0 && r < a->T) get(&xw[k], a->x + r * a->sx + c, m, tail);
  }
  for (int64_t r = r0; r < r1; r++) {
    vf d = splat(0.0f);
    if (r < a->T) {
#pragma GCC unroll 8
      for (int k = 0; k + 1 < W; k++) xw[k] = xw[k + 1];
      get(&xw[W - 1], a->x + r * a->sx + c, m, tail);
      get(&d, a->dy + r * a->sdy + c, m, tail);
      if (a->silu) {
        vf pre = b;
#pragma GCC unroll 8
        for (int k = 0; k < W; k++) pre += w[k] * xw[k];
        vf s = pre;
        vsigmoid(&s);
        d *= s * (1.0f + pre * (1.0f - s));
      }
    }
#pragma GCC unroll 8
    for (int k = 0; k + 1 < W; k++) dw[k] = dw[k + 1];
    dw[W - 1] = d;
    if (r < a->t1) {
#pragma GCC unroll 8
      for (int k = 0; k < W; k++) acc[k] += d * xw[k];
      acc[W] += d;
    }
    if (r - W + 1 >= a->t0) {
      /* dx[t] = sum_k w[k] dpre[t + W-1-k], t = r - W + 1: dpre[t + W-1-k] is dw[W-1-k]. */
      vf o = w[0] * dw[W - 1];
#pragma GCC unroll 8
      for (int k = 1; k < W; k++) o += w[k] * dw[W - 1 - k];
      put(a->dx + (r - W + 1) * a->C + c, &o, m, tail);
    }
  }
#pragma GCC unroll 8
  for (int k = 1; k < W; k++) st(a->ring + (k - 1) * Cp + c, dw[k]);
#pragma GCC unroll 9
  for (int k = 0; k <= W; k++) st(a->acc + k * Cp + c, acc[k]);
}

/* Steps t0 .. t1+W-2: the last W-1 only complete dx[t1-W+1 .. t1-1] (dpre past T is 0). */
INLINE void bwd_w(const conv_bwd_task *a, const int W) {
  const int64_t C = a->C, end = a->t1 + W - 1;
  memset(a->acc, 0, (size_t)((W + 1) * a->Cp) * sizeof(float));
  memset(a->ring, 0, (size_t)((W - 1) * a->Cp) * sizeof(float));
  for (int64_t r0 = a->t0; r0 < end; r0 += BLOCK) {
    int64_t r1 = r0 + BLOCK < end ? r0 + BLOCK : end, c = 0;
    for (; c + VW <= C; c += VW) bwd_vec(a, c, VW, r0, r1, W, false);
    if (c < C) bwd_vec(a, c, (int)(C - c), r0, r1, W, true);
  }
}

static void bwd(const conv_bwd_task *a) { WITH_W(a->W, bwd_w, a) }

const sn_conv1d_ops CONV_TABLE = {CONV_NAME, row, bwd};
