/* simd/binary_attention_avx512.c -- the binary-code attention sweeps for AVX-512 with
 * VPOPCNTDQ (see simd/binary_attention.h): the similarities of a chunk row, 8 codes per
 * vpopcntq. The extension is switched on here rather than by a Makefile rule of its own, so
 * the generic AVX-512 rule builds this file; kernels/binary_attention.c selects the table
 * only when CPUID reports avx512vpopcntdq (else the AVX2 one). */
#pragma GCC target("avx512vpopcntdq,popcnt")
#include <immintrin.h>
#define BA_POPCNT512
#define BA_TABLE sn_ba_avx512
#define BA_NAME "avx512"
#include "simd/binary_attention_tile.h"
