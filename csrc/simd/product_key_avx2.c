/* simd/product_key_avx2.c -- the product-key memory inner loops compiled for avx2 (see product_key_tile.h). */
#define PKM_TABLE sn_pkm_avx2
#define PKM_NAME "avx2"
#include "simd/product_key_tile.h"
