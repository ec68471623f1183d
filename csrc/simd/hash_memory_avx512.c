/* simd/hash_memory_avx512.c -- the memory layer's inner loops compiled for avx512 (see hash_memory_tile.h). */
#define HM_TABLE sn_hash_memory_avx512
#define HM_NAME "avx512"
#include "simd/hash_memory_tile.h"
