/* simd/spmm_avx512.c -- the block-sparse matmul inner loops compiled for avx512 (see spmm_tile.h). */
#define SPMM_TABLE sn_spmm_avx512
#define SPMM_NAME "avx512"
#include "simd/spmm_tile.h"
