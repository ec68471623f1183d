/* simd/attn_avx2.c -- the attention tile operations compiled for avx2 (see attn_tile.h). */
#include <math.h>

#define ATTN_TABLE sn_attn_avx2
#define ATTN_NAME "avx2"
#include "simd/attn_tile.h"
