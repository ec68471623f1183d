/* simd/attn_scalar.c -- the attention tile operations compiled for scalar (see attn_tile.h). */
#include <math.h>

#define ATTN_TABLE sn_attn_scalar
#define ATTN_NAME "scalar"
#include "simd/attn_tile.h"
