/* simd/hash_memory_avx2.c -- the memory layer's inner loops compiled for avx2 (see hash_memory_tile.h). */
#define HM_TABLE sn_hash_memory_avx2
#define HM_NAME "avx2"
#include "simd/hash_memory_tile.h"
