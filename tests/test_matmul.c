/* test_matmul.c -- sn_matmul against a naive double-precision loop: odd sizes, in-place
 * BLAS layouts (transposed, narrowed), layouts that need the workspace copy, broadcast
 * batches, empty dims and bad arguments. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

TU_SUITE(matmul);

/* Element (batch index `bi` over out's batch shape, r, c) of operand t, broadcasting its
 * batch dims against out's nb batch dims. */
static double at(const sn_tensor *t, const int64_t *bi, int nb, int64_t r, int64_t c) {
  int tb = t->ndim - 2;
  int64_t off = t->offset + r * t->stride[tb] + c * t->stride[tb + 1];
  for (int d = 0; d < tb; d++)
    if (t->size[d] != 1) off += bi[d + nb - tb] * t->stride[d];
  return ((const float *)t->storage->data)[off];
}

/* ref (row-major over out's shape) = a @ b, summed in double. */
static double *matmul_naive(const sn_tensor *a, const sn_tensor *b, const sn_tensor *out) {
  int nb = out->ndim - 2;
  int64_t M = out->size[nb], N = out->size[nb + 1], K = a->size[a->ndim - 1];
  int64_t nbatch = sn_numel(out) / (M * N > 0 ? M * N : 1);
  double *ref = calloc((size_t)sn_numel(out) + 1, sizeof(double));
  for (int64_t batch = 0; batch < nbatch && M * N > 0; batch++) {
    int64_t bi[SN_MAX_DIMS], rest = batch;
    for (int d = nb - 1; d >= 0; d--) bi[d] = rest % out->size[d], rest /= out->size[d];
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) s += at(a, bi, nb, i, k) * at(b, bi, nb, k, j);
        ref[(batch * M + i) * N + j] = s;
      }
  }
  return ref;
}

/* Runs sn_matmul into a fresh out of shape `oshape` and compares with the naive loop.
 * Returns whether the workspace was used (that is, whether an operand was copied). */
static bool check(const sn_tensor *a, const sn_tensor *b, int ond, const int64_t *oshape) {
  sn_tensor out = tu_empty(&ctx, SN_F32, ond, oshape);
  sn_fill(&ctx, &out, NAN); /* stale values must be overwritten */
  sn_ctx_free(&ctx);        /* forget earlier workspace, so its use is visible */
  cr_assert_eq(sn_matmul(&ctx, &out, a, b), SN_OK, "%s", ctx.err);
  double *ref = matmul_naive(a, b, &out);
  char sa[64], sb[64];
  cr_expect_leq(tu_max_scaled_err(&out, ref, 1e-5, 1e-5), 1.0, "a %s @ b %s",
                sn_shape_str(a, sa, sizeof sa), sn_shape_str(b, sb, sizeof sb));
  free(ref);
  sn_tensor_release(&out);
  return ctx.workspace != NULL;
}

static sn_tensor randt(int ndim, const int64_t *size, uint32_t seed) {
  sn_tensor t = tu_empty(&ctx, SN_F32, ndim, size);
  tu_fill_f32(&t, seed);
  return t;
}

/* M K N; the last goes to sn_sgemm_avx512 on AVX-512 CPUs. */
static const int64_t sizes[][3] = {{1, 1, 1},    {3, 5, 7},   {17, 33, 9},
                                   {65, 1, 129}, {2, 300, 3}, {40, 50, 60}};

Test(matmul, odd_sizes) {
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    int64_t M = sizes[s][0], K = sizes[s][1], N = sizes[s][2];
    sn_tensor a = randt(2, (int64_t[]){M, K}, 1), b = randt(2, (int64_t[]){K, N}, 2);
    cr_expect_not(check(&a, &b, 2, (int64_t[]){M, N}), "contiguous operands were copied");
    sn_tensor_release(&a);
    sn_tensor_release(&b);
  }
}

/* Transposed views of contiguous matrices go to sgemm as Trans, without a copy. */
Test(matmul, transposed_views_are_not_copied) {
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    int64_t M = sizes[s][0], K = sizes[s][1], N = sizes[s][2];
    sn_tensor a = randt(2, (int64_t[]){M, K}, 3), b = randt(2, (int64_t[]){K, N}, 4);
    sn_tensor at_ = randt(2, (int64_t[]){K, M}, 5), bt_ = randt(2, (int64_t[]){N, K}, 6);
    sn_tensor aT, bT;
    sn_transpose(&ctx, &aT, &at_, 0, 1);
    sn_transpose(&ctx, &bT, &bt_, 0, 1);
    const sn_tensor *as[] = {&a, &aT}, *bs[] = {&b, &bT};
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 2; j++)
        cr_expect_not(check(as[i], bs[j], 2, (int64_t[]){M, N}), "a%s @ b%s was copied",
                      i ? "^T" : "", j ? "^T" : "");
    sn_tensor *all[] = {&a, &b, &at_, &bt_, &aT, &bT};
    for (int i = 0; i < 6; i++) sn_tensor_release(all[i]);
  }
}

/* A narrowed matrix keeps unit column stride: sgemm reads it with lda > K. */
Test(matmul, narrowed_rows_use_leading_dim) {
  sn_tensor wide = randt(2, (int64_t[]){17, 50}, 7), b = randt(2, (int64_t[]){33, 9}, 8), a;
  sn_narrow(&ctx, &a, &wide, 1, 5, 33);
  cr_expect_not(check(&a, &b, 2, (int64_t[]){17, 9}), "narrowed a was copied");
  sn_tensor_release(&a);
  sn_tensor_release(&wide);
  sn_tensor_release(&b);
}

/* Every third element of a wider matrix's rows, narrowed: column stride 3, no BLAS layout. */
Test(matmul, strided_columns_are_copied) {
  int64_t M = 17, K = 33, N = 9;
  sn_tensor wide = randt(3, (int64_t[]){M, K + 2, 3}, 9), b = randt(2, (int64_t[]){K, N}, 10);
  sn_tensor col, a;
  sn_select(&ctx, &col, &wide, 2, 1);
  sn_narrow(&ctx, &a, &col, 1, 2, K);
  cr_assert_eq(a.stride[1], 3);
  cr_expect(check(&a, &b, 2, (int64_t[]){M, N}), "a with column stride 3 was not copied");
  /* Both operands copied: one workspace request holds both. */
  sn_tensor bw = randt(3, (int64_t[]){K, N, 2}, 11), bsel;
  sn_select(&ctx, &bsel, &bw, 2, 0);
  cr_expect(check(&a, &bsel, 2, (int64_t[]){M, N}));
  sn_tensor *all[] = {&wide, &b, &col, &a, &bw, &bsel};
  for (int i = 0; i < 6; i++) sn_tensor_release(all[i]);
}

Test(matmul, permuted_batches) {
  int64_t B = 4, M = 5, K = 7, N = 3;
  sn_tensor b = randt(3, (int64_t[]){B, K, N}, 12);
  /* (M, B, K) -> (B, M, K): rows of stride B*K, batch stride K; read in place. */
  sn_tensor a1 = randt(3, (int64_t[]){M, B, K}, 13), p1;
  sn_permute(&ctx, &p1, &a1, (int[]){1, 0, 2});
  cr_expect_not(check(&p1, &b, 3, (int64_t[]){B, M, N}), "a (M,B,K) permuted was copied");
  /* (M, K, B) -> (B, M, K): column stride B; copied. */
  sn_tensor a2 = randt(3, (int64_t[]){M, K, B}, 14), p2;
  sn_permute(&ctx, &p2, &a2, (int[]){2, 0, 1});
  cr_expect(check(&p2, &b, 3, (int64_t[]){B, M, N}), "a (M,K,B) permuted was not copied");
  /* Swapped batch dims do not merge into one stride: the batch offsets are unravelled. */
  sn_tensor a3 = randt(4, (int64_t[]){2, 3, M, K}, 15), b3 = randt(4, (int64_t[]){3, 2, K, N}, 16), p3;
  sn_permute(&ctx, &p3, &a3, (int[]){1, 0, 2, 3});
  cr_expect_not(check(&p3, &b3, 4, (int64_t[]){3, 2, M, N}));
  sn_tensor *all[] = {&b, &a1, &p1, &a2, &p2, &a3, &b3, &p3};
  for (int i = 0; i < 8; i++) sn_tensor_release(all[i]);
}

Test(matmul, broadcast_batches) {
  int64_t M = 5, K = 6, N = 7;
  sn_tensor a = randt(4, (int64_t[]){2, 1, M, K}, 17), b = randt(3, (int64_t[]){3, K, N}, 18);
  check(&a, &b, 4, (int64_t[]){2, 3, M, N});
  /* (B, T, K) @ (K, N): one tall GEMM. */
  sn_tensor x = randt(3, (int64_t[]){4, 9, K}, 19), w = randt(2, (int64_t[]){K, N}, 20);
  check(&x, &w, 3, (int64_t[]){4, 9, N});
  /* (M, K) @ (B, K, N): a shared, b per batch. */
  sn_tensor a2 = randt(2, (int64_t[]){M, K}, 21), b2 = randt(3, (int64_t[]){4, K, N}, 22);
  check(&a2, &b2, 3, (int64_t[]){4, M, N});
  /* A transposed b broadcast over a batch, and a narrowed batch of a. */
  sn_tensor wt = randt(2, (int64_t[]){N, K}, 23), wT, xn;
  sn_transpose(&ctx, &wT, &wt, 0, 1);
  sn_narrow(&ctx, &xn, &x, 1, 2, 6);
  cr_expect_not(check(&xn, &wT, 3, (int64_t[]){4, 6, N}));
  sn_tensor *all[] = {&a, &b, &x, &w, &a2, &b2, &wt, &wT, &xn};
  for (int i = 0; i < 9; i++) sn_tensor_release(all[i]);
}

/* Many tiny matrices walked with one batch stride. */
Test(matmul, many_small_matrices) {
  sn_tensor a = randt(3, (int64_t[]){64, 8, 5}, 24), b = randt(3, (int64_t[]){64, 5, 8}, 25);
  check(&a, &b, 3, (int64_t[]){64, 8, 8});
  sn_tensor_release(&a);
  sn_tensor_release(&b);
}

Test(matmul, empty_dims) {
  /* K = 0: every entry is an empty sum. */
  sn_tensor a = randt(3, (int64_t[]){2, 3, 0}, 26), b = randt(2, (int64_t[]){0, 4}, 27);
  sn_tensor out = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 3, 4});
  sn_fill(&ctx, &out, NAN);
  cr_assert_eq(sn_matmul(&ctx, &out, &a, &b), SN_OK, "%s", ctx.err);
  for (int64_t i = 0; i < 24; i++) cr_expect_eq(sn_f32(&out)[i], 0.0f);
  /* M = 0, N = 0 and an empty batch: nothing to do, but still valid. */
  sn_tensor a0 = randt(2, (int64_t[]){0, 3}, 28), b3 = randt(2, (int64_t[]){3, 4}, 29);
  sn_tensor o0 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){0, 4});
  cr_expect_eq(sn_matmul(&ctx, &o0, &a0, &b3), SN_OK, "%s", ctx.err);
  sn_tensor a3 = randt(2, (int64_t[]){2, 3}, 30), b0 = randt(2, (int64_t[]){3, 0}, 31);
  sn_tensor o1 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 0});
  cr_expect_eq(sn_matmul(&ctx, &o1, &a3, &b0), SN_OK, "%s", ctx.err);
  sn_tensor ab = randt(3, (int64_t[]){0, 2, 3}, 32);
  sn_tensor o2 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){0, 2, 4});
  cr_expect_eq(sn_matmul(&ctx, &o2, &ab, &b3), SN_OK, "%s", ctx.err);
  sn_tensor *all[] = {&a, &b, &out, &a0, &b3, &o0, &a3, &b0, &o1, &ab, &o2};
  for (int i = 0; i < 11; i++) sn_tensor_release(all[i]);
}

/* Expects SN_EINVAL and each of the NULL-terminated strings in ctx.err. */
static void expect_einval(sn_tensor *out, const sn_tensor *a, const sn_tensor *b, ...) {
  cr_assert_eq(sn_matmul(&ctx, out, a, b), SN_EINVAL, "accepted; err: %s", ctx.err);
  va_list ap;
  va_start(ap, b);
  for (const char *want; (want = va_arg(ap, const char *));)
    cr_expect(strstr(ctx.err, want), "'%s' not in: %s", want, ctx.err);
  va_end(ap);
}

Test(matmul, rejects_bad_shapes) {
  sn_tensor a = randt(3, (int64_t[]){2, 3, 4}, 33), b = randt(2, (int64_t[]){5, 6}, 34);
  sn_tensor o = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 3, 6});
  expect_einval(&o, &a, &b, "seqnn.matmul: a is 2x3x4 but b is 5x6 (inner dims 4 and 5 differ)", NULL);

  sn_tensor b2 = randt(2, (int64_t[]){4, 6}, 35), o2 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){3, 3, 6});
  expect_einval(&o2, &a, &b2, "out is 3x3x6", "a 2x3x4", "b 4x6", "gives 2x3x6", NULL);
  sn_tensor o3 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){3, 6});
  expect_einval(&o3, &a, &b2, "out is 3x6", "gives 2x3x6", NULL);

  sn_tensor b3 = randt(3, (int64_t[]){3, 4, 6}, 36);
  expect_einval(&o, &a, &b3, "batch dims", "2x3x4", "3x4x6", "2 vs 3", NULL);

  sn_tensor v = randt(1, (int64_t[]){4}, 37);
  expect_einval(&o, &a, &v, "at least 2 dims", "b: 4", NULL);

  sn_tensor *all[] = {&a, &b, &o, &b2, &o2, &o3, &b3, &v};
  for (int i = 0; i < 8; i++) sn_tensor_release(all[i]);
}

Test(matmul, rejects_bad_dtypes_and_outputs) {
  sn_tensor a = randt(2, (int64_t[]){3, 3}, 38), b = randt(2, (int64_t[]){3, 3}, 39);
  sn_tensor ai = tu_empty(&ctx, SN_I64, 2, (int64_t[]){3, 3});
  sn_tensor o = tu_empty(&ctx, SN_F32, 2, (int64_t[]){3, 3});
  sn_fill(&ctx, &ai, 1);
  expect_einval(&o, &ai, &b, "must be f32", "a i64", NULL);
  /* out aliasing an input. */
  expect_einval(&a, &a, &b, "shares memory with a", NULL);
  expect_einval(&b, &a, &b, "shares memory with b", NULL);
  /* A non-contiguous out. */
  sn_tensor o6 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){3, 6}), on;
  sn_narrow(&ctx, &on, &o6, 1, 0, 3);
  expect_einval(&on, &a, &b, "must be contiguous", NULL);
  /* A disjoint part of the same storage is fine. */
  sn_tensor both = randt(2, (int64_t[]){6, 3}, 40), top, bottom;
  sn_narrow(&ctx, &top, &both, 0, 0, 3);
  sn_narrow(&ctx, &bottom, &both, 0, 3, 3);
  cr_expect_eq(sn_matmul(&ctx, &bottom, &top, &b), SN_OK, "%s", ctx.err);
  sn_tensor *all[] = {&a, &b, &ai, &o, &o6, &on, &both, &top, &bottom};
  for (int i = 0; i < 9; i++) sn_tensor_release(all[i]);
}
