/* test_activation.c -- fused activation backward (gelu, silu, softplus, tanh, sigmoid)
 * against the derivative in double and against central finite differences of the forward,
 * with a random upstream gradient, odd sizes and large |x|; dropout's mask statistics, its
 * scaling, fwd/bwd agreement and independence from the thread count. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "simdutil.h"
#include "testutil.h"

TU_SUITE(activation);

static double f_naive(sn_unop op, double x) {
  switch (op) {
  case SN_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
  case SN_SILU: return x / (1 + exp(-x));
  case SN_SOFTPLUS: return x > 20 ? x : log1p(exp(x));
  case SN_TANH: return tanh(x);
  case SN_SIGMOID: return 1 / (1 + exp(-x));
  default: return NAN;
  }
}

static double df_naive(sn_unop op, double x) {
  double s = 1 / (1 + exp(-x));
  switch (op) {
  case SN_GELU: return 0.5 * (1 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2 * 3.14159265358979323846);
  case SN_SILU: return s * (1 + x * (1 - s));
  case SN_SOFTPLUS: return s;
  case SN_TANH: return 1 - tanh(x) * tanh(x);
  case SN_SIGMOID: return s * (1 - s);
  default: return NAN;
  }
}

Test(activation, backward_matches_derivative_and_finite_differences) {
  const sn_unop ops[] = {SN_GELU, SN_SILU, SN_SOFTPLUS, SN_TANH, SN_SIGMOID};
  const int64_t sizes[] = {1, 7, 33, 65, 1000, 70001}; /* the last spans two threaded chunks */
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
  use_level(lv);
  for (size_t o = 0; o < 5; o++)
    for (size_t k = 0; k < 6; k++) {
      sn_unop op = ops[o];
      int64_t n = sizes[k];
      sn_tensor x = tu_empty(&ctx, SN_F32, 1, &n), in = tu_empty(&ctx, SN_F32, 1, &n), gy = tu_empty(&ctx, SN_F32, 1, &n),
                gx = tu_empty(&ctx, SN_F32, 1, &n);
      tu_fill_f32(&x, 41 + (uint32_t)k);
      tu_fill_f32(&gy, 42);
      for (int64_t i = 0; i < n; i++) sn_f32(&x)[i] *= 12.0f; /* tails of every function */
      if (n > 3) sn_f32(&x)[0] = 0, sn_f32(&x)[1] = 1e-30f, sn_f32(&x)[2] = -30;
      bool takes_y = op == SN_TANH || op == SN_SIGMOID;
      cr_assert_eq(takes_y ? sn_unary(&ctx, &in, &x, op) : sn_copy(&ctx, &in, &x), SN_OK, "%s", ctx.err);
      cr_assert_eq(sn_activation_bwd(&ctx, &gx, &gy, &in, op), SN_OK, "%s", ctx.err);
      double *ref = malloc((size_t)n * sizeof *ref);
      double worst_fd = 0;
      for (int64_t i = 0; i < n; i++) {
        double xi = sn_f32(&x)[i], g = sn_f32(&gy)[i], h = 1e-5;
        ref[i] = g * df_naive(op, xi);
        double fd = g * (f_naive(op, xi + h) - f_naive(op, xi - h)) / (2 * h);
        double e = fabs(ref[i] - fd) / (1e-7 + 1e-5 * fabs(fd));
        if (i < 200 && e > worst_fd) worst_fd = e;
      }
      cr_expect_leq(worst_fd, 1.0, "%s n=%lld: derivative vs finite differences", sn_unop_name(op), (long long)n);
      /* tanh/sigmoid go through the f32 y: 1 - y^2 carries y's rounding. */
      cr_expect_leq(tu_max_scaled_err(&gx, ref, 1e-6, 1e-4), 1.0, "%s n=%lld simd %s", sn_unop_name(op), (long long)n,
                    sn_simd_level());
      free(ref);
      sn_tensor_release(&x), sn_tensor_release(&in), sn_tensor_release(&gy), sn_tensor_release(&gx);
    }
  }
  restore_level();
}

/* GELU' at the ends of the range: 1 at +inf, 0 at -inf (not inf * 0), NaN stays NaN; on
 * every table, through the masked tail (n = 5) and a full vector (n = 21). */
Test(activation, gelu_backward_at_infinities_and_nan) {
  const float xs[] = {INFINITY, -INFINITY, NAN, 40.0f, -40.0f};
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (int64_t n = 5; n <= 21; n += 16) {
      sn_tensor x = tu_empty(&ctx, SN_F32, 1, &n), gy = tu_empty(&ctx, SN_F32, 1, &n), gx = tu_empty(&ctx, SN_F32, 1, &n);
      for (int64_t i = 0; i < n; i++) sn_f32(&x)[i] = xs[i % 5], sn_f32(&gy)[i] = 2.0f;
      cr_assert_eq(sn_activation_bwd(&ctx, &gx, &gy, &x, SN_GELU), SN_OK, "%s", ctx.err);
      for (int64_t i = 0; i < n; i++) {
        float got = sn_f32(&gx)[i];
        switch (i % 5) {
        case 0: case 3: cr_expect_eq(got, 2.0f, "x = %g simd %s: got %g", xs[i % 5], sn_simd_level(), got); break;
        case 1: case 4: cr_expect_eq(got, 0.0f, "x = %g simd %s: got %g", xs[i % 5], sn_simd_level(), got); break;
        default: cr_expect(isnan(got), "x = NaN simd %s: got %g", sn_simd_level(), got);
        }
      }
      sn_tensor_release(&x), sn_tensor_release(&gy), sn_tensor_release(&gx);
    }
  }
  restore_level();
}

Test(activation, rejects_ops_without_a_fused_backward) {
  int64_t n = 4;
  sn_tensor a = tu_empty(&ctx, SN_F32, 1, &n);
  cr_assert_eq(sn_activation_bwd(&ctx, &a, &a, &a, SN_EXP), SN_EINVAL);
  cr_expect(strstr(ctx.err, "exp"), "message was: %s", ctx.err);
  sn_tensor_release(&a);
}

/* ---- dropout ---------------------------------------------------------------------------- */

Test(activation, dropout_masks_scales_and_regenerates) {
  int64_t n = 200001;
  const float p = 0.3f;
  sn_tensor x = tu_empty(&ctx, SN_F32, 1, &n), y = tu_empty(&ctx, SN_F32, 1, &n), gy = tu_empty(&ctx, SN_F32, 1, &n),
            gx = tu_empty(&ctx, SN_F32, 1, &n), y1 = tu_empty(&ctx, SN_F32, 1, &n);
  tu_fill_f32(&x, 51);
  tu_fill_f32(&gy, 52);
  for (int64_t i = 0; i < n; i++) sn_f32(&x)[i] += 2; /* never 0, so a 0 in y means dropped */
  cr_assert_eq(sn_dropout_fwd(&ctx, &y, &x, p, 1234, 99), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_dropout_bwd(&ctx, &gx, &gy, p, 1234, 99), SN_OK, "%s", ctx.err);
  float scale = (float)(1.0 / (1.0 - p));
  int64_t dropped = 0;
  bool ok = true;
  for (int64_t i = 0; i < n; i++) {
    bool kept = sn_f32(&y)[i] != 0;
    dropped += !kept;
    ok = ok && (kept ? sn_f32(&y)[i] == sn_f32(&x)[i] * scale && sn_f32(&gx)[i] == sn_f32(&gy)[i] * scale
                     : sn_f32(&gx)[i] == 0);
  }
  cr_expect(ok, "kept elements scaled by 1/(1-p), bwd uses the same mask");
  double frac = (double)dropped / (double)n; /* binomial: sd ~ 0.001 */
  cr_expect(fabs(frac - p) < 0.006, "dropped fraction %g for p %g", frac, (double)p);
  int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  cr_assert_eq(sn_dropout_fwd(&ctx, &y1, &x, p, 1234, 99), SN_OK);
  omp_set_num_threads(saved);
  cr_expect(memcmp(sn_f32(&y), sn_f32(&y1), (size_t)n * sizeof(float)) == 0, "same mask with 1 thread");
  cr_assert_eq(sn_dropout_fwd(&ctx, &y1, &x, p, 1234, 100), SN_OK);
  cr_expect(memcmp(sn_f32(&y), sn_f32(&y1), (size_t)n * sizeof(float)) != 0, "another offset, another mask");
  cr_assert_eq(sn_dropout_fwd(&ctx, &y1, &x, 0.0f, 1, 0), SN_OK);
  cr_expect(memcmp(sn_f32(&x), sn_f32(&y1), (size_t)n * sizeof(float)) == 0, "p = 0 is the identity");
  cr_expect_eq(sn_dropout_fwd(&ctx, &y1, &x, 1.0f, 1, 0), SN_EINVAL);
  cr_expect(strstr(ctx.err, "p must be in [0, 1)"), "message was: %s", ctx.err);
  sn_tensor *all[] = {&x, &y, &gy, &gx, &y1};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}
