/* test_tensor.c -- storage, views, copies and the generator, against index arithmetic
 * done by hand. */
#include <omp.h>
#include <string.h>

#include "testutil.h"

TU_SUITE(tensor);

static sn_tensor arange(int ndim, const int64_t *size) {
  sn_tensor t = tu_empty(&ctx, SN_F32, ndim, size);
  cr_assert_eq(sn_arange(&ctx, &t, 0, 1), SN_OK);
  return t;
}

Test(tensor, storage_is_aligned_counted_and_refcounted) {
  int64_t size[] = {3, 5};
  sn_tensor t = tu_empty(&ctx, SN_F32, 2, size);
  cr_expect_eq((uintptr_t)t.storage->data % SN_ALIGN, 0);
  cr_expect_eq(ctx.live_bytes, 64, "15 floats round up to one 64-byte line");
  sn_tensor v;
  sn_tensor_share(&v, &t);
  cr_expect_eq(t.storage->refcount, 2);
  sn_tensor_release(&t);
  cr_expect_eq(ctx.live_bytes, 64, "still held by the view");
  sn_tensor_release(&v);
  sn_tensor_release(&v); /* idempotent */
  cr_expect_eq(ctx.live_bytes, 0);
}

Test(tensor, shape_checks_catch_overflow_and_bad_dims) {
  int64_t huge[] = {(int64_t)1 << 32, (int64_t)1 << 32};
  sn_tensor t;
  cr_expect_eq(sn_tensor_empty(&ctx, &t, SN_F32, 2, huge), SN_EINVAL);
  cr_expect(strstr(ctx.err, "4294967296x4294967296") && strstr(ctx.err, "overflow"), "%s", ctx.err);
  int64_t zero_times_huge[] = {0, INT64_MAX};
  cr_expect_eq(sn_tensor_empty(&ctx, &t, SN_F32, 2, zero_times_huge), SN_OK, "an empty tensor is fine");
  sn_tensor_release(&t);
  int64_t neg[] = {2, -1};
  cr_expect_eq(sn_tensor_empty(&ctx, &t, SN_F32, 2, neg), SN_EINVAL);
  int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  cr_expect_eq(sn_tensor_empty(&ctx, &t, SN_F32, 9, nine), SN_EINVAL);
  cr_expect_null(t.storage, "a failed creation leaves nothing to release");
}

Test(tensor, memory_limit_fails_without_allocating) {
  ctx.limit_bytes = 1000;
  int64_t size[] = {1000};
  sn_tensor t;
  cr_expect_eq(sn_tensor_empty(&ctx, &t, SN_F32, 1, size), SN_ENOMEM);
  cr_expect(strstr(ctx.err, "out of memory") != NULL, "%s", ctx.err);
  cr_expect_eq(ctx.live_bytes, 0);
}

Test(tensor, transpose_permute_narrow_select_address_the_same_elements) {
  int64_t size[] = {2, 3, 5};
  sn_tensor t = arange(3, size);
  sn_tensor tr, p, n, s;
  cr_assert_eq(sn_transpose(&ctx, &tr, &t, 0, 2), SN_OK);
  int perm[] = {2, 0, 1};
  cr_assert_eq(sn_permute(&ctx, &p, &t, perm), SN_OK);
  cr_assert_eq(sn_narrow(&ctx, &n, &t, 2, 1, 3), SN_OK);
  cr_assert_eq(sn_select(&ctx, &s, &t, 1, 2), SN_OK);
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++)
      for (int k = 0; k < 5; k++) {
        double v = i * 15 + j * 5 + k;
        cr_expect_eq(tu_get(&tr, (k * 3 + j) * 2 + i), v);
        cr_expect_eq(tu_get(&p, (k * 2 + i) * 3 + j), v);
        if (k >= 1 && k < 4) cr_expect_eq(tu_get(&n, (i * 3 + j) * 3 + (k - 1)), v);
        if (j == 2) cr_expect_eq(tu_get(&s, i * 5 + k), v);
      }
  cr_expect_eq(s.ndim, 2);
  cr_expect_eq(sn_narrow(&ctx, &n, &t, 2, 3, 3), SN_EINVAL, "range past the end");
  cr_expect_eq(sn_select(&ctx, &s, &t, 3, 0), SN_EINVAL, "dim out of range");
  int bad[] = {0, 0, 1};
  cr_expect_eq(sn_permute(&ctx, &p, &t, bad), SN_EINVAL);
  sn_tensor_release(&t);
  sn_tensor_release(&tr);
  sn_tensor_release(&p);
  sn_tensor_release(&n);
  sn_tensor_release(&s);
}

Test(tensor, view_splits_and_merges_only_contiguous_runs) {
  int64_t size[] = {4, 6};
  sn_tensor t = arange(2, size), v, tr, nar;
  int64_t s1[] = {2, 2, -1};
  cr_assert_eq(sn_view(&ctx, &v, &t, 3, s1), SN_OK);
  cr_expect_eq(v.size[2], 6);
  cr_expect_eq(tu_get(&v, 17), 17);
  sn_tensor_release(&v);
  /* A transposed matrix cannot be flattened without a copy... */
  cr_assert_eq(sn_transpose(&ctx, &tr, &t, 0, 1), SN_OK);
  int64_t flat[] = {24};
  cr_expect_eq(sn_view(&ctx, &v, &tr, 1, flat), SN_EINVAL);
  cr_expect_not(sn_can_view(&tr, 1, flat));
  /* ...but its dims can still be split. */
  int64_t split[] = {3, 2, 4};
  cr_assert_eq(sn_view(&ctx, &v, &tr, 3, split), SN_OK);
  for (int64_t i = 0; i < 24; i++) cr_expect_eq(tu_get(&v, i), tu_get(&tr, i));
  sn_tensor_release(&v);
  /* A narrowed column block keeps rows separate: 4x3 can become 4x3x1 but not 12. */
  cr_assert_eq(sn_narrow(&ctx, &nar, &t, 1, 2, 3), SN_OK);
  int64_t twelve[] = {12}, unsq[] = {4, 3, 1};
  cr_expect_not(sn_can_view(&nar, 1, twelve));
  cr_assert_eq(sn_view(&ctx, &v, &nar, 3, unsq), SN_OK);
  for (int64_t i = 0; i < 12; i++) cr_expect_eq(tu_get(&v, i), tu_get(&nar, i));
  sn_tensor_release(&v);
  int64_t wrong[] = {5, 5};
  cr_expect_eq(sn_view(&ctx, &v, &t, 2, wrong), SN_EINVAL);
  cr_expect(strstr(ctx.err, "25") && strstr(ctx.err, "4x6"), "%s", ctx.err);
  sn_tensor_release(&t);
  sn_tensor_release(&tr);
  sn_tensor_release(&nar);
}

Test(tensor, expand_squeeze_unsqueeze) {
  int64_t size[] = {3, 1};
  sn_tensor t = arange(2, size), e, u, s;
  int64_t to[] = {2, 3, 4};
  cr_assert_eq(sn_expand(&ctx, &e, &t, 3, to), SN_OK);
  cr_expect_eq(e.stride[0], 0);
  cr_expect_eq(e.stride[2], 0);
  for (int64_t i = 0; i < 24; i++) cr_expect_eq(tu_get(&e, i), (i / 4) % 3);
  int64_t bad[] = {3, 2, 2};
  sn_tensor x;
  cr_expect_eq(sn_expand(&ctx, &x, &e, 3, bad), SN_EINVAL);
  cr_assert_eq(sn_unsqueeze(&ctx, &u, &t, 0), SN_OK);
  cr_expect_eq(u.ndim, 3);
  cr_expect_eq(u.size[0], 1);
  cr_assert_eq(sn_squeeze(&ctx, &s, &u, -1), SN_OK);
  cr_expect_eq(s.ndim, 1);
  cr_expect_eq(s.size[0], 3);
  sn_tensor_release(&t);
  sn_tensor_release(&e);
  sn_tensor_release(&u);
  sn_tensor_release(&s);
}

Test(tensor, copy_broadcasts_converts_and_handles_long_runs) {
  /* Odd sizes and a length over one task's run, through a transposed source. */
  int64_t size[] = {37, 1111};
  sn_tensor src = tu_empty(&ctx, SN_F32, 2, size), tr, dst;
  tu_fill_f32(&src, 1);
  cr_assert_eq(sn_transpose(&ctx, &tr, &src, 0, 1), SN_OK);
  dst = tu_empty(&ctx, SN_F32, 2, tr.size);
  cr_assert_eq(sn_copy(&ctx, &dst, &tr), SN_OK);
  for (int64_t i = 0; i < 37 * 1111; i++) cr_assert_eq(tu_get(&dst, i), tu_get(&tr, i));
  sn_tensor_release(&dst);
  /* f32 -> i64 truncates toward zero; broadcasting a row. */
  float vals[] = {1.7f, -2.7f, 0.0f};
  int64_t row[] = {3}, mat[] = {2, 3};
  sn_tensor r = tu_empty(&ctx, SN_F32, 1, row);
  memcpy(sn_f32(&r), vals, sizeof vals);
  sn_tensor l = tu_empty(&ctx, SN_I64, 2, mat);
  cr_assert_eq(sn_copy(&ctx, &l, &r), SN_OK);
  int64_t want[] = {1, -2, 0, 1, -2, 0};
  for (int i = 0; i < 6; i++) cr_expect_eq(sn_i64(&l)[i], want[i]);
  int64_t big[] = {1 << 20};
  sn_tensor a = tu_empty(&ctx, SN_F32, 1, big), b = tu_empty(&ctx, SN_F32, 1, big);
  tu_fill_f32(&a, 9);
  cr_assert_eq(sn_copy(&ctx, &b, &a), SN_OK);
  cr_expect_eq(memcmp(sn_f32(&a), sn_f32(&b), sizeof(float) << 20), 0);
  cr_expect_eq(sn_copy(&ctx, &r, &l), SN_EINVAL, "2x3 does not broadcast to 3");
  sn_tensor_release(&src);
  sn_tensor_release(&tr);
  sn_tensor_release(&r);
  sn_tensor_release(&l);
  sn_tensor_release(&a);
  sn_tensor_release(&b);
}

Test(tensor, index_select_checks_every_index) {
  int64_t size[] = {4, 3}, isz[] = {3};
  sn_tensor t = arange(2, size), idx = tu_empty(&ctx, SN_I64, 1, isz);
  int64_t ids[] = {3, 0, 3};
  memcpy(sn_i64(&idx), ids, sizeof ids);
  int64_t osz[] = {3, 3};
  sn_tensor out = tu_empty(&ctx, SN_F32, 2, osz);
  cr_assert_eq(sn_index_select(&ctx, &out, &t, 0, &idx), SN_OK);
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) cr_expect_eq(tu_get(&out, i * 3 + j), ids[i] * 3 + j);
  sn_i64(&idx)[1] = 4;
  cr_expect_eq(sn_index_select(&ctx, &out, &t, 0, &idx), SN_EINVAL);
  cr_expect(strstr(ctx.err, "out of range") != NULL, "%s", ctx.err);
  sn_i64(&idx)[1] = -1;
  cr_expect_eq(sn_index_select(&ctx, &out, &t, 0, &idx), SN_EINVAL);
  sn_tensor_release(&t);
  sn_tensor_release(&idx);
  sn_tensor_release(&out);
}

Test(tensor, generator_is_reproducible_and_thread_independent) {
  int64_t size[] = {200001};
  sn_tensor a = tu_empty(&ctx, SN_F32, 1, size), b = tu_empty(&ctx, SN_F32, 1, size);
  int threads = omp_get_max_threads();
  sn_manual_seed(&ctx, 123);
  cr_assert_eq(sn_randn(&ctx, &a, 0, 1), SN_OK);
  omp_set_num_threads(1);
  sn_manual_seed(&ctx, 123);
  cr_assert_eq(sn_randn(&ctx, &b, 0, 1), SN_OK);
  omp_set_num_threads(threads);
  cr_expect_eq(memcmp(sn_f32(&a), sn_f32(&b), sizeof(float) * 200001), 0);
  /* Moments of the normal draw, and the next draw differs. */
  double m = 0, v = 0;
  for (int64_t i = 0; i < size[0]; i++) m += sn_f32(&a)[i], v += (double)sn_f32(&a)[i] * sn_f32(&a)[i];
  m /= size[0], v = v / size[0] - m * m;
  cr_expect(fabs(m) < 0.01 && fabs(v - 1) < 0.02, "mean %g var %g", m, v);
  cr_assert_eq(sn_randn(&ctx, &b, 0, 1), SN_OK);
  cr_expect_neq(memcmp(sn_f32(&a), sn_f32(&b), 64), 0);
  /* Uniform stays inside [lo, hi). */
  cr_assert_eq(sn_rand(&ctx, &a, -2, 3), SN_OK);
  for (int64_t i = 0; i < size[0]; i++) cr_assert(sn_f32(&a)[i] >= -2 && sn_f32(&a)[i] < 3);
  sn_tensor_release(&a);
  sn_tensor_release(&b);
  int64_t isz[] = {10000};
  sn_tensor r = tu_empty(&ctx, SN_I64, 1, isz);
  cr_assert_eq(sn_randint(&ctx, &r, -3, 4), SN_OK);
  int seen[7] = {0};
  for (int i = 0; i < 10000; i++) {
    int64_t x = sn_i64(&r)[i];
    cr_assert(x >= -3 && x < 4);
    seen[x + 3]++;
  }
  for (int i = 0; i < 7; i++) cr_expect_gt(seen[i], 1200, "value %d drawn %d times", i - 3, seen[i]);
  cr_expect_eq(sn_randint(&ctx, &r, 4, 4), SN_EINVAL);
  sn_tensor_release(&r);
}
