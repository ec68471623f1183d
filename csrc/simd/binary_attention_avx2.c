/* simd/binary_attention_avx2.c -- the binary-code attention sweeps for AVX2 (see
 * simd/binary_attention.h). POPCNT is not among the Makefile's AVX2 flags but every AVX2 CPU
 * has it (the kernel checks anyway), so the builtin becomes one instruction here. */
#pragma GCC target("popcnt")
#define BA_TABLE sn_ba_avx2
#define BA_NAME "avx2"
#include "simd/binary_attention_tile.h"
