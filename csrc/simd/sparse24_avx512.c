/* simd/sparse24_avx512.c -- the 2:4 matmul inner loops compiled for avx512 (see sparse24_tile.h). */
#define S24_TABLE sn_s24_avx512
#define S24_NAME "avx512"
#include "simd/sparse24_tile.h"
