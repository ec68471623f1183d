/* simd/conv1d_scalar.c -- the causal conv1d inner loops compiled for scalar (see conv1d_tile.h). */
#define CONV_TABLE sn_conv1d_scalar
#define CONV_NAME "scalar"
#include "simd/conv1d_tile.h"
