/* simd/sparse24_avx2.c -- the 2:4 matmul inner loops compiled for avx2 (see sparse24_tile.h). */
#define S24_TABLE sn_s24_avx2
#define S24_NAME "avx2"
#include "simd/sparse24_tile.h"
