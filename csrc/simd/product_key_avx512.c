/* simd/product_key_avx512.c -- the product-key memory inner loops compiled for avx512 (see product_key_tile.h). */
#define PKM_TABLE sn_pkm_avx512
#define PKM_NAME "avx512"
#include "simd/product_key_tile.h"
