/* test_optim.c -- fused AdamW and SGD steps against the formulas written out in double
 * (several steps, weight decay, bias correction), and a hand-computed first AdamW step. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

TU_SUITE(optim);

/* The first step by hand: m = 0.1 g, v = 0.001 g^2, bias corrections 0.1 and 0.001 make
 * mhat = g and vhat = g^2, so p = p (1 - lr wd) - lr g / (|g| + eps). */
Test(optim, adamw_first_step_by_hand) {
  int64_t n = 3;
  sn_tensor p = tu_empty(&ctx, SN_F32, 1, &n), g = tu_empty(&ctx, SN_F32, 1, &n), m = tu_empty(&ctx, SN_F32, 1, &n),
            v = tu_empty(&ctx, SN_F32, 1, &n);
  const float p0[3] = {1, -2, 0.5f}, g0[3] = {0.5f, -0.25f, 0};
  memcpy(sn_f32(&p), p0, sizeof p0), memcpy(sn_f32(&g), g0, sizeof g0);
  memset(sn_f32(&m), 0, 12), memset(sn_f32(&v), 0, 12);
  cr_assert_eq(sn_adamw_step(&ctx, &p, &m, &v, &g, 0.1, 0.9, 0.999, 1e-8, 0.5, 1), SN_OK, "%s", ctx.err);
  const double want[3] = {1 * 0.95 - 0.1, -2 * 0.95 + 0.1, 0.5 * 0.95};
  for (int i = 0; i < 3; i++)
    cr_expect(fabs(sn_f32(&p)[i] - want[i]) < 1e-6, "p[%d] = %.9g, want %.9g", i, sn_f32(&p)[i], want[i]);
  cr_expect(fabs(sn_f32(&m)[0] - 0.05) < 1e-8 && fabs(sn_f32(&v)[0] - 0.00025) < 1e-10, "m %g v %g",
            sn_f32(&m)[0], sn_f32(&v)[0]);
  cr_expect_eq(sn_adamw_step(&ctx, &p, &m, &v, &g, 0.1, 0.9, 0.999, 1e-8, 0, 0), SN_EINVAL);
  sn_tensor_release(&p), sn_tensor_release(&g), sn_tensor_release(&m), sn_tensor_release(&v);
}

Test(optim, adamw_matches_double_over_steps) {
  const int64_t sizes[] = {1, 7, 33, 1000, 140001};
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  for (size_t k = 0; k < 5; k++) {
    int64_t n = sizes[k];
    sn_tensor p = tu_empty(&ctx, SN_F32, 1, &n), g = tu_empty(&ctx, SN_F32, 1, &n), m = tu_empty(&ctx, SN_F32, 1, &n),
              v = tu_empty(&ctx, SN_F32, 1, &n);
    tu_fill_f32(&p, 61);
    memset(sn_f32(&m), 0, (size_t)n * 4), memset(sn_f32(&v), 0, (size_t)n * 4);
    double *rp = malloc((size_t)n * sizeof *rp), *rm = calloc((size_t)n, sizeof *rm), *rv = calloc((size_t)n, sizeof *rv);
    for (int64_t i = 0; i < n; i++) rp[i] = sn_f32(&p)[i];
    for (int64_t t = 1; t <= 5; t++) {
      tu_fill_f32(&g, 62 + (uint32_t)t);
      cr_assert_eq(sn_adamw_step(&ctx, &p, &m, &v, &g, lr, b1, b2, eps, wd, t), SN_OK, "%s", ctx.err);
      for (int64_t i = 0; i < n; i++) {
        double gi = sn_f32(&g)[i];
        rp[i] *= 1 - lr * wd;
        rm[i] = b1 * rm[i] + (1 - b1) * gi;
        rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
        double mhat = rm[i] / (1 - pow(b1, (double)t)), vhat = rv[i] / (1 - pow(b2, (double)t));
        rp[i] -= lr * mhat / (sqrt(vhat) + eps);
      }
    }
    cr_expect_leq(tu_max_scaled_err(&p, rp, 1e-6, 1e-5), 1.0, "AdamW param, n=%lld", (long long)n);
    cr_expect_leq(tu_max_scaled_err(&m, rm, 1e-7, 1e-5), 1.0, "AdamW exp_avg, n=%lld", (long long)n);
    cr_expect_leq(tu_max_scaled_err(&v, rv, 1e-9, 1e-5), 1.0, "AdamW exp_avg_sq, n=%lld", (long long)n);
    free(rp), free(rm), free(rv);
    sn_tensor_release(&p), sn_tensor_release(&g), sn_tensor_release(&m), sn_tensor_release(&v);
  }
}

Test(optim, sgd_matches_double_over_steps) {
  int64_t n = 37;
  for (int variant = 0; variant < 3; variant++) { /* plain, momentum, nesterov */
    const double lr = 0.05, mom = variant ? 0.9 : 0, damp = variant == 1 ? 0.1 : 0, wd = 0.01;
    sn_tensor p = tu_empty(&ctx, SN_F32, 1, &n), g = tu_empty(&ctx, SN_F32, 1, &n), b = tu_empty(&ctx, SN_F32, 1, &n);
    tu_fill_f32(&p, 71);
    double rp[37], rb[37];
    for (int64_t i = 0; i < n; i++) rp[i] = sn_f32(&p)[i];
    for (int t = 0; t < 4; t++) {
      tu_fill_f32(&g, 72 + (uint32_t)t);
      cr_assert_eq(sn_sgd_step(&ctx, &p, variant ? &b : NULL, &g, lr, mom, damp, wd, variant == 2, t == 0), SN_OK);
      for (int64_t i = 0; i < n; i++) {
        double gi = sn_f32(&g)[i] + wd * rp[i];
        if (variant) {
          rb[i] = t == 0 ? gi : mom * rb[i] + (1 - damp) * gi;
          gi = variant == 2 ? gi + mom * rb[i] : rb[i];
        }
        rp[i] -= lr * gi;
      }
    }
    cr_expect_leq(tu_max_scaled_err(&p, rp, 1e-6, 1e-5), 1.0, "SGD variant %d", variant);
    sn_tensor_release(&p), sn_tensor_release(&g), sn_tensor_release(&b);
  }
}
