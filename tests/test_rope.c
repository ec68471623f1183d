/* test_rope.c -- RoPE (rotate_half pairing) against a naive double reference: odd shapes,
 * position offsets, a strided input (a narrow of a fused projection), the backward as the
 * adjoint and the inverse of the forward, and bad arguments rejected with a message. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

TU_SUITE(rope);

/* y = R(sign * p * theta) x per head, written for clarity: x is read through tu_get. */
static void rope_naive(double *y, const sn_tensor *x, int64_t offset, double base, double sign) {
  int64_t B = x->size[0], T = x->size[1], H = x->size[2], D = x->size[3], half = D / 2;
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < H; h++) {
        int64_t row = ((b * T + t) * H + h) * D;
        for (int64_t i = 0; i < half; i++) {
          double theta = 1.0 / pow(base, 2.0 * (double)i / (double)D);
          double a = sign * (double)(offset + t) * theta;
          double x1 = tu_get(x, row + i), x2 = tu_get(x, row + i + half);
          y[row + i] = x1 * cos(a) - x2 * sin(a);
          y[row + i + half] = x1 * sin(a) + x2 * cos(a);
        }
      }
}

static void check_case(int64_t B, int64_t T, int64_t H, int64_t D, int64_t offset, double base) {
  char shp[96];
  snprintf(shp, sizeof shp, "%lldx%lldx%lldx%lld offset %lld base %g", (long long)B, (long long)T, (long long)H,
           (long long)D, (long long)offset, base);
  int64_t s[4] = {B, T, H, D};
  sn_tensor x = tu_empty(&ctx, SN_F32, 4, s), y = tu_empty(&ctx, SN_F32, 4, s), g = tu_empty(&ctx, SN_F32, 4, s),
            gx = tu_empty(&ctx, SN_F32, 4, s);
  tu_fill_f32(&x, 11);
  tu_fill_f32(&g, 12);
  int64_t n = sn_numel(&x);
  double *ry = malloc((size_t)n * sizeof *ry + 1), *rg = malloc((size_t)n * sizeof *rg + 1);
  rope_naive(ry, &x, offset, base, 1.0);
  rope_naive(rg, &g, offset, base, -1.0);
  cr_assert_eq(sn_rope_fwd(&ctx, &y, &x, offset, base), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_rope_bwd(&ctx, &gx, &g, offset, base), SN_OK, "%s", ctx.err);
  /* Angles reach offset * 1 rad: f32 cos/sin of the rounded table carry ~1e-7 relative. */
  cr_expect_leq(tu_max_scaled_err(&y, ry, 1e-5, 1e-5), 1.0, "forward, %s", shp);
  cr_expect_leq(tu_max_scaled_err(&gx, rg, 1e-5, 1e-5), 1.0, "backward, %s", shp);
  /* The backward is the adjoint: <g, fwd(x)> == <bwd(g), x>, and the inverse: bwd(fwd(x)) == x. */
  double lhs = 0, rhs = 0;
  for (int64_t i = 0; i < n; i++) lhs += (double)sn_f32(&g)[i] * sn_f32(&y)[i], rhs += (double)sn_f32(&gx)[i] * sn_f32(&x)[i];
  cr_expect_leq(fabs(lhs - rhs), 1e-4 * (1 + fabs(lhs)), "adjoint, %s: %g vs %g", shp, lhs, rhs);
  cr_assert_eq(sn_rope_bwd(&ctx, &gx, &y, offset, base), SN_OK, "%s", ctx.err);
  double *rx = malloc((size_t)n * sizeof *rx + 1);
  for (int64_t i = 0; i < n; i++) rx[i] = sn_f32(&x)[i];
  cr_expect_leq(tu_max_scaled_err(&gx, rx, 1e-5, 1e-5), 1.0, "inverse, %s", shp);
  free(ry), free(rg), free(rx);
  sn_tensor *all[] = {&x, &y, &g, &gx};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(rope, matches_naive) {
  check_case(1, 1, 1, 2, 0, 10000);
  check_case(2, 7, 3, 6, 0, 10000);
  check_case(3, 5, 4, 34, 0, 10000);
  check_case(2, 64, 4, 32, 0, 500);
  check_case(1, 300, 2, 16, 0, 10000);
  check_case(4, 129, 4, 32, 0, 10000); /* above NN_PARALLEL_MIN: the OpenMP loop */
}

Test(rope, offsets_continue_the_sequence) {
  check_case(2, 1, 3, 8, 1, 10000);
  check_case(2, 3, 2, 10, 63, 10000);
  check_case(1, 2, 2, 64, 100000, 10000);
  /* Rotating rows t..t+k of a sequence with offset t equals rows t..t+k of the whole. */
  int64_t s[4] = {2, 9, 3, 8}, s1[4] = {2, 1, 3, 8};
  sn_tensor x = tu_empty(&ctx, SN_F32, 4, s), y = tu_empty(&ctx, SN_F32, 4, s), y1 = tu_empty(&ctx, SN_F32, 4, s1);
  tu_fill_f32(&x, 5);
  cr_assert_eq(sn_rope_fwd(&ctx, &y, &x, 0, 10000), SN_OK, "%s", ctx.err);
  for (int64_t t = 0; t < 9; t++) {
    sn_tensor xt, yt;
    cr_assert_eq(sn_narrow(&ctx, &xt, &x, 1, t, 1), SN_OK);
    cr_assert_eq(sn_narrow(&ctx, &yt, &y, 1, t, 1), SN_OK);
    cr_assert_eq(sn_rope_fwd(&ctx, &y1, &xt, t, 10000), SN_OK, "%s", ctx.err);
    double ref[48];
    for (int64_t i = 0; i < 48; i++) ref[i] = tu_get(&yt, i);
    cr_expect_leq(tu_max_scaled_err(&y1, ref, 1e-6, 1e-6), 1.0, "step t=%lld", (long long)t);
    sn_tensor_release(&xt), sn_tensor_release(&yt);
  }
  sn_tensor_release(&x), sn_tensor_release(&y), sn_tensor_release(&y1);
}

Test(rope, reads_strided_views) {
  /* q as a narrow of a (B,T,H+2Hkv,Dh) projection: heads 2..4 of 7. */
  int64_t s[4] = {2, 5, 7, 12}, sq[4] = {2, 5, 3, 12};
  sn_tensor qkv = tu_empty(&ctx, SN_F32, 4, s), q, y = tu_empty(&ctx, SN_F32, 4, sq);
  tu_fill_f32(&qkv, 9);
  cr_assert_eq(sn_narrow(&ctx, &q, &qkv, 2, 1, 3), SN_OK);
  double ref[2 * 5 * 3 * 12];
  rope_naive(ref, &q, 4, 10000, 1.0);
  cr_assert_eq(sn_rope_fwd(&ctx, &y, &q, 4, 10000), SN_OK, "%s", ctx.err);
  cr_expect_leq(tu_max_scaled_err(&y, ref, 1e-5, 1e-5), 1.0, "strided forward");
  sn_tensor_release(&qkv), sn_tensor_release(&q), sn_tensor_release(&y);
}

Test(rope, rejects_bad_arguments) {
  int64_t s5[4] = {2, 3, 4, 5}, s6[4] = {2, 3, 4, 6}, s3[3] = {2, 3, 4};
  sn_tensor x5 = tu_empty(&ctx, SN_F32, 4, s5), y5 = tu_empty(&ctx, SN_F32, 4, s5), x6 = tu_empty(&ctx, SN_F32, 4, s6),
            y6 = tu_empty(&ctx, SN_F32, 4, s6), x3 = tu_empty(&ctx, SN_F32, 3, s3);
  cr_assert_eq(sn_rope_fwd(&ctx, &y5, &x5, 0, 10000), SN_EINVAL);
  cr_expect(strstr(ctx.err, "seqnn.F.rope") && strstr(ctx.err, "must be even") && strstr(ctx.err, "2x3x4x5"),
            "message was: %s", ctx.err);
  cr_assert_eq(sn_rope_bwd(&ctx, &y5, &x5, 0, 10000), SN_EINVAL);
  cr_assert_eq(sn_rope_fwd(&ctx, &y6, &x6, -1, 10000), SN_EINVAL);
  cr_expect(strstr(ctx.err, "offset must be >= 0"), "message was: %s", ctx.err);
  cr_assert_eq(sn_rope_fwd(&ctx, &y6, &x6, 0, 0), SN_EINVAL);
  cr_expect(strstr(ctx.err, "base must be"), "message was: %s", ctx.err);
  cr_assert_eq(sn_rope_fwd(&ctx, &y5, &x6, 0, 10000), SN_EINVAL);
  cr_expect(strstr(ctx.err, "shape of 'x'"), "message was: %s", ctx.err);
  cr_assert_eq(sn_rope_fwd(&ctx, &y6, &x3, 0, 10000), SN_EINVAL);
  cr_expect(strstr(ctx.err, "(B,T,H,Dh)"), "message was: %s", ctx.err);
  sn_tensor *all[] = {&x5, &y5, &x6, &y6, &x3};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}
