/* simd/scan_scalar.c -- the selective scan's inner loops compiled for scalar (see scan_tile.h). */
#define SCAN_TABLE sn_scan_scalar
#define SCAN_NAME "scalar"
#include "simd/scan_tile.h"
