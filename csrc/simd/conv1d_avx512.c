/* simd/conv1d_avx512.c -- the causal conv1d inner loops compiled for avx512 (see conv1d_tile.h). */
#define CONV_TABLE sn_conv1d_avx512
#define CONV_NAME "avx512"
#include "simd/conv1d_tile.h"
