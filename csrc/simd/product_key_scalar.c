/* simd/product_key_scalar.c -- the product-key memory inner loops compiled for scalar (see product_key_tile.h). */
#define PKM_TABLE sn_pkm_scalar
#define PKM_NAME "scalar"
#include "simd/product_key_tile.h"
