/* test_conv1d.c -- kernels/conv1d.c against a naive double reference on every SIMD level:
 * W = 1..8, T below and above W and past one task, channel counts that are no multiple of
 * the 16-lane vector, bias and silu on and off, strided inputs; then NaN propagation, the
 * decode step against the forward (bit for bit), thread-count independence and bad input.
 * The reference's gradients are checked by finite differences. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "simdutil.h"
#include "testutil.h"

TU_SUITE(conv1d);

/* ---- naive reference, in double, contiguous (B,T,C) arrays ----------------------------- */

typedef struct {
  int64_t B, T, C, W;
  bool bias, silu;
} cfg;

static double sigmoid(double p) { return 1.0 / (1.0 + exp(-p)); }

/* pre[b,t,c] = bias[c] + sum_k w[c,k] x[b, t-W+1+k, c], x before t = 0 being 0. */
static double pre_at(const cfg *g, const double *x, const double *w, const double *bias, int64_t b, int64_t t,
                     int64_t c) {
  double a = bias ? bias[c] : 0;
  for (int64_t k = 0; k < g->W; k++) {
    int64_t r = t - g->W + 1 + k;
    if (r >= 0) a += w[c * g->W + k] * x[(b * g->T + r) * g->C + c];
  }
  return a;
}

static void ref_fwd(const cfg *g, double *y, const double *x, const double *w, const double *bias) {
  for (int64_t b = 0; b < g->B; b++)
    for (int64_t t = 0; t < g->T; t++)
      for (int64_t c = 0; c < g->C; c++) {
        double p = pre_at(g, x, w, bias, b, t, c);
        y[(b * g->T + t) * g->C + c] = g->silu ? p * sigmoid(p) : p;
      }
}

/* dpre = dy silu'(pre); dx[t] = sum_k w[k] dpre[t+W-1-k]; dw[c,k] = sum dpre[t] x[t-W+1+k];
 * dbias = sum dpre. */
static void ref_bwd(const cfg *g, double *dx, double *dw, double *db, const double *dy, const double *x,
                    const double *w, const double *bias) {
  int64_t n = g->B * g->T * g->C;
  double *dpre = malloc(sizeof(double) * (size_t)n + 1);
  for (int64_t b = 0; b < g->B; b++)
    for (int64_t t = 0; t < g->T; t++)
      for (int64_t c = 0; c < g->C; c++) {
        int64_t i = (b * g->T + t) * g->C + c;
        double p = pre_at(g, x, w, bias, b, t, c), s = sigmoid(p);
        dpre[i] = dy[i] * (g->silu ? s * (1 + p * (1 - s)) : 1);
      }
  memset(dw, 0, sizeof(double) * (size_t)(g->C * g->W));
  memset(db, 0, sizeof(double) * (size_t)g->C);
  for (int64_t b = 0; b < g->B; b++)
    for (int64_t t = 0; t < g->T; t++)
      for (int64_t c = 0; c < g->C; c++) {
        double a = 0, d = dpre[(b * g->T + t) * g->C + c];
        for (int64_t k = 0; k < g->W; k++) {
          int64_t r = t + g->W - 1 - k, q = t - g->W + 1 + k;
          if (r < g->T) a += w[c * g->W + k] * dpre[(b * g->T + r) * g->C + c];
          if (q >= 0) dw[c * g->W + k] += d * x[(b * g->T + q) * g->C + c];
        }
        dx[(b * g->T + t) * g->C + c] = a;
        db[c] += d;
      }
  free(dpre);
}

/* The tensor's values, row major, read through its strides. */
static double *values(const sn_tensor *t) {
  double *v = malloc(sizeof(double) * (size_t)sn_numel(t) + 1);
  for (int64_t i = 0; i < sn_numel(t); i++) v[i] = tu_get(t, i);
  return v;
}

/* ---- one case: the kernels against the reference --------------------------------------- */

/* A view of *owner: all of it, or channels 3 .. C+2 of a (B, T, C + 5) tensor when strided. */
static sn_tensor input(const cfg *g, bool strided, uint32_t seed, sn_tensor *owner) {
  int64_t wide[3] = {g->B, g->T, g->C + (strided ? 5 : 0)};
  *owner = tu_empty(&ctx, SN_F32, 3, wide);
  tu_fill_f32(owner, seed);
  sn_tensor v;
  cr_assert_eq(sn_narrow(&ctx, &v, owner, 2, strided ? 3 : 0, g->C), SN_OK, "%s", ctx.err);
  return v;
}

static void check_case(const cfg *g, bool strided, const char *level) {
  char what[128];
  snprintf(what, sizeof what, "%s: B %lld T %lld C %lld W %lld bias %d silu %d strided %d", level, (long long)g->B,
           (long long)g->T, (long long)g->C, (long long)g->W, g->bias, g->silu, strided);
  int64_t s3[3] = {g->B, g->T, g->C}, sw[2] = {g->C, g->W};
  sn_tensor xo, dyo, x = input(g, strided, 1, &xo), dy = input(g, strided, 2, &dyo);
  sn_tensor w = tu_empty(&ctx, SN_F32, 2, sw), bias = tu_empty(&ctx, SN_F32, 1, &g->C);
  sn_tensor y = tu_empty(&ctx, SN_F32, 3, s3), dx = tu_empty(&ctx, SN_F32, 3, s3), dw = tu_empty(&ctx, SN_F32, 2, sw);
  sn_tensor db = tu_empty(&ctx, SN_F32, 1, &g->C);
  tu_fill_f32(&w, 3), tu_fill_f32(&bias, 4);
  const sn_tensor *pb = g->bias ? &bias : NULL;
  double *vx = values(&x), *vdy = values(&dy), *vw = values(&w), *vb = g->bias ? values(&bias) : NULL;
  int64_t n = sn_numel(&x);
  double *ry = malloc(sizeof(double) * (size_t)n + 1), *rdx = malloc(sizeof(double) * (size_t)n + 1);
  double *rdw = malloc(sizeof(double) * (size_t)(g->C * g->W) + 1), *rdb = malloc(sizeof(double) * (size_t)g->C + 1);
  ref_fwd(g, ry, vx, vw, vb);
  ref_bwd(g, rdx, rdw, rdb, vdy, vx, vw, vb);
  cr_assert_eq(sn_causal_conv1d_fwd(&ctx, &y, &x, &w, pb, g->silu), SN_OK, "%s: %s", what, ctx.err);
  cr_assert_eq(sn_causal_conv1d_bwd(&ctx, &dx, &dw, &db, &dy, &x, &w, pb, g->silu), SN_OK, "%s: %s", what, ctx.err);
  cr_expect_leq(tu_max_scaled_err(&y, ry, 1e-5, 1e-5), 1.0, "y, %s", what);
  cr_expect_leq(tu_max_scaled_err(&dx, rdx, 1e-5, 1e-5), 1.0, "dx, %s", what);
  cr_expect_leq(tu_max_scaled_err(&dw, rdw, 1e-4, 1e-5), 1.0, "dw, %s", what);
  cr_expect_leq(tu_max_scaled_err(&db, rdb, 1e-4, 1e-5), 1.0, "dbias, %s", what);
  free(vx), free(vdy), free(vw), free(vb), free(ry), free(rdx), free(rdw), free(rdb);
  sn_tensor *all[] = {&x, &dy, &xo, &dyo, &w, &bias, &y, &dx, &dw, &db};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

/* ---- tests ------------------------------------------------------------------------------ */

Test(conv1d, reference_gradients_match_finite_differences) {
  /* L = sum dy * y: its derivative in each x, w, bias element against central differences. */
  cfg g = {2, 5, 3, 3, true, true};
  int64_t n = g.B * g.T * g.C, nw = g.C * g.W;
  double x[30], dy[30], w[9], bias[3], y[30], dx[30], dw[9], db[3];
  for (int64_t i = 0; i < n; i++) x[i] = sin(1.0 + (double)i), dy[i] = cos(2.0 * (double)i);
  for (int64_t i = 0; i < nw; i++) w[i] = 0.5 * sin(3.0 * (double)i);
  for (int64_t i = 0; i < g.C; i++) bias[i] = 0.3 * (double)i - 0.2;
  ref_bwd(&g, dx, dw, db, dy, x, w, bias);
  double *params[3] = {x, w, bias}, *grads[3] = {dx, dw, db};
  int64_t sizes[3] = {n, nw, g.C};
  for (int p = 0; p < 3; p++)
    for (int64_t i = 0; i < sizes[p]; i++) {
      double keep = params[p][i], h = 1e-6, lo = 0, hi = 0;
      params[p][i] = keep + h, ref_fwd(&g, y, x, w, bias);
      for (int64_t j = 0; j < n; j++) hi += dy[j] * y[j];
      params[p][i] = keep - h, ref_fwd(&g, y, x, w, bias);
      for (int64_t j = 0; j < n; j++) lo += dy[j] * y[j];
      params[p][i] = keep;
      cr_expect_leq(fabs((hi - lo) / (2 * h) - grads[p][i]), 1e-7, "param %d element %lld", p, (long long)i);
    }
}

Test(conv1d, matches_reference_on_every_simd_level) {
  const int64_t Ws[] = {1, 2, 3, 4, 8}, Ts[] = {1, 3, 17, 100}, Cs[] = {1, 7, 17, 33, 100, 130};
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (size_t wi = 0; wi < 5; wi++)
      for (size_t ti = 0; ti < 4; ti++)
        for (size_t ci = 0; ci < 6; ci++) {
          int opt = (int)(wi + ti + ci) % 4; /* bias and silu in turn */
          cfg g = {1 + (int64_t)ci % 2, Ts[ti], Cs[ci], Ws[wi], opt & 1, opt & 2};
          check_case(&g, false, levels[lv]);
        }
  }
  restore_level();
}

Test(conv1d, all_options_and_every_w) {
  for (int64_t W = 1; W <= 8; W++)
    for (int opt = 0; opt < 4; opt++) {
      cfg g = {2, 11, 23, W, opt & 1, opt & 2};
      check_case(&g, false, "default");
    }
  /* Many vectors and a tail; large enough for the OpenMP loops. */
  cfg big = {2, 70, 300, 4, true, true};
  check_case(&big, false, "default");
}

/* T past one task of 128 steps: dx near a task's end needs the next task's dpre. */
Test(conv1d, long_sequences) {
  const cfg cs[] = {{2, 300, 40, 4, true, true}, {1, 257, 17, 8, false, true}, {1, 129, 5, 2, true, false}};
  for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) check_case(&cs[i], i == 1, "default");
}

Test(conv1d, strided_inputs) {
  const cfg cs[] = {{2, 17, 33, 4, true, true}, {3, 9, 7, 8, false, false}, {1, 3, 1, 2, true, false},
                    {2, 40, 260, 3, false, true}};
  for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) check_case(&cs[i], true, "default");
}

/* w and bias are read through their strides: views give the bits of contiguous copies. */
Test(conv1d, weight_views_equal_contiguous_copies) {
  int64_t B = 2, T = 21, C = 37, W = 4, s3[3] = {B, T, C};
  sn_tensor x = tu_empty(&ctx, SN_F32, 3, s3), dy = tu_empty(&ctx, SN_F32, 3, s3);
  sn_tensor wT = tu_empty(&ctx, SN_F32, 2, (int64_t[]){W, C}), b2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){C, 2});
  sn_tensor wv, bv, wc = tu_empty(&ctx, SN_F32, 2, (int64_t[]){C, W}), bc = tu_empty(&ctx, SN_F32, 1, &C);
  tu_fill_f32(&x, 1), tu_fill_f32(&dy, 2), tu_fill_f32(&wT, 3), tu_fill_f32(&b2, 4);
  cr_assert_eq(sn_transpose(&ctx, &wv, &wT, 0, 1), SN_OK);
  cr_assert_eq(sn_select(&ctx, &bv, &b2, 1, 1), SN_OK);
  cr_assert_eq(sn_copy(&ctx, &wc, &wv), SN_OK);
  cr_assert_eq(sn_copy(&ctx, &bc, &bv), SN_OK);
  sn_tensor out[2][4];
  for (int r = 0; r < 2; r++) {
    const sn_tensor *w = r ? &wc : &wv, *bias = r ? &bc : &bv;
    out[r][0] = tu_empty(&ctx, SN_F32, 3, s3), out[r][1] = tu_empty(&ctx, SN_F32, 3, s3);
    out[r][2] = tu_empty(&ctx, SN_F32, 2, (int64_t[]){C, W}), out[r][3] = tu_empty(&ctx, SN_F32, 1, &C);
    cr_assert_eq(sn_causal_conv1d_fwd(&ctx, &out[r][0], &x, w, bias, true), SN_OK, "%s", ctx.err);
    cr_assert_eq(sn_causal_conv1d_bwd(&ctx, &out[r][1], &out[r][2], &out[r][3], &dy, &x, w, bias, true), SN_OK,
                 "%s", ctx.err);
  }
  for (int i = 0; i < 4; i++) {
    cr_expect(memcmp(sn_f32(&out[0][i]), sn_f32(&out[1][i]), (size_t)sn_numel(&out[0][i]) * sizeof(float)) == 0,
              "output %d", i);
    sn_tensor_release(&out[0][i]), sn_tensor_release(&out[1][i]);
  }
  sn_tensor *all[] = {&x, &dy, &wT, &b2, &wv, &bv, &wc, &bc};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(conv1d, empty_batch_or_time_gives_zero_gradients) {
  const int64_t shapes[2][3] = {{0, 5, 9}, {2, 0, 9}};
  for (int s = 0; s < 2; s++) {
    sn_tensor x = tu_empty(&ctx, SN_F32, 3, shapes[s]), y = tu_empty(&ctx, SN_F32, 3, shapes[s]);
    sn_tensor dx = tu_empty(&ctx, SN_F32, 3, shapes[s]), w = tu_empty(&ctx, SN_F32, 2, (int64_t[]){9, 4});
    sn_tensor dw = tu_empty(&ctx, SN_F32, 2, (int64_t[]){9, 4}), db = tu_empty(&ctx, SN_F32, 1, (int64_t[]){9});
    tu_fill_f32(&w, 1), tu_fill_f32(&dw, 2), tu_fill_f32(&db, 3);
    cr_assert_eq(sn_causal_conv1d_fwd(&ctx, &y, &x, &w, NULL, true), SN_OK, "%s", ctx.err);
    cr_assert_eq(sn_causal_conv1d_bwd(&ctx, &dx, &dw, &db, &y, &x, &w, NULL, true), SN_OK, "%s", ctx.err);
    for (int i = 0; i < 36; i++) cr_expect_eq(sn_f32(&dw)[i], 0.0f);
    for (int i = 0; i < 9; i++) cr_expect_eq(sn_f32(&db)[i], 0.0f);
    sn_tensor *all[] = {&x, &y, &dx, &w, &dw, &db};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
  }
}

/* pre in the hundreds: silu and its derivative where the sigmoid saturates and e^-x is
 * clamped. */
Test(conv1d, large_inputs_saturate) {
  cfg g = {2, 30, 21, 4, true, true};
  int64_t s3[3] = {g.B, g.T, g.C}, sw[2] = {g.C, g.W}, n = g.B * g.T * g.C;
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    sn_tensor x = tu_empty(&ctx, SN_F32, 3, s3), dy = tu_empty(&ctx, SN_F32, 3, s3), y = tu_empty(&ctx, SN_F32, 3, s3);
    sn_tensor dx = tu_empty(&ctx, SN_F32, 3, s3), w = tu_empty(&ctx, SN_F32, 2, sw), dw = tu_empty(&ctx, SN_F32, 2, sw);
    sn_tensor bias = tu_empty(&ctx, SN_F32, 1, &g.C), db = tu_empty(&ctx, SN_F32, 1, &g.C);
    tu_fill_f32(&x, 1), tu_fill_f32(&dy, 2), tu_fill_f32(&w, 3), tu_fill_f32(&bias, 4);
    for (int64_t i = 0; i < n; i++) sn_f32(&x)[i] *= 60.0f;
    double *vx = values(&x), *vdy = values(&dy), *vw = values(&w), *vb = values(&bias);
    double *ry = malloc(sizeof(double) * (size_t)n), *rdx = malloc(sizeof(double) * (size_t)n);
    double rdw[84], rdb[21];
    ref_fwd(&g, ry, vx, vw, vb);
    ref_bwd(&g, rdx, rdw, rdb, vdy, vx, vw, vb);
    cr_assert_eq(sn_causal_conv1d_fwd(&ctx, &y, &x, &w, &bias, true), SN_OK, "%s", ctx.err);
    cr_assert_eq(sn_causal_conv1d_bwd(&ctx, &dx, &dw, &db, &dy, &x, &w, &bias, true), SN_OK, "%s", ctx.err);
    cr_expect_leq(tu_max_scaled_err(&y, ry, 1e-4, 1e-5), 1.0, "y, %s", levels[lv]);
    cr_expect_leq(tu_max_scaled_err(&dx, rdx, 1e-4, 1e-5), 1.0, "dx, %s", levels[lv]);
    cr_expect_leq(tu_max_scaled_err(&dw, rdw, 1e-3, 1e-5), 1.0, "dw, %s", levels[lv]);
    cr_expect_leq(tu_max_scaled_err(&db, rdb, 1e-4, 1e-5), 1.0, "dbias, %s", levels[lv]);
    free(vx), free(vdy), free(vw), free(vb), free(ry), free(rdx);
    sn_tensor *all[] = {&x, &dy, &y, &dx, &w, &dw, &bias, &db};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
  }
  restore_level();
}

/* A NaN in x reaches exactly the outputs whose taps read it, and the sums of its channel. */
Test(conv1d, nan_propagates_to_its_taps_only) {
  int64_t B = 2, T = 20, C = 19, W = 4, s3[3] = {B, T, C};
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    sn_tensor x = tu_empty(&ctx, SN_F32, 3, s3), y = tu_empty(&ctx, SN_F32, 3, s3), dx = tu_empty(&ctx, SN_F32, 3, s3);
    sn_tensor w = tu_empty(&ctx, SN_F32, 2, (int64_t[]){C, W}), dw = tu_empty(&ctx, SN_F32, 2, (int64_t[]){C, W});
    sn_tensor db = tu_empty(&ctx, SN_F32, 1, &C);
    tu_fill_f32(&x, 1), tu_fill_f32(&w, 2);
    sn_f32(&x)[(1 * T + 6) * C + 17] = NAN;
    cr_assert_eq(sn_causal_conv1d_fwd(&ctx, &y, &x, &w, NULL, true), SN_OK, "%s", ctx.err);
    cr_assert_eq(sn_causal_conv1d_bwd(&ctx, &dx, &dw, &db, &x, &x, &w, NULL, true), SN_OK, "%s", ctx.err);
    for (int64_t b = 0; b < B; b++)
      for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++) {
          bool hit = b == 1 && c == 17 && t >= 6 && t < 6 + W;
          cr_expect_eq(isnan(sn_f32(&y)[(b * T + t) * C + c]), hit, "%s: y[%lld,%lld,%lld]", levels[lv], (long long)b,
                       (long long)t, (long long)c);
        }
    for (int64_t c = 0; c < C; c++) {
      cr_expect_eq(isnan(sn_f32(&db)[c]), c == 17, "%s: dbias[%lld]", levels[lv], (long long)c);
      cr_expect_eq(isnan(sn_f32(&dw)[c * W]), c == 17, "%s: dw[%lld, 0]", levels[lv], (long long)c);
    }
    sn_tensor *all[] = {&x, &y, &dx, &w, &dw, &db};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
  }
  restore_level();
}

/* Decoding token by token from a zero state gives the forward's bits, and leaves the last
 * W-1 inputs in the state. The tokens are (B, C) views of x, strided on the batch dim. */
Test(conv1d, step_reproduces_the_forward) {
  const int64_t Ws[] = {1, 2, 4, 8}, Cs[] = {7, 33, 300};
  for (size_t wi = 0; wi < 4; wi++)
    for (size_t ci = 0; ci < 3; ci++)
      for (int opt = 0; opt < 4; opt++) {
        int64_t B = 2, T = 12, C = Cs[ci], W = Ws[wi];
        bool silu = opt & 2;
        sn_tensor x = tu_empty(&ctx, SN_F32, 3, (int64_t[]){B, T, C}), y = tu_empty(&ctx, SN_F32, 3, (int64_t[]){B, T, C});
        sn_tensor w = tu_empty(&ctx, SN_F32, 2, (int64_t[]){C, W}), bias = tu_empty(&ctx, SN_F32, 1, &C);
        sn_tensor state = tu_empty(&ctx, SN_F32, 3, (int64_t[]){B, W - 1, C}), yt = tu_empty(&ctx, SN_F32, 2, (int64_t[]){B, C});
        tu_fill_f32(&x, 7), tu_fill_f32(&w, 8), tu_fill_f32(&bias, 9);
        cr_assert_eq(sn_fill(&ctx, &state, 0), SN_OK);
        const sn_tensor *pb = opt & 1 ? &bias : NULL;
        cr_assert_eq(sn_causal_conv1d_fwd(&ctx, &y, &x, &w, pb, silu), SN_OK, "%s", ctx.err);
        for (int64_t t = 0; t < T; t++) {
          sn_tensor xt;
          cr_assert_eq(sn_select(&ctx, &xt, &x, 1, t), SN_OK, "%s", ctx.err);
          cr_assert_eq(sn_causal_conv1d_step(&ctx, &yt, &state, &xt, &w, pb, silu), SN_OK, "%s", ctx.err);
          for (int64_t b = 0; b < B; b++)
            cr_expect(memcmp(sn_f32(&yt) + b * C, sn_f32(&y) + (b * T + t) * C, (size_t)C * sizeof(float)) == 0,
                      "token %lld, batch %lld, W %lld, C %lld, opt %d", (long long)t, (long long)b, (long long)W,
                      (long long)C, opt);
          sn_tensor_release(&xt);
        }
        for (int64_t b = 0; b < B; b++)
          for (int64_t k = 0; k < W - 1; k++)
            cr_expect(memcmp(sn_f32(&state) + (b * (W - 1) + k) * C, sn_f32(&x) + (b * T + T - W + 1 + k) * C,
                             (size_t)C * sizeof(float)) == 0,
                      "state row %lld, W %lld", (long long)k, (long long)W);
        sn_tensor *all[] = {&x, &y, &w, &bias, &state, &yt};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
      }
}

Test(conv1d, results_do_not_depend_on_the_thread_count) {
  int64_t B = 3, T = 150, C = 300, W = 4, s3[3] = {B, T, C};
  sn_tensor x = tu_empty(&ctx, SN_F32, 3, s3), dy = tu_empty(&ctx, SN_F32, 3, s3);
  sn_tensor w = tu_empty(&ctx, SN_F32, 2, (int64_t[]){C, W}), bias = tu_empty(&ctx, SN_F32, 1, &C);
  tu_fill_f32(&x, 1), tu_fill_f32(&dy, 2), tu_fill_f32(&w, 3), tu_fill_f32(&bias, 4);
  sn_tensor out[2][4];
  int saved = omp_get_max_threads();
  for (int r = 0; r < 2; r++) {
    omp_set_num_threads(r + 1);
    out[r][0] = tu_empty(&ctx, SN_F32, 3, s3), out[r][1] = tu_empty(&ctx, SN_F32, 3, s3);
    out[r][2] = tu_empty(&ctx, SN_F32, 2, (int64_t[]){C, W}), out[r][3] = tu_empty(&ctx, SN_F32, 1, &C);
    cr_assert_eq(sn_causal_conv1d_fwd(&ctx, &out[r][0], &x, &w, &bias, true), SN_OK, "%s", ctx.err);
    cr_assert_eq(sn_causal_conv1d_bwd(&ctx, &out[r][1], &out[r][2], &out[r][3], &dy, &x, &w, &bias, true), SN_OK,
                 "%s", ctx.err);
  }
  omp_set_num_threads(saved);
  const char *names[4] = {"y", "dx", "dw", "dbias"};
  for (int i = 0; i < 4; i++) {
    cr_expect(memcmp(sn_f32(&out[0][i]), sn_f32(&out[1][i]), (size_t)sn_numel(&out[0][i]) * sizeof(float)) == 0,
              "%s differs between 1 and 2 threads", names[i]);
    sn_tensor_release(&out[0][i]), sn_tensor_release(&out[1][i]);
  }
  sn_tensor_release(&x), sn_tensor_release(&dy), sn_tensor_release(&w), sn_tensor_release(&bias);
}

/* The call returns SN_EINVAL with a message containing want. */
#define EXPECT_EINVAL(call, want) TU_EXPECT_EINVAL_HAS(call, want)

Test(conv1d, rejects_bad_input) {
  int64_t s3[3] = {2, 5, 6};
  sn_tensor x = tu_empty(&ctx, SN_F32, 3, s3), y = tu_empty(&ctx, SN_F32, 3, s3), dx = tu_empty(&ctx, SN_F32, 3, s3);
  sn_tensor w = tu_empty(&ctx, SN_F32, 2, (int64_t[]){6, 4}), dw = tu_empty(&ctx, SN_F32, 2, (int64_t[]){6, 4});
  sn_tensor w0 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){6, 0}), w9 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){6, 9});
  sn_tensor w7 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){7, 4}), w3 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){6, 1, 4});
  sn_tensor b = tu_empty(&ctx, SN_F32, 1, (int64_t[]){6}), b7 = tu_empty(&ctx, SN_F32, 1, (int64_t[]){7});
  sn_tensor x2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 6}), xi = tu_empty(&ctx, SN_I64, 3, s3);
  sn_tensor y4 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 4, 6}), st = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 3, 6});
  sn_tensor st4 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 4, 6}), y2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 6});
  sn_tensor xt;
  cr_assert_eq(sn_transpose(&ctx, &xt, &x, 1, 2), SN_OK); /* (2, 6, 5), last dim strided */
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y, &x, &w0, NULL, false),
                "seqnn.F.causal_conv1d: w must be (C, W) with C = 6 and 1 <= W <= 8, got 6x0");
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y, &x, &w9, NULL, false), "w must be (C, W) with C = 6 and 1 <= W <= 8, got 6x9");
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y, &x, &w7, NULL, false), "w must be (C, W) with C = 6 and 1 <= W <= 8, got 7x4");
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y, &x, &w3, NULL, false), "w must be (C, W) with C = 6 and 1 <= W <= 8, got 6x1x4");
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y, &x, &w, &b7, false), "bias must be (C) with C = 6, got 7");
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y, &x2, &w, NULL, false), "x must be (B, T, C), got 2x6");
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y, &xi, &w, NULL, false), "seqnn.F.causal_conv1d: x must be f32, got i64");
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y, &x, &dx, NULL, false), "w must be (C, W)");
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y, &xt, &w, NULL, false), "x must have unit stride on its last dim");
  EXPECT_EINVAL(sn_causal_conv1d_fwd(&ctx, &y4, &x, &w, NULL, false),
                "y must be a contiguous f32 tensor of shape (2, 5, 6), got f32 2x4x6");
  EXPECT_EINVAL(sn_causal_conv1d_bwd(&ctx, &dx, &dw, NULL, &y4, &x, &w, NULL, true),
                "grad_output must have x's shape (x: 2x5x6, grad_output: 2x4x6)");
  EXPECT_EINVAL(sn_causal_conv1d_bwd(&ctx, &dx, &w7, NULL, &y, &x, &w, NULL, true),
                "dw must be a contiguous f32 tensor of shape (6, 4), got f32 7x4");
  EXPECT_EINVAL(sn_causal_conv1d_bwd(&ctx, &dx, &dw, &b7, &y, &x, &w, &b, true),
                "dbias must be a contiguous f32 tensor of shape (6), got f32 7");
  EXPECT_EINVAL(sn_causal_conv1d_bwd(&ctx, &y4, &dw, NULL, &y, &x, &w, NULL, true), "dx must be a contiguous");
  EXPECT_EINVAL(sn_causal_conv1d_step(&ctx, &y2, &st4, &x2, &w, &b, true),
                "seqnn.F.causal_conv1d_step: state must be a contiguous f32 tensor of shape (2, 3, 6), got f32 2x4x6");
  EXPECT_EINVAL(sn_causal_conv1d_step(&ctx, &y2, &st, &x, &w, &b, true), "x must be (B, C), got 2x5x6");
  EXPECT_EINVAL(sn_causal_conv1d_step(&ctx, &y2, &st, &x2, &w9, &b, true), "w must be (C, W)");
  EXPECT_EINVAL(sn_causal_conv1d_step(&ctx, &st, &st, &x2, &w, &b, true), "y must be a contiguous f32 tensor of shape (2, 6)");
  /* The valid calls pass. */
  cr_expect_eq(sn_causal_conv1d_step(&ctx, &y2, &st, &x2, &w, &b, true), SN_OK, "%s", ctx.err);
  cr_expect_eq(sn_causal_conv1d_bwd(&ctx, &dx, &dw, &b, &y, &x, &w, &b, true), SN_OK, "%s", ctx.err);
  sn_tensor *all[] = {&x, &y, &dx, &w, &dw, &w0, &w9, &w7, &w3, &b, &b7, &x2, &xi, &y4, &st, &st4, &y2, &xt};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}
