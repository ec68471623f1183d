/* simd/hash_memory_scalar.c -- the memory layer's inner loops compiled for scalar (see hash_memory_tile.h). */
#define HM_TABLE sn_hash_memory_scalar
#define HM_NAME "scalar"
#include "simd/hash_memory_tile.h"
