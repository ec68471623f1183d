/* simd/attn_avx512.c -- the attention tile operations compiled for avx512 (see attn_tile.h). */
#include <math.h>

#define ATTN_TABLE sn_attn_avx512
#define ATTN_NAME "avx512"
#include "simd/attn_tile.h"
