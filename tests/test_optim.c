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

/* ---- row-sparse (lazy) steps ------------------------------------------------------------ */

/* g <- the sum, in order, of the rows of vals whose entry in rows is r; false when none is. */
static bool row_grad(float *g, const sn_tensor *rows, const sn_tensor *vals, int64_t r) {
  const int64_t n = rows->size[0], D = vals->size[1];
  bool hit = false;
  for (int64_t i = 0; i < n; i++)
    if (sn_i64(rows)[i] == r) {
      const float *src = sn_f32(vals) + i * D;
      if (!hit) memcpy(g, src, (size_t)D * 4);
      else for (int64_t d = 0; d < D; d++) g[d] += src[d];
      hit = true;
    }
  return hit;
}

/* Steps with random row sets (duplicates included) against the dense kernel run on each
 * touched row alone (its gradient the duplicates summed in order, its step its own count):
 * the same bits; untouched rows and their moments keep their bits. */
static void check_adamw_rows(int64_t R, int64_t D) {
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  int64_t size[2] = {R, D}, one[2] = {1, D};
  sn_tensor p = tu_make(&ctx, 2, size, 71, 1, 0), m = tu_make(&ctx, 2, size, 72, 0.1, 0), v = tu_make(&ctx, 2, size, 73, 0.01, 0.02);
  sn_tensor steps = tu_empty(&ctx, SN_I64, 1, &R);
  memset(sn_i64(&steps), 0, (size_t)R * 8);
  sn_tensor rp = tu_empty(&ctx, SN_F32, 2, one), rm = tu_empty(&ctx, SN_F32, 2, one), rv = tu_empty(&ctx, SN_F32, 2, one);
  sn_tensor rg = tu_empty(&ctx, SN_F32, 2, one);
  float *p0 = malloc((size_t)(R * D) * 4), *m0 = malloc((size_t)(R * D) * 4), *v0 = malloc((size_t)(R * D) * 4);
  for (int step = 0; step < 4; step++) {
    int64_t n = 2 + step * 3;
    sn_tensor rows = tu_empty(&ctx, SN_I64, 1, &n), vals = tu_make(&ctx, 2, (int64_t[]){n, D}, 80 + (uint32_t)step, 1, 0);
    for (int64_t i = 0; i < n; i++) sn_i64(&rows)[i] = (i * 7 + step * 5) % (R > 3 ? R - 2 : R); /* repeats, unsorted */
    if (n > 3) sn_i64(&rows)[n - 1] = sn_i64(&rows)[0];                                    /* a duplicate */
    memcpy(p0, sn_f32(&p), (size_t)(R * D) * 4), memcpy(m0, sn_f32(&m), (size_t)(R * D) * 4);
    memcpy(v0, sn_f32(&v), (size_t)(R * D) * 4);
    int64_t *before = malloc((size_t)R * 8);
    memcpy(before, sn_i64(&steps), (size_t)R * 8);
    cr_assert_eq(sn_adamw_rows_step(&ctx, &p, &m, &v, &steps, &rows, &vals, lr, b1, b2, eps, wd), SN_OK, "%s", ctx.err);
    for (int64_t r = 0; r < R; r++) {
      bool hit = row_grad(sn_f32(&rg), &rows, &vals, r);
      size_t o = (size_t)(r * D), bytes = (size_t)D * 4;
      if (!hit) {
        cr_expect(memcmp(sn_f32(&p) + o, p0 + o, bytes) == 0 && memcmp(sn_f32(&m) + o, m0 + o, bytes) == 0 &&
                      memcmp(sn_f32(&v) + o, v0 + o, bytes) == 0 && sn_i64(&steps)[r] == before[r],
                  "untouched row %lld changed (step %d)", (long long)r, step);
        continue;
      }
      cr_expect_eq(sn_i64(&steps)[r], before[r] + 1);
      memcpy(sn_f32(&rp), p0 + o, bytes), memcpy(sn_f32(&rm), m0 + o, bytes), memcpy(sn_f32(&rv), v0 + o, bytes);
      cr_assert_eq(sn_adamw_step(&ctx, &rp, &rm, &rv, &rg, lr, b1, b2, eps, wd, sn_i64(&steps)[r]), SN_OK, "%s", ctx.err);
      cr_expect(memcmp(sn_f32(&p) + o, sn_f32(&rp), bytes) == 0 && memcmp(sn_f32(&m) + o, sn_f32(&rm), bytes) == 0 &&
                    memcmp(sn_f32(&v) + o, sn_f32(&rv), bytes) == 0,
                "row %lld differs from the dense step (R %lld, D %lld, step %d)", (long long)r, (long long)R, (long long)D,
                step);
    }
    free(before);
    sn_tensor_release(&rows), sn_tensor_release(&vals);
  }
  free(p0), free(m0), free(v0);
  sn_tensor_release(&p), sn_tensor_release(&m), sn_tensor_release(&v), sn_tensor_release(&steps);
  sn_tensor_release(&rp), sn_tensor_release(&rm), sn_tensor_release(&rv), sn_tensor_release(&rg);
}

Test(optim, adamw_rows_equals_dense_on_touched_rows) {
  check_adamw_rows(1, 1);
  check_adamw_rows(13, 7);
  check_adamw_rows(37, 19);
  check_adamw_rows(9, 1031); /* rows longer than the kernel's tile */
}

Test(optim, sgd_rows_equals_dense_on_touched_rows) {
  const int64_t R = 11, D = 9;
  const double lr = 0.05, mom = 0.9, damp = 0.1, wd = 0.01;
  int64_t size[2] = {R, D}, one[2] = {1, D};
  sn_tensor p = tu_make(&ctx, 2, size, 5, 1, 0), buf = tu_empty(&ctx, SN_F32, 2, size), steps = tu_empty(&ctx, SN_I64, 1, &R);
  memset(sn_f32(&buf), 0, (size_t)(R * D) * 4), memset(sn_i64(&steps), 0, (size_t)R * 8);
  sn_tensor rp = tu_empty(&ctx, SN_F32, 2, one), rb = tu_empty(&ctx, SN_F32, 2, one), rg = tu_empty(&ctx, SN_F32, 2, one);
  float *p0 = malloc((size_t)(R * D) * 4), *b0 = malloc((size_t)(R * D) * 4);
  static const int64_t sets[3][4] = {{2, 5, 2, 9}, {5, 0, 10, 3}, {9, 9, 1, 2}};
  for (int step = 0; step < 3; step++) {
    int64_t n = 4;
    sn_tensor rows = tu_empty(&ctx, SN_I64, 1, &n), vals = tu_make(&ctx, 2, (int64_t[]){n, D}, 30 + (uint32_t)step, 1, 0);
    memcpy(sn_i64(&rows), sets[step], sizeof sets[step]);
    memcpy(p0, sn_f32(&p), (size_t)(R * D) * 4), memcpy(b0, sn_f32(&buf), (size_t)(R * D) * 4);
    int64_t before[11];
    memcpy(before, sn_i64(&steps), sizeof before);
    cr_assert_eq(sn_sgd_rows_step(&ctx, &p, &buf, &steps, &rows, &vals, lr, mom, damp, wd, false), SN_OK, "%s", ctx.err);
    for (int64_t r = 0; r < R; r++) {
      bool hit = row_grad(sn_f32(&rg), &rows, &vals, r);
      size_t o = (size_t)(r * D), bytes = (size_t)D * 4;
      if (!hit) {
        cr_expect(memcmp(sn_f32(&p) + o, p0 + o, bytes) == 0 && memcmp(sn_f32(&buf) + o, b0 + o, bytes) == 0,
                  "untouched row %lld changed", (long long)r);
        continue;
      }
      memcpy(sn_f32(&rp), p0 + o, bytes), memcpy(sn_f32(&rb), b0 + o, bytes);
      cr_assert_eq(sn_sgd_step(&ctx, &rp, &rb, &rg, lr, mom, damp, wd, false, before[r] == 0), SN_OK, "%s", ctx.err);
      cr_expect(memcmp(sn_f32(&p) + o, sn_f32(&rp), bytes) == 0 && memcmp(sn_f32(&buf) + o, sn_f32(&rb), bytes) == 0,
                "row %lld differs from the dense SGD step (step %d)", (long long)r, step);
    }
    sn_tensor_release(&rows), sn_tensor_release(&vals);
  }
  free(p0), free(b0);
  sn_tensor_release(&p), sn_tensor_release(&buf), sn_tensor_release(&steps);
  sn_tensor_release(&rp), sn_tensor_release(&rb), sn_tensor_release(&rg);
}

Test(optim, rows_coalesce_and_scatter_add) {
  const int64_t R = 6, D = 3, n = 5;
  static const int64_t in[5] = {4, 1, 4, 0, 1};
  sn_tensor rows = tu_empty(&ctx, SN_I64, 1, &n), vals = tu_make(&ctx, 2, (int64_t[]){n, D}, 3, 1, 0);
  memcpy(sn_i64(&rows), in, sizeof in);
  int64_t U;
  cr_assert_eq(sn_rows_count(&ctx, &U, &rows, R), SN_OK, "%s", ctx.err);
  cr_assert_eq(U, 3);
  sn_tensor orow = tu_empty(&ctx, SN_I64, 1, &U), ov = tu_empty(&ctx, SN_F32, 2, (int64_t[]){U, D});
  cr_assert_eq(sn_rows_coalesce(&ctx, &orow, &ov, &rows, &vals, R), SN_OK, "%s", ctx.err);
  sn_tensor dense = tu_empty(&ctx, SN_F32, 2, (int64_t[]){R, D}), dense2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){R, D});
  memset(sn_f32(&dense), 0, (size_t)(R * D) * 4), memset(sn_f32(&dense2), 0, (size_t)(R * D) * 4);
  cr_assert_eq(sn_rows_scatter_add(&ctx, &dense, &rows, &vals), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_rows_scatter_add(&ctx, &dense2, &orow, &ov), SN_OK, "%s", ctx.err);
  double ref[18] = {0};
  for (int64_t i = 0; i < n; i++)
    for (int64_t d = 0; d < D; d++) ref[in[i] * D + d] += sn_f32(&vals)[i * D + d];
  cr_expect_leq(tu_max_scaled_err(&dense, ref, 1e-6, 1e-6), 1.0);
  cr_expect(tu_same_bits(&dense, &dense2), "coalesced rows scatter to the same dense gradient");
  cr_expect(sn_i64(&orow)[0] == 0 && sn_i64(&orow)[1] == 1 && sn_i64(&orow)[2] == 4, "rows ascending");
  sn_i64(&rows)[2] = R;
  TU_EXPECT_EINVAL_HAS(sn_rows_count(&ctx, &U, &rows, R), "rows[2] = 6 is outside the 6 rows");
  TU_EXPECT_EINVAL_HAS(sn_rows_scatter_add(&ctx, &dense, &rows, &vals), "rows[2] = 6 is outside the 6 rows");
  sn_tensor m = tu_empty(&ctx, SN_F32, 2, (int64_t[]){R, D}), v = tu_empty(&ctx, SN_F32, 2, (int64_t[]){R, D});
  int64_t R1 = R + 1;
  sn_tensor steps = tu_empty(&ctx, SN_I64, 1, &R1);
  sn_i64(&rows)[2] = 2;
  TU_EXPECT_EINVAL_HAS(sn_adamw_rows_step(&ctx, &dense, &m, &v, &steps, &rows, &vals, 1e-3, 0.9, 0.999, 1e-8, 0),
                       "'row_step' must be a contiguous i64 tensor of 6 elements");
  sn_tensor_release(&rows), sn_tensor_release(&vals), sn_tensor_release(&orow), sn_tensor_release(&ov);
  sn_tensor_release(&dense), sn_tensor_release(&dense2), sn_tensor_release(&m), sn_tensor_release(&v);
  sn_tensor_release(&steps);
}
