/* simd/dispatch.c -- picks the sn_vec table once at load from CPUID (and SEQNN_SIMD). */
#include <stdlib.h>
#include <string.h>

#include "simd/attn.h"
#include "simd/gemm.h"
#include "simd/vec.h"

/* Valid before the constructor runs too, so no caller ever sees NULL. */
const sn_vec_ops *sn_vec = &sn_vec_scalar;
/* seqnn's own sgemm serves large products on AVX-512 unless SEQNN_GEMM=blas: read here,
 * once, not on every product. */
static bool own_gemm;

enum { LEVEL_SCALAR, LEVEL_AVX2, LEVEL_AVX512 };

/* The tables are compiled with these ISA flags, so every one must be present (the
 * builtin also checks that the OS saves the wider registers). F16C is not asked for:
 * every CPU with AVX2 has it, and clang's builtin does not know the name. */
static int cpu_level(void) {
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return LEVEL_AVX512;
  return avx2 ? LEVEL_AVX2 : LEVEL_SCALAR;
}

void sn_vec_init(void) {
  int level = cpu_level();
  /* SEQNN_SIMD may only lower the level: asking for more than the CPU has would crash. */
  const char *want = getenv("SEQNN_SIMD");
  if (want && strcmp(want, "scalar") == 0) level = LEVEL_SCALAR;
  else if (want && strcmp(want, "avx2") == 0 && level > LEVEL_AVX2) level = LEVEL_AVX2;
  sn_vec = level == LEVEL_AVX512 ? &sn_vec_avx512 : level == LEVEL_AVX2 ? &sn_vec_avx2 : &sn_vec_scalar;
  const char *gemm = getenv("SEQNN_GEMM");
  own_gemm = level == LEVEL_AVX512 && !(gemm && strcmp(gemm, "blas") == 0);
}

__attribute__((constructor)) static void init_at_load(void) { sn_vec_init(); }

const char *sn_simd_level(void) { return sn_vec->name; }

/* Here, not in gemm_avx512.c: that file is built with AVX-512 flags and must not run on
 * CPUs without it. */
bool sn_gemm_avx512_available(void) { return own_gemm; }

const sn_attn_ops *sn_attn_current(void) {
  return sn_vec == &sn_vec_avx512 ? &sn_attn_avx512 : sn_vec == &sn_vec_avx2 ? &sn_attn_avx2 : &sn_attn_scalar;
}
