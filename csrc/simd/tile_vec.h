/* simd/tile_vec.h -- internal: the vector of the *_tile.h files whose width follows the ISA
 * they are compiled with (one register: 16 floats with AVX-512, 8 with AVX2, 4 in the
 * portable build), and the macros they share. Macros, not functions: no vector is passed or
 * returned by value, so the ABI of the builds without AVX-512 never matters. */
#ifndef SN_SIMD_TILE_VEC_H
#define SN_SIMD_TILE_VEC_H

#ifdef __AVX2__
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX2__)
#define VW 8
#else
#define VW 4
#endif

typedef float vf __attribute__((vector_size(VW * 4)));
typedef float vfu __attribute__((vector_size(VW * 4), aligned(4))); /* unaligned access */

#define INLINE static inline __attribute__((always_inline))
#define ld(p) (*(const vfu *)(p))
#define st(p, v) (*(vfu *)(p) = (v))
/* a - 0 is a for every float (a + 0 is not, for a = -0), so this folds to a broadcast. */
#define splat(a) ((a) - (vf){0})

#endif
