/* random.c -- the seedable generator. Counter-based: word i of the stream is a 64-bit
 * mix of (seed, i), so any thread can compute any element and a tensor's values depend
 * only on the seed and on how many words were drawn before it, never on the threads. */
#include <math.h>

#include "seqnn.h"

void sn_manual_seed(sn_ctx *ctx, uint64_t seed) {
  ctx->seed = seed;
  ctx->rng_offset = 0;
}

static sn_status need_contiguous(sn_ctx *ctx, const char *fn, const sn_tensor *t, sn_dtype dt) {
  if (!sn_is_contiguous(t) || t->dtype != dt)
    return sn_fail(ctx, SN_EINVAL, "%s: output must be a contiguous %s tensor", fn, sn_dtype_name(dt));
  return SN_OK;
}

sn_status sn_rand(sn_ctx *ctx, sn_tensor *t, double lo, double hi) {
  sn_status st = need_contiguous(ctx, "seqnn.rand", t, SN_F32);
  if (st != SN_OK) return st;
  float *p = sn_f32(t);
  int64_t n = sn_numel(t);
  uint64_t seed = ctx->seed, base = ctx->rng_offset;
  double span = hi - lo;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) {
    float v = (float)(lo + span * ((sn_rng_word(seed, base + (uint64_t)i) >> 40) * 0x1p-24));
    p[i] = v < (float)hi ? v : nextafterf((float)hi, (float)lo); /* rounding must not reach hi */
  }
  ctx->rng_offset += (uint64_t)n;
  return SN_OK;
}

sn_status sn_randn(sn_ctx *ctx, sn_tensor *t, double mean, double std) {
  sn_status st = need_contiguous(ctx, "seqnn.randn", t, SN_F32);
  if (st != SN_OK) return st;
  float *p = sn_f32(t);
  int64_t n = sn_numel(t), pairs = (n + 1) / 2;
  uint64_t seed = ctx->seed, base = ctx->rng_offset;
  /* Box-Muller: one word gives two 32-bit uniforms and two normals. */
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t k = 0; k < pairs; k++) {
    uint64_t w = sn_rng_word(seed, base + (uint64_t)k);
    double u1 = ((w >> 32) + 0.5) * 0x1p-32, u2 = ((w & 0xffffffffu) + 0.5) * 0x1p-32;
    double r = sqrt(-2.0 * log(u1)), a = 6.283185307179586 * u2;
    p[2 * k] = (float)(mean + std * r * cos(a));
    if (2 * k + 1 < n) p[2 * k + 1] = (float)(mean + std * r * sin(a));
  }
  ctx->rng_offset += (uint64_t)pairs;
  return SN_OK;
}

sn_status sn_randint(sn_ctx *ctx, sn_tensor *t, int64_t lo, int64_t hi) {
  sn_status st = need_contiguous(ctx, "seqnn.randint", t, SN_I64);
  if (st != SN_OK) return st;
  if (hi <= lo)
    return sn_fail(ctx, SN_EINVAL, "seqnn.randint: empty range [%lld, %lld)", (long long)lo, (long long)hi);
  int64_t *p = sn_i64(t);
  int64_t n = sn_numel(t);
  uint64_t seed = ctx->seed, base = ctx->rng_offset, span = (uint64_t)hi - (uint64_t)lo;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) {
    /* Multiply-shift maps a 64-bit word onto [0, span) with bias below 2^-32 for any span
     * under 2^32; larger spans fall back to a modulo. */
    uint64_t w = sn_rng_word(seed, base + (uint64_t)i);
    uint64_t r = span <= 0xffffffffu ? ((w >> 32) * span) >> 32 : w % span;
    p[i] = (int64_t)((uint64_t)lo + r);
  }
  ctx->rng_offset += (uint64_t)n;
  return SN_OK;
}
