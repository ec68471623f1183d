/* simd/scan_avx512.c -- the selective scan's inner loops compiled for avx512 (see scan_tile.h). */
#define SCAN_TABLE sn_scan_avx512
#define SCAN_NAME "avx512"
#include "simd/scan_tile.h"
