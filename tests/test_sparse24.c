/* test_sparse24.c -- kernels/sparse24.c: from_dense against a selection rule written
 * differently (rank by count), the round trip through to_dense, the matmul against a double
 * product with the expanded weight on every SIMD level (decode and panel paths, K past one
 * chunk and one idx word, M not a multiple of the row block, strided x), thread-count
 * independence, and bad input (bad codes, stray bits, K not a multiple of 4, shapes). */
#include <omp.h>

#include "simdutil.h"
#include "testutil.h"

TU_SUITE(sparse24);

/* ---- reference --------------------------------------------------------------------------- */

/* Position p of a group is kept iff fewer than 2 others outrank it: larger |w|, or equal |w|
 * at a lower position. */
static bool kept(const float *q, int p) {
  int above = 0;
  for (int o = 0; o < 4; o++)
    if (o != p && (fabsf(q[o]) > fabsf(q[p]) || (fabsf(q[o]) == fabsf(q[p]) && o < p))) above++;
  return above < 2;
}

/* y[n][m] = bias[m] + sum_k x[n][k] w[m][k], in double. */
static void ref_matmul(double *y, const sn_tensor *x, const sn_tensor *w, const sn_tensor *bias) {
  int64_t N = x->size[0], K = x->size[1], M = w->size[0];
  for (int64_t n = 0; n < N; n++)
    for (int64_t m = 0; m < M; m++) {
      double s = bias ? sn_f32(bias)[m] : 0;
      for (int64_t k = 0; k < K; k++) s += tu_get(x, n * K + k) * (double)sn_f32(w)[m * K + k];
      y[n * M + m] = s;
    }
}

/* Values in [-1, 1] on a grid of 1/4, so groups have ties. */
static sn_tensor tied(int64_t M, int64_t K, uint32_t seed) {
  sn_tensor w = tu_make(&ctx, 2, (int64_t[]){M, K}, seed, 1.0, 0.0);
  for (int64_t i = 0; i < M * K; i++) sn_f32(&w)[i] = roundf(sn_f32(&w)[i] * 4) / 4;
  return w;
}

static void compress(sn_tensor *values, sn_tensor *idx, const sn_tensor *w) {
  int64_t M = w->size[0], K = w->size[1];
  *values = tu_empty(&ctx, SN_F32, 2, (int64_t[]){M, K / 2});
  *idx = tu_empty(&ctx, SN_I64, 2, (int64_t[]){M, (K + 63) / 64});
  cr_assert_eq(sn_sparse24_from_dense(&ctx, values, idx, w), SN_OK, "%s", ctx.err);
}

/* ---- compression ----------------------------------------------------------------------- */

Test(sparse24, from_dense_keeps_the_two_largest_ties_to_the_lower_position) {
  static const int64_t shapes[][2] = {{1, 4}, {3, 20}, {5, 64}, {7, 132}, {2, 256}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    int64_t M = shapes[s][0], K = shapes[s][1];
    sn_tensor w = tied(M, K, (uint32_t)s + 1), values, idx, back = tu_empty(&ctx, SN_F32, 2, (int64_t[]){M, K});
    compress(&values, &idx, &w);
    int64_t nw = (K + 63) / 64, bad = 0;
    for (int64_t m = 0; m < M; m++) {
      for (int64_t g = 0; g < K / 4; g++) {
        const float *q = sn_f32(&w) + m * K + 4 * g;
        int want[2], n = 0;
        for (int p = 0; p < 4; p++)
          if (kept(q, p)) want[n++] = p;
        cr_assert_eq(n, 2);
        unsigned code = (unsigned)((uint64_t)sn_i64(&idx)[m * nw + g / 16] >> (4 * (g % 16))) & 15;
        bad += code != (unsigned)(want[0] | want[1] << 2);
        bad += sn_f32(&values)[m * K / 2 + 2 * g] != q[want[0]] || sn_f32(&values)[m * K / 2 + 2 * g + 1] != q[want[1]];
      }
      /* Bits past the last group are zero. */
      int64_t G = K / 4;
      if (G % 16) bad += ((uint64_t)sn_i64(&idx)[m * nw + nw - 1] >> (4 * (G % 16))) != 0;
    }
    cr_expect_eq(bad, 0, "M %lld K %lld: %lld wrong entries", (long long)M, (long long)K, (long long)bad);
    /* to_dense puts the kept entries back and zeros elsewhere. */
    cr_assert_eq(sn_sparse24_to_dense(&ctx, &back, &values, &idx), SN_OK, "%s", ctx.err);
    for (int64_t i = 0; i < M * K; i++) {
      const float *q = sn_f32(&w) + i / 4 * 4;
      float want = kept(q, (int)(i % 4)) ? sn_f32(&w)[i] : 0.0f;
      if (sn_f32(&back)[i] != want) {
        cr_expect_eq(sn_f32(&back)[i], want, "to_dense entry %lld", (long long)i);
        break;
      }
    }
    sn_tensor *all[] = {&w, &values, &idx, &back};
    for (size_t i = 0; i < 4; i++) sn_tensor_release(all[i]);
  }
}

Test(sparse24, to_dense_then_from_dense_gives_back_values_and_codes) {
  int64_t M = 6, K = 72;
  /* Every valid code, cycling, with nonzero distinct values (no ties to break). */
  static const unsigned codes[6] = {0x4, 0x8, 0xc, 0x9, 0xd, 0xe};
  sn_tensor values = tu_make(&ctx, 2, (int64_t[]){M, K / 2}, 5, 0.5, 0.0);
  sn_tensor idx = tu_empty(&ctx, SN_I64, 2, (int64_t[]){M, 2});
  for (int64_t i = 0; i < M * K / 2; i++) sn_f32(&values)[i] += sn_f32(&values)[i] >= 0 ? 0.5f : -0.5f;
  memset(sn_i64(&idx), 0, sizeof(int64_t) * (size_t)(M * 2));
  for (int64_t m = 0; m < M; m++)
    for (int64_t g = 0; g < K / 4; g++)
      sn_i64(&idx)[m * 2 + g / 16] |= (int64_t)((uint64_t)codes[(m + g) % 6] << (4 * (g % 16)));
  sn_tensor w = tu_empty(&ctx, SN_F32, 2, (int64_t[]){M, K}), v2, i2;
  cr_assert_eq(sn_sparse24_to_dense(&ctx, &w, &values, &idx), SN_OK, "%s", ctx.err);
  compress(&v2, &i2, &w);
  cr_expect(tu_same_bits(&v2, &values), "values round trip");
  cr_expect(memcmp(sn_i64(&i2), sn_i64(&idx), sizeof(int64_t) * (size_t)(M * 2)) == 0, "codes round trip");
  sn_tensor *all[] = {&values, &idx, &w, &v2, &i2};
  for (size_t i = 0; i < 5; i++) sn_tensor_release(all[i]);
}

/* ---- product --------------------------------------------------------------------------- */

/* One case: y from the kernel against the double product with to_dense(W). */
static void check_matmul(int64_t N, int64_t M, int64_t K, bool with_bias, bool strided, const char *level) {
  char what[160];
  snprintf(what, sizeof what, "%s: N %lld M %lld K %lld bias %d strided %d", level, (long long)N, (long long)M,
           (long long)K, with_bias, strided);
  sn_tensor w = tu_make(&ctx, 2, (int64_t[]){M, K}, 11, 1.0, 0.0), values, idx;
  compress(&values, &idx, &w);
  sn_tensor wd = tu_empty(&ctx, SN_F32, 2, (int64_t[]){M, K});
  cr_assert_eq(sn_sparse24_to_dense(&ctx, &wd, &values, &idx), SN_OK, "%s", ctx.err);
  sn_tensor xo = tu_make(&ctx, 2, (int64_t[]){N, K + (strided ? 3 : 0)}, 12, 1.0, 0.0), x;
  cr_assert_eq(sn_narrow(&ctx, &x, &xo, 1, strided ? 2 : 0, K), SN_OK, "%s", ctx.err);
  sn_tensor bias = tu_make(&ctx, 1, &M, 13, 1.0, 0.0), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M});
  double *ref = tu_dalloc(N * M);
  ref_matmul(ref, &x, &wd, with_bias ? &bias : NULL);
  cr_assert_eq(sn_sparse24_matmul(&ctx, &y, &x, &values, &idx, with_bias ? &bias : NULL), SN_OK, "%s: %s", what,
               ctx.err);
  cr_expect_leq(tu_max_scaled_err(&y, ref, 1e-5, 1e-5), 1.0, "y, %s", what);
  free(ref);
  sn_tensor *all[] = {&w, &values, &idx, &wd, &xo, &x, &bias, &y};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(sparse24, matmul_matches_the_dense_product_on_every_level) {
  static const int64_t mk[][2] = {{36, 20}, {5, 4}, {17, 68}, {33, 132}, {4, 256}, {20, 0}};
  static const int64_t ns[] = {1, 3, 4, 5, 37, 130};
  int nl = level_count();
  for (int l = 0; l < nl; l++) {
    use_level(l);
    for (size_t s = 0; s < sizeof mk / sizeof *mk; s++)
      for (size_t n = 0; n < sizeof ns / sizeof *ns; n++)
        check_matmul(ns[n], mk[s][0], mk[s][1], (n + s) % 2 == 0, n % 3 == 1, levels[l]);
  }
  restore_level();
}

Test(sparse24, matmul_results_do_not_depend_on_the_thread_count) {
  int64_t N = 150, M = 200, K = 96;
  sn_tensor w = tu_make(&ctx, 2, (int64_t[]){M, K}, 21, 1.0, 0.0), values, idx;
  compress(&values, &idx, &w);
  sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, K}, 22, 1.0, 0.0), bias = tu_make(&ctx, 1, &M, 23, 1.0, 0.0);
  sn_tensor y[2] = {tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M}), tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M})};
  int saved = omp_get_max_threads();
  for (int r = 0; r < 2; r++) {
    omp_set_num_threads(r + 1);
    cr_assert_eq(sn_sparse24_matmul(&ctx, &y[r], &x, &values, &idx, &bias), SN_OK, "%s", ctx.err);
  }
  omp_set_num_threads(saved);
  cr_expect(tu_same_bits(&y[0], &y[1]), "1 and 2 threads differ");
  sn_tensor *all[] = {&w, &values, &idx, &x, &bias, &y[0], &y[1]};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(sparse24, nan_in_x_reaches_the_outputs_of_its_token) {
  int64_t N = 40, M = 8, K = 16;
  sn_tensor w = tu_make(&ctx, 2, (int64_t[]){M, K}, 31, 1.0, 0.0), values, idx;
  compress(&values, &idx, &w);
  sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, K}, 32, 1.0, 0.0), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M});
  /* Every input of token 7 is NaN: every output of it is, and no other token's. */
  for (int64_t k = 0; k < K; k++) sn_f32(&x)[7 * K + k] = NAN;
  cr_assert_eq(sn_sparse24_matmul(&ctx, &y, &x, &values, &idx, NULL), SN_OK, "%s", ctx.err);
  for (int64_t n = 0; n < N; n++)
    for (int64_t m = 0; m < M; m++)
      cr_expect_eq(isnan(sn_f32(&y)[n * M + m]), n == 7, "token %lld output %lld", (long long)n, (long long)m);
  sn_tensor *all[] = {&w, &values, &idx, &x, &y};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

/* ---- bad input ------------------------------------------------------------------------- */

Test(sparse24, rejects_bad_codes_and_stray_bits) {
  int64_t M = 3, K = 20, N = 2;
  sn_tensor w = tu_make(&ctx, 2, (int64_t[]){M, K}, 41, 1.0, 0.0), values, idx;
  compress(&values, &idx, &w);
  sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, K}, 42, 1.0, 0.0), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M});
  sn_tensor wd = tu_empty(&ctx, SN_F32, 2, (int64_t[]){M, K});
  int64_t good = sn_i64(&idx)[1];
  /* Row 1, group 3: p0 = p1 = 1 (0x5), then p0 = 2 > p1 = 1 (0x6); then a bit past group 4. */
  const uint64_t bad[] = {((uint64_t)good & ~(0xfull << 12)) | (0x5ull << 12),
                          ((uint64_t)good & ~(0xfull << 12)) | (0x6ull << 12), (uint64_t)good | (1ull << 21)};
  const char *want[] = {"bad code 5 at row 1, group 3", "bad code 6 at row 1, group 3",
                        "nonzero bits past the last group"};
  for (int i = 0; i < 3; i++) {
    sn_i64(&idx)[1] = (int64_t)bad[i];
    cr_expect_eq(sn_sparse24_matmul(&ctx, &y, &x, &values, &idx, NULL), SN_EINVAL, "case %d", i);
    cr_expect(strstr(ctx.err, want[i]) != NULL, "message was: %s", ctx.err);
    cr_expect_eq(sn_sparse24_to_dense(&ctx, &wd, &values, &idx), SN_EINVAL, "case %d", i);
    cr_expect(strstr(ctx.err, "sparse24_to_dense") != NULL, "message was: %s", ctx.err);
  }
  sn_tensor *all[] = {&w, &values, &idx, &x, &y, &wd};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(sparse24, rejects_k_not_a_multiple_of_4_and_bad_shapes) {
  sn_tensor w6 = tu_make(&ctx, 2, (int64_t[]){3, 6}, 51, 1.0, 0.0);
  sn_tensor v3 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){3, 3}), i1 = tu_empty(&ctx, SN_I64, 2, (int64_t[]){3, 1});
  cr_expect_eq(sn_sparse24_from_dense(&ctx, &v3, &i1, &w6), SN_EINVAL);
  cr_expect(strstr(ctx.err, "multiple of 4") && strstr(ctx.err, "3x6"), "message was: %s", ctx.err);
  /* values with K/2 = 3 columns: K = 6 */
  sn_tensor x6 = tu_make(&ctx, 2, (int64_t[]){2, 6}, 52, 1.0, 0.0), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 3});
  memset(sn_i64(&i1), 0, 3 * sizeof(int64_t));
  cr_expect_eq(sn_sparse24_matmul(&ctx, &y, &x6, &v3, &i1, NULL), SN_EINVAL);
  cr_expect(strstr(ctx.err, "multiple of 4") != NULL, "message was: %s", ctx.err);
  /* x with the wrong K, idx of the wrong shape, y of the wrong shape, bias too short. */
  sn_tensor w = tu_make(&ctx, 2, (int64_t[]){3, 8}, 53, 1.0, 0.0), values, idx;
  compress(&values, &idx, &w);
  sn_tensor x12 = tu_make(&ctx, 2, (int64_t[]){2, 12}, 54, 1.0, 0.0);
  sn_tensor x8 = tu_make(&ctx, 2, (int64_t[]){2, 8}, 55, 1.0, 0.0);
  cr_expect_eq(sn_sparse24_matmul(&ctx, &y, &x12, &values, &idx, NULL), SN_EINVAL);
  cr_expect(strstr(ctx.err, "x has 12 features but the weight has K = 8") != NULL, "message was: %s", ctx.err);
  sn_tensor i2 = tu_empty(&ctx, SN_I64, 2, (int64_t[]){3, 2}), y4 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 4});
  cr_expect_eq(sn_sparse24_matmul(&ctx, &y, &x8, &values, &i2, NULL), SN_EINVAL);
  cr_expect(strstr(ctx.err, "idx must be a contiguous i64 tensor of shape 3x1, got i64 3x2") != NULL, "message was: %s",
            ctx.err);
  cr_expect_eq(sn_sparse24_matmul(&ctx, &y4, &x8, &values, &idx, NULL), SN_EINVAL);
  cr_expect(strstr(ctx.err, "y must be") != NULL, "message was: %s", ctx.err);
  sn_tensor b2 = tu_make(&ctx, 1, (int64_t[]){2}, 56, 1.0, 0.0);
  cr_expect_eq(sn_sparse24_matmul(&ctx, &y, &x8, &values, &idx, &b2), SN_EINVAL);
  cr_expect(strstr(ctx.err, "bias") != NULL, "message was: %s", ctx.err);
  cr_expect_eq(sn_sparse24_matmul(&ctx, &y, &x8, &idx, &idx, NULL), SN_EINVAL);
  cr_expect(strstr(ctx.err, "values must be a contiguous f32 tensor (M, K/2), got i64") != NULL, "message was: %s",
            ctx.err);
  sn_tensor *all[] = {&w6, &v3, &i1, &x6, &y, &w, &values, &idx, &x12, &x8, &i2, &y4, &b2};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}
