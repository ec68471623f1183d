/* test_hash_memory.c -- kernels/hash_memory.c (MemoryFormer's memory layer) against a naive
 * double reference on every SIMD level: bits 1..10 and 16, table counts across the kernel's
 * table blocks (at 8 bits 8 tables forward, 16 from a bf16 copy, 16 backward; at 10, 2, 4
 * and 4), d_out that is no multiple of the 64- or 32-column block or of a vector, both
 * scores, with and without bias; the packed copy against the tables read in place (bit for
 * bit), the bf16 copy within its rounding; exact zeros (sgn(0) = +1), NaN,
 * thread-count independence and bad input. The reference's gradients are checked by finite
 * differences first. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "simdutil.h"
#include "testutil.h"

TU_SUITE(hash_memory);

/* ---- naive reference, in double ------------------------------------------------------- */

typedef struct {
  int64_t N, din, dout;
  int bits;
  bool bias, paper;
} cfg;

static int64_t K_of(const cfg *g) { return g->din / g->bits; }
static int64_t R_of(const cfg *g) { return (int64_t)1 << g->bits; }
static double sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

/* Code, score and the score's derivative in each of the chunk's features. */
static void ref_chunk(const cfg *g, const double *z, int64_t *code, double *p, double *dpdz) {
  double prod = 1, S = 0;
  *code = 0;
  for (int i = 0; i < g->bits; i++) {
    if (z[i] >= 0) *code |= (int64_t)1 << i;
    prod *= sigmoid(2 * fabs(z[i]));
    S += fabs(z[i]);
  }
  *p = g->paper ? prod : S * prod;
  for (int i = 0; dpdz && i < g->bits; i++) {
    double sg = z[i] >= 0 ? 1 : -1, u = sigmoid(-2 * fabs(z[i]));
    dpdz[i] = g->paper ? 2 * sg * prod * u : sg * prod * (1 + 2 * S * u);
  }
}

static void ref_fwd(const cfg *g, double *y, const double *x, const double *tab, const double *bias) {
  const int64_t K = K_of(g), R = R_of(g);
  for (int64_t n = 0; n < g->N; n++) {
    for (int64_t c = 0; c < g->dout; c++) y[n * g->dout + c] = bias ? bias[c] : 0;
    for (int64_t k = 0; k < K; k++) {
      int64_t h;
      double p;
      ref_chunk(g, x + n * g->din + k * g->bits, &h, &p, NULL);
      for (int64_t c = 0; c < g->dout; c++) y[n * g->dout + c] += p * tab[(k * R + h) * g->dout + c];
    }
  }
}

static void ref_bwd(const cfg *g, double *dx, double *dtab, double *db, const double *dy, const double *x,
                    const double *tab) {
  const int64_t K = K_of(g), R = R_of(g);
  double dpdz[16];
  memset(dtab, 0, sizeof(double) * (size_t)(K * R * g->dout));
  memset(db, 0, sizeof(double) * (size_t)g->dout);
  for (int64_t n = 0; n < g->N; n++) {
    for (int64_t c = 0; c < g->dout; c++) db[c] += dy[n * g->dout + c];
    for (int64_t k = 0; k < K; k++) {
      int64_t h;
      double p, dp = 0;
      const double *z = x + n * g->din + k * g->bits;
      ref_chunk(g, z, &h, &p, dpdz);
      for (int64_t c = 0; c < g->dout; c++) {
        dp += tab[(k * R + h) * g->dout + c] * dy[n * g->dout + c];
        dtab[(k * R + h) * g->dout + c] += p * dy[n * g->dout + c];
      }
      for (int i = 0; i < g->bits; i++) dx[n * g->din + k * g->bits + i] = dp * dpdz[i];
    }
  }
}

/* ---- one case against the reference ----------------------------------------------------- */

typedef struct {
  sn_tensor x, tab, bias, y, codes, p, dy, dx, dtab, db;
} bufs;

static bufs make(const cfg *g, uint32_t seed) {
  const int64_t K = K_of(g), R = R_of(g);
  bufs b;
  b.x = tu_make(&ctx, 2, (int64_t[]){g->N, g->din}, seed, 1.5, 0);
  b.tab = tu_make(&ctx, 2, (int64_t[]){K * R, g->dout}, seed + 1, 1, 0);
  b.bias = tu_make(&ctx, 1, &g->dout, seed + 2, 1, 0);
  b.dy = tu_make(&ctx, 2, (int64_t[]){g->N, g->dout}, seed + 3, 1, 0);
  b.y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){g->N, g->dout});
  b.codes = tu_empty(&ctx, SN_I64, 2, (int64_t[]){g->N, K});
  b.p = tu_empty(&ctx, SN_F32, 2, (int64_t[]){g->N, K});
  b.dx = tu_empty(&ctx, SN_F32, 2, (int64_t[]){g->N, g->din});
  b.dtab = tu_empty(&ctx, SN_F32, 2, (int64_t[]){K * R, g->dout});
  b.db = tu_empty(&ctx, SN_F32, 1, &g->dout);
  return b;
}

static void release(bufs *b) {
  sn_tensor *all[] = {&b->x, &b->tab, &b->bias, &b->y, &b->codes, &b->p, &b->dy, &b->dx, &b->dtab, &b->db};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

/* Half the step between bf16 values at f (its 8 significant bits), and the smallest there
 * is: the packed copy's high columns are rounded on a grid offset by up to one step. */
static double bf16_half_step(float f) {
  int e;
  frexp(f, &e);
  return fmax(ldexp(1, e - 9), ldexp(1, -133));
}

static sn_hash_score score_of(const cfg *g) { return g->paper ? SN_HASH_SCORE_PAPER : SN_HASH_SCORE_CODE; }

/* Runs fwd (in place and from the packed copy) and bwd, and compares all with ref. */
static void check_case(const cfg *g, const char *what) {
  const int64_t K = K_of(g), R = R_of(g), ncb = (g->dout + SN_HASH_PANEL - 1) / SN_HASH_PANEL;
  bufs b = make(g, (uint32_t)(g->N * 7 + g->din * 3 + g->dout + g->bits));
  const sn_tensor *pb = g->bias ? &b.bias : NULL;
  double *vx = tu_to_double(&b.x), *vt = tu_to_double(&b.tab), *vb = g->bias ? tu_to_double(&b.bias) : NULL;
  double *vdy = tu_to_double(&b.dy);
  double *ry = tu_dalloc(g->N * g->dout), *rdx = tu_dalloc(g->N * g->din), *rdt = tu_dalloc(K * R * g->dout);
  double *rdb = tu_dalloc(g->dout);
  ref_fwd(g, ry, vx, vt, vb);
  ref_bwd(g, rdx, rdt, rdb, vdy, vx, vt);
  cr_assert_eq(sn_hash_linear_fwd(&ctx, &b.y, &b.codes, &b.p, &b.x, &b.tab, NULL, pb, g->bits, score_of(g)), SN_OK,
               "%s: %s", what, ctx.err);
  cr_expect_leq(tu_max_scaled_err(&b.y, ry, 1e-5, 1e-4), 1.0, "y, %s", what);
  /* codes and scores as saved for backward */
  for (int64_t n = 0; n < g->N; n++)
    for (int64_t k = 0; k < K; k++) {
      int64_t h;
      double p;
      ref_chunk(g, vx + n * g->din + k * g->bits, &h, &p, NULL);
      cr_expect_eq(sn_i64(&b.codes)[n * K + k], h, "code (%lld, %lld), %s", (long long)n, (long long)k, what);
      cr_expect_leq(fabs(sn_f32(&b.p)[n * K + k] - p), 1e-6 + 1e-5 * fabs(p), "p, %s", what);
    }
  /* the packed copy, without saving codes: the same bits */
  sn_tensor pk = tu_empty(&ctx, SN_F32, 3, (int64_t[]){ncb, K * R, SN_HASH_PANEL});
  sn_tensor y2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){g->N, g->dout});
  cr_assert_eq(sn_hash_linear_pack(&ctx, &pk, &b.tab), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_hash_linear_fwd(&ctx, &y2, NULL, NULL, &b.x, &b.tab, &pk, pb, g->bits, score_of(g)), SN_OK, "%s",
               ctx.err);
  cr_expect(tu_same_bits(&b.y, &y2), "packed fwd differs, %s", what);
  /* the bf16 copy: every table value within half a bf16 step, so y within the sum of those
   * steps (2^-8 of the sum of |p T|) and f32's rounding */
  const int64_t ncb16 = (g->dout + SN_HASH_PANEL_BF16 - 1) / SN_HASH_PANEL_BF16;
  sn_tensor pk16 = tu_empty(&ctx, SN_I64, 3, (int64_t[]){ncb16, K * R, SN_HASH_PANEL_BF16 / 4});
  cr_assert_eq(sn_hash_linear_pack(&ctx, &pk16, &b.tab), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_hash_linear_fwd(&ctx, &y2, NULL, NULL, &b.x, &b.tab, &pk16, pb, g->bits, score_of(g)), SN_OK, "%s",
               ctx.err);
  double *vta = tu_dalloc(K * R * g->dout), *rabs = tu_dalloc(g->N * g->dout);
  for (int64_t i = 0; i < K * R * g->dout; i++) vta[i] = fabs(vt[i]);
  ref_fwd(g, rabs, vx, vta, NULL);
  for (int64_t i = 0; i < g->N * g->dout; i++) {
    double bound = ldexp(rabs[i], -8) + 1e-5 * (rabs[i] + (vb ? fabs(vb[i % g->dout]) : 0)) + 1e-6;
    cr_expect_leq(fabs(sn_f32(&y2)[i] - ry[i]), bound, "y[%lld] from bf16, %s", (long long)i, what);
  }
  free(vta), free(rabs);
  sn_tensor_release(&pk16);
  cr_assert_eq(sn_hash_linear_bwd(&ctx, &b.dx, &b.dtab, &b.db, &b.dy, &b.codes, &b.p, &b.x, &b.tab, g->bits,
                                  score_of(g)),
               SN_OK, "%s: %s", what, ctx.err);
  cr_expect_leq(tu_max_scaled_err(&b.dx, rdx, 1e-5, 1e-4), 1.0, "dx, %s", what);
  cr_expect_leq(tu_max_scaled_err(&b.dtab, rdt, 1e-5, 1e-4), 1.0, "dtables, %s", what);
  cr_expect_leq(tu_max_scaled_err(&b.db, rdb, 1e-5, 1e-5), 1.0, "dbias, %s", what);
  free(vx), free(vt), free(vb), free(vdy), free(ry), free(rdx), free(rdt), free(rdb);
  sn_tensor_release(&pk), sn_tensor_release(&y2);
  release(&b);
}

/* ---- tests ------------------------------------------------------------------------------ */

Test(hash_memory, reference_gradients_match_finite_differences) {
  /* L = sum dy * y: its derivative in each x, table and bias element against central
   * differences (h small enough that no feature changes sign). */
  for (int paper = 0; paper < 2; paper++) {
    cfg g = {3, 6, 4, 3, true, paper};
    const int64_t K = K_of(&g), R = R_of(&g), nx = g.N * g.din, nt = K * R * g.dout;
    double x[18], tab[64], bias[4], dy[12], y[12], dx[18], dt[64], db[4];
    for (int64_t i = 0; i < nx; i++) x[i] = 1.3 * sin(1.0 + 2.0 * (double)i);
    for (int64_t i = 0; i < nt; i++) tab[i] = cos(0.7 * (double)i);
    for (int64_t i = 0; i < g.dout; i++) bias[i] = 0.1 * (double)i;
    for (int64_t i = 0; i < g.N * g.dout; i++) dy[i] = sin(3.0 * (double)i + 0.5);
    ref_bwd(&g, dx, dt, db, dy, x, tab);
    double *params[3] = {x, tab, bias}, *grads[3] = {dx, dt, db};
    int64_t sizes[3] = {nx, nt, g.dout};
    for (int q = 0; q < 3; q++)
      for (int64_t i = 0; i < sizes[q]; i++) {
        double keep = params[q][i], h = 1e-6, lo = 0, hi = 0;
        params[q][i] = keep + h, ref_fwd(&g, y, x, tab, bias);
        for (int64_t j = 0; j < g.N * g.dout; j++) hi += dy[j] * y[j];
        params[q][i] = keep - h, ref_fwd(&g, y, x, tab, bias);
        for (int64_t j = 0; j < g.N * g.dout; j++) lo += dy[j] * y[j];
        params[q][i] = keep;
        cr_expect_leq(fabs((hi - lo) / (2 * h) - grads[q][i]), 1e-7 * (1 + fabs(grads[q][i])),
                      "score %s, param %d element %lld", paper ? "paper" : "code", q, (long long)i);
      }
  }
}

Test(hash_memory, matches_reference_on_every_simd_level) {
  const int bits[] = {1, 3, 8, 10};
  const int64_t Ks[] = {1, 5, 17}, douts[] = {1, 7, 64, 65, 130}, Ns[] = {1, 6, 19};
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (int bi = 0; bi < 4; bi++)
      for (int ki = 0; ki < 3; ki++)
        for (int di = 0; di < 5; di++) {
          int opt = (bi + ki + di) % 4;
          cfg g = {Ns[(bi + di) % 3], Ks[ki] * bits[bi], douts[di], bits[bi], opt & 1, opt & 2};
          char what[96];
          snprintf(what, sizeof what, "%s N%lld din%lld dout%lld bits%d", levels[lv], (long long)g.N,
                   (long long)g.din, (long long)g.dout, g.bits);
          check_case(&g, what);
        }
  }
  restore_level();
}

/* Enough work for the threaded loops, token ranges split over column blocks, several table
 * blocks (8 bits: 8 tables a block forward, 16 from bf16 and backward; 10: 2, 4 and 4) and
 * the widest code. */
Test(hash_memory, large_and_threaded) {
  const cfg cs[] = {{300, 8 * 40, 200, 8, true, false}, {130, 10 * 9, 70, 10, false, true},
                    {5000, 16, 3, 8, true, false},      {3, 32, 5, 16, true, false}};
  for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) check_case(&cs[i], "large");
}

/* The bf16 copy's words (simd/hash_memory.h): word w of a 32-column row holds column w in
 * its low half, rounded to bf16, and read whole as an f32, column w + 16; both within half
 * a bf16 step of the table's value, at every magnitude (subnormal to 2^126, either sign,
 * zero), zeros past d_out, NaN kept. */
Test(hash_memory, bf16_words_hold_both_columns_within_half_a_step) {
  const int64_t rows = 40, dout = 70, ncb = 3;
  sn_tensor tab = tu_make(&ctx, 2, (int64_t[]){rows, dout}, 11, 1, 0);
  float *t = sn_f32(&tab);
  for (int64_t i = 0; i < rows * dout; i++) t[i] = ldexpf(t[i], (int)(i * 37 % 267) - 140);
  t[3] = 0.0f, t[20] = -0.0f, t[dout + 5] = NAN, t[dout + 16 + 6] = NAN, t[2 * dout + 1] = INFINITY;
  sn_tensor pk = tu_empty(&ctx, SN_I64, 3, (int64_t[]){ncb, rows, SN_HASH_PANEL_BF16 / 4});
  cr_assert_eq(sn_hash_linear_pack(&ctx, &pk, &tab), SN_OK, "%s", ctx.err);
  const uint32_t *words = (const uint32_t *)sn_data(&pk);
  for (int64_t cb = 0; cb < ncb; cb++)
    for (int64_t r = 0; r < rows; r++)
      for (int w = 0; w < SN_HASH_PANEL_BF16 / 2; w++) {
        uint32_t word = words[(cb * rows + r) * (SN_HASH_PANEL_BF16 / 2) + w], lo = word << 16;
        int64_t c = cb * SN_HASH_PANEL_BF16 + w;
        float vlo, vhi;
        memcpy(&vlo, &lo, sizeof vlo);
        memcpy(&vhi, &word, sizeof vhi);
        struct { int64_t col; float got; } half[2] = {{c, vlo}, {c + 16, vhi}};
        for (int i = 0; i < 2; i++) {
          int64_t col = half[i].col;
          float got = half[i].got, want = col < dout ? t[r * dout + col] : 0.0f;
          if (col >= dout) {
            cr_expect(i == 0 ? lo == 0 : word >> 16 == 0, "padding column %lld of row %lld", (long long)col,
                      (long long)r);
          } else if (isnan(want) || isinf(want)) {
            cr_expect(isnan(want) ? isnan(got) : got == want, "column %lld of row %lld: %g for %g", (long long)col,
                      (long long)r, got, want);
          } else {
            cr_expect_leq(fabs((double)got - want), bf16_half_step(want), "column %lld of row %lld: %a for %a",
                          (long long)col, (long long)r, got, want);
          }
        }
      }
  sn_tensor_release(&tab), sn_tensor_release(&pk);
}

/* sgn(0) = +1: a zero feature sets its code bit and takes the + branch of the gradient. */
Test(hash_memory, zero_features_count_as_positive) {
  cfg g = {2, 8, 3, 4, false, false};
  bufs b = make(&g, 5);
  float *x = sn_f32(&b.x);
  x[0] = 0.0f, x[1] = -0.0f, x[6] = 0.0f;
  double *vx = tu_to_double(&b.x), *vt = tu_to_double(&b.tab), *vdy = tu_to_double(&b.dy);
  double ry[6], rdx[16], rdt[4 * 16 * 3], rdb[3];
  ref_fwd(&g, ry, vx, vt, NULL);
  ref_bwd(&g, rdx, rdt, rdb, vdy, vx, vt);
  cr_assert_eq(sn_hash_linear_fwd(&ctx, &b.y, &b.codes, &b.p, &b.x, &b.tab, NULL, NULL, 4, SN_HASH_SCORE_CODE), SN_OK);
  cr_expect_eq(sn_i64(&b.codes)[0] & 3, 3, "code of chunk 0: %lld", (long long)sn_i64(&b.codes)[0]);
  cr_expect_eq((sn_i64(&b.codes)[1] >> 2) & 1, 1, "bit 2 of chunk 1");
  cr_assert_eq(sn_hash_linear_bwd(&ctx, &b.dx, NULL, NULL, &b.dy, &b.codes, &b.p, &b.x, &b.tab, 4,
                                  SN_HASH_SCORE_CODE), SN_OK, "%s", ctx.err);
  cr_expect_leq(tu_max_scaled_err(&b.y, ry, 1e-6, 1e-5), 1.0);
  cr_expect_leq(tu_max_scaled_err(&b.dx, rdx, 1e-6, 1e-5), 1.0);
  free(vx), free(vt), free(vdy);
  release(&b);
}

Test(hash_memory, nan_reaches_its_token_only) {
  cfg g = {4, 16, 9, 8, true, false};
  bufs b = make(&g, 9);
  sn_f32(&b.x)[1 * 16 + 3] = NAN;
  cr_assert_eq(sn_hash_linear_fwd(&ctx, &b.y, &b.codes, &b.p, &b.x, &b.tab, NULL, &b.bias, 8, SN_HASH_SCORE_CODE),
               SN_OK);
  for (int64_t n = 0; n < 4; n++)
    for (int64_t c = 0; c < 9; c++)
      cr_expect_eq(isnan(sn_f32(&b.y)[n * 9 + c]), n == 1, "y[%lld, %lld]", (long long)n, (long long)c);
  cr_assert_eq(sn_hash_linear_bwd(&ctx, &b.dx, NULL, NULL, &b.dy, &b.codes, &b.p, &b.x, &b.tab, 8,
                                  SN_HASH_SCORE_CODE), SN_OK);
  for (int64_t i = 0; i < 4 * 16; i++)
    cr_expect_eq(isnan(sn_f32(&b.dx)[i]), i / 8 == 2, "dx[%lld]", (long long)i); /* chunk 0 of token 1 */
  release(&b);
}

Test(hash_memory, results_do_not_depend_on_the_thread_count) {
  cfg g = {777, 8 * 20, 150, 8, true, false};
  bufs b[2] = {make(&g, 3), make(&g, 3)};
  int saved = omp_get_max_threads();
  for (int r = 0; r < 2; r++) {
    omp_set_num_threads(r == 0 ? 1 : 3);
    cr_assert_eq(sn_hash_linear_fwd(&ctx, &b[r].y, &b[r].codes, &b[r].p, &b[r].x, &b[r].tab, NULL, &b[r].bias, 8,
                                    SN_HASH_SCORE_CODE), SN_OK);
    cr_assert_eq(sn_hash_linear_bwd(&ctx, &b[r].dx, &b[r].dtab, &b[r].db, &b[r].dy, &b[r].codes, &b[r].p, &b[r].x,
                                    &b[r].tab, 8, SN_HASH_SCORE_CODE), SN_OK);
  }
  omp_set_num_threads(saved);
  cr_expect(tu_same_bits(&b[0].y, &b[1].y), "y");
  cr_expect(tu_same_bits(&b[0].dx, &b[1].dx), "dx");
  cr_expect(tu_same_bits(&b[0].dtab, &b[1].dtab), "dtables");
  cr_expect(tu_same_bits(&b[0].db, &b[1].db), "dbias");
  release(&b[0]), release(&b[1]);
}

/* Leading dims are flattened: (2, 3, d_in) gives the rows of (6, d_in). */
Test(hash_memory, any_leading_shape) {
  cfg g = {6, 16, 5, 8, true, false};
  bufs b = make(&g, 11);
  sn_tensor x3, y3 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 3, 5});
  cr_assert_eq(sn_view(&ctx, &x3, &b.x, 3, (int64_t[]){2, 3, 16}), SN_OK);
  cr_assert_eq(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &b.x, &b.tab, NULL, &b.bias, 8, SN_HASH_SCORE_CODE), SN_OK);
  cr_assert_eq(sn_hash_linear_fwd(&ctx, &y3, NULL, NULL, &x3, &b.tab, NULL, &b.bias, 8, SN_HASH_SCORE_CODE), SN_OK);
  cr_expect(memcmp(sn_f32(&b.y), sn_f32(&y3), 30 * sizeof(float)) == 0);
  sn_tensor_release(&x3), sn_tensor_release(&y3);
  release(&b);
}

#define EXPECT_EINVAL(call, want) TU_EXPECT_EINVAL_HAS(call, want)

Test(hash_memory, rejects_bad_input) {
  cfg g = {2, 16, 5, 8, true, false};
  bufs b = make(&g, 1);
  const sn_hash_score C = SN_HASH_SCORE_CODE;
  sn_tensor x30 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 5, 30}), xi = tu_empty(&ctx, SN_I64, 2, (int64_t[]){2, 16});
  sn_tensor t100 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){100, 5}), b7 = tu_empty(&ctx, SN_F32, 1, (int64_t[]){7});
  sn_tensor y4 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 4}), pk = tu_empty(&ctx, SN_F32, 3, (int64_t[]){1, 512, 32});
  sn_tensor xt;
  cr_assert_eq(sn_transpose(&ctx, &xt, &b.x, 0, 1), SN_OK);
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &b.x, &b.tab, NULL, NULL, 0, C), "bits must be in 1..16, got 0");
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &b.x, &b.tab, NULL, NULL, 17, C), "got 17");
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &x30, &b.tab, NULL, NULL, 8, C),
                "x has 30 features, not a multiple of bits 8 (x: 2x5x30)");
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &xi, &b.tab, NULL, NULL, 8, C), "x must be a contiguous f32");
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &xt, &b.tab, NULL, NULL, 8, C), "x must be a contiguous f32");
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &b.x, &t100, NULL, NULL, 8, C),
                "tables must have K * 2^bits = 2 * 256 rows, got 100x5");
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &b.x, &b.tab, NULL, &b7, 8, C), "bias must be");
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &y4, NULL, NULL, &b.x, &b.tab, NULL, NULL, 8, C), "y must be");
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &b.x, &b.tab, &pk, NULL, 8, C), "packed must be");
  EXPECT_EINVAL(sn_hash_linear_fwd(&ctx, &b.y, NULL, NULL, &b.x, &b.tab, NULL, NULL, 8, (sn_hash_score)7),
                "unknown score");
  EXPECT_EINVAL(sn_hash_linear_pack(&ctx, &pk, &b.tab), "packed must be");
  /* a corrupt code never reaches a table */
  cr_assert_eq(sn_hash_linear_fwd(&ctx, &b.y, &b.codes, &b.p, &b.x, &b.tab, NULL, NULL, 8, C), SN_OK);
  sn_i64(&b.codes)[3] = 256;
  EXPECT_EINVAL(sn_hash_linear_bwd(&ctx, &b.dx, &b.dtab, NULL, &b.dy, &b.codes, &b.p, &b.x, &b.tab, 8, C),
                "codes[3] = 256 is out of range 0..255");
  sn_i64(&b.codes)[3] = -1;
  EXPECT_EINVAL(sn_hash_linear_bwd(&ctx, &b.dx, NULL, NULL, &b.dy, &b.codes, &b.p, &b.x, &b.tab, 8, C),
                "codes[3] = -1");
  EXPECT_EINVAL(sn_hash_linear_bwd(&ctx, &b.dx, NULL, NULL, &y4, &b.codes, &b.p, &b.x, &b.tab, 8, C),
                "grad_output must be");
  EXPECT_EINVAL(sn_hash_linear_bwd(&ctx, &b.dx, NULL, NULL, &b.dy, &b.p, &b.p, &b.x, &b.tab, 8, C), "codes must be");
  EXPECT_EINVAL(sn_hash_linear_bwd(&ctx, NULL, &t100, NULL, &b.dy, &b.codes, &b.p, &b.x, &b.tab, 8, C),
                "dtables must be");
  sn_tensor *all[] = {&x30, &xi, &t100, &b7, &y4, &pk, &xt};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
  release(&b);
}

/* Nothing to do: no tokens, or no outputs; K = 0 (no features) gives the bias. */
Test(hash_memory, empty_shapes) {
  sn_tensor x0 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){0, 16}), t = tu_make(&ctx, 2, (int64_t[]){512, 3}, 1, 1, 0);
  sn_tensor y0 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){0, 3}), c0 = tu_empty(&ctx, SN_I64, 2, (int64_t[]){0, 2});
  sn_tensor p0 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){0, 2}), dt = tu_empty(&ctx, SN_F32, 2, (int64_t[]){512, 3});
  sn_tensor db = tu_empty(&ctx, SN_F32, 1, (int64_t[]){3}), dx0 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){0, 16});
  cr_expect_eq(sn_hash_linear_fwd(&ctx, &y0, &c0, &p0, &x0, &t, NULL, NULL, 8, SN_HASH_SCORE_CODE), SN_OK, "%s",
               ctx.err);
  cr_expect_eq(sn_hash_linear_bwd(&ctx, &dx0, &dt, &db, &y0, &c0, &p0, &x0, &t, 8, SN_HASH_SCORE_CODE), SN_OK, "%s",
               ctx.err);
  for (int64_t i = 0; i < 512 * 3; i++) cr_expect_eq(sn_f32(&dt)[i], 0.0f);
  for (int64_t i = 0; i < 3; i++) cr_expect_eq(sn_f32(&db)[i], 0.0f);
  sn_tensor xk = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 0}), tk = tu_empty(&ctx, SN_F32, 2, (int64_t[]){0, 3});
  sn_tensor yk = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 3}), bias = tu_make(&ctx, 1, (int64_t[]){3}, 2, 1, 0);
  cr_expect_eq(sn_hash_linear_fwd(&ctx, &yk, NULL, NULL, &xk, &tk, NULL, &bias, 8, SN_HASH_SCORE_CODE), SN_OK, "%s",
               ctx.err);
  for (int64_t i = 0; i < 6; i++) cr_expect_eq(sn_f32(&yk)[i], sn_f32(&bias)[i % 3]);
  sn_tensor *all[] = {&x0, &t, &y0, &c0, &p0, &dt, &db, &dx0, &xk, &tk, &yk, &bias};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}
