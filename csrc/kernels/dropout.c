/* kernels/dropout.c -- inverted dropout with a regenerated mask (math in seqnn.h).
 * Element i's keep decision is a function of (seed, offset + i) alone, so fwd and bwd agree
 * without storing a mask, and the result never depends on the thread count. */
#include "kernels/nn.h"

/* Shared by fwd and bwd: out = keep ? in * scale : 0. */
static sn_status apply(sn_ctx *ctx, const char *out_name, sn_tensor *out, const char *in_name,
                       const sn_tensor *in, float p, uint64_t seed, uint64_t offset) {
  const char *fn = "seqnn.F.dropout";
  if (!(p >= 0.0f && p < 1.0f)) return sn_fail(ctx, SN_EINVAL, "%s: p must be in [0, 1), got %g", fn, (double)p);
  int64_t n = sn_numel(in);
  sn_status st = nn_need(ctx, fn, in_name, in, SN_F32, n);
  if (st == SN_OK) st = nn_need(ctx, fn, out_name, out, SN_F32, n);
  if (st != SN_OK) return st;
  const float *x = sn_f32(in);
  float *y = sn_f32(out);
  float scale = (float)(1.0 / (1.0 - (double)p));
  double thresh = p;
#pragma omp parallel for schedule(static) if (n > NN_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) {
    double u = (double)(sn_rng_word(seed, offset + (uint64_t)i) >> 40) * 0x1p-24;
    y[i] = u >= thresh ? x[i] * scale : 0.0f;
  }
  return SN_OK;
}

sn_status sn_dropout_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, float p, uint64_t seed,
                         uint64_t offset) {
  return apply(ctx, "y", y, "x", x, p, seed, offset);
}

sn_status sn_dropout_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *gy, float p, uint64_t seed,
                         uint64_t offset) {
  return apply(ctx, "grad_input", gx, "grad_output", gy, p, seed, offset);
}
