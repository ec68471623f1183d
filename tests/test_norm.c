/* test_norm.c -- layer_norm and rms_norm against naive double references: forward values,
 * backward against the naive backward (every shape) and against central finite differences
 * of the naive forward (small shapes), with and without weight/bias, thread-count
 * independence of the weight gradients, and bad arguments. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

TU_SUITE(norm);

static const int64_t rows_list[] = {1, 3, 37};
static const int64_t cols_list[] = {1, 7, 33, 65, 1000};
static const double EPS = 1e-5;

static double *doubles(const sn_tensor *t) {
  double *d = malloc((size_t)sn_numel(t) * sizeof *d + 1);
  for (int64_t i = 0; i < sn_numel(t); i++) d[i] = tu_get(t, i);
  return d;
}

/* ---- references ------------------------------------------------------------------------ */

/* rms = false: layer norm (w, b may be NULL); rms = true: RMS norm (b ignored). */
static void norm_naive(bool rms, double *y, const double *x, const double *w, const double *b, int64_t R, int64_t C) {
  for (int64_t r = 0; r < R; r++) {
    const double *xr = x + r * C;
    double mu = 0, var = 0;
    if (!rms) {
      for (int64_t c = 0; c < C; c++) mu += xr[c];
      mu /= C;
    }
    for (int64_t c = 0; c < C; c++) var += (xr[c] - mu) * (xr[c] - mu);
    double rs = 1 / sqrt(var / C + EPS);
    for (int64_t c = 0; c < C; c++)
      y[r * C + c] = (xr[c] - mu) * rs * (w ? w[c] : 1) + (!rms && b ? b[c] : 0);
  }
}

/* The explicit gradients (gw, gb may be NULL). */
static void norm_bwd_naive(bool rms, double *gx, double *gw, double *gb, const double *gy, const double *x,
                           const double *w, int64_t R, int64_t C) {
  if (gw) memset(gw, 0, (size_t)C * sizeof *gw);
  if (gb) memset(gb, 0, (size_t)C * sizeof *gb);
  for (int64_t r = 0; r < R; r++) {
    const double *xr = x + r * C, *gyr = gy + r * C;
    double mu = 0, var = 0, mg = 0, mgx = 0;
    if (!rms) {
      for (int64_t c = 0; c < C; c++) mu += xr[c];
      mu /= C;
    }
    for (int64_t c = 0; c < C; c++) var += (xr[c] - mu) * (xr[c] - mu);
    double rs = 1 / sqrt(var / C + EPS);
    for (int64_t c = 0; c < C; c++) {
      double g = gyr[c] * (w ? w[c] : 1), xh = (xr[c] - mu) * rs;
      mg += g / C;
      mgx += g * xh / C;
      if (gw) gw[c] += gyr[c] * xh;
      if (gb) gb[c] += gyr[c];
    }
    for (int64_t c = 0; c < C; c++) {
      double g = gyr[c] * (w ? w[c] : 1), xh = (xr[c] - mu) * rs;
      gx[r * C + c] = rs * (g - (rms ? 0 : mg) - xh * mgx);
    }
  }
}

/* L = sum(y * G) on the naive forward. */
static double loss(bool rms, const double *x, const double *w, const double *b, const double *G, int64_t R, int64_t C) {
  double *y = malloc((size_t)(R * C) * sizeof *y), s = 0;
  norm_naive(rms, y, x, w, b, R, C);
  for (int64_t i = 0; i < R * C; i++) s += y[i] * G[i];
  free(y);
  return s;
}

/* dL/dv[i] by central differences, v being one of x, w, b (perturbed in place). */
static void finite_diff(bool rms, double *out, double *v, int64_t n, const double *x, const double *w,
                        const double *b, const double *G, int64_t R, int64_t C) {
  const double h = 1e-6;
  for (int64_t i = 0; i < n; i++) {
    double keep = v[i];
    v[i] = keep + h;
    double lp = loss(rms, x, w, b, G, R, C);
    v[i] = keep - h;
    double lm = loss(rms, x, w, b, G, R, C);
    v[i] = keep;
    out[i] = (lp - lm) / (2 * h);
  }
}

static double max_err_d(const double *a, const double *ref, int64_t n, double atol, double rtol) {
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs(a[i] - ref[i]) / (atol + rtol * fabs(ref[i]));
    if (!(e <= worst)) worst = e;
  }
  return worst;
}

/* ---- one case -------------------------------------------------------------------------- */

static void check_case(bool rms, int64_t R, int64_t C, bool affine) {
  char shp[64];
  snprintf(shp, sizeof shp, "%s %lldx%lld%s", rms ? "rms" : "layer", (long long)R, (long long)C,
           affine ? "" : " no affine");
  int64_t sx[2] = {R, C};
  sn_tensor x = tu_empty(&ctx, SN_F32, 2, sx), y = tu_empty(&ctx, SN_F32, 2, sx), gy = tu_empty(&ctx, SN_F32, 2, sx),
            gx = tu_empty(&ctx, SN_F32, 2, sx), w = tu_empty(&ctx, SN_F32, 1, &C), b = tu_empty(&ctx, SN_F32, 1, &C),
            gw = tu_empty(&ctx, SN_F32, 1, &C), gb = tu_empty(&ctx, SN_F32, 1, &C),
            mean = tu_empty(&ctx, SN_F32, 1, &R), rstd = tu_empty(&ctx, SN_F32, 1, &R);
  tu_fill_f32(&x, 1);
  tu_fill_f32(&w, 2);
  tu_fill_f32(&b, 3);
  tu_fill_f32(&gy, 4);
  for (int64_t i = 0; i < R * C; i++) sn_f32(&x)[i] = 3.0f + 2.0f * sn_f32(&x)[i]; /* a mean far from 0 */
  const sn_tensor *pw = affine ? &w : NULL, *pb = affine ? &b : NULL;
  sn_status st = rms ? sn_rms_norm_fwd(&ctx, &y, &rstd, &x, pw, (float)EPS)
                     : sn_layer_norm_fwd(&ctx, &y, &mean, &rstd, &x, pw, pb, (float)EPS);
  cr_assert_eq(st, SN_OK, "%s: %s", shp, ctx.err);
  st = rms ? sn_rms_norm_bwd(&ctx, &gx, affine ? &gw : NULL, &rstd, &gy, &x, pw)
           : sn_layer_norm_bwd(&ctx, &gx, affine ? &gw : NULL, affine ? &gb : NULL, &mean, &rstd, &gy, &x, pw);
  cr_assert_eq(st, SN_OK, "%s: %s", shp, ctx.err);

  double *dx = doubles(&x), *dw = affine ? doubles(&w) : NULL, *db = affine && !rms ? doubles(&b) : NULL;
  double *G = doubles(&gy), *ry = malloc((size_t)(R * C) * sizeof *ry), *rgx = malloc((size_t)(R * C) * sizeof *rgx);
  double *rgw = malloc((size_t)C * sizeof *rgw), *rgb = malloc((size_t)C * sizeof *rgb);
  norm_naive(rms, ry, dx, dw, db, R, C);
  norm_bwd_naive(rms, rgx, affine ? rgw : NULL, affine && !rms ? rgb : NULL, G, dx, dw, R, C);
  cr_expect_leq(tu_max_scaled_err(&y, ry, 1e-5, 1e-4), 1.0, "y, %s", shp);
  /* gx is a difference of O(1) terms scaled by rstd (up to 1/sqrt(eps) when C = 1). */
  cr_expect_leq(tu_max_scaled_err(&gx, rgx, 2e-5, 1e-3), 1.0, "grad x vs naive, %s", shp);
  if (affine) cr_expect_leq(tu_max_scaled_err(&gw, rgw, 1e-5, 1e-4), 1.0, "grad w vs naive, %s", shp);
  if (affine && !rms) cr_expect_leq(tu_max_scaled_err(&gb, rgb, 1e-5, 1e-4), 1.0, "grad b vs naive, %s", shp);

  if (R * C <= 300) { /* the naive backward itself, against finite differences */
    double *fd = malloc((size_t)(R * C) * sizeof *fd);
    finite_diff(rms, fd, dx, R * C, dx, dw, db, G, R, C);
    cr_expect_leq(max_err_d(rgx, fd, R * C, 1e-6, 1e-5), 1.0, "naive grad x vs finite differences, %s", shp);
    if (affine) {
      finite_diff(rms, fd, dw, C, dx, dw, db, G, R, C);
      cr_expect_leq(max_err_d(rgw, fd, C, 1e-6, 1e-5), 1.0, "naive grad w vs finite differences, %s", shp);
    }
    if (affine && !rms) {
      finite_diff(rms, fd, db, C, dx, dw, db, G, R, C);
      cr_expect_leq(max_err_d(rgb, fd, C, 1e-6, 1e-5), 1.0, "naive grad b vs finite differences, %s", shp);
    }
    free(fd);
  }
  free(dx), free(dw), free(db), free(G), free(ry), free(rgx), free(rgw), free(rgb);
  sn_tensor *all[] = {&x, &y, &gy, &gx, &w, &b, &gw, &gb, &mean, &rstd};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(norm, layer_norm_matches_naive_and_finite_differences) {
  for (size_t i = 0; i < 3; i++)
    for (size_t j = 0; j < 5; j++) {
      check_case(false, rows_list[i], cols_list[j], true);
      check_case(false, rows_list[i], cols_list[j], false);
    }
}

Test(norm, rms_norm_matches_naive_and_finite_differences) {
  for (size_t i = 0; i < 3; i++)
    for (size_t j = 0; j < 5; j++) {
      check_case(true, rows_list[i], cols_list[j], true);
      check_case(true, rows_list[i], cols_list[j], false);
    }
}

/* Large enough to run threaded: gx, gw and gb must not change with the thread count. */
Test(norm, gradients_do_not_depend_on_thread_count) {
  int64_t R = 301, C = 130, sx[2] = {R, C};
  sn_tensor x = tu_empty(&ctx, SN_F32, 2, sx), y = tu_empty(&ctx, SN_F32, 2, sx), gy = tu_empty(&ctx, SN_F32, 2, sx),
            gx[2], gw[2], gb[2], w = tu_empty(&ctx, SN_F32, 1, &C), mean = tu_empty(&ctx, SN_F32, 1, &R),
            rstd = tu_empty(&ctx, SN_F32, 1, &R);
  tu_fill_f32(&x, 5);
  tu_fill_f32(&gy, 6);
  tu_fill_f32(&w, 7);
  int saved = omp_get_max_threads();
  for (int rms = 0; rms < 2; rms++) {
    for (int t = 0; t < 2; t++) {
      gx[t] = tu_empty(&ctx, SN_F32, 2, sx), gw[t] = tu_empty(&ctx, SN_F32, 1, &C), gb[t] = tu_empty(&ctx, SN_F32, 1, &C);
      omp_set_num_threads(t + 1);
      sn_status st = rms ? sn_rms_norm_fwd(&ctx, &y, &rstd, &x, &w, 1e-5f)
                         : sn_layer_norm_fwd(&ctx, &y, &mean, &rstd, &x, &w, NULL, 1e-5f);
      if (st == SN_OK)
        st = rms ? sn_rms_norm_bwd(&ctx, &gx[t], &gw[t], &rstd, &gy, &x, &w)
                 : sn_layer_norm_bwd(&ctx, &gx[t], &gw[t], &gb[t], &mean, &rstd, &gy, &x, &w);
      cr_assert_eq(st, SN_OK, "%s", ctx.err);
    }
    cr_expect(memcmp(sn_f32(&gx[0]), sn_f32(&gx[1]), (size_t)(R * C) * 4) == 0, "gx, rms=%d", rms);
    cr_expect(memcmp(sn_f32(&gw[0]), sn_f32(&gw[1]), (size_t)C * 4) == 0, "gw, rms=%d", rms);
    if (!rms) cr_expect(memcmp(sn_f32(&gb[0]), sn_f32(&gb[1]), (size_t)C * 4) == 0, "gb");
    for (int t = 0; t < 2; t++) sn_tensor_release(&gx[t]), sn_tensor_release(&gw[t]), sn_tensor_release(&gb[t]);
  }
  omp_set_num_threads(saved);
  sn_tensor *all[] = {&x, &y, &gy, &w, &mean, &rstd};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(norm, rejects_mismatched_weight_and_saved_tensors) {
  int64_t sx[2] = {2, 8}, five = 5, two = 2, three = 3;
  sn_tensor x = tu_empty(&ctx, SN_F32, 2, sx), y = tu_empty(&ctx, SN_F32, 2, sx), w5 = tu_empty(&ctx, SN_F32, 1, &five),
            rstd = tu_empty(&ctx, SN_F32, 1, &two), r3 = tu_empty(&ctx, SN_F32, 1, &three);
  cr_assert_eq(sn_rms_norm_fwd(&ctx, &y, &rstd, &x, &w5, 1e-6f), SN_EINVAL);
  cr_expect(strstr(ctx.err, "seqnn.F.rms_norm") && strstr(ctx.err, "'weight'") && strstr(ctx.err, "8 elements"),
            "message was: %s", ctx.err);
  cr_assert_eq(sn_layer_norm_fwd(&ctx, &y, &r3, &rstd, &x, NULL, NULL, 1e-5f), SN_EINVAL);
  cr_expect(strstr(ctx.err, "'mean'") && strstr(ctx.err, "2 elements") && strstr(ctx.err, "got f32 3"),
            "message was: %s", ctx.err);
  sn_tensor_release(&x), sn_tensor_release(&y), sn_tensor_release(&w5), sn_tensor_release(&rstd), sn_tensor_release(&r3);
}
