/* simd/conv1d_avx2.c -- the causal conv1d inner loops compiled for avx2 (see conv1d_tile.h). */
#define CONV_TABLE sn_conv1d_avx2
#define CONV_NAME "avx2"
#include "simd/conv1d_tile.h"
