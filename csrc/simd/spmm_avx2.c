/* simd/spmm_avx2.c -- the block-sparse matmul inner loops compiled for avx2 (see spmm_tile.h). */
#define SPMM_TABLE sn_spmm_avx2
#define SPMM_NAME "avx2"
#include "simd/spmm_tile.h"
