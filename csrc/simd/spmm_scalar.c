/* simd/spmm_scalar.c -- the block-sparse matmul inner loops compiled for scalar (see spmm_tile.h). */
#define SPMM_TABLE sn_spmm_scalar
#define SPMM_NAME "scalar"
#include "simd/spmm_tile.h"
