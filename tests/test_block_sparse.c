/* test_block_sparse.c -- kernels/block_sparse.c against dense double math on the same
 * values: the test builds its own masks and dense weight (W with the dropped blocks
 * zeroed), so pack, to_dense, the forward, dx, dvalues and dbias are each compared with
 * an independent reference. Block shapes on the fast paths (4x1, 16x1, 4x4) and generic
 * ones, sizes that are no multiple of a vector, densities 1 .. 0 with empty block-rows and
 * block-columns, token counts across panels and chunks, every SIMD level; then the mask's
 * count and tie order, thread-count independence and corrupt indices. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "simdutil.h"
#include "testutil.h"

TU_SUITE(block_sparse);

/* ---- a sparse weight, built by the test ------------------------------------------------ */

typedef struct {
  int64_t M, K, ro, ri, Mb, Kb, nnzb;
  unsigned char *keep;      /* (Mb, Kb) the test's mask */
  sn_tensor w, mask;        /* dense w (M, K) and the mask as f32 (Mb, Kb) */
  sn_tensor values, browptr, bcol;
  double *wd;               /* (M, K): w with the dropped blocks zeroed */
} sparse;

/* A hash of (seed, i) in [0, 1). */
static double unit(uint32_t seed, int64_t i) {
  uint64_t z = (uint64_t)seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 0xBF58476D1CE4E5B9ULL + 1;
  z = (z ^ (z >> 31)) * 0x94D049BB133111EBULL;
  return (double)((z ^ (z >> 29)) >> 11) * (1.0 / 9007199254740992.0);
}

/* Blocks kept with probability `density`; for 0 < density < 1 block-row 1 and block-column
 * 0 are emptied when the weight has more than one of them. */
static sparse make_sparse(int64_t M, int64_t K, int64_t ro, int64_t ri, double density, uint32_t seed) {
  sparse s = {.M = M, .K = K, .ro = ro, .ri = ri, .Mb = M / ro, .Kb = K / ri};
  s.keep = calloc((size_t)(s.Mb * s.Kb + 1), 1);
  for (int64_t i = 0; i < s.Mb; i++)
    for (int64_t j = 0; j < s.Kb; j++) {
      bool on = unit(seed, i * s.Kb + j) < density;
      if (density > 0 && density < 1 && ((i == 1 && s.Mb > 1) || (j == 0 && s.Kb > 1))) on = false;
      s.keep[i * s.Kb + j] = on;
      s.nnzb += on;
    }
  s.w = tu_make(&ctx, 2, (int64_t[]){M, K}, seed, 1, 0);
  s.mask = tu_empty(&ctx, SN_F32, 2, (int64_t[]){s.Mb, s.Kb});
  s.wd = tu_dalloc(M * K);
  for (int64_t i = 0; i < s.Mb * s.Kb; i++) sn_f32(&s.mask)[i] = s.keep[i] ? 1.0f : 0.0f;
  for (int64_t o = 0; o < M; o++)
    for (int64_t k = 0; k < K; k++)
      s.wd[o * K + k] = s.keep[(o / ro) * s.Kb + k / ri] ? sn_f32(&s.w)[o * K + k] : 0.0;
  s.values = tu_empty(&ctx, SN_F32, 3, (int64_t[]){s.nnzb, ro, ri});
  s.browptr = tu_empty(&ctx, SN_I64, 1, (int64_t[]){s.Mb + 1});
  s.bcol = tu_empty(&ctx, SN_I64, 1, (int64_t[]){s.nnzb});
  cr_assert_eq(sn_bsr_pack(&ctx, &s.values, &s.browptr, &s.bcol, &s.w, &s.mask), SN_OK, "%s", ctx.err);
  return s;
}

static void free_sparse(sparse *s) {
  sn_tensor *t[] = {&s->w, &s->mask, &s->values, &s->browptr, &s->bcol};
  for (size_t i = 0; i < 5; i++) sn_tensor_release(t[i]);
  free(s->keep), free(s->wd);
}

/* Sums of L products of values in [-1, 1): float rounding stays far below 1e-5 L. */
static double tol(int64_t L) { return 1e-5 * (double)(L + 1); }

/* ---- pack and to_dense ----------------------------------------------------------------- */

/* browptr, bcol and values are the test's mask in row-major block order. */
static void expect_packed(const sparse *s) {
  const int64_t *bp = sn_i64(&s->browptr), *bc = sn_i64(&s->bcol);
  int64_t e = 0;
  cr_expect_eq(bp[0], 0);
  for (int64_t i = 0; i < s->Mb; i++) {
    for (int64_t j = 0; j < s->Kb; j++) {
      if (!s->keep[i * s->Kb + j]) continue;
      cr_expect_eq(bc[e], j, "bcol[%lld]", (long long)e);
      for (int64_t r = 0; r < s->ro; r++)
        for (int64_t c = 0; c < s->ri; c++)
          cr_expect_eq(sn_f32(&s->values)[(e * s->ro + r) * s->ri + c], sn_f32(&s->w)[(i * s->ro + r) * s->K + j * s->ri + c],
                       "values[%lld][%lld][%lld]", (long long)e, (long long)r, (long long)c);
      e++;
    }
    cr_expect_eq(bp[i + 1], e, "browptr[%lld]", (long long)(i + 1));
  }
}

Test(block_sparse, pack_and_to_dense_invert_each_other) {
  const int64_t shapes[][4] = {{36, 20, 4, 4}, {48, 7, 16, 1}, {36, 20, 4, 1}, {9, 8, 3, 2}, {5, 3, 1, 1}, {16, 24, 8, 8}};
  const double dens[] = {1, 0.5, 0.1, 0};
  for (size_t si = 0; si < 6; si++)
    for (size_t di = 0; di < 4; di++) {
      const int64_t *g = shapes[si];
      sparse s = make_sparse(g[0], g[1], g[2], g[3], dens[di], (uint32_t)(si * 10 + di));
      expect_packed(&s);
      sn_tensor back = tu_empty(&ctx, SN_F32, 2, (int64_t[]){s.M, s.K});
      sn_fill(&ctx, &back, NAN); /* to_dense must write the zeros too */
      cr_assert_eq(sn_bsr_to_dense(&ctx, &back, &s.values, &s.browptr, &s.bcol), SN_OK, "%s", ctx.err);
      for (int64_t i = 0; i < s.M * s.K; i++)
        cr_expect_eq(sn_f32(&back)[i], (float)s.wd[i], "shape %zu density %g element %lld", si, dens[di], (long long)i);
      sn_tensor_release(&back);
      free_sparse(&s);
    }
}

/* ---- matmul and its backward ----------------------------------------------------------- */

static void check_matmul(const sparse *s, int64_t N, bool with_bias, const char *level) {
  const int64_t M = s->M, K = s->K;
  sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, K}, (uint32_t)(N + 7), 1, 0);
  sn_tensor dy = tu_make(&ctx, 2, (int64_t[]){N, M}, (uint32_t)(N + 8), 1, 0);
  sn_tensor bias = tu_make(&ctx, 1, &M, 9, 1, 0);
  sn_tensor y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M}), dx = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, K});
  sn_tensor dv = tu_empty(&ctx, SN_F32, 3, s->values.size), db = tu_empty(&ctx, SN_F32, 1, &M);
  /* Garbage in the outputs: every element must be overwritten. */
  sn_fill(&ctx, &y, NAN), sn_fill(&ctx, &dx, NAN), sn_fill(&ctx, &dv, NAN), sn_fill(&ctx, &db, NAN);
  cr_assert_eq(sn_bsr_matmul(&ctx, &y, &x, &s->values, &s->browptr, &s->bcol, with_bias ? &bias : NULL), SN_OK, "%s",
               ctx.err);
  cr_assert_eq(sn_bsr_matmul_bwd(&ctx, &dx, &dv, &db, &dy, &x, &s->values, &s->browptr, &s->bcol), SN_OK, "%s", ctx.err);
  const float *px = sn_f32(&x), *pdy = sn_f32(&dy);
  double *ry = tu_dalloc(N * M), *rdx = tu_dalloc(N * K), *rdv = tu_dalloc(sn_numel(&dv)), *rdb = tu_dalloc(M);
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < M; o++) {
      double a = with_bias ? sn_f32(&bias)[o] : 0;
      for (int64_t k = 0; k < K; k++) a += (double)px[n * K + k] * s->wd[o * K + k];
      ry[n * M + o] = a;
      rdb[o] += pdy[n * M + o];
    }
  for (int64_t n = 0; n < N; n++)
    for (int64_t k = 0; k < K; k++) {
      double a = 0;
      for (int64_t o = 0; o < M; o++) a += (double)pdy[n * M + o] * s->wd[o * K + k];
      rdx[n * K + k] = a;
    }
  /* (dy^T x) at the test's kept blocks, in row-major block order. */
  int64_t e = 0;
  for (int64_t i = 0; i < s->Mb; i++)
    for (int64_t j = 0; j < s->Kb; j++) {
      if (!s->keep[i * s->Kb + j]) continue;
      for (int64_t r = 0; r < s->ro; r++)
        for (int64_t c = 0; c < s->ri; c++) {
          double a = 0;
          for (int64_t n = 0; n < N; n++) a += (double)pdy[n * M + i * s->ro + r] * px[n * K + j * s->ri + c];
          rdv[(e * s->ro + r) * s->ri + c] = a;
        }
      e++;
    }
#define CASE "M %lld K %lld block %lldx%lld nnzb %lld N %lld bias %d on %s"
#define ARGS (long long)M, (long long)K, (long long)s->ro, (long long)s->ri, (long long)s->nnzb, (long long)N, with_bias, level
  cr_expect_leq(tu_max_scaled_err(&y, ry, tol(K), 1e-5), 1, "y: " CASE, ARGS);
  cr_expect_leq(tu_max_scaled_err(&dx, rdx, tol(M), 1e-5), 1, "dx: " CASE, ARGS);
  cr_expect_leq(tu_max_scaled_err(&dv, rdv, tol(N), 1e-5), 1, "dvalues: " CASE, ARGS);
  cr_expect_leq(tu_max_scaled_err(&db, rdb, tol(N), 1e-5), 1, "dbias: " CASE, ARGS);
#undef CASE
#undef ARGS
  free(ry), free(rdx), free(rdv), free(rdb);
  sn_tensor *t[] = {&x, &dy, &bias, &y, &dx, &dv, &db};
  for (size_t i = 0; i < 7; i++) sn_tensor_release(t[i]);
}

Test(block_sparse, matmul_matches_dense_reference_on_every_simd_level) {
  /* (M, K, ro, ri): the fast paths, their register tiles' tails (ro 3, 5, 8, ri 2, 3, 8). */
  const int64_t shapes[][4] = {{36, 20, 4, 4}, {48, 7, 16, 1}, {36, 20, 4, 1}, {9, 8, 3, 2},
                               {5, 3, 1, 1},   {16, 24, 8, 8}, {20, 9, 5, 3}};
  const double dens[] = {1, 0.5, 0.1, 0};
  const int64_t Ns[] = {1, 3, 37, 130};
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (size_t si = 0; si < 7; si++)
      for (size_t di = 0; di < 4; di++) {
        const int64_t *g = shapes[si];
        sparse s = make_sparse(g[0], g[1], g[2], g[3], dens[di], (uint32_t)(100 + si * 10 + di));
        for (size_t ni = 0; ni < 4; ni++) check_matmul(&s, Ns[ni], (si + di + ni) % 2 == 0, levels[lv]);
        free_sparse(&s);
      }
  }
  restore_level();
}

/* Several chunks of tokens (dvalues and dbias add chunk after chunk) and a full panel. */
Test(block_sparse, many_tokens) {
  const int64_t shapes[][4] = {{64, 32, 4, 4}, {32, 16, 16, 1}, {16, 40, 4, 1}};
  for (size_t si = 0; si < 3; si++) {
    sparse s = make_sparse(shapes[si][0], shapes[si][1], shapes[si][2], shapes[si][3], 0.5, (uint32_t)(7 + si));
    check_matmul(&s, 64, true, "default");
    check_matmul(&s, 600, si != 1, "default");
    free_sparse(&s);
  }
}

Test(block_sparse, fully_empty_weight_gives_bias_and_zero_gradients) {
  sparse s = make_sparse(12, 8, 4, 4, 0, 3);
  cr_assert_eq(s.nnzb, 0);
  int64_t N = 5, M = 12;
  sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, 8}, 1, 1, 0), dy = tu_make(&ctx, 2, (int64_t[]){N, M}, 2, 1, 0);
  sn_tensor b = tu_make(&ctx, 1, &M, 3, 1, 0), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M});
  sn_tensor dx = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 8});
  sn_fill(&ctx, &dx, NAN);
  cr_assert_eq(sn_bsr_matmul(&ctx, &y, &x, &s.values, &s.browptr, &s.bcol, &b), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_bsr_matmul_bwd(&ctx, &dx, NULL, NULL, &dy, &x, &s.values, &s.browptr, &s.bcol), SN_OK, "%s", ctx.err);
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < M; o++) cr_expect_eq(sn_f32(&y)[n * M + o], sn_f32(&b)[o]);
  for (int64_t i = 0; i < N * 8; i++) cr_expect_eq(sn_f32(&dx)[i], 0.0f);
  sn_tensor *t[] = {&x, &dy, &b, &y, &dx};
  for (size_t i = 0; i < 5; i++) sn_tensor_release(t[i]);
  free_sparse(&s);
}

/* N = 0: y is empty, dvalues and dbias are zeros. */
Test(block_sparse, no_tokens) {
  sparse s = make_sparse(8, 8, 4, 4, 1, 4);
  sn_tensor x = tu_empty(&ctx, SN_F32, 2, (int64_t[]){0, 8}), dy = tu_empty(&ctx, SN_F32, 2, (int64_t[]){0, 8});
  sn_tensor y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){0, 8}), dv = tu_empty(&ctx, SN_F32, 3, s.values.size);
  sn_tensor db = tu_empty(&ctx, SN_F32, 1, (int64_t[]){8});
  sn_fill(&ctx, &dv, NAN), sn_fill(&ctx, &db, NAN);
  cr_assert_eq(sn_bsr_matmul(&ctx, &y, &x, &s.values, &s.browptr, &s.bcol, NULL), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_bsr_matmul_bwd(&ctx, &y, &dv, &db, &dy, &x, &s.values, &s.browptr, &s.bcol), SN_OK, "%s", ctx.err);
  for (int64_t i = 0; i < sn_numel(&dv); i++) cr_expect_eq(sn_f32(&dv)[i], 0.0f);
  for (int64_t i = 0; i < 8; i++) cr_expect_eq(sn_f32(&db)[i], 0.0f);
  sn_tensor *t[] = {&x, &dy, &y, &dv, &db};
  for (size_t i = 0; i < 5; i++) sn_tensor_release(t[i]);
  free_sparse(&s);
}

/* x and dy as row views of wider matrices (row stride > K): the same bits as contiguous. */
Test(block_sparse, strided_rows_equal_contiguous_copies) {
  sparse s = make_sparse(32, 16, 4, 4, 0.5, 5);
  int64_t N = 40;
  sn_tensor xw = tu_make(&ctx, 2, (int64_t[]){N, 21}, 1, 1, 0), dyw = tu_make(&ctx, 2, (int64_t[]){N, 35}, 2, 1, 0);
  sn_tensor xv, dyv, xc = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 16}), dyc = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 32});
  cr_assert_eq(sn_narrow(&ctx, &xv, &xw, 1, 3, 16), SN_OK);
  cr_assert_eq(sn_narrow(&ctx, &dyv, &dyw, 1, 2, 32), SN_OK);
  sn_copy(&ctx, &xc, &xv), sn_copy(&ctx, &dyc, &dyv);
  sn_tensor out[2][3];
  for (int v = 0; v < 2; v++) {
    out[v][0] = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 32}), out[v][1] = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 16});
    out[v][2] = tu_empty(&ctx, SN_F32, 3, s.values.size);
    const sn_tensor *x = v ? &xc : &xv, *dy = v ? &dyc : &dyv;
    cr_assert_eq(sn_bsr_matmul(&ctx, &out[v][0], x, &s.values, &s.browptr, &s.bcol, NULL), SN_OK, "%s", ctx.err);
    cr_assert_eq(sn_bsr_matmul_bwd(&ctx, &out[v][1], &out[v][2], NULL, dy, x, &s.values, &s.browptr, &s.bcol), SN_OK,
                 "%s", ctx.err);
  }
  for (int i = 0; i < 3; i++) {
    cr_expect(tu_same_bits(&out[0][i], &out[1][i]), "output %d", i);
    sn_tensor_release(&out[0][i]), sn_tensor_release(&out[1][i]);
  }
  sn_tensor *t[] = {&xw, &dyw, &xv, &dyv, &xc, &dyc};
  for (size_t i = 0; i < 6; i++) sn_tensor_release(t[i]);
  free_sparse(&s);
}

Test(block_sparse, results_do_not_depend_on_the_thread_count) {
  const int64_t shapes[][4] = {{128, 96, 4, 4}, {128, 96, 16, 1}, {128, 96, 4, 1}};
  for (size_t si = 0; si < 3; si++) {
    sparse s = make_sparse(shapes[si][0], shapes[si][1], shapes[si][2], shapes[si][3], 0.5, (uint32_t)(20 + si));
    int64_t N = 300, M = s.M, K = s.K;
    sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, K}, 1, 1, 0), dy = tu_make(&ctx, 2, (int64_t[]){N, M}, 2, 1, 0);
    sn_tensor b = tu_make(&ctx, 1, &M, 3, 1, 0), out[2][4];
    int saved = omp_get_max_threads();
    for (int r = 0; r < 2; r++) {
      omp_set_num_threads(r + 1);
      out[r][0] = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, M}), out[r][1] = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, K});
      out[r][2] = tu_empty(&ctx, SN_F32, 3, s.values.size), out[r][3] = tu_empty(&ctx, SN_F32, 1, &M);
      cr_assert_eq(sn_bsr_matmul(&ctx, &out[r][0], &x, &s.values, &s.browptr, &s.bcol, &b), SN_OK, "%s", ctx.err);
      cr_assert_eq(sn_bsr_matmul_bwd(&ctx, &out[r][1], &out[r][2], &out[r][3], &dy, &x, &s.values, &s.browptr, &s.bcol),
                   SN_OK, "%s", ctx.err);
    }
    omp_set_num_threads(saved);
    const char *names[4] = {"y", "dx", "dvalues", "dbias"};
    for (int i = 0; i < 4; i++) {
      cr_expect(tu_same_bits(&out[0][i], &out[1][i]), "%s differs between 1 and 2 threads (shape %zu)", names[i], si);
      sn_tensor_release(&out[0][i]), sn_tensor_release(&out[1][i]);
    }
    sn_tensor_release(&x), sn_tensor_release(&dy), sn_tensor_release(&b);
    free_sparse(&s);
  }
}

/* ---- mask ------------------------------------------------------------------------------ */

/* The kept count is round((1 - s) nblocks) and every kept block's norm is >= every dropped
 * one's (norms computed here in double). */
Test(block_sparse, mask_keeps_the_largest_blocks_in_exact_count) {
  const int64_t shapes[][4] = {{12, 8, 2, 2}, {36, 20, 4, 4}, {48, 7, 16, 1}, {40, 3, 4, 1}};
  const double sps[] = {0, 0.25, 0.3, 0.5, 0.9, 0.95, 1};
  for (size_t si = 0; si < 4; si++) {
    const int64_t M = shapes[si][0], K = shapes[si][1], ro = shapes[si][2], ri = shapes[si][3], Mb = M / ro, Kb = K / ri;
    sn_tensor w = tu_make(&ctx, 2, (int64_t[]){M, K}, (uint32_t)si, 1, 0), m = tu_empty(&ctx, SN_F32, 2, (int64_t[]){Mb, Kb});
    double *norm = tu_dalloc(Mb * Kb);
    for (int64_t o = 0; o < M; o++)
      for (int64_t k = 0; k < K; k++) norm[(o / ro) * Kb + k / ri] += (double)sn_f32(&w)[o * K + k] * sn_f32(&w)[o * K + k];
    for (size_t pi = 0; pi < 7; pi++) {
      cr_assert_eq(sn_bsr_mask(&ctx, &m, &w, ro, ri, sps[pi]), SN_OK, "%s", ctx.err);
      int64_t count = 0, want = (int64_t)llround((1 - sps[pi]) * (double)(Mb * Kb));
      double lo_kept = INFINITY, hi_dropped = -INFINITY;
      for (int64_t i = 0; i < Mb * Kb; i++) {
        float v = sn_f32(&m)[i];
        cr_expect(v == 0.0f || v == 1.0f);
        count += v == 1.0f;
        if (v == 1.0f && norm[i] < lo_kept) lo_kept = norm[i];
        if (v == 0.0f && norm[i] > hi_dropped) hi_dropped = norm[i];
      }
      cr_expect_eq(count, want, "shape %zu sparsity %g: %lld kept, want %lld", si, sps[pi], (long long)count,
                   (long long)want);
      cr_expect_geq(lo_kept, hi_dropped, "shape %zu sparsity %g", si, sps[pi]);
    }
    free(norm);
    sn_tensor_release(&w), sn_tensor_release(&m);
  }
}

/* Equal norms: the lower row-major block index wins. Blocks of norm 2 at (0,1) and (1,0),
 * the rest of norm 1 (a -1 has the norm of a 1). */
Test(block_sparse, mask_ties_go_to_the_lower_index) {
  sn_tensor w = tu_empty(&ctx, SN_F32, 2, (int64_t[]){4, 6}), m = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 3});
  for (int64_t o = 0; o < 4; o++)
    for (int64_t k = 0; k < 6; k++) {
      int64_t bi = o / 2, bj = k / 2;
      sn_f32(&w)[o * 6 + k] = ((bi == 0 && bj == 1) || (bi == 1 && bj == 0)) ? 2.0f : (o + k) % 2 ? -1.0f : 1.0f;
    }
  /* keep 1 -> (0,1); keep 2 -> both big ones; keep 3 -> + (0,0); keep 4 -> + (0,2). */
  const double sps[] = {5.0 / 6, 4.0 / 6, 3.0 / 6, 2.0 / 6};
  const float want[4][6] = {{0, 1, 0, 0, 0, 0}, {0, 1, 0, 1, 0, 0}, {1, 1, 0, 1, 0, 0}, {1, 1, 1, 1, 0, 0}};
  for (int i = 0; i < 4; i++) {
    cr_assert_eq(sn_bsr_mask(&ctx, &m, &w, 2, 2, sps[i]), SN_OK, "%s", ctx.err);
    for (int j = 0; j < 6; j++) cr_expect_eq(sn_f32(&m)[j], want[i][j], "keep %d, block %d", i + 1, j);
  }
  sn_tensor_release(&w), sn_tensor_release(&m);
}

/* ---- bad input ------------------------------------------------------------------------- */

#define EXPECT_EINVAL(call, want) TU_EXPECT_EINVAL_HAS(call, want)

/* Copies of a valid index with one entry changed. */
static sn_tensor with(const sn_tensor *t, int64_t i, int64_t v) {
  sn_tensor c = tu_empty(&ctx, SN_I64, 1, t->size);
  memcpy(sn_i64(&c), sn_i64(t), (size_t)t->size[0] * sizeof(int64_t));
  sn_i64(&c)[i] = v;
  return c;
}

Test(block_sparse, rejects_corrupt_indices_and_bad_shapes) {
  /* 4x4 blocks, M = 12, K = 8: block-rows {0, 1}, {}, {1}; nnzb = 3. */
  const int64_t bp[4] = {0, 2, 2, 3}, bc[3] = {0, 1, 1};
  sn_tensor v3 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){3, 4, 4}), bc3 = tu_empty(&ctx, SN_I64, 1, (int64_t[]){3});
  tu_fill_f32(&v3, 1);
  memcpy(sn_i64(&bc3), bc, 3 * sizeof(int64_t));
  sn_tensor bp4 = tu_empty(&ctx, SN_I64, 1, (int64_t[]){4});
  memcpy(sn_i64(&bp4), bp, 4 * sizeof(int64_t));
  const int64_t N = 3;
  sn_tensor x = tu_make(&ctx, 2, (int64_t[]){N, 8}, 1, 1, 0), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 12});
  sn_tensor x7 = tu_make(&ctx, 2, (int64_t[]){N, 7}, 1, 1, 0), y13 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 13});
  sn_tensor xi = tu_empty(&ctx, SN_I64, 2, (int64_t[]){N, 8}), x1 = tu_make(&ctx, 1, (int64_t[]){8}, 1, 1, 0);
  sn_tensor b13 = tu_empty(&ctx, SN_F32, 1, (int64_t[]){13}), dense = tu_empty(&ctx, SN_F32, 2, (int64_t[]){12, 8});
  sn_tensor dx = tu_empty(&ctx, SN_F32, 2, (int64_t[]){N, 8}), dv = tu_empty(&ctx, SN_F32, 3, (int64_t[]){3, 4, 4});
  sn_tensor dv2 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 4, 4}), vi = tu_empty(&ctx, SN_I64, 3, (int64_t[]){3, 4, 4});
  sn_tensor bpf = tu_empty(&ctx, SN_F32, 1, (int64_t[]){4});
  sn_tensor bad[] = {with(&bp4, 1, 3), with(&bp4, 0, 1), with(&bp4, 3, 2), with(&bc3, 2, 2), with(&bc3, 2, -1),
                     with(&bc3, 1, 0)};
  const char *F = "seqnn.sparse.bsr_matmul: ";
  cr_assert_eq(sn_bsr_matmul(&ctx, &y, &x, &v3, &bp4, &bc3, NULL), SN_OK, "%s", ctx.err); /* the valid index */
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bad[0], &bc3, NULL),
                "seqnn.sparse.bsr_matmul: browptr must be non-decreasing within [0, nnzb = 3], got browptr[2] = 2 after 3");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bad[1], &bc3, NULL), "browptr[0] must be 0, got 1");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bad[2], &bc3, NULL), "browptr[3] must be nnzb = 3, got 2");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bp4, &bad[3], NULL), "bcol[2] = 2 is out of range [0, K/ri = 2)");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bp4, &bad[4], NULL), "bcol[2] = -1 is out of range");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bp4, &bad[5], NULL),
                "bcol must be strictly ascending within a block-row, got bcol[1] = 0 after 0 (block-row 0)");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &vi, &bp4, &bc3, NULL), "values must be f32, got i64");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bpf, &bc3, NULL), "browptr must be i64, got f32");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bp4, &bpf, NULL), "bcol must be i64, got f32");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bp4, &bp4, NULL), "bcol must be a vector of 3");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x7, &v3, &bp4, &bc3, NULL), "K = 7 inputs must be a multiple of the block's ri = 4");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &xi, &v3, &bp4, &bc3, NULL), "x must be f32, got i64");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x1, &v3, &bp4, &bc3, NULL), "x must be (N, K), got 8");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y, &x, &v3, &bp4, &bc3, &b13), "bias must be (M) = 12, got 13");
  EXPECT_EINVAL(sn_bsr_matmul(&ctx, &y13, &x, &v3, &bp4, &bc3, NULL), "y must be a contiguous f32 tensor of shape 3x12");
  cr_expect(strncmp(ctx.err, F, strlen(F)) == 0, "%s", ctx.err);
  EXPECT_EINVAL(sn_bsr_matmul_bwd(&ctx, &dx, &dv, NULL, &y13, &x, &v3, &bp4, &bc3), "dy must be (N, M) = 3x12, got 3x13");
  EXPECT_EINVAL(sn_bsr_matmul_bwd(&ctx, &dx, &dv2, NULL, &y, &x, &v3, &bp4, &bc3), "dvalues must be a contiguous f32 tensor of shape 3x4x4");
  EXPECT_EINVAL(sn_bsr_matmul_bwd(&ctx, &y, &dv, NULL, &y, &x, &v3, &bp4, &bc3), "dx must be a contiguous f32 tensor of shape 3x8");
  EXPECT_EINVAL(sn_bsr_matmul_bwd(&ctx, &dx, &dv, &b13, &y, &x, &v3, &bp4, &bc3), "dbias must be a contiguous f32 tensor of shape 12");
  EXPECT_EINVAL(sn_bsr_matmul_bwd(&ctx, &dx, &dv, NULL, &y, &x, &v3, &bad[3], &bc3), "seqnn.sparse.bsr_matmul_bwd: browptr");
  EXPECT_EINVAL(sn_bsr_matmul_bwd(&ctx, &dx, &dv, NULL, &y, &x, &v3, &bp4, &bad[3]), "bcol[2] = 2 is out of range");
  cr_expect_eq(sn_bsr_matmul_bwd(&ctx, &dx, &dv, NULL, &y, &x, &v3, &bp4, &bc3), SN_OK, "%s", ctx.err);
  EXPECT_EINVAL(sn_bsr_to_dense(&ctx, &dense, &v3, &bp4, &bad[5]), "seqnn.sparse.bsr_to_dense: bcol must be strictly ascending");
  EXPECT_EINVAL(sn_bsr_to_dense(&ctx, &y, &v3, &bp4, &bc3), "w must be a contiguous f32 tensor of shape 12x12, got f32 3x12");
  EXPECT_EINVAL(sn_bsr_to_dense(&ctx, &x7, &v3, &bp4, &bc3), "K = 7 inputs must be a multiple");
  /* mask and pack */
  sn_tensor m = tu_empty(&ctx, SN_F32, 2, (int64_t[]){3, 2}), m2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 2});
  EXPECT_EINVAL(sn_bsr_mask(&ctx, &m, &dense, 4, 4, 1.5), "seqnn.sparse.bsr_mask: sparsity must be in [0, 1], got 1.5");
  EXPECT_EINVAL(sn_bsr_mask(&ctx, &m, &dense, 4, 4, NAN), "sparsity must be in [0, 1], got nan");
  EXPECT_EINVAL(sn_bsr_mask(&ctx, &m, &dense, 0, 4, 0.5), "1 <= ro, ri");
  EXPECT_EINVAL(sn_bsr_mask(&ctx, &m, &dense, 4, 3, 0.5), "w's shape 12x8 must be a multiple of the block ro x ri = 4 x 3");
  EXPECT_EINVAL(sn_bsr_mask(&ctx, &m2, &dense, 4, 4, 0.5), "mask must be a contiguous f32 tensor of shape 3x2");
  EXPECT_EINVAL(sn_bsr_mask(&ctx, &m, &xi, 1, 1, 0.5), "w must be an f32 matrix (M, K), got i64");
  sn_fill(&ctx, &m, 1);
  EXPECT_EINVAL(sn_bsr_pack(&ctx, &v3, &bp4, &bc3, &dense, &m), "values has room for 3 blocks but the mask has 6 nonzeros");
  EXPECT_EINVAL(sn_bsr_pack(&ctx, &v3, &bp4, &bc3, &dense, &m2), "mask must be f32 (M/ro, K/ri) = 3x2, got f32 2x2");
  sn_f32(&m)[1] = sn_f32(&m)[2] = sn_f32(&m)[3] = 0;
  EXPECT_EINVAL(sn_bsr_pack(&ctx, &v3, &bc3, &bc3, &dense, &m), "browptr must be a contiguous i64 vector of 4");
  cr_expect_eq(sn_bsr_pack(&ctx, &v3, &bp4, &bc3, &dense, &m), SN_OK, "%s", ctx.err);
  sn_tensor *all[] = {&v3, &bc3, &bp4, &x, &y, &x7, &y13, &xi, &x1, &b13, &dense, &dx, &dv, &dv2, &vi, &bpf, &m, &m2};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
  for (size_t i = 0; i < 6; i++) sn_tensor_release(&bad[i]);
}
