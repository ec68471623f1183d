/* test_embedding.c -- embedding lookup and its scatter-add gradient against naive loops:
 * repeated ids, unused rows, multi-dim ids, ids out of range rejected before any write,
 * and a gradient that is bitwise the same for 1 and 2 threads. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

TU_SUITE(embedding);

static void fill_ids(sn_tensor *ids, int64_t V, uint32_t seed) {
  uint32_t s = seed;
  for (int64_t i = 0; i < sn_numel(ids); i++) {
    s = s * 1664525u + 1013904223u;
    sn_i64(ids)[i] = (int64_t)((s >> 8) % (uint32_t)(V / 2 + 1)); /* repeats, and rows never used */
  }
}

static void check_case(int64_t V, int64_t D, int64_t A, int64_t B) {
  char shp[64];
  snprintf(shp, sizeof shp, "V=%lld D=%lld ids %lldx%lld", (long long)V, (long long)D, (long long)A, (long long)B);
  int64_t sw[2] = {V, D}, si[2] = {A, B}, so[3] = {A, B, D};
  sn_tensor w = tu_empty(&ctx, SN_F32, 2, sw), gw = tu_empty(&ctx, SN_F32, 2, sw), ids = tu_empty(&ctx, SN_I64, 2, si),
            out = tu_empty(&ctx, SN_F32, 3, so), gy = tu_empty(&ctx, SN_F32, 3, so);
  tu_fill_f32(&w, 31);
  tu_fill_f32(&gy, 32);
  fill_ids(&ids, V, 33);
  cr_assert_eq(sn_embedding_fwd(&ctx, &out, &w, &ids), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_embedding_bwd(&ctx, &gw, &gy, &ids), SN_OK, "%s", ctx.err);
  int64_t n = A * B;
  double *ry = malloc((size_t)(n * D) * sizeof *ry + 1), *rg = calloc((size_t)(V * D) + 1, sizeof *rg);
  for (int64_t i = 0; i < n; i++)
    for (int64_t d = 0; d < D; d++) {
      int64_t v = sn_i64(&ids)[i];
      ry[i * D + d] = sn_f32(&w)[v * D + d];
      rg[v * D + d] += sn_f32(&gy)[i * D + d];
    }
  cr_expect_leq(tu_max_scaled_err(&out, ry, 0, 0), 1.0, "out, %s", shp);
  cr_expect_leq(tu_max_scaled_err(&gw, rg, 1e-6, 1e-5), 1.0, "grad weight, %s", shp);
  free(ry), free(rg);
  sn_tensor *all[] = {&w, &gw, &ids, &out, &gy};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(embedding, matches_naive) {
  check_case(1, 1, 1, 1);
  check_case(10, 7, 3, 5);
  check_case(37, 33, 4, 9);
  check_case(1000, 65, 37, 11);
  check_case(5, 1000, 2, 3);
}

Test(embedding, rejects_ids_out_of_range) {
  int64_t sw[2] = {10, 4}, si[2] = {2, 3}, so[3] = {2, 3, 4};
  sn_tensor w = tu_empty(&ctx, SN_F32, 2, sw), ids = tu_empty(&ctx, SN_I64, 2, si), out = tu_empty(&ctx, SN_F32, 3, so);
  const int64_t cases[][6] = {{0, 1, 2, 3, 12, 4}, {0, -1, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 10}};
  const char *want[] = {"id 12 at flat index 4", "id -1 at flat index 1", "id 10 at flat index 5"};
  for (int k = 0; k < 3; k++) {
    memcpy(sn_i64(&ids), cases[k], sizeof cases[k]);
    memset(sn_f32(&out), 0, 24 * sizeof(float));
    cr_assert_eq(sn_embedding_fwd(&ctx, &out, &w, &ids), SN_EINVAL);
    cr_expect(strstr(ctx.err, "seqnn.F.embedding") && strstr(ctx.err, want[k]) && strstr(ctx.err, "10 embeddings"),
              "message was: %s", ctx.err);
    cr_expect(sn_f32(&out)[0] == 0, "nothing written before the check");
    cr_assert_eq(sn_embedding_bwd(&ctx, &w, &out, &ids), SN_EINVAL);
  }
  sn_tensor_release(&w), sn_tensor_release(&ids), sn_tensor_release(&out);
}

Test(embedding, gradient_does_not_depend_on_thread_count) {
  int64_t V = 500, D = 96, n = 4000, sw[2] = {V, D}, so[2] = {n, D};
  sn_tensor ids = tu_empty(&ctx, SN_I64, 1, &n), gy = tu_empty(&ctx, SN_F32, 2, so), gw[2];
  fill_ids(&ids, V, 7);
  tu_fill_f32(&gy, 8);
  int saved = omp_get_max_threads();
  for (int t = 0; t < 2; t++) {
    gw[t] = tu_empty(&ctx, SN_F32, 2, sw);
    omp_set_num_threads(t + 1);
    cr_assert_eq(sn_embedding_bwd(&ctx, &gw[t], &gy, &ids), SN_OK, "%s", ctx.err);
  }
  omp_set_num_threads(saved);
  cr_expect(memcmp(sn_f32(&gw[0]), sn_f32(&gw[1]), (size_t)(V * D) * sizeof(float)) == 0);
  sn_tensor_release(&ids), sn_tensor_release(&gy), sn_tensor_release(&gw[0]), sn_tensor_release(&gw[1]);
}
