/* simd/scan_avx2.c -- the selective scan's inner loops compiled for avx2 (see scan_tile.h). */
#define SCAN_TABLE sn_scan_avx2
#define SCAN_NAME "avx2"
#include "simd/scan_tile.h"
