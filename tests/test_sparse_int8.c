/* test_sparse_int8.c -- kernels/sparse_int8.c on BSR weights built here by hand: the product
 * against an exact integer reference of the documented quantization (same bits), against
 * the f32 dense product within the quantization error bound, for block shapes with
 * ro % 4 == 0 and not (quads merging block-rows, M % 4 != 0), decode and panel token
 * counts; the VNNI and portable loops give the same bits; thread-count independence; the
 * empty matrix; NaN tokens; bad input. */
#include <omp.h>

#include "simdutil.h"
#include "testutil.h"

TU_SUITE(sparse_int8);

/* ---- a BSR weight ------------------------------------------------------------------------ */

typedef struct {
  int64_t M, K, ro, ri, nnzb;
  sn_tensor values, browptr, bcol;
  double *dense;   /* (M, K): the stored values, zeros elsewhere */
  bool *stored;    /* (M, K) */
} bsr;

/* Block (br, jb) is stored when a hash of it falls below density (in 1/16); block-row 1 is
 * always empty when there are 3 or more. */
static bsr make_bsr(int64_t M, int64_t K, int64_t ro, int64_t ri, int density, uint32_t seed) {
  bsr b = {.M = M, .K = K, .ro = ro, .ri = ri};
  int64_t Mb = M / ro, Kb = K / ri;
  b.browptr = tu_empty(&ctx, SN_I64, 1, (int64_t[]){Mb + 1});
  int64_t *bp = sn_i64(&b.browptr), *cols = malloc(sizeof(int64_t) * (size_t)(Mb * Kb + 1));
  bp[0] = 0;
  for (int64_t br = 0; br < Mb; br++) {
    bp[br + 1] = bp[br];
    for (int64_t jb = 0; jb < Kb; jb++) {
      uint32_t h = (uint32_t)(br * 7919 + jb * 104729) * 2654435761u + seed;
      if ((int)((h >> 13) % 16) < density && !(br == 1 && Mb >= 3)) cols[bp[br + 1]++] = jb;
    }
  }
  b.nnzb = bp[Mb];
  b.bcol = tu_empty(&ctx, SN_I64, 1, (int64_t[]){b.nnzb});
  memcpy(sn_i64(&b.bcol), cols, sizeof(int64_t) * (size_t)b.nnzb);
  b.values = tu_make(&ctx, 3, (int64_t[]){b.nnzb, ro, ri}, seed + 1, 1.0, 0.0);
  b.dense = tu_dalloc(M * K);
  b.stored = calloc((size_t)(M * K + 1), 1);
  for (int64_t br = 0; br < Mb; br++)
    for (int64_t i = bp[br]; i < bp[br + 1]; i++)
      for (int64_t r = 0; r < ro; r++)
        for (int64_t c = 0; c < ri; c++) {
          int64_t m = br * ro + r, k = cols[i] * ri + c;
          b.dense[m * K + k] = sn_f32(&b.values)[(i * ro + r) * ri + c];
          b.stored[m * K + k] = true;
        }
  free(cols);
  return b;
}

static void free_bsr(bsr *b) {
  sn_tensor_release(&b->values), sn_tensor_release(&b->browptr), sn_tensor_release(&b->bcol);
  free(b->dense), free(b->stored);
}

/* ---- the documented quantization, written again -------------------------------------------- */

static int q8(float v, float inv) {
  float r = v * inv;
  r = (r + 12582912.0f) - 12582912.0f;
  return r > 127.0f ? 127 : r < -127.0f ? -127 : (int)r;
}

static void scale_of(float mx, float *scale, float *inv) {
  if (mx < 0x1p-100f) *scale = *inv = 0.0f;
  else *scale = mx / 127.0f, *inv = 127.0f / mx;
}

/* y exactly as the kernel defines it (integer sums, then the float epilogue); also the
 * bound on |y - x W^T - bias| from rounding w and x: sum_k |w| sx/2 + |x| sw/2 + sx sw/4. */
static void ref_int8(float *y, double *bound, const bsr *b, const sn_tensor *x, const float *bias) {
  int64_t N = x->size[0], M = b->M, K = b->K;
  float *sw = malloc(sizeof(float) * (size_t)(M + 1)), *iw = malloc(sizeof(float) * (size_t)(M + 1));
  int *qw = malloc(sizeof(int) * (size_t)(M * K + 1)), *qx = malloc(sizeof(int) * (size_t)(K + 1));
  for (int64_t m = 0; m < M; m++) {
    float mx = 0;
    for (int64_t k = 0; k < K; k++)
      if (b->stored[m * K + k]) mx = fmaxf(mx, fabsf((float)b->dense[m * K + k]));
    scale_of(mx, &sw[m], &iw[m]);
    for (int64_t k = 0; k < K; k++) qw[m * K + k] = q8((float)b->dense[m * K + k], iw[m]);
  }
  for (int64_t n = 0; n < N; n++) {
    float mx = 0, sx, ix;
    for (int64_t k = 0; k < K; k++) mx = fmaxf(mx, fabsf((float)tu_get(x, n * K + k)));
    scale_of(mx, &sx, &ix);
    for (int64_t k = 0; k < K; k++) qx[k] = q8((float)tu_get(x, n * K + k), ix);
    for (int64_t m = 0; m < M; m++) {
      int64_t acc = 0;
      double bd = 0;
      for (int64_t k = 0; k < K; k++) {
        acc += (int64_t)qw[m * K + k] * qx[k];
        if (b->stored[m * K + k])
          bd += fabs(b->dense[m * K + k]) * sx / 2 + fabs(tu_get(x, n * K + k)) * sw[m] / 2 + (double)sx * sw[m] / 4;
      }
      float v = (float)acc * (sx * sw[m]);
      y[n * M + m] = bias ? v + bias[m] : v;
      bound[n * M + m] = bd;
    }
  }
  free(sw), free(iw), free(qw), free(qx);
}

/* ---- the product ------------------------------------------------------------------------- */

static sn_bsr_i8 *quantize(const bsr *b) {
  sn_bsr_i8 *w = NULL;
  cr_assert_eq(sn_bsr_i8_new(&ctx, &w, &b->values, &b->browptr, &b->bcol, b->K), SN_OK, "%s", ctx.err);
  cr_assert(w != NULL);
  cr_expect_gt(sn_bsr_i8_bytes(w), 0);
  return w;
}

/* y from the kernel: the same bits as ref_int8 and within the bound of the f32 product. */
static void check_case(const bsr *b, sn_bsr_i8 *w, int64_t N, bool with_bias, bool strided, const char *level) {
  char what[200];
  snprintf(what, sizeof what, "%s: M %lld K %lld block %lldx%lld nnzb %lld, N %lld bias %d strided %d", level,
           (long long)b->M, (long long)b->K, (long long)b->ro, (long long)b->ri, (long long)b->nnzb, (long long)N,
           with_bias, strided);
  int64_t M = b->M, K = b->K;
  sn_tensor xo = tu_make(&ctx, 2, (int64_t[]){N, K + (strided ? 5 : 0)}, 71, 2.0, 0.1), x;
  cr_assert_eq(sn_narrow(&ctx, &x, &xo, 1, strided ? 3 : 0, K), SN_OK, "%s", ctx.err);
  sn_tensor bias = tu_make(&ctx, 1, &M, 72, 1.0, 0.0), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M});
  float *want = malloc(sizeof(float) * (size_t)(N * M + 1));
  double *bound = tu_dalloc(N * M), *exact = tu_dalloc(N * M);
  ref_int8(want, bound, b, &x, with_bias ? sn_f32(&bias) : NULL);
  cr_assert_eq(sn_bsr_i8_matmul(&ctx, &y, &x, w, with_bias ? &bias : NULL), SN_OK, "%s: %s", what, ctx.err);
  int64_t diff = 0, out = 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t m = 0; m < M; m++) {
      double s = with_bias ? sn_f32(&bias)[m] : 0;
      for (int64_t k = 0; k < K; k++) s += b->dense[m * K + k] * tu_get(&x, n * K + k);
      float got = sn_f32(&y)[n * M + m];
      diff += memcmp(&got, &want[n * M + m], sizeof got) != 0;
      /* 1e-5 relative: the epilogue's float rounding on top of the integer error bound. */
      out += !(fabs(got - s) <= bound[n * M + m] + 1e-5 * (1 + fabs(s)));
    }
  cr_expect_eq(diff, 0, "%s: %lld outputs differ from the integer reference", what, (long long)diff);
  cr_expect_eq(out, 0, "%s: %lld outputs outside the quantization bound", what, (long long)out);
  free(want), free(bound), free(exact);
  sn_tensor *all[] = {&xo, &x, &bias, &y};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

static const struct {
  int64_t M, K, ro, ri;
  int density;
} shapes[] = {
    {16, 24, 4, 1, 8},  /* Intel's 4x1 */
    {12, 20, 4, 4, 6},  /* 4x4 blocks: a quad per block-row */
    {32, 130, 8, 2, 5}, /* ro = 8: 2 quads per block-row; K past two 64-input chunks */
    {12, 16, 1, 4, 7},  /* ro = 1: each quad merges 4 block-rows */
    {6, 9, 2, 3, 9},    /* M % 4 != 0: a padded quad */
    {9, 7, 3, 1, 16},   /* dense, M % 4 != 0, K odd */
};

Test(sparse_int8, matches_the_integer_reference_and_the_f32_product_on_every_level) {
  static const int64_t ns[] = {1, 3, 4, 5, 37, 64, 130};
  int nl = level_count();
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    bsr b = make_bsr(shapes[s].M, shapes[s].K, shapes[s].ro, shapes[s].ri, shapes[s].density, (uint32_t)s + 3);
    sn_bsr_i8 *w = quantize(&b);
    for (int l = 0; l < nl; l++) {
      use_level(l);
      for (size_t n = 0; n < sizeof ns / sizeof *ns; n++)
        check_case(&b, w, ns[n], (n + s) % 2 == 0, n % 3 == 2, levels[l]);
    }
    restore_level();
    sn_bsr_i8_free(w);
    free_bsr(&b);
  }
}

/* The VNNI loops (when the CPU has them) against the portable ones, bit for bit, on a larger
 * weight with every quad busy. SEQNN_SIMD=avx2 selects the portable loops. */
Test(sparse_int8, vnni_and_portable_loops_give_the_same_bits) {
  bsr b = make_bsr(64, 192, 4, 1, 6, 9);
  sn_bsr_i8 *w = quantize(&b);
  int64_t M = b.M, K = b.K;
  static const int64_t ns[] = {1, 4, 7, 200};
  for (size_t c = 0; c < 4; c++) {
    int64_t N = ns[c];
    sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, K}, 81, 3.0, 0.0);
    sn_tensor y[2] = {tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M}), tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M})};
    int nl = level_count();
    use_level(nl - 1);
    cr_assert_eq(sn_bsr_i8_matmul(&ctx, &y[0], &x, w, NULL), SN_OK, "%s", ctx.err);
    use_level(nl > 1 ? 1 : 0);
    cr_assert_eq(sn_bsr_i8_matmul(&ctx, &y[1], &x, w, NULL), SN_OK, "%s", ctx.err);
    restore_level();
    cr_expect(tu_same_bits(&y[0], &y[1]), "N %lld: %s and %s differ", (long long)N, levels[nl - 1], levels[nl > 1]);
    sn_tensor_release(&x), sn_tensor_release(&y[0]), sn_tensor_release(&y[1]);
  }
  sn_bsr_i8_free(w);
  free_bsr(&b);
}

/* The same on the packing's edges: K not a multiple of 16 (the VNNI packing's step), x
 * strided, a partial panel, tokens with inf or NaN inputs, and a bias. */
Test(sparse_int8, vnni_and_portable_packing_give_the_same_bits) {
  static const int64_t ks[] = {37, 130};
  for (size_t c = 0; c < 2; c++) {
    int64_t K = ks[c], M = 24, N = 70;
    bsr b = make_bsr(M, K, 4, 1, 7, 13 + (uint32_t)c);
    sn_bsr_i8 *w = quantize(&b);
    sn_tensor xo = tu_make(&ctx, 2, (int64_t[]){N, K + 3}, 87, 2.0, 0.1), x;
    cr_assert_eq(sn_narrow(&ctx, &x, &xo, 1, 2, K), SN_OK, "%s", ctx.err);
    sn_f32(&xo)[5 * (K + 3) + 2 + K - 1] = NAN;
    sn_f32(&xo)[66 * (K + 3) + 2] = -INFINITY;
    sn_tensor bias = tu_make(&ctx, 1, (int64_t[]){M}, 88, 1, 0);
    sn_tensor y[2] = {tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M}), tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M})};
    int nl = level_count();
    use_level(nl - 1);
    cr_assert_eq(sn_bsr_i8_matmul(&ctx, &y[0], &x, w, &bias), SN_OK, "%s", ctx.err);
    use_level(nl > 1 ? 1 : 0);
    cr_assert_eq(sn_bsr_i8_matmul(&ctx, &y[1], &x, w, &bias), SN_OK, "%s", ctx.err);
    restore_level();
    cr_expect(tu_same_bits(&y[0], &y[1]), "K %lld: %s and %s differ", (long long)K, levels[nl - 1], levels[nl > 1]);
    for (int64_t n = 0; n < N; n++)
      cr_expect_eq(isnan(sn_f32(&y[0])[n * M + 1]), n == 5 || n == 66, "K %lld token %lld", (long long)K,
                   (long long)n);
    sn_tensor *all[] = {&xo, &x, &bias, &y[0], &y[1]};
    for (size_t i = 0; i < 5; i++) sn_tensor_release(all[i]);
    sn_bsr_i8_free(w);
    free_bsr(&b);
  }
}

Test(sparse_int8, results_do_not_depend_on_the_thread_count) {
  bsr b = make_bsr(200, 96, 4, 1, 5, 11);
  sn_bsr_i8 *w = quantize(&b);
  sn_tensor x = tu_make(&ctx, 2, (int64_t[]){150, 96}, 82, 1.0, 0.0);
  sn_tensor bias = tu_make(&ctx, 1, (int64_t[]){200}, 83, 1, 0);
  sn_tensor y[2] = {tu_empty(&ctx, SN_F32, 2, (int64_t[]){150, 200}), tu_empty(&ctx, SN_F32, 2, (int64_t[]){150, 200})};
  int saved = omp_get_max_threads();
  for (int r = 0; r < 2; r++) {
    omp_set_num_threads(r + 1);
    cr_assert_eq(sn_bsr_i8_matmul(&ctx, &y[r], &x, w, &bias), SN_OK, "%s", ctx.err);
  }
  omp_set_num_threads(saved);
  cr_expect(tu_same_bits(&y[0], &y[1]), "1 and 2 threads differ");
  sn_tensor *all[] = {&x, &bias, &y[0], &y[1]};
  for (size_t i = 0; i < 4; i++) sn_tensor_release(all[i]);
  sn_bsr_i8_free(w);
  free_bsr(&b);
}

Test(sparse_int8, empty_matrix_gives_the_bias) {
  bsr b = make_bsr(8, 12, 4, 1, 0, 1);
  cr_assert_eq(b.nnzb, 0);
  sn_bsr_i8 *w = quantize(&b);
  for (int64_t N = 2; N <= 70; N += 68) {
    sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, 12}, 84, 1.0, 0.0), bias = tu_make(&ctx, 1, (int64_t[]){8}, 85, 1, 0);
    sn_tensor y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 8});
    cr_assert_eq(sn_bsr_i8_matmul(&ctx, &y, &x, w, &bias), SN_OK, "%s", ctx.err);
    for (int64_t i = 0; i < N * 8; i++)
      cr_expect_eq(sn_f32(&y)[i], sn_f32(&bias)[i % 8], "N %lld entry %lld", (long long)N, (long long)i);
    cr_assert_eq(sn_bsr_i8_matmul(&ctx, &y, &x, w, NULL), SN_OK, "%s", ctx.err);
    for (int64_t i = 0; i < N * 8; i++) cr_expect_eq(sn_f32(&y)[i], 0.0f, "no bias, entry %lld", (long long)i);
    sn_tensor_release(&x), sn_tensor_release(&bias), sn_tensor_release(&y);
  }
  sn_bsr_i8_free(w);
  sn_bsr_i8_free(NULL);
  free_bsr(&b);
}

Test(sparse_int8, a_token_with_nan_or_inf_gives_nan_outputs_only_for_itself) {
  bsr b = make_bsr(8, 16, 4, 1, 16, 5);
  sn_bsr_i8 *w = quantize(&b);
  for (int64_t N = 3; N <= 67; N += 64) {
    sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, 16}, 86, 1.0, 0.0), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 8});
    sn_f32(&x)[1 * 16 + 5] = NAN;
    sn_f32(&x)[2 * 16 + 0] = INFINITY;
    cr_assert_eq(sn_bsr_i8_matmul(&ctx, &y, &x, w, NULL), SN_OK, "%s", ctx.err);
    for (int64_t n = 0; n < N; n++)
      for (int64_t m = 0; m < 8; m++)
        cr_expect_eq(isnan(sn_f32(&y)[n * 8 + m]), n == 1 || n == 2, "N %lld token %lld output %lld", (long long)N,
                     (long long)n, (long long)m);
    sn_tensor_release(&x), sn_tensor_release(&y);
  }
  sn_bsr_i8_free(w);
  free_bsr(&b);
}

/* ---- bad input ------------------------------------------------------------------------- */

Test(sparse_int8, rejects_bad_weights_and_shapes) {
  bsr b = make_bsr(8, 12, 4, 1, 8, 7);
  cr_assert_gt(b.nnzb, 1);
  sn_bsr_i8 *w = (sn_bsr_i8 *)&b; /* must be set to NULL on failure */
  /* A corrupt index (bsr_check), a NaN weight, K too large, K not a multiple of ri. */
  int64_t saved = sn_i64(&b.bcol)[0];
  sn_i64(&b.bcol)[0] = 12;
  cr_expect_eq(sn_bsr_i8_new(&ctx, &w, &b.values, &b.browptr, &b.bcol, 12), SN_EINVAL);
  cr_expect(w == NULL && strstr(ctx.err, "seqnn.sparse.bsr_i8_new") != NULL, "message was: %s", ctx.err);
  sn_i64(&b.bcol)[0] = saved;
  sn_f32(&b.values)[1] = NAN;
  cr_expect_eq(sn_bsr_i8_new(&ctx, &w, &b.values, &b.browptr, &b.bcol, 12), SN_EINVAL);
  cr_expect(strstr(ctx.err, "must be finite") && strstr(ctx.err, "block 0 row 1"), "message was: %s", ctx.err);
  sn_f32(&b.values)[1] = 0.5f;
  sn_tensor v0 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){0, 4, 1}), bp0 = tu_empty(&ctx, SN_I64, 1, (int64_t[]){2});
  sn_tensor bc0 = tu_empty(&ctx, SN_I64, 1, (int64_t[]){0});
  sn_i64(&bp0)[0] = sn_i64(&bp0)[1] = 0;
  cr_expect_eq(sn_bsr_i8_new(&ctx, &w, &v0, &bp0, &bc0, 70000), SN_EINVAL);
  cr_expect(strstr(ctx.err, "K = 70000") && strstr(ctx.err, "65536"), "message was: %s", ctx.err);
  /* The product: x with the wrong K, y of the wrong shape, bias of the wrong length. */
  w = quantize(&b);
  sn_tensor x = tu_make(&ctx, 2, (int64_t[]){3, 16}, 87, 1, 0), x12 = tu_make(&ctx, 2, (int64_t[]){3, 12}, 88, 1, 0);
  sn_tensor y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){3, 8}), y9 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){3, 9});
  sn_tensor b7 = tu_make(&ctx, 1, (int64_t[]){7}, 89, 1, 0);
  cr_expect_eq(sn_bsr_i8_matmul(&ctx, &y, &x, w, NULL), SN_EINVAL);
  cr_expect(strstr(ctx.err, "x has 16 features but the weight has K = 12 inputs (x: 3x16, weight: 8x12)") != NULL,
            "message was: %s", ctx.err);
  cr_expect_eq(sn_bsr_i8_matmul(&ctx, &y9, &x12, w, NULL), SN_EINVAL);
  cr_expect(strstr(ctx.err, "y must be a contiguous f32 tensor of shape 3x8") != NULL, "message was: %s", ctx.err);
  cr_expect_eq(sn_bsr_i8_matmul(&ctx, &y, &x12, w, &b7), SN_EINVAL);
  cr_expect(strstr(ctx.err, "bias") != NULL, "message was: %s", ctx.err);
  cr_expect_eq(sn_bsr_i8_matmul(&ctx, &y, &x12, NULL, NULL), SN_EINVAL);
  sn_tensor *all[] = {&v0, &bp0, &bc0, &x, &x12, &y, &y9, &b7};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
  sn_bsr_i8_free(w);
  free_bsr(&b);
}
