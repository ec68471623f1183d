/* simd/tile_vec.h -- internal: the vector of the *_tile.h files whose width follows the ISA
 * they are compiled with (one register: 16 floats with AVX-512, 8 with AVX2, 4 in the
 * portable build), and the macros and the sigmoid they share. Macros, or functions taking
 * vectors by pointer: no vector is passed or returned by value, so the ABI of the builds
 * without AVX-512 never matters. */
#ifndef SN_SIMD_TILE_VEC_H
#define SN_SIMD_TILE_VEC_H

#include <stdint.h>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "simd/vec.h" /* SN_EXP_POLY */

#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX2__)
#define VW 8
#else
#define VW 4
#endif

typedef float vf __attribute__((vector_size(VW * 4)));
typedef float vfu __attribute__((vector_size(VW * 4), aligned(4))); /* unaligned access */
typedef int32_t vi __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));

#define INLINE static inline __attribute__((always_inline))
#define ld(p) (*(const vfu *)(p))
#define st(p, v) (*(vfu *)(p) = (v))
/* a - 0 is a for every float (a + 0 is not, for a = -0), so this folds to a broadcast. */
#define splat(a) ((a) - (vf){0})

/* Lane-wise a < b ? b : a and a > b ? b : a; both keep a NaN in a (vclamp without AVX2). */
#define vmax(a, b) ((vf)(((vi)(a) & ~((a) < (b))) | ((vi)(b) & ((a) < (b)))))
#define vmin(a, b) ((vf)(((vi)(a) & ~((a) > (b))) | ((vi)(b) & ((a) > (b)))))

/* Lane-wise min(hi, max(lo, x)); NaN stays NaN (max and min of the intrinsics return their
 * second operand when either is NaN). */
#if defined(__AVX512F__)
#define vclamp(x, lo, hi) ((vf)_mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), (__m512)(x))))
#elif defined(__AVX2__)
#define vclamp(x, lo, hi) ((vf)_mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), (__m256)(x))))
#else
#define vclamp(x, lo, hi) vmin(vmax(x, splat(lo)), splat(hi))
#endif

/* 1 + e^x, e^x = 2^n e^r with n = rint(x log2 e) and r = x - n ln2 (ln2 in two parts). x
 * is clamped to [-87, 88], where 2^n is a normal float; beyond, e^x is below the
 * resolution of 1 + e^x, or 1 + e^x above 1e38. NaN stays NaN. Adding 1.5 * 2^23 + 127
 * rounds to an integer whose low mantissa bits are n + 127, the exponent field of 2^n. */
INLINE void vexp_plus1(vf *xp) {
  static const float exp_c[] = {SN_EXP_POLY};
  vf y = vclamp(*xp, -87.0f, 88.0f);
  vf big = y * 1.44269504f + 12583039.0f, n = big - 12583039.0f;
  vf r = y - n * 0.693145752f;
  r = r - n * 1.42860677e-6f;
  vf p = splat(exp_c[0]);
#pragma GCC unroll 7
  for (int k = 1; k < 7; k++) p = p * r + exp_c[k];
  *xp = p * (vf)((vu)big << 23) + 1.0f;
}

/* 1 / x: the ISA's approximate reciprocal and a Newton step (~28 bits from AVX-512's 14,
 * ~22 from AVX2's 12): two FMAs instead of a division, which bounded the loops. */
INLINE void vrecip(vf *xp) {
  vf d = *xp;
#if defined(__AVX512F__)
  vf q = (vf)_mm512_rcp14_ps((__m512)d);
  *xp = q * (2.0f - d * q);
#elif defined(__AVX2__)
  vf q = (vf)_mm256_rcp_ps((__m256)d);
  *xp = q * (2.0f - d * q);
#else
  *xp = 1.0f / d;
#endif
}

/* 1 / (1 + e^-x). */
INLINE void vsigmoid(vf *xp) {
  *xp = -*xp;
  vexp_plus1(xp);
  vrecip(xp);
}

#endif
