/* simd/binary_attention_scalar.c -- the binary-code attention sweeps in portable C (see
 * simd/binary_attention.h): popcount through the compiler's builtin, vectors of 4 floats. */
#define BA_TABLE sn_ba_scalar
#define BA_NAME "scalar"
#include "simd/binary_attention_tile.h"
