/* simd/sparse24_scalar.c -- the 2:4 matmul inner loops compiled for scalar (see sparse24_tile.h). */
#define S24_TABLE sn_s24_scalar
#define S24_NAME "scalar"
#include "simd/sparse24_tile.h"
