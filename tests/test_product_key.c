/* test_product_key.c -- the product-key memory kernels against naive references in
 * double: top-k against a full sort (ties, k = n, odd n, NaN), the candidate top-k against
 * brute force over the whole n^2 product set, the weighted gather and its backward (dw and
 * the sparse value rows against a dense scatter), and the same bits for 1 and 2 threads. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

TU_SUITE(product_key);

typedef struct {
  double v;
  int64_t id;
} ranked;

/* Best first: larger value, then the lower id. */
static int cmp_ranked(const void *a, const void *b) {
  const ranked *x = a, *y = b;
  if (x->v != y->v) return x->v > y->v ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* Sorts the `count` candidates of row r and expects the kernel's k ids and values to be the
 * first k of them (what names the case in messages). */
static void expect_best(ranked *all, int64_t count, const int64_t *id, const float *v, int64_t k, int64_t r,
                        const char *what) {
  qsort(all, (size_t)count, sizeof *all, cmp_ranked);
  for (int64_t j = 0; j < k; j++) {
    cr_expect_eq(id[r * k + j], all[j].id, "%s row %lld rank %lld: %lld, want %lld", what, (long long)r, (long long)j,
                 (long long)id[r * k + j], (long long)all[j].id);
    cr_expect_eq(v[r * k + j], (float)all[j].v);
  }
}

/* Values on a grid of 1/4 in [-2, 2): many ties, and sums of two are exact in f32. */
static void quantize(sn_tensor *t) {
  for (int64_t i = 0; i < sn_numel(t); i++) sn_f32(t)[i] = floorf(sn_f32(t)[i] * 8.0f) / 4.0f;
}

static void check_topk(int64_t R, int64_t n, int64_t k, bool ties) {
  sn_tensor s = tu_make(&ctx, 2, (int64_t[]){R, n}, (uint32_t)(n * 31 + k), 1, 0);
  if (ties) quantize(&s);
  sn_tensor idx = tu_empty(&ctx, SN_I64, 2, (int64_t[]){R, k}), val = tu_empty(&ctx, SN_F32, 2, (int64_t[]){R, k});
  cr_assert_eq(sn_product_key_topk(&ctx, &idx, &val, &s, k), SN_OK, "%s", ctx.err);
  ranked *all = malloc((size_t)n * sizeof *all);
  char what[64];
  snprintf(what, sizeof what, "topk n %lld k %lld ties %d", (long long)n, (long long)k, ties);
  for (int64_t r = 0; r < R; r++) {
    for (int64_t i = 0; i < n; i++) all[i] = (ranked){sn_f32(&s)[r * n + i], i};
    expect_best(all, n, sn_i64(&idx), sn_f32(&val), k, r, what);
  }
  free(all);
  sn_tensor_release(&s), sn_tensor_release(&idx), sn_tensor_release(&val);
}

Test(product_key, topk_matches_full_sort) {
  static const int64_t cases[][2] = {{1, 1}, {7, 3}, {33, 33}, {100, 17}, {512, 32}, {257, 64}, {1000, 1}, {17, 16}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    check_topk(5, cases[c][0], cases[c][1], false);
    check_topk(5, cases[c][0], cases[c][1], true);
  }
}

Test(product_key, topk_all_equal_and_nan) {
  int64_t n = 37, k = 9;
  sn_tensor s = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, n});
  sn_tensor idx = tu_empty(&ctx, SN_I64, 2, (int64_t[]){2, k}), val = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, k});
  for (int64_t i = 0; i < n; i++) sn_f32(&s)[i] = 0.5f, sn_f32(&s)[n + i] = i % 3 ? NAN : (float)i;
  cr_assert_eq(sn_product_key_topk(&ctx, &idx, &val, &s, k), SN_OK, "%s", ctx.err);
  for (int64_t j = 0; j < k; j++) cr_expect_eq(sn_i64(&idx)[j], j, "all equal: the lowest indices, in order");
  /* Row 2: the 13 numbers 0, 3, ..., 36 beat every NaN; the 9 largest, descending. */
  for (int64_t j = 0; j < k; j++) cr_expect_eq(sn_i64(&idx)[k + j], 36 - 3 * j, "rank %lld", (long long)j);
  TU_EXPECT_EINVAL_HAS(sn_product_key_topk(&ctx, &idx, &val, &s, n + 1), "k must be in [1, 37]");
  sn_tensor_release(&s), sn_tensor_release(&idx), sn_tensor_release(&val);
}

/* slot/score against the k best of all n^2 sums (computed in f32 as the kernel does, ties by
 * the lower slot). */
static void check_select(int64_t R, int64_t n, int64_t k, bool ties, uint32_t seed) {
  sn_tensor s1 = tu_make(&ctx, 2, (int64_t[]){R, n}, seed, 1, 0), s2 = tu_make(&ctx, 2, (int64_t[]){R, n}, seed + 1, 1, 0);
  if (ties) quantize(&s1), quantize(&s2);
  sn_tensor slot = tu_empty(&ctx, SN_I64, 2, (int64_t[]){R, k}), score = tu_empty(&ctx, SN_F32, 2, (int64_t[]){R, k});
  cr_assert_eq(sn_product_key_select(&ctx, &slot, &score, &s1, &s2, k), SN_OK, "%s", ctx.err);
  ranked *all = malloc((size_t)(n * n) * sizeof *all);
  char what[64];
  snprintf(what, sizeof what, "select n %lld k %lld ties %d", (long long)n, (long long)k, ties);
  for (int64_t r = 0; r < R; r++) {
    for (int64_t a = 0; a < n; a++)
      for (int64_t b = 0; b < n; b++)
        all[a * n + b] = (ranked){(float)(sn_f32(&s1)[r * n + a] + sn_f32(&s2)[r * n + b]), a * n + b};
    expect_best(all, n * n, sn_i64(&slot), sn_f32(&score), k, r, what);
  }
  free(all);
  sn_tensor_release(&s1), sn_tensor_release(&s2), sn_tensor_release(&slot), sn_tensor_release(&score);
}

Test(product_key, select_equals_brute_force_over_product_set) {
  static const int64_t cases[][2] = {{1, 1}, {5, 1}, {5, 4}, {5, 5}, {16, 7}, {33, 32}, {33, 33}, {64, 32}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    check_select(4, cases[c][0], cases[c][1], false, (uint32_t)(100 + c));
    check_select(4, cases[c][0], cases[c][1], true, (uint32_t)(200 + c));
  }
}

Test(product_key, select_bwd_scatters_to_both_halves) {
  int64_t R = 3, n = 11, k = 6;
  sn_tensor s1 = tu_make(&ctx, 2, (int64_t[]){R, n}, 7, 1, 0), s2 = tu_make(&ctx, 2, (int64_t[]){R, n}, 8, 1, 0);
  sn_tensor slot = tu_empty(&ctx, SN_I64, 2, (int64_t[]){R, k}), score = tu_empty(&ctx, SN_F32, 2, (int64_t[]){R, k});
  cr_assert_eq(sn_product_key_select(&ctx, &slot, &score, &s1, &s2, k), SN_OK, "%s", ctx.err);
  sn_tensor g = tu_make(&ctx, 2, (int64_t[]){R, k}, 9, 1, 0);
  sn_tensor d1 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){R, n}), d2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){R, n});
  cr_assert_eq(sn_product_key_select_bwd(&ctx, &d1, &d2, &g, &slot), SN_OK, "%s", ctx.err);
  double *r1 = tu_dalloc(R * n), *r2 = tu_dalloc(R * n);
  for (int64_t r = 0; r < R; r++)
    for (int64_t j = 0; j < k; j++) {
      int64_t s = sn_i64(&slot)[r * k + j];
      r1[r * n + s / n] += sn_f32(&g)[r * k + j];
      r2[r * n + s % n] += sn_f32(&g)[r * k + j];
    }
  cr_expect_leq(tu_max_scaled_err(&d1, r1, 1e-6, 1e-6), 1.0);
  cr_expect_leq(tu_max_scaled_err(&d2, r2, 1e-6, 1e-6), 1.0);
  sn_i64(&slot)[4] = n * n;
  TU_EXPECT_EINVAL_HAS(sn_product_key_select_bwd(&ctx, &d1, &d2, &g, &slot), "slot[4] = 121 is outside [0, 121)");
  free(r1), free(r2);
  sn_tensor_release(&s1), sn_tensor_release(&s2), sn_tensor_release(&slot), sn_tensor_release(&score);
  sn_tensor_release(&g), sn_tensor_release(&d1), sn_tensor_release(&d2);
}

/* idx (N, J) with repeats: slots drawn from the first S/2 rows mostly, so rows repeat. */
static sn_tensor make_idx(int64_t N, int64_t J, int64_t S, uint32_t seed) {
  sn_tensor idx = tu_empty(&ctx, SN_I64, 2, (int64_t[]){N, J});
  uint32_t s = seed * 2654435761u + 7u;
  for (int64_t e = 0; e < N * J; e++) {
    s = s * 1664525u + 1013904223u;
    int64_t range = (s >> 31) ? S : (S + 1) / 2;
    sn_i64(&idx)[e] = (int64_t)((s >> 8) % (uint32_t)range);
  }
  return idx;
}

static const int64_t gather_cases[][4] = {/* N, J, D, S */
                                          {1, 1, 1, 1}, {3, 5, 7, 11}, {4, 33, 130, 50}, {2, 64, 515, 300},
                                          {9, 128, 16, 4096}, {5, 3, 129, 2}};

Test(product_key, gather_fwd_matches_naive) {
  for (size_t c = 0; c < sizeof gather_cases / sizeof gather_cases[0]; c++) {
    int64_t N = gather_cases[c][0], J = gather_cases[c][1], D = gather_cases[c][2], S = gather_cases[c][3];
    sn_tensor V = tu_make(&ctx, 2, (int64_t[]){S, D}, (uint32_t)c + 1, 1, 0), idx = make_idx(N, J, S, (uint32_t)c);
    sn_tensor w = tu_make(&ctx, 2, (int64_t[]){N, J}, (uint32_t)c + 50, 1, 0);
    sn_tensor y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, D});
    cr_assert_eq(sn_product_key_gather_fwd(&ctx, &y, &V, &idx, &w), SN_OK, "%s", ctx.err);
    double *ref = tu_dalloc(N * D);
    for (int64_t t = 0; t < N; t++)
      for (int64_t j = 0; j < J; j++)
        for (int64_t d = 0; d < D; d++)
          ref[t * D + d] += (double)sn_f32(&w)[t * J + j] * sn_f32(&V)[sn_i64(&idx)[t * J + j] * D + d];
    cr_expect_leq(tu_max_scaled_err(&y, ref, 1e-5, 1e-5), 1.0, "gather N%lld J%lld D%lld S%lld", (long long)N,
                  (long long)J, (long long)D, (long long)S);
    free(ref);
    sn_tensor_release(&V), sn_tensor_release(&idx), sn_tensor_release(&w), sn_tensor_release(&y);
  }
}

Test(product_key, gather_bwd_matches_dense_scatter) {
  int threads = sn_get_num_threads();
  for (size_t c = 0; c < sizeof gather_cases / sizeof gather_cases[0]; c++) {
    int64_t N = gather_cases[c][0], J = gather_cases[c][1], D = gather_cases[c][2], S = gather_cases[c][3];
    sn_tensor V = tu_make(&ctx, 2, (int64_t[]){S, D}, (uint32_t)c + 1, 1, 0), idx = make_idx(N, J, S, (uint32_t)c);
    sn_tensor w = tu_make(&ctx, 2, (int64_t[]){N, J}, (uint32_t)c + 50, 1, 0);
    sn_tensor dy = tu_make(&ctx, 2, (int64_t[]){N, D}, (uint32_t)c + 90, 1, 0);
    int64_t U;
    cr_assert_eq(sn_product_key_gather_rows(&ctx, &U, &idx, S), SN_OK, "%s", ctx.err);
    sn_tensor dw = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, J}), rows = tu_empty(&ctx, SN_I64, 1, &U);
    sn_tensor drows = tu_empty(&ctx, SN_F32, 2, (int64_t[]){U, D});
    sn_set_num_threads(1);
    cr_assert_eq(sn_product_key_gather_bwd(&ctx, &dw, &rows, &drows, &dy, &V, &idx, &w), SN_OK, "%s", ctx.err);
    /* references: dw by dot products, dV dense by scatter */
    double *rdw = tu_dalloc(N * J), *dense = tu_dalloc(S * D);
    bool *touched = calloc((size_t)S, 1);
    for (int64_t t = 0; t < N; t++)
      for (int64_t j = 0; j < J; j++) {
        int64_t s = sn_i64(&idx)[t * J + j];
        touched[s] = true;
        for (int64_t d = 0; d < D; d++) {
          rdw[t * J + j] += (double)sn_f32(&V)[s * D + d] * sn_f32(&dy)[t * D + d];
          dense[s * D + d] += (double)sn_f32(&w)[t * J + j] * sn_f32(&dy)[t * D + d];
        }
      }
    cr_expect_leq(tu_max_scaled_err(&dw, rdw, 1e-5, 1e-5), 1.0, "dw, case %zu", c);
    int64_t u = 0;
    for (int64_t s = 0; s < S; s++)
      if (touched[s]) {
        cr_assert_lt(u, U, "more touched rows than the kernel counted");
        cr_expect_eq(sn_i64(&rows)[u], s, "row %lld is %lld, want %lld", (long long)u, (long long)sn_i64(&rows)[u],
                     (long long)s);
        for (int64_t d = 0; d < D; d++) {
          double got = sn_f32(&drows)[u * D + d], want = dense[s * D + d];
          cr_expect(fabs(got - want) <= 1e-5 + 1e-5 * fabs(want), "dV[%lld][%lld] = %g, want %g", (long long)s,
                    (long long)d, got, want);
        }
        u++;
      }
    cr_expect_eq(u, U, "touched rows %lld, counted %lld", (long long)u, (long long)U);
    /* Two threads: the same bits (each row summed by one thread in (token, j) order). */
    sn_tensor dw2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, J}), rows2 = tu_empty(&ctx, SN_I64, 1, &U);
    sn_tensor drows2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){U, D});
    sn_set_num_threads(2);
    cr_assert_eq(sn_product_key_gather_bwd(&ctx, &dw2, &rows2, &drows2, &dy, &V, &idx, &w), SN_OK, "%s", ctx.err);
    cr_expect(tu_same_bits(&dw, &dw2) && tu_same_bits(&drows, &drows2), "1 and 2 threads differ, case %zu", c);
    cr_expect(memcmp(sn_i64(&rows), sn_i64(&rows2), (size_t)U * 8) == 0);
    free(rdw), free(dense), free(touched);
    sn_tensor_release(&V), sn_tensor_release(&idx), sn_tensor_release(&w), sn_tensor_release(&dy);
    sn_tensor_release(&dw), sn_tensor_release(&rows), sn_tensor_release(&drows);
    sn_tensor_release(&dw2), sn_tensor_release(&rows2), sn_tensor_release(&drows2);
  }
  sn_set_num_threads(threads);
}

Test(product_key, gather_rejects_bad_indices_and_shapes) {
  int64_t N = 2, J = 3, D = 5, S = 7;
  sn_tensor V = tu_make(&ctx, 2, (int64_t[]){S, D}, 1, 1, 0), idx = make_idx(N, J, S, 3);
  sn_tensor w = tu_make(&ctx, 2, (int64_t[]){N, J}, 2, 1, 0), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, D});
  sn_tensor dy = tu_make(&ctx, 2, (int64_t[]){N, D}, 4, 1, 0);
  sn_i64(&idx)[4] = 7;
  TU_EXPECT_EINVAL_HAS(sn_product_key_gather_fwd(&ctx, &y, &V, &idx, &w), "idx[1][1] = 7 is outside the 7 value rows");
  int64_t U;
  TU_EXPECT_EINVAL_HAS(sn_product_key_gather_rows(&ctx, &U, &idx, S), "idx[1][1] = 7");
  sn_i64(&idx)[4] = -1;
  TU_EXPECT_EINVAL_HAS(sn_product_key_gather_fwd(&ctx, &y, &V, &idx, &w), "= -1 is outside");
  sn_i64(&idx)[4] = 0;
  cr_assert_eq(sn_product_key_gather_rows(&ctx, &U, &idx, S), SN_OK, "%s", ctx.err);
  int64_t wrong = U + 1;
  sn_tensor rows = tu_empty(&ctx, SN_I64, 1, &wrong), drows = tu_empty(&ctx, SN_F32, 2, (int64_t[]){wrong, D});
  TU_EXPECT_EINVAL_HAS(sn_product_key_gather_bwd(&ctx, NULL, &rows, &drows, &dy, &V, &idx, &w), "distinct value rows");
  sn_tensor y3 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, D + 1});
  TU_EXPECT_EINVAL_HAS(sn_product_key_gather_fwd(&ctx, &y3, &V, &idx, &w), "'y' must be a contiguous f32 tensor of 2x5");
  sn_tensor_release(&V), sn_tensor_release(&idx), sn_tensor_release(&w), sn_tensor_release(&y);
  sn_tensor_release(&dy), sn_tensor_release(&rows), sn_tensor_release(&drows), sn_tensor_release(&y3);
}
