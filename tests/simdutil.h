/* simdutil.h -- run a test body on every SIMD level this CPU has (scalar, avx2, avx512),
 * through the SEQNN_SIMD override of the run-time dispatch. */
#ifndef SN_SIMDUTIL_H
#define SN_SIMDUTIL_H

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "simd/vec.h"

static const char *const levels[] = {"scalar", "avx2", "avx512"};

/* How many of `levels` this CPU runs (the level chosen at load is the highest). */
static inline int level_count(void) {
  unsetenv("SEQNN_SIMD");
  sn_vec_init();
  const char *top = sn_simd_level();
  return strcmp(top, "avx512") == 0 ? 3 : strcmp(top, "avx2") == 0 ? 2 : 1;
}

static inline void use_level(int i) {
  setenv("SEQNN_SIMD", levels[i], 1);
  sn_vec_init();
  cr_assert_str_eq(sn_simd_level(), levels[i]);
}

static inline void restore_level(void) {
  unsetenv("SEQNN_SIMD");
  sn_vec_init();
}

#endif
