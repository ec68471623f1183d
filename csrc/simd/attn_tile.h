/* simd/attn_tile.h -- the attention tile operations (simd/attn.h), included once by each
 * of attn_{scalar,avx2,avx512}.c with ATTN_TABLE naming the table. Written with GCC vector
 * types of 16 floats: with -mavx512f one is a zmm register, otherwise GCC splits it.
 * Floating-point contraction is turned on here (C11 mode turns it off) so that a*b + c
 * becomes one FMA where the ISA has it. */
#pragma GCC optimize("fp-contract=fast")

#include "simd/attn.h"
#include "simd/vec.h"

typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4))); /* unaligned access */
typedef int32_t vi __attribute__((vector_size(64)));

#define INLINE static inline __attribute__((always_inline))

/* Rows per block for narrow products: 8 x 2 vectors fill 16 of AVX-512's 32 registers;
 * with 16 ymm registers (each vector here is two) 2 rows already take 8. */
#ifdef __AVX512F__
#define NARROW_ROWS 8
#else
#define NARROW_ROWS 2
#endif

/* Macros, not functions: no vector is passed or returned by value, so the ABI of the
 * builds without AVX-512 never matters. */
#define ld(p) (*(const vfu *)(p))
#define st(p, v) (*(vfu *)(p) = (v))
/* a - 0 is a for every float (a + 0 is not, for a = -0), so this folds to a broadcast. */
#define splat(a) ((a) - (vf){0})

/* The register block of mm: R rows x V vectors of C, accumulated over k in registers. */
INLINE void mm_block(float *C, int64_t ldc, const float *A, int64_t ars, int64_t aks,
                     const float *B, int64_t ldb, int K, float alpha, bool acc, int R, int V) {
  vf c[8][4] = {{{0}}};
  for (int k = 0; k < K; k++) {
    const float *b = B + k * ldb;
    vf bv[4];
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) bv[v] = ld(b + v * ATTN_W);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      vf a = splat(A[r * ars + k * aks]);
#pragma GCC unroll 4
      for (int v = 0; v < V; v++) c[r][v] += a * bv[v];
    }
  }
  vf al = splat(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) {
      float *p = C + r * ldc + v * ATTN_W;
      st(p, acc ? ld(p) + al * c[r][v] : al * c[r][v]);
    }
}

/* Each block shape is a separate instantiation with its accumulators in registers. */
#define MM_BLOCK(NAME, R, V)                                                                    \
  static void NAME(float *C, int64_t ldc, const float *A, int64_t ars, int64_t aks,     \
                           const float *B, int64_t ldb, int K, float alpha, bool acc) {         \
    mm_block(C, ldc, A, ars, aks, B, ldb, K, alpha, acc, R, V);                                \
  }
MM_BLOCK(mm_4x4, 4, 4)
MM_BLOCK(mm_1x4, 1, 4)
MM_BLOCK(mm_narrow2, NARROW_ROWS, 2)
MM_BLOCK(mm_narrow1, NARROW_ROWS, 1)
MM_BLOCK(mm_1x2, 1, 2)
MM_BLOCK(mm_1x1, 1, 1)

/* Columns in blocks of 4 vectors with rows in blocks of 4; the last 1-3 vectors of columns
 * (all of them when N is a head dim of 16 or 32) with rows in blocks of NARROW_ROWS, so
 * that there are still enough independent accumulators to hide the FMA latency. */
static void mm(float *C, int64_t ldc, const float *A, int64_t ars, int64_t aks, const float *B,
               int64_t ldb, int M, int N, int K, float alpha, bool acc) {
  int n4 = N / (4 * ATTN_W) * (4 * ATTN_W), i = 0;
  if (n4 > 0) {
    for (; i + 4 <= M; i += 4)
      for (int j = 0; j < n4; j += 4 * ATTN_W)
        mm_4x4(C + i * ldc + j, ldc, A + i * ars, ars, aks, B + j, ldb, K, alpha, acc);
    for (; i < M; i++)
      for (int j = 0; j < n4; j += 4 * ATTN_W)
        mm_1x4(C + i * ldc + j, ldc, A + i * ars, ars, aks, B + j, ldb, K, alpha, acc);
  }
  for (int j = n4; j < N;) {
    bool two = N - j >= 2 * ATTN_W;
    for (i = 0; i + NARROW_ROWS <= M; i += NARROW_ROWS)
      (two ? mm_narrow2 : mm_narrow1)(C + i * ldc + j, ldc, A + i * ars, ars, aks, B + j, ldb, K, alpha, acc);
    for (; i < M; i++)
      (two ? mm_1x2 : mm_1x1)(C + i * ldc + j, ldc, A + i * ars, ars, aks, B + j, ldb, K, alpha, acc);
    j += two ? 2 * ATTN_W : ATTN_W;
  }
}

static float vmax_row(const float *x, int n) {
  vf m = splat(-INFINITY);
  for (int j = 0; j < n; j += ATTN_W) {
    vf v = ld(x + j);
    vi gt = v > m;
    m = (vf)(((vi)v & gt) | ((vi)m & ~gt));
  }
  float r = m[0];
  for (int k = 1; k < ATTN_W; k++) r = m[k] > r ? m[k] : r;
  return r;
}

/* 2^x: x = n + f with n = rint(x), 2^f = e^(f ln2) by the polynomial of vec.h on
 * |f ln2| <= ln2/2, scaled by 2^n through the exponent bits. Below -126 (2^n would not be
 * normal) the result is 0; NaN stays NaN. */
INLINE void vexp2(vf *xp) {
  static const float poly[] = {SN_EXP_POLY};
  vf x = *xp;
  vi under = x < -126.0f;
  x = (vf)(((vi)x & ~under) | ((vi)splat(-126.0f) & under));
  vf n = (x + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
  vf f = (x - n) * 0.693147180559945f;
  vf p = splat(poly[0]);
  for (unsigned k = 1; k < sizeof poly / sizeof poly[0]; k++) p = p * f + poly[k];
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  *xp = (vf)((vi)(p * (vf)bits) & ~under);
}

static float vexp2_row(float *x, int n, float m) {
  vf s = {0}, mv = splat(m);
  for (int j = 0; j < n; j += ATTN_W) {
    vf e = ld(x + j) - mv;
    vexp2(&e);
    st(x + j, e);
    s += e;
  }
  float r = 0;
  for (int k = 0; k < ATTN_W; k++) r += s[k];
  return r;
}

static void vdsoftmax(float *dp, const float *p, float d, int n) {
  vf dv = splat(d);
  for (int j = 0; j < n; j += ATTN_W) st(dp + j, ld(p + j) * (ld(dp + j) - dv));
}

static void vscale(float *x, float a, int n) {
  vf av = splat(a);
  for (int j = 0; j < n; j += ATTN_W) st(x + j, ld(x + j) * av);
}

static float vdot(const float *a, const float *b, int n) {
  vf s0 = {0}, s1 = {0};
  int j = 0;
  for (; j + 2 * ATTN_W <= n; j += 2 * ATTN_W) {
    s0 += ld(a + j) * ld(b + j);
    s1 += ld(a + j + ATTN_W) * ld(b + j + ATTN_W);
  }
  for (; j + ATTN_W <= n; j += ATTN_W) s0 += ld(a + j) * ld(b + j);
  s0 += s1;
  float r = 0;
  for (int k = 0; k < ATTN_W; k++) r += s0[k];
  for (; j < n; j++) r += a[j] * b[j];
  return r;
}

static void vaxpy(float *y, float a, const float *x, int n) {
  vf av = splat(a);
  int j = 0;
  for (; j + ATTN_W <= n; j += ATTN_W) st(y + j, ld(y + j) + av * ld(x + j));
  for (; j < n; j++) y[j] += a * x[j];
}

const sn_attn_ops ATTN_TABLE = {
    .name = ATTN_NAME,
    .mm = mm,
    .max = vmax_row,
    .exp2 = vexp2_row,
    .dsoftmax = vdsoftmax,
    .scale = vscale,
    .dot = vdot,
    .axpy = vaxpy,
};
