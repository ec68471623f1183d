/* kernels/optim.c -- fused AdamW and SGD steps over one parameter tensor (formulas in
 * seqnn.h). Elementwise and in place: fixed chunks shared among threads, each walked in
 * stack tiles so the square roots go through sn_vec. Operations and their order follow
 * PyTorch's (lerp_, mul_/addcmul_, sqrt/div/add_, addcdiv_), so results agree to rounding. */
#include <math.h>

#include "kernels/nn.h"
#include "simd/vec.h"

#define TILE 512
#define CHUNK 65536

static sn_status check_same(sn_ctx *ctx, const char *fn, const sn_tensor *p, const sn_tensor *grad,
                            const char *an, const sn_tensor *a, const char *bn, const sn_tensor *b) {
  int64_t n = sn_numel(p);
  sn_status st = nn_need(ctx, fn, "param", p, SN_F32, n);
  if (st == SN_OK) st = nn_need(ctx, fn, "grad", grad, SN_F32, n);
  if (st == SN_OK && a) st = nn_need(ctx, fn, an, a, SN_F32, n);
  if (st == SN_OK && b) st = nn_need(ctx, fn, bn, b, SN_F32, n);
  return st;
}

sn_status sn_adamw_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *exp_avg, sn_tensor *exp_avg_sq,
                        const sn_tensor *grad, double lr, double beta1, double beta2, double eps,
                        double weight_decay, int64_t step) {
  const char *fn = "seqnn.optim.AdamW";
  sn_status st = check_same(ctx, fn, p, grad, "exp_avg", exp_avg, "exp_avg_sq", exp_avg_sq);
  if (st != SN_OK) return st;
  if (step < 1) return sn_fail(ctx, SN_EINVAL, "%s: step must be >= 1, got %lld", fn, (long long)step);
  float decay = (float)(1.0 - lr * weight_decay), w1 = (float)(1.0 - beta1);
  float b2 = (float)beta2, w2 = (float)(1.0 - beta2), e = (float)eps;
  float step_size = (float)(lr / (1.0 - pow(beta1, (double)step)));
  float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)step));
  float *pp = sn_f32(p), *pm = sn_f32(exp_avg), *pv = sn_f32(exp_avg_sq);
  const float *pg = sn_f32(grad);
  int64_t n = sn_numel(p), chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; c++) {
    int64_t hi = c == chunks - 1 ? n : (c + 1) * CHUNK;
    float root[TILE];
    for (int64_t i0 = c * CHUNK; i0 < hi; i0 += TILE) {
      int64_t m = hi - i0 < TILE ? hi - i0 : TILE;
      float *x = pp + i0, *ea = pm + i0, *eas = pv + i0;
      const float *g = pg + i0;
#pragma omp simd
      for (int64_t i = 0; i < m; i++) {
        x[i] *= decay;
        ea[i] += w1 * (g[i] - ea[i]);
        eas[i] = eas[i] * b2 + w2 * g[i] * g[i];
      }
      sn_vec->unary(SN_SQRT, root, eas, m);
#pragma omp simd
      for (int64_t i = 0; i < m; i++) x[i] += -step_size * ea[i] / (root[i] / bc2_sqrt + e);
    }
  }
  return SN_OK;
}

sn_status sn_sgd_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *buf, const sn_tensor *grad, double lr,
                      double momentum, double dampening, double weight_decay, bool nesterov,
                      bool first) {
  sn_status st = check_same(ctx, "seqnn.optim.SGD", p, grad, "momentum_buffer", buf, NULL, NULL);
  if (st != SN_OK) return st;
  float wd = (float)weight_decay, mom = (float)momentum, damp = (float)(1.0 - dampening);
  float neg_lr = (float)-lr;
  float *pp = sn_f32(p), *pb = buf ? sn_f32(buf) : NULL;
  const float *pg = sn_f32(grad);
  int64_t n = sn_numel(p);
#pragma omp parallel for schedule(static) if (n > NN_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) {
    float g = pg[i];
    if (wd != 0.0f) g += wd * pp[i]; /* as PyTorch: no 0 * p term (p may be inf) */
    if (pb) {
      float b = first ? g : mom * pb[i] + damp * g;
      pb[i] = b;
      g = nesterov ? g + mom * b : b;
    }
    pp[i] += neg_lr * g;
  }
  return SN_OK;
}
