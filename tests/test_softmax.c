/* test_softmax.c -- softmax, log_softmax and cross_entropy against naive double references:
 * forward values, backward against the naive backward and against central finite
 * differences (small shapes), a random upstream gradient, ignore_index rows, extreme and
 * -inf logits, out-of-range targets rejected, and the per-row upstream form ('none'). */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

TU_SUITE(softmax);

static const int64_t rows_list[] = {1, 3, 37};
static const int64_t cols_list[] = {1, 7, 33, 65, 1000};

static double *doubles(const sn_tensor *t) {
  double *d = malloc((size_t)sn_numel(t) * sizeof *d + 1);
  for (int64_t i = 0; i < sn_numel(t); i++) d[i] = tu_get(t, i);
  return d;
}

/* ---- references ------------------------------------------------------------------------ */

static double lse_naive(const double *x, int64_t C) {
  double m = -INFINITY, s = 0;
  for (int64_t c = 0; c < C; c++) m = x[c] > m ? x[c] : m;
  for (int64_t c = 0; c < C; c++) s += exp(x[c] - m);
  return m + log(s);
}

/* y = softmax(x) or log_softmax(x) row by row. */
static void softmax_naive(bool logsm, double *y, const double *x, int64_t R, int64_t C) {
  for (int64_t r = 0; r < R; r++) {
    double l = lse_naive(x + r * C, C);
    for (int64_t c = 0; c < C; c++) y[r * C + c] = logsm ? x[r * C + c] - l : exp(x[r * C + c] - l);
  }
}

/* gx from the Jacobian, written out: d softmax_c / d x_k = y_c (delta_ck - y_k). */
static void softmax_bwd_naive(bool logsm, double *gx, const double *gy, const double *x, int64_t R, int64_t C) {
  double *p = malloc((size_t)C * sizeof *p);
  for (int64_t r = 0; r < R; r++) {
    softmax_naive(false, p, x + r * C, 1, C);
    for (int64_t k = 0; k < C; k++) {
      double s = 0;
      for (int64_t c = 0; c < C; c++) {
        double jac = logsm ? (c == k) - p[k] : p[c] * ((c == k) - p[k]);
        s += gy[r * C + c] * jac;
      }
      gx[r * C + k] = s;
    }
  }
  free(p);
}

static double max_err_d(const double *a, const double *ref, int64_t n, double atol, double rtol) {
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs(a[i] - ref[i]) / (atol + rtol * fabs(ref[i]));
    if (!(e <= worst)) worst = e;
  }
  return worst;
}

/* ---- softmax / log_softmax -------------------------------------------------------------- */

static void check_softmax(bool logsm, int64_t R, int64_t C) {
  char shp[64];
  snprintf(shp, sizeof shp, "%s %lldx%lld", logsm ? "log_softmax" : "softmax", (long long)R, (long long)C);
  int64_t s[2] = {R, C};
  sn_tensor x = tu_empty(&ctx, SN_F32, 2, s), y = tu_empty(&ctx, SN_F32, 2, s), gy = tu_empty(&ctx, SN_F32, 2, s),
            gx = tu_empty(&ctx, SN_F32, 2, s);
  tu_fill_f32(&x, 11);
  tu_fill_f32(&gy, 12);
  for (int64_t i = 0; i < R * C; i++) sn_f32(&x)[i] *= 8.0f;
  cr_assert_eq(logsm ? sn_log_softmax_fwd(&ctx, &y, &x) : sn_softmax_fwd(&ctx, &y, &x), SN_OK, "%s", ctx.err);
  cr_assert_eq(logsm ? sn_log_softmax_bwd(&ctx, &gx, &y, &gy) : sn_softmax_bwd(&ctx, &gx, &y, &gy), SN_OK, "%s", ctx.err);
  double *dx = doubles(&x), *G = doubles(&gy), *ry = malloc((size_t)(R * C) * sizeof *ry),
         *rgx = malloc((size_t)(R * C) * sizeof *rgx);
  softmax_naive(logsm, ry, dx, R, C);
  softmax_bwd_naive(logsm, rgx, G, dx, R, C);
  cr_expect_leq(tu_max_scaled_err(&y, ry, 1e-6, 1e-5), 1.0, "y, %s", shp);
  cr_expect_leq(tu_max_scaled_err(&gx, rgx, 1e-6, 1e-4), 1.0, "grad vs naive, %s", shp);
  if (R * C <= 300) {
    const double h = 1e-6;
    double *fd = malloc((size_t)(R * C) * sizeof *fd), *yy = malloc((size_t)(R * C) * sizeof *yy);
    for (int64_t i = 0; i < R * C; i++) {
      double keep = dx[i], l[2];
      for (int k = 0; k < 2; k++) {
        dx[i] = keep + (k ? -h : h);
        softmax_naive(logsm, yy, dx, R, C);
        l[k] = 0;
        for (int64_t j = 0; j < R * C; j++) l[k] += yy[j] * G[j];
      }
      dx[i] = keep;
      fd[i] = (l[0] - l[1]) / (2 * h);
    }
    cr_expect_leq(max_err_d(rgx, fd, R * C, 1e-6, 1e-5), 1.0, "naive grad vs finite differences, %s", shp);
    free(fd), free(yy);
  }
  free(dx), free(G), free(ry), free(rgx);
  sn_tensor_release(&x), sn_tensor_release(&y), sn_tensor_release(&gy), sn_tensor_release(&gx);
}

Test(softmax, softmax_and_log_softmax_match_naive_and_finite_differences) {
  for (size_t i = 0; i < 3; i++)
    for (size_t j = 0; j < 5; j++) {
      check_softmax(false, rows_list[i], cols_list[j]);
      check_softmax(true, rows_list[i], cols_list[j]);
    }
}

Test(softmax, extreme_rows) {
  int64_t s[2] = {4, 3};
  sn_tensor x = tu_empty(&ctx, SN_F32, 2, s), y = tu_empty(&ctx, SN_F32, 2, s);
  const float v[12] = {1e30f, -1e30f, 0, -INFINITY, 2, -INFINITY, -INFINITY, -INFINITY, -INFINITY, 88, 89, 90};
  memcpy(sn_f32(&x), v, sizeof v);
  cr_assert_eq(sn_softmax_fwd(&ctx, &y, &x), SN_OK);
  const float *p = sn_f32(&y);
  cr_expect(p[0] == 1 && p[1] == 0 && p[2] == 0, "1e30 row: %g %g %g", p[0], p[1], p[2]);
  cr_expect(p[3] == 0 && p[4] == 1 && p[5] == 0, "-inf entries: %g %g %g", p[3], p[4], p[5]);
  cr_expect(isnan(p[6]) && isnan(p[8]), "all -inf gives NaN as in PyTorch: %g", p[6]);
  cr_expect(fabs(p[11] - 0.66524096) < 1e-6, "large finite logits: %g", p[11]);
  cr_assert_eq(sn_log_softmax_fwd(&ctx, &y, &x), SN_OK);
  cr_expect(p[0] == 0 && p[1] == -2e30f && p[3] == -INFINITY && p[4] == 0, "log_softmax: %g %g %g %g", p[0], p[1], p[3], p[4]);
  sn_tensor_release(&x), sn_tensor_release(&y);
}

/* ---- cross entropy ----------------------------------------------------------------------- */

/* Per-row losses (0 when ignored) and count; glogits for upstream g[r] (already scaled). */
static void ce_naive(double *loss, double *gx, int64_t *count, const double *x, const int64_t *t, const double *g,
                     int64_t N, int64_t V, int64_t ignore) {
  *count = 0;
  for (int64_t r = 0; r < N; r++) {
    double l = lse_naive(x + r * V, V);
    bool skip = t[r] == ignore;
    loss[r] = skip ? 0 : l - x[r * V + t[r]];
    *count += !skip;
    for (int64_t v = 0; v < V; v++) gx[r * V + v] = skip ? 0 : g[r] * (exp(x[r * V + v] - l) - (v == t[r]));
  }
}

static void check_ce(int64_t N, int64_t V) {
  char shp[64];
  snprintf(shp, sizeof shp, "cross_entropy %lldx%lld", (long long)N, (long long)V);
  const int64_t ignore = -100;
  int64_t s[2] = {N, V};
  sn_tensor x = tu_empty(&ctx, SN_F32, 2, s), gx = tu_empty(&ctx, SN_F32, 2, s), t = tu_empty(&ctx, SN_I64, 1, &N),
            loss = tu_empty(&ctx, SN_F32, 1, &N), lse = tu_empty(&ctx, SN_F32, 1, &N), g = tu_empty(&ctx, SN_F32, 1, &N);
  tu_fill_f32(&x, 21);
  tu_fill_f32(&g, 22);
  for (int64_t i = 0; i < N * V; i++) sn_f32(&x)[i] *= 6.0f;
  for (int64_t r = 0; r < N; r++) sn_i64(&t)[r] = r % 4 == 2 ? ignore : (r * 7919) % V; /* every 4th row ignored */
  double total;
  int64_t count, rcount;
  cr_assert_eq(sn_cross_entropy_fwd(&ctx, &loss, &lse, &total, &count, &x, &t, ignore), SN_OK, "%s", ctx.err);
  /* Per-row upstream (reduction 'none'), scaled by 0.5. */
  cr_assert_eq(sn_cross_entropy_bwd(&ctx, &gx, &lse, &g, &x, &t, ignore, 0.5f), SN_OK, "%s", ctx.err);
  double *dx = doubles(&x), *dg = doubles(&g), *rl = malloc((size_t)N * sizeof *rl), *rgx = malloc((size_t)(N * V) * sizeof *rgx);
  for (int64_t r = 0; r < N; r++) dg[r] *= 0.5;
  ce_naive(rl, rgx, &rcount, dx, sn_i64(&t), dg, N, V, ignore);
  double rtotal = 0;
  for (int64_t r = 0; r < N; r++) rtotal += rl[r];
  cr_expect_eq(count, rcount, "count, %s", shp);
  cr_expect(fabs(total - rtotal) <= 1e-5 * (1 + fabs(rtotal)), "total %g vs %g, %s", total, rtotal, shp);
  cr_expect_leq(tu_max_scaled_err(&loss, rl, 1e-5, 1e-5), 1.0, "loss, %s", shp);
  cr_expect_leq(tu_max_scaled_err(&gx, rgx, 1e-6, 1e-4), 1.0, "grad vs naive, %s", shp);
  if (N * V <= 300) { /* d(sum_r g[r] loss[r]) / dx */
    const double h = 1e-6;
    double *fd = malloc((size_t)(N * V) * sizeof *fd), *gg = malloc((size_t)(N * V) * sizeof *gg);
    for (int64_t i = 0; i < N * V; i++) {
      double keep = dx[i], l[2];
      for (int k = 0; k < 2; k++) {
        dx[i] = keep + (k ? -h : h);
        ce_naive(rl, gg, &rcount, dx, sn_i64(&t), dg, N, V, ignore);
        l[k] = 0;
        for (int64_t r = 0; r < N; r++) l[k] += rl[r] * dg[r];
      }
      dx[i] = keep;
      fd[i] = (l[0] - l[1]) / (2 * h);
    }
    cr_expect_leq(max_err_d(rgx, fd, N * V, 1e-6, 1e-5), 1.0, "naive grad vs finite differences, %s", shp);
    free(fd), free(gg);
  }
  /* One upstream value for every row ('mean'/'sum'): the same as a constant per-row g. */
  sn_tensor g1 = tu_empty(&ctx, SN_F32, 0, NULL);
  sn_f32(&g1)[0] = 0.75f;
  cr_assert_eq(sn_cross_entropy_bwd(&ctx, &gx, &lse, &g1, &x, &t, ignore, 2.0f), SN_OK, "%s", ctx.err);
  for (int64_t r = 0; r < N; r++) dg[r] = 1.5;
  ce_naive(rl, rgx, &rcount, dx, sn_i64(&t), dg, N, V, ignore);
  cr_expect_leq(tu_max_scaled_err(&gx, rgx, 1e-6, 1e-4), 1.0, "grad with one upstream value, %s", shp);
  free(dx), free(dg), free(rl), free(rgx);
  sn_tensor *all[] = {&x, &gx, &t, &loss, &lse, &g, &g1};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(softmax, cross_entropy_matches_naive_and_finite_differences) {
  for (size_t i = 0; i < 3; i++)
    for (size_t j = 0; j < 5; j++) check_ce(rows_list[i], cols_list[j]);
}

Test(softmax, cross_entropy_extreme_logits_and_all_ignored) {
  int64_t N = 3, V = 4, s[2] = {N, V};
  sn_tensor x = tu_empty(&ctx, SN_F32, 2, s), gx = tu_empty(&ctx, SN_F32, 2, s), t = tu_empty(&ctx, SN_I64, 1, &N),
            loss = tu_empty(&ctx, SN_F32, 1, &N), lse = tu_empty(&ctx, SN_F32, 1, &N), g = tu_empty(&ctx, SN_F32, 0, NULL);
  const float v[12] = {1e30f, -1e30f, 0, 5, -INFINITY, 1, -INFINITY, 1, -1e30f, 1e30f, -INFINITY, 0};
  memcpy(sn_f32(&x), v, sizeof v);
  const int64_t tt[3] = {0, 1, 0};
  memcpy(sn_i64(&t), tt, sizeof tt);
  sn_f32(&g)[0] = 1;
  double total;
  int64_t count;
  cr_assert_eq(sn_cross_entropy_fwd(&ctx, &loss, &lse, &total, &count, &x, &t, -100), SN_OK, "%s", ctx.err);
  const float *l = sn_f32(&loss);
  cr_expect(l[0] == 0, "target is the 1e30 logit: loss %g", l[0]);
  cr_expect(fabs(l[1] - log(2.0)) < 1e-6, "-inf entries ignored in the sum: loss %g", l[1]);
  cr_expect(l[2] == 2e30f, "target 2e30 below the max: loss %g", l[2]);
  cr_assert_eq(sn_cross_entropy_bwd(&ctx, &gx, &lse, &g, &x, &t, -100, 1.0f), SN_OK, "%s", ctx.err);
  const float *p = sn_f32(&gx);
  for (int i = 0; i < 12; i++) cr_expect(isfinite(p[i]), "grad %d finite: %g", i, p[i]);
  cr_expect(p[0] == 0 && p[4] == 0 && fabs(p[5] + 0.5) < 1e-6 && p[8] == -1 && p[9] == 1, "grads %g %g %g %g %g",
            p[0], p[4], p[5], p[8], p[9]);
  /* Every row ignored: count 0 (the binding's 'mean' is then NaN), gradients 0. */
  const int64_t ig[3] = {-1, -1, -1};
  memcpy(sn_i64(&t), ig, sizeof ig);
  cr_assert_eq(sn_cross_entropy_fwd(&ctx, &loss, &lse, &total, &count, &x, &t, -1), SN_OK, "%s", ctx.err);
  cr_expect(count == 0 && total == 0, "count %lld total %g", (long long)count, total);
  cr_assert_eq(sn_cross_entropy_bwd(&ctx, &gx, &lse, &g, &x, &t, -1, 1.0f), SN_OK, "%s", ctx.err);
  for (int i = 0; i < 12; i++) cr_expect(p[i] == 0, "ignored grad %d: %g", i, p[i]);
  sn_tensor *all[] = {&x, &gx, &t, &loss, &lse, &g};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(softmax, cross_entropy_rejects_targets_out_of_range) {
  int64_t N = 3, V = 5, s[2] = {N, V}, four = 4;
  sn_tensor x = tu_empty(&ctx, SN_F32, 2, s), t = tu_empty(&ctx, SN_I64, 1, &N), loss = tu_empty(&ctx, SN_F32, 1, &N),
            lse = tu_empty(&ctx, SN_F32, 1, &N), t4 = tu_empty(&ctx, SN_I64, 1, &four);
  tu_fill_f32(&x, 3);
  double total;
  int64_t count;
  const int64_t bad[][3] = {{0, 5, 1}, {0, 1, -1}, {INT64_MAX, 0, 0}};
  const char *want[] = {"target 5 at row 1", "target -1 at row 2", "target 9223372036854775807 at row 0"};
  for (int k = 0; k < 3; k++) {
    memcpy(sn_i64(&t), bad[k], sizeof bad[k]);
    cr_assert_eq(sn_cross_entropy_fwd(&ctx, &loss, &lse, &total, &count, &x, &t, -100), SN_EINVAL);
    cr_expect(strstr(ctx.err, "seqnn.F.cross_entropy") && strstr(ctx.err, want[k]) && strstr(ctx.err, "5 classes"),
              "message was: %s", ctx.err);
  }
  cr_assert_eq(sn_cross_entropy_fwd(&ctx, &loss, &lse, &total, &count, &x, &t4, -100), SN_EINVAL);
  cr_expect(strstr(ctx.err, "logits: 3x5, targets: 4"), "message was: %s", ctx.err);
  sn_tensor *all[] = {&x, &t, &loss, &lse, &t4};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}
