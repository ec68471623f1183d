/* simd/spmm_tile.h -- the block-sparse matmul inner loops (simd/spmm.h), included once by
 * each of spmm_{scalar,avx2,avx512}.c with SPMM_TABLE and SPMM_NAME naming the table.
 * Written with GCC vector types of VW floats, one register of the ISA. Floating-point
 * contraction is on here (C11 mode turns it off) so that a*b + c becomes one FMA.
 *
 * Register tiles: up to 4 output rows (fwd), 4 input columns (dx) or 4 x 4 (row, column)
 * pairs (dw) at once, over NV vectors of tokens. Per weight one broadcast feeds NV FMAs and
 * per activation vector one load feeds up to 4: about 2 FMAs per load in fwd for every
 * shape and in dw (its columns run across the block-row's blocks, so 4x1 and 16x1 blocks
 * fill a 4-wide group too). dx by columns (the BSC index) gets ro/(ro+1) for 1-column
 * blocks, so those take dx_rows: a block-row's dy^T rows in registers, one load and store
 * of dx^T per 4 FMAs per vector. The tile sizes, ri in
 * {1, 4} and ro in {4, 16} are compile-time constants so the loops unroll into registers;
 * other shapes take the same code with runtime trip counts. A panel narrower than NV
 * vectors runs vector by vector (NV = 1). */
#pragma GCC optimize("fp-contract=fast")

#include "simd/spmm.h"
#include "simd/tile_vec.h"

#if defined(__AVX512F__)
#define NVF 4 /* 16 accumulators + 4 x + 1 broadcast of 32 registers */
#else
#define NVF 2 /* of 16 registers (AVX2) */
#endif
#define PW (VW * NVF)
_Static_assert(SPMM_PWMAX % PW == 0 && PW <= SPMM_PWMAX, "panel widths");

static inline int imin(int a, int b) { return a < b ? a : b; }

typedef float v4f __attribute__((vector_size(16)));
#if VW >= 8
typedef float v8f __attribute__((vector_size(32)));
#endif

/* The lanes' sum by a fixed halving tree: the same bits wherever it runs. (A serial sum of
 * the lanes was a dependent chain of VW adds per accumulator and made dW's short chunks
 * reduction-bound.) */
INLINE float hsum(vf v) {
#if VW == 16
  v8f h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  v4f q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
#elif VW == 8
  v4f q = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
  v4f q = v;
#endif
  return (q[0] + q[2]) + (q[1] + q[3]);
}

/* Register tiles are arrays of the largest size (4 x NVF) indexed by compile-time loops:
 * arrays sized by the RG/NV parameters were variable-length, lived on the stack and ran 2x
 * slower. */

/* ---- forward --------------------------------------------------------------------------- */

/* Rows [r0, r0 + RG) of the block-row, NV vectors of tokens from lane 0 of xt; RI = 0 reads
 * ri at run time. */
INLINE void fwd_tile(float *y, int64_t ldy, const float *bias, int n, const float *xt, int64_t ld,
                     const float *vals, const int64_t *bcol, int64_t b0, int64_t b1, int ro, int ri_rt, int r0,
                     const int RG, const int NV, const int RI) {
  const int ri = RI ? RI : ri_rt;
  const int64_t bs = (int64_t)ro * ri;
  vf acc[4][NVF];
#pragma GCC unroll 4
  for (int r = 0; r < RG; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[r][v] = splat(0.0f);
  for (int64_t b = b0; b < b1; b++) {
    const float *w = vals + b * bs + (int64_t)r0 * ri, *xr = xt + bcol[b] * ri * ld;
#pragma GCC unroll 4
    for (int c = 0; c < ri; c++) {
      vf x[NVF];
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) x[v] = ld(xr + c * ld + v * VW);
#pragma GCC unroll 4
      for (int r = 0; r < RG; r++) {
        vf s = splat(w[r * ri + c]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] += s * x[v];
      }
    }
  }
  float t[4][NVF * VW];
#pragma GCC unroll 4
  for (int r = 0; r < RG; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) *(vfu *)&t[r][v * VW] = acc[r][v];
  int i = 0;
  if (RG == 4)
    for (; i + 4 <= n; i += 4) spmm_tr4(y + i * ldy + r0, ldy, &t[0][i], NVF * VW, bias ? bias + r0 : NULL);
  for (; i < n; i++)
#pragma GCC unroll 4
    for (int r = 0; r < RG; r++) y[i * ldy + r0 + r] = t[r][i] + (bias ? bias[r0 + r] : 0.0f);
}

INLINE void fwd_nv(float *y, int64_t ldy, const float *bias, int n, const float *xt, int64_t ld, const float *vals,
                   const int64_t *bcol, int64_t b0, int64_t b1, int ro, int ri, int r0, const int RG, const int NV) {
  if (ri == 1) fwd_tile(y, ldy, bias, n, xt, ld, vals, bcol, b0, b1, ro, ri, r0, RG, NV, 1);
  else if (ri == 4) fwd_tile(y, ldy, bias, n, xt, ld, vals, bcol, b0, b1, ro, ri, r0, RG, NV, 4);
  else fwd_tile(y, ldy, bias, n, xt, ld, vals, bcol, b0, b1, ro, ri, r0, RG, NV, 0);
}

INLINE void fwd_rg(float *y, int64_t ldy, const float *bias, int n, const float *xt, int64_t ld, const float *vals,
                   const int64_t *bcol, int64_t b0, int64_t b1, int ro, int ri, int r0, const int RG) {
  if (n > (NVF - 1) * VW) {
    fwd_nv(y, ldy, bias, n, xt, ld, vals, bcol, b0, b1, ro, ri, r0, RG, NVF);
    return;
  }
  for (int l = 0; l < n; l += VW)
    fwd_nv(y + l * ldy, ldy, bias, imin(VW, n - l), xt + l, ld, vals, bcol, b0, b1, ro, ri, r0, RG, 1);
}

static void fwd(float *y, int64_t ldy, const float *bias, int n, const float *xt, int64_t ld, const float *vals,
                const int64_t *bcol, int64_t b0, int64_t b1, int ro, int ri) {
  for (int r0 = 0; r0 < ro; r0 += 4) switch (imin(4, ro - r0)) {
    case 1: fwd_rg(y, ldy, bias, n, xt, ld, vals, bcol, b0, b1, ro, ri, r0, 1); break;
    case 2: fwd_rg(y, ldy, bias, n, xt, ld, vals, bcol, b0, b1, ro, ri, r0, 2); break;
    case 3: fwd_rg(y, ldy, bias, n, xt, ld, vals, bcol, b0, b1, ro, ri, r0, 3); break;
    default: fwd_rg(y, ldy, bias, n, xt, ld, vals, bcol, b0, b1, ro, ri, r0, 4); break;
    }
}

/* ---- dx -------------------------------------------------------------------------------- */

/* Columns [c0, c0 + CG) of the block-column; RO = 0 reads ro at run time. With one column
 * the rows alternate between two accumulator sets, so the FMA chains overlap. */
INLINE void dx_tile(float *dx, int64_t ldx, int n, const float *dyt, int64_t ld, const float *vals,
                    const int64_t *blk, const int64_t *brow, int64_t e0, int64_t e1, int ro_rt, int ri, int c0,
                    const int CG, const int NV, const int RO) {
  const int ro = RO ? RO : ro_rt;
  const int64_t bs = (int64_t)ro * ri;
  const int AS = CG == 1 ? 2 : 1;
  vf acc[2][4][NVF];
#pragma GCC unroll 2
  for (int a = 0; a < AS; a++)
#pragma GCC unroll 4
    for (int c = 0; c < CG; c++)
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[a][c][v] = splat(0.0f);
  for (int64_t e = e0; e < e1; e++) {
    const float *w = vals + blk[e] * bs + c0, *dr = dyt + brow[e] * ro * ld;
#pragma GCC unroll 16
    for (int r = 0; r < ro; r++) {
      vf d[NVF];
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) d[v] = ld(dr + r * ld + v * VW);
#pragma GCC unroll 4
      for (int c = 0; c < CG; c++) {
        vf s = splat(w[r * ri + c]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r % AS][c][v] += s * d[v];
      }
    }
  }
  if (AS == 2)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[0][0][v] += acc[AS - 1][0][v];
  float t[4][NVF * VW];
#pragma GCC unroll 4
  for (int c = 0; c < CG; c++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) *(vfu *)&t[c][v * VW] = acc[0][c][v];
  int i = 0;
  if (CG == 4)
    for (; i + 4 <= n; i += 4) spmm_tr4(dx + i * ldx + c0, ldx, &t[0][i], NVF * VW, NULL);
  for (; i < n; i++)
#pragma GCC unroll 4
    for (int c = 0; c < CG; c++) dx[i * ldx + c0 + c] = t[c][i];
}

INLINE void dx_nv(float *dx, int64_t ldx, int n, const float *dyt, int64_t ld, const float *vals, const int64_t *blk,
                  const int64_t *brow, int64_t e0, int64_t e1, int ro, int ri, int c0, const int CG, const int NV) {
  if (ro == 4) dx_tile(dx, ldx, n, dyt, ld, vals, blk, brow, e0, e1, ro, ri, c0, CG, NV, 4);
  else if (ro == 16) dx_tile(dx, ldx, n, dyt, ld, vals, blk, brow, e0, e1, ro, ri, c0, CG, NV, 16);
  else dx_tile(dx, ldx, n, dyt, ld, vals, blk, brow, e0, e1, ro, ri, c0, CG, NV, 0);
}

INLINE void dx_cg(float *dx, int64_t ldx, int n, const float *dyt, int64_t ld, const float *vals, const int64_t *blk,
                  const int64_t *brow, int64_t e0, int64_t e1, int ro, int ri, int c0, const int CG) {
  if (n > (NVF - 1) * VW) {
    dx_nv(dx, ldx, n, dyt, ld, vals, blk, brow, e0, e1, ro, ri, c0, CG, NVF);
    return;
  }
  for (int l = 0; l < n; l += VW)
    dx_nv(dx + l * ldx, ldx, imin(VW, n - l), dyt + l, ld, vals, blk, brow, e0, e1, ro, ri, c0, CG, 1);
}

static void dx(float *dx, int64_t ldx, int n, const float *dyt, int64_t ld, const float *vals, const int64_t *blk,
               const int64_t *brow, int64_t e0, int64_t e1, int ro, int ri) {
  for (int c0 = 0; c0 < ri; c0 += 4) switch (imin(4, ri - c0)) {
    case 1: dx_cg(dx, ldx, n, dyt, ld, vals, blk, brow, e0, e1, ro, ri, c0, 1); break;
    case 2: dx_cg(dx, ldx, n, dyt, ld, vals, blk, brow, e0, e1, ro, ri, c0, 2); break;
    case 3: dx_cg(dx, ldx, n, dyt, ld, vals, blk, brow, e0, e1, ro, ri, c0, 3); break;
    default: dx_cg(dx, ldx, n, dyt, ld, vals, blk, brow, e0, e1, ro, ri, c0, 4); break;
    }
}

/* ---- dx by rows (scatter) ------------------------------------------------------------- */

/* Rows [r0, r0 + RG) of block-row ob held in registers, added into the dx^T rows of the
 * block-row's blocks. */
INLINE void dxs_tile(float *dxt, int64_t ld, const float *dyt, const float *vals, const int64_t *bcol, int64_t ob,
                     int64_t b0, int64_t b1, int ro, int ri_rt, int r0, const int RG, const int RI) {
  const int ri = RI ? RI : ri_rt;
  const int64_t bs = (int64_t)ro * ri;
  vf d[4][NVF];
#pragma GCC unroll 4
  for (int r = 0; r < RG; r++)
#pragma GCC unroll 4
    for (int v = 0; v < NVF; v++) d[r][v] = ld(dyt + (ob * ro + r0 + r) * ld + v * VW);
  for (int64_t b = b0; b < b1; b++) {
    const float *w = vals + b * bs + (int64_t)r0 * ri;
    float *o = dxt + bcol[b] * ri * ld;
#pragma GCC unroll 4
    for (int c = 0; c < ri; c++) {
      vf a[NVF];
#pragma GCC unroll 4
      for (int v = 0; v < NVF; v++) a[v] = ld(o + c * ld + v * VW);
#pragma GCC unroll 4
      for (int r = 0; r < RG; r++) {
        vf s = splat(w[r * ri + c]);
#pragma GCC unroll 4
        for (int v = 0; v < NVF; v++) a[v] += s * d[r][v];
      }
#pragma GCC unroll 4
      for (int v = 0; v < NVF; v++) *(vfu *)(o + c * ld + v * VW) = a[v];
    }
  }
}

INLINE void dxs_rg(float *dxt, int64_t ld, const float *dyt, const float *vals, const int64_t *bcol, int64_t ob,
                   int64_t b0, int64_t b1, int ro, int ri, int r0, const int RG) {
  if (ri == 1) dxs_tile(dxt, ld, dyt, vals, bcol, ob, b0, b1, ro, ri, r0, RG, 1);
  else dxs_tile(dxt, ld, dyt, vals, bcol, ob, b0, b1, ro, ri, r0, RG, 0);
}

static void dx_rows(float *dxt, int64_t ld, const float *dyt, const float *vals, const int64_t *browptr,
                    const int64_t *bcol, int64_t Mb, int ro, int ri) {
  for (int64_t ob = 0; ob < Mb; ob++) {
    const int64_t b0 = browptr[ob], b1 = browptr[ob + 1];
    if (b0 == b1) continue;
    for (int r0 = 0; r0 < ro; r0 += 4) switch (imin(4, ro - r0)) {
      case 1: dxs_rg(dxt, ld, dyt, vals, bcol, ob, b0, b1, ro, ri, r0, 1); break;
      case 2: dxs_rg(dxt, ld, dyt, vals, bcol, ob, b0, b1, ro, ri, r0, 2); break;
      case 3: dxs_rg(dxt, ld, dyt, vals, bcol, ob, b0, b1, ro, ri, r0, 3); break;
      default: dxs_rg(dxt, ld, dyt, vals, bcol, ob, b0, b1, ro, ri, r0, 4); break;
      }
  }
}

/* ---- dw (SDDMM) ------------------------------------------------------------------------ */

/* Rows [r0, r0 + RG) of the block-row against CG input columns: entries j0 .. j0+CG-1 of
 * the block-row's flat column list, j = (b - b0) * ri + c. */
INLINE void dw_tile(float *dv, const float *dyt, const float *xt, int64_t ld, int64_t nlanes, const int64_t *bcol,
                    int64_t ob, int64_t b0, int ro, int ri, int r0, int64_t j0, bool add, const int RG,
                    const int CG) {
  const float *xr[4], *dr = dyt + (ob * ro + r0) * ld;
  float *out[4];
#pragma GCC unroll 4
  for (int c = 0; c < CG; c++) {
    int64_t b = b0 + (j0 + c) / ri, col = (j0 + c) % ri;
    xr[c] = xt + (bcol[b] * ri + col) * ld;
    out[c] = dv + b * ro * ri + (int64_t)r0 * ri + col;
  }
  vf acc[4][4];
#pragma GCC unroll 4
  for (int r = 0; r < RG; r++)
#pragma GCC unroll 4
    for (int c = 0; c < CG; c++) acc[r][c] = splat(0.0f);
  for (int64_t l = 0; l < nlanes; l += VW) {
    vf d[4], x[4];
#pragma GCC unroll 4
    for (int r = 0; r < RG; r++) d[r] = ld(dr + r * ld + l);
#pragma GCC unroll 4
    for (int c = 0; c < CG; c++) x[c] = ld(xr[c] + l);
#pragma GCC unroll 4
    for (int r = 0; r < RG; r++)
#pragma GCC unroll 4
      for (int c = 0; c < CG; c++) acc[r][c] += d[r] * x[c];
  }
#pragma GCC unroll 4
  for (int r = 0; r < RG; r++)
#pragma GCC unroll 4
    for (int c = 0; c < CG; c++) {
      float *o = out[c] + (int64_t)r * ri, s = hsum(acc[r][c]);
      *o = add ? *o + s : s;
    }
}

INLINE void dw_rg(float *dv, const float *dyt, const float *xt, int64_t ld, int64_t nlanes, const int64_t *bcol,
                  int64_t ob, int64_t b0, int ro, int ri, int r0, int64_t j0, int cg, bool add, const int RG) {
  switch (cg) {
  case 1: dw_tile(dv, dyt, xt, ld, nlanes, bcol, ob, b0, ro, ri, r0, j0, add, RG, 1); break;
  case 2: dw_tile(dv, dyt, xt, ld, nlanes, bcol, ob, b0, ro, ri, r0, j0, add, RG, 2); break;
  case 3: dw_tile(dv, dyt, xt, ld, nlanes, bcol, ob, b0, ro, ri, r0, j0, add, RG, 3); break;
  default: dw_tile(dv, dyt, xt, ld, nlanes, bcol, ob, b0, ro, ri, r0, j0, add, RG, 4); break;
  }
}

static void dw(float *dv, const float *dyt, const float *xt, int64_t ld, int64_t nlanes, const int64_t *bcol,
               int64_t ob, int64_t b0, int64_t b1, int ro, int ri, bool add) {
  const int64_t nj = (b1 - b0) * ri;
  for (int64_t j0 = 0; j0 < nj; j0 += 4) {
    int cg = (int)(nj - j0 < 4 ? nj - j0 : 4);
    for (int r0 = 0; r0 < ro; r0 += 4) switch (imin(4, ro - r0)) {
      case 1: dw_rg(dv, dyt, xt, ld, nlanes, bcol, ob, b0, ro, ri, r0, j0, cg, add, 1); break;
      case 2: dw_rg(dv, dyt, xt, ld, nlanes, bcol, ob, b0, ro, ri, r0, j0, cg, add, 2); break;
      case 3: dw_rg(dv, dyt, xt, ld, nlanes, bcol, ob, b0, ro, ri, r0, j0, cg, add, 3); break;
      default: dw_rg(dv, dyt, xt, ld, nlanes, bcol, ob, b0, ro, ri, r0, j0, cg, add, 4); break;
      }
  }
}

const sn_spmm_ops SPMM_TABLE = {SPMM_NAME, PW, fwd, dx, dx_rows, dw};
