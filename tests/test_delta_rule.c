/* test_delta_rule.c -- kernels/delta_rule.c against a naive double recurrence: T around the
 * 64-step chunk, Dk != Dv and head dims that are not multiples of 16, initial and final
 * states, beta in (0, 1) and (0, 2), the chunk states, the backward (whose reference is
 * checked by finite differences), strided views, the decode step, thread-count
 * independence, every SIMD table and bad input. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "simdutil.h"
#include "testutil.h"

/* ---- naive reference, in double, over contiguous arrays ------------------------------------
 * q, k (B,T,H,Dk), v (B,T,H,Dv), beta (B,T,H), h0 (B,H,Dk,Dv) or NULL. */
typedef struct {
  int64_t B, T, H, Dk, Dv;
  double scale;
  const double *q, *k, *v, *beta, *h0;
} ref_in;

typedef struct {
  double *dq, *dk, *dv, *dbeta, *dh0;
} ref_grads;

/* Row (b, t, h) of a (B, T, H, n) array. */
static int64_t tok(const ref_in *r, int64_t b, int64_t t, int64_t h) { return (b * r->T + t) * r->H + h; }

/* hs (B, H, T+1, Dk, Dv): hs[b][h][0] = h0, hs[b][h][t+1] = the state after step t. */
static double *state_at(const ref_in *r, double *hs, int64_t b, int64_t h, int64_t t) {
  return hs + ((b * r->H + h) * (r->T + 1) + t) * r->Dk * r->Dv;
}

/* e = v_t - S^T k_t for the state S before step t. */
static void residual(const ref_in *r, const double *S, int64_t i, double *e) {
  const double *k = r->k + i * r->Dk, *v = r->v + i * r->Dv;
  for (int64_t j = 0; j < r->Dv; j++) {
    e[j] = v[j];
    for (int64_t d = 0; d < r->Dk; d++) e[j] -= S[d * r->Dv + j] * k[d];
  }
}

/* o (B,T,H,Dv) and the states hs, straight from the recurrence. */
static void ref_fwd(const ref_in *r, double *o, double *hs) {
  int64_t Dk = r->Dk, Dv = r->Dv;
  double *e = malloc(sizeof(double) * (size_t)Dv);
  for (int64_t b = 0; b < r->B; b++)
    for (int64_t h = 0; h < r->H; h++) {
      double *S0 = state_at(r, hs, b, h, 0);
      for (int64_t i = 0; i < Dk * Dv; i++) S0[i] = r->h0 ? r->h0[(b * r->H + h) * Dk * Dv + i] : 0;
      for (int64_t t = 0; t < r->T; t++) {
        int64_t i = tok(r, b, t, h);
        const double *Sp = state_at(r, hs, b, h, t), *k = r->k + i * Dk, *q = r->q + i * Dk;
        double *S = state_at(r, hs, b, h, t + 1);
        residual(r, Sp, i, e);
        for (int64_t d = 0; d < Dk; d++)
          for (int64_t j = 0; j < Dv; j++) S[d * Dv + j] = Sp[d * Dv + j] + k[d] * r->beta[i] * e[j];
        for (int64_t j = 0; j < Dv; j++) {
          double s = 0;
          for (int64_t d = 0; d < Dk; d++) s += S[d * Dv + j] * r->scale * q[d];
          o[i * Dv + j] = s;
        }
      }
    }
  free(e);
}

/* The gradients of L = sum(o * dout) + sum(final * dfinal) (dfinal may be NULL), sweeping
 * back in time with dS = dL/dS_t. */
static void ref_bwd(const ref_in *r, double *hs, const double *dout, const double *dfinal, ref_grads *g) {
  int64_t Dk = r->Dk, Dv = r->Dv;
  double *dS = malloc(sizeof(double) * (size_t)(Dk * Dv)), *e = malloc(sizeof(double) * (size_t)Dv);
  double *du = malloc(sizeof(double) * (size_t)Dv);
  for (int64_t b = 0; b < r->B; b++)
    for (int64_t h = 0; h < r->H; h++) {
      for (int64_t i = 0; i < Dk * Dv; i++) dS[i] = dfinal ? dfinal[(b * r->H + h) * Dk * Dv + i] : 0;
      for (int64_t t = r->T - 1; t >= 0; t--) {
        int64_t i = tok(r, b, t, h);
        const double *Sp = state_at(r, hs, b, h, t), *S = state_at(r, hs, b, h, t + 1);
        const double *k = r->k + i * Dk, *q = r->q + i * Dk, *dy = dout + i * Dv;
        double beta = r->beta[i], db = 0;
        residual(r, Sp, i, e);
        for (int64_t d = 0; d < Dk; d++) {
          double s = 0;
          for (int64_t j = 0; j < Dv; j++) {
            dS[d * Dv + j] += r->scale * q[d] * dy[j];
            s += S[d * Dv + j] * dy[j];
          }
          g->dq[i * Dk + d] = r->scale * s;
        }
        /* S = Sp + k u^T with u = beta e: du = dS^T k, dk = dS u */
        for (int64_t j = 0; j < Dv; j++) {
          du[j] = 0;
          for (int64_t d = 0; d < Dk; d++) du[j] += dS[d * Dv + j] * k[d];
          db += du[j] * e[j];
          g->dv[i * Dv + j] = beta * du[j];
        }
        g->dbeta[i] = db;
        /* e = v - Sp^T k: its gradient beta du flows to k and Sp with a minus sign */
        for (int64_t d = 0; d < Dk; d++) {
          double s = 0;
          for (int64_t j = 0; j < Dv; j++) s += dS[d * Dv + j] * beta * e[j] - Sp[d * Dv + j] * beta * du[j];
          g->dk[i * Dk + d] = s;
        }
        for (int64_t d = 0; d < Dk; d++)
          for (int64_t j = 0; j < Dv; j++) dS[d * Dv + j] -= k[d] * beta * du[j];
      }
      memcpy(g->dh0 + (b * r->H + h) * Dk * Dv, dS, sizeof(double) * (size_t)(Dk * Dv));
    }
  free(dS), free(e), free(du);
}

/* ---- fixtures --------------------------------------------------------------------------------- */

TU_SUITE(delta_rule);

typedef struct {
  int64_t B, T, H, Dk, Dv;
  bool h0, dfinal;
  double beta_max; /* beta in (0, beta_max) */
} cfg;

static char *describe(const cfg *c, char *buf) {
  sprintf(buf, "B%lld T%lld H%lld Dk%lld Dv%lld h0 %d dfinal %d beta < %g simd %s threads %d", (long long)c->B,
          (long long)c->T, (long long)c->H, (long long)c->Dk, (long long)c->Dv, c->h0, c->dfinal, c->beta_max,
          sn_simd_level(), omp_get_max_threads());
  return buf;
}

/* Inputs, the kernels' outputs and the reference's results of one case. Absent optional
 * tensors are left with a NULL storage. */
typedef struct {
  cfg c;
  sn_tensor q, k, v, beta, h0, dout, dfinal;
  sn_tensor o, fin, chunks, dq, dk, dv, dbeta, dh0;
  sn_linattn_opts opts;
  double *ro, *hs;
  ref_grads rg;
} fixture;

/* Each row of the last dim scaled to unit length, as DeltaNet's keys are. */
static void l2_normalize(sn_tensor *t) {
  int64_t n = t->size[t->ndim - 1];
  float *p = sn_f32(t);
  for (int64_t r = 0; r < sn_numel(t) / n; r++) {
    double s = 0;
    for (int64_t j = 0; j < n; j++) s += (double)p[r * n + j] * p[r * n + j];
    for (int64_t j = 0; j < n; j++) p[r * n + j] = (float)(p[r * n + j] / sqrt(s));
  }
}


static int64_t nchunks(int64_t T) { return (T + SN_LINATTN_CHUNK - 1) / SN_LINATTN_CHUNK; }

static void fixture_inputs(fixture *f, const cfg *c) {
  memset(f, 0, sizeof *f);
  f->c = *c;
  int64_t tk[] = {c->B, c->T, c->H, c->Dk}, tv[] = {c->B, c->T, c->H, c->Dv}, th[] = {c->B, c->T, c->H};
  int64_t st[] = {c->B, c->H, c->Dk, c->Dv};
  f->q = tu_make(&ctx, 4, tk, 1, 1, 0);
  f->k = tu_make(&ctx, 4, tk, 2, 1, 0);
  l2_normalize(&f->k);
  f->v = tu_make(&ctx, 4, tv, 3, 1, 0);
  f->beta = tu_make(&ctx, 3, th, 4, 0.475 * c->beta_max, 0.5 * c->beta_max); /* (0.025, 0.975) beta_max */
  f->dout = tu_make(&ctx, 4, tv, 5, 1, 0);
  if (c->h0) f->h0 = tu_make(&ctx, 4, st, 6, 0.5, 0), f->opts.initial_state = &f->h0;
  if (c->dfinal) f->dfinal = tu_make(&ctx, 4, st, 7, 1, 0);
  f->opts.scale = (float)(1 / sqrt((double)c->Dk));
}

/* Runs fwd (with the final state and the chunk states) and, when bwd, the backward. */
static void fixture_run(fixture *f, bool bwd) {
  const cfg *c = &f->c;
  int64_t tk[] = {c->B, c->T, c->H, c->Dk}, tv[] = {c->B, c->T, c->H, c->Dv}, th[] = {c->B, c->T, c->H};
  int64_t st[] = {c->B, c->H, c->Dk, c->Dv}, ck[] = {c->B, c->H, nchunks(c->T), c->Dk, c->Dv};
  f->o = tu_empty(&ctx, SN_F32, 4, tv), f->fin = tu_empty(&ctx, SN_F32, 4, st), f->chunks = tu_empty(&ctx, SN_F32, 5, ck);
  cr_assert_eq(sn_delta_rule_fwd(&ctx, &f->o, &f->fin, &f->chunks, &f->q, &f->k, &f->v, &f->beta, &f->opts), SN_OK,
               "%s", ctx.err);
  if (!bwd) return;
  f->dq = tu_empty(&ctx, SN_F32, 4, tk), f->dk = tu_empty(&ctx, SN_F32, 4, tk), f->dv = tu_empty(&ctx, SN_F32, 4, tv);
  f->dbeta = tu_empty(&ctx, SN_F32, 3, th);
  if (c->h0) f->dh0 = tu_empty(&ctx, SN_F32, 4, st);
  cr_assert_eq(sn_delta_rule_bwd(&ctx, &f->dq, &f->dk, &f->dv, &f->dbeta, c->h0 ? &f->dh0 : NULL, &f->dout,
                                 c->dfinal ? &f->dfinal : NULL, &f->chunks, &f->q, &f->k, &f->v, &f->beta, &f->opts),
               SN_OK, "%s", ctx.err);
}

static void fixture_reference(fixture *f, bool bwd) {
  const cfg *c = &f->c;
  int64_t B = c->B, T = c->T, H = c->H, Dk = c->Dk, Dv = c->Dv;
  double *in[] = {tu_to_double(&f->q), tu_to_double(&f->k), tu_to_double(&f->v), tu_to_double(&f->beta), tu_to_double(&f->h0)};
  ref_in r = {B, T, H, Dk, Dv, f->opts.scale, in[0], in[1], in[2], in[3], in[4]};
  f->ro = tu_dalloc(B * T * H * Dv);
  f->hs = tu_dalloc(B * H * (T + 1) * Dk * Dv);
  ref_fwd(&r, f->ro, f->hs);
  if (bwd) {
    double *dout = tu_to_double(&f->dout), *dfinal = tu_to_double(&f->dfinal);
    f->rg = (ref_grads){tu_dalloc(B * T * H * Dk), tu_dalloc(B * T * H * Dk), tu_dalloc(B * T * H * Dv), tu_dalloc(B * T * H),
                        tu_dalloc(B * H * Dk * Dv)};
    ref_bwd(&r, f->hs, dout, dfinal, &f->rg);
    free(dout), free(dfinal);
  }
  for (int i = 0; i < 5; i++) free(in[i]);
}

static void fixture_free(fixture *f) {
  sn_tensor *ts[] = {&f->q,  &f->k,   &f->v,      &f->beta, &f->h0, &f->dout, &f->dfinal, &f->o,
                     &f->fin, &f->chunks, &f->dq, &f->dk,   &f->dv, &f->dbeta, &f->dh0};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  double *ds[] = {f->ro, f->hs, f->rg.dq, f->rg.dk, f->rg.dv, f->rg.dbeta, f->rg.dh0};
  for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++) free(ds[i]);
}

/* The reference's state entering each chunk (B,H,nchunks,Dk,Dv), or at the end (B,H,Dk,Dv)
 * when final. */
static double *ref_states(const fixture *f, bool final) {
  const cfg *c = &f->c;
  int64_t nc = final ? 1 : nchunks(c->T), DD = c->Dk * c->Dv;
  double *r = tu_dalloc(c->B * c->H * nc * DD);
  for (int64_t bh = 0; bh < c->B * c->H; bh++)
    for (int64_t i = 0; i < nc; i++) {
      int64_t t = final ? c->T : i * SN_LINATTN_CHUNK;
      memcpy(r + (bh * nc + i) * DD, f->hs + (bh * (c->T + 1) + t) * DD, sizeof(double) * (size_t)DD);
    }
  return r;
}

#define FWD_TOL 2e-5
#define BWD_TOL 1e-4

static void expect_forward(const fixture *f) {
  char d[200];
  double *rc = ref_states(f, false), *rf = ref_states(f, true);
  cr_expect_leq(tu_rel_err(&f->o, f->ro), FWD_TOL, "o: %s", describe(&f->c, d));
  cr_expect_leq(tu_rel_err(&f->fin, rf), FWD_TOL, "final state: %s", describe(&f->c, d));
  if (f->c.T > 0) cr_expect_leq(tu_rel_err(&f->chunks, rc), FWD_TOL, "chunk states: %s", describe(&f->c, d));
  free(rc), free(rf);
}

static void expect_backward(const fixture *f) {
  char d[200];
  struct {
    const char *name;
    const sn_tensor *t;
    const double *ref;
  } gs[] = {{"dq", &f->dq, f->rg.dq}, {"dk", &f->dk, f->rg.dk}, {"dv", &f->dv, f->rg.dv},
            {"dbeta", &f->dbeta, f->rg.dbeta}, {"dh0", &f->dh0, f->rg.dh0}};
  for (size_t i = 0; i < sizeof gs / sizeof gs[0]; i++)
    if (gs[i].t->storage)
      cr_expect_leq(tu_rel_err(gs[i].t, gs[i].ref), BWD_TOL, "%s: %s", gs[i].name, describe(&f->c, d));
}

static void check_case(const cfg *c) {
  fixture f;
  fixture_inputs(&f, c);
  fixture_run(&f, true);
  fixture_reference(&f, true);
  expect_forward(&f);
  expect_backward(&f);
  fixture_free(&f);
}

/* Every output of two runs holds the same bits. */
static void expect_same_bits(const fixture *a, const fixture *b, const char *what) {
  const sn_tensor *x[] = {&a->o, &a->fin, &a->chunks, &a->dq, &a->dk, &a->dv, &a->dbeta, &a->dh0};
  const sn_tensor *y[] = {&b->o, &b->fin, &b->chunks, &b->dq, &b->dk, &b->dv, &b->dbeta, &b->dh0};
  for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
    if (x[i]->storage)
      cr_expect(memcmp(sn_f32(x[i]), sn_f32(y[i]), (size_t)sn_numel(x[i]) * sizeof(float)) == 0, "output %zu, %s", i,
                what);
}

/* ---- tests ------------------------------------------------------------------------------------ */

/* The reference backward against central differences of L = sum(o G) + sum(final Gf), with
 * beta in (0, 2) and keys not normalized (the kernel's inputs are the raw k). */
Test(delta_rule, reference_backward_matches_finite_differences) {
  enum { B = 2, T = 5, H = 2, Dk = 3, Dv = 4, NTK = B * T * H * Dk, NTV = B * T * H * Dv, NS = B * H * Dk * Dv };
  double q[NTK], k[NTK], v[NTV], beta[B * T * H], h0[NS], G[NTV], Gf[NS], o[NTV], hs[B * H * (T + 1) * Dk * Dv];
  double *ins[] = {q, k, v, beta, h0, G, Gf};
  int64_t lens[] = {NTK, NTK, NTV, B * T * H, NS, NTV, NS};
  uint32_t s = 3;
  for (int a = 0; a < 7; a++)
    for (int64_t i = 0; i < lens[a]; i++) s = s * 1664525u + 1013904223u, ins[a][i] = (s >> 8) / 8388608.0 - 1;
  for (int64_t i = 0; i < B * T * H; i++) beta[i] += 1; /* (0, 2) */
  ref_in r = {B, T, H, Dk, Dv, 0.7, q, k, v, beta, h0};
  double dq[NTK], dk[NTK], dv[NTV], dbeta[B * T * H], dh0[NS];
  ref_grads g = {dq, dk, dv, dbeta, dh0};
  ref_fwd(&r, o, hs);
  ref_bwd(&r, hs, G, Gf, &g);
  double *grads[] = {dq, dk, dv, dbeta, dh0};
  const char *names[] = {"q", "k", "v", "beta", "h0"};
  for (int a = 0; a < 5; a++)
    for (int64_t i = 0; i < lens[a]; i++) {
      double keep = ins[a][i], h = 1e-6, L[2];
      for (int side = 0; side < 2; side++) {
        ins[a][i] = keep + (side ? -h : h);
        ref_fwd(&r, o, hs);
        L[side] = 0;
        for (int64_t j = 0; j < NTV; j++) L[side] += o[j] * G[j];
        for (int64_t bh = 0; bh < B * H; bh++)
          for (int64_t j = 0; j < Dk * Dv; j++) L[side] += hs[(bh * (T + 1) + T) * Dk * Dv + j] * Gf[bh * Dk * Dv + j];
      }
      ins[a][i] = keep;
      double fd = (L[0] - L[1]) / (2 * h);
      cr_expect(fabs(fd - grads[a][i]) < 1e-6 * (1 + fabs(fd)), "d%s[%lld]: fd %.10g, reference %.10g", names[a],
                (long long)i, fd, grads[a][i]);
    }
}

/* T of 1 and around the chunk, Dk != Dv (20 x 36: neither a multiple of 16) and 64 x 64,
 * with and without the initial state and the final-state gradient. */
Test(delta_rule, odd_sizes_match_reference) {
  const int64_t Ts[] = {1, 17, 63, 64, 65, 130, 200}, dims[][2] = {{20, 36}, {64, 64}};
  for (int ti = 0; ti < 7; ti++)
    for (int di = 0; di < 2; di++)
      for (int m = 0; m < 4; m++) {
        cfg c = {2, Ts[ti], 2, dims[di][0], dims[di][1], m & 1, m & 2, 1};
        check_case(&c);
      }
}

/* beta up to 2 (DeltaNet's allow_neg_eigval): the update is still a contraction. */
Test(delta_rule, beta_up_to_two_matches_reference) {
  const int64_t Ts[] = {17, 130};
  for (int ti = 0; ti < 2; ti++) {
    cfg a = {2, Ts[ti], 3, 20, 36, true, true, 2}, b = {1, Ts[ti], 2, 64, 64, true, true, 2};
    check_case(&a);
    check_case(&b);
  }
}

/* Head dims of 1, 16, 17, 32, 33, 48 and 80: padded to one to five vectors of 16, every
 * column path of the tables' products. */
Test(delta_rule, small_head_dims_match_reference) {
  const int64_t dims[][2] = {{1, 1}, {16, 17}, {17, 16}, {48, 32}, {33, 80}};
  for (int i = 0; i < 5; i++) {
    cfg c = {1, 100, 2, dims[i][0], dims[i][1], true, true, 1};
    check_case(&c);
  }
}

Test(delta_rule, every_simd_level_matches_reference) {
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    cfg a = {2, 130, 2, 20, 36, true, true, 1}, b = {1, 65, 2, 64, 64, false, true, 2};
    check_case(&a);
    check_case(&b);
  }
  restore_level();
}

/* Drift over 2048 steps stays near the double result. */
Test(delta_rule, long_sequence_stays_accurate) {
  cfg c = {1, 2048, 2, 32, 32, true, true, 1};
  check_case(&c);
}

/* q, k, v as narrows of one (B, T, H, 2Dk + Dv) projection, beta of a (B, T, 2H) one, and the
 * initial state, grad_output and final-state gradient as narrows too: the same bits as
 * contiguous copies, forward and backward. */
Test(delta_rule, strided_views_equal_contiguous_copies) {
  int64_t B = 2, T = 70, H = 3, Dk = 20, Dv = 36;
  cfg c = {B, T, H, Dk, Dv, true, true, 1};
  fixture f, s;
  fixture_inputs(&f, &c);
  fixture_inputs(&s, &c);
  sn_tensor qkv = tu_make(&ctx, 4, (int64_t[]){B, T, H, 2 * Dk + Dv}, 21, 1, 0), bb = tu_make(&ctx, 3, (int64_t[]){B, T, 2 * H}, 22, 0.4, 0.5);
  sn_tensor gall = tu_make(&ctx, 4, (int64_t[]){B, T, H, 2 * Dv}, 23, 1, 0), hall = tu_make(&ctx, 4, (int64_t[]){B, H, Dk, 2 * Dv}, 24, 1, 0);
  sn_tensor fall = tu_make(&ctx, 4, (int64_t[]){B, H, Dk, 2 * Dv}, 25, 1, 0);
  for (int64_t r = 0; r < B * T * H; r++) { /* unit keys */
    float *kr = sn_f32(&qkv) + r * (2 * Dk + Dv) + Dk;
    double ss = 0;
    for (int64_t j = 0; j < Dk; j++) ss += (double)kr[j] * kr[j];
    for (int64_t j = 0; j < Dk; j++) kr[j] = (float)(kr[j] / sqrt(ss));
  }
  sn_tensor *dst[] = {&s.q, &s.k, &s.v, &s.beta, &s.dout, &s.h0, &s.dfinal};
  sn_tensor *src[] = {&qkv, &qkv, &qkv, &bb, &gall, &hall, &fall};
  sn_tensor *copies[] = {&f.q, &f.k, &f.v, &f.beta, &f.dout, &f.h0, &f.dfinal};
  int64_t start[] = {0, Dk, 2 * Dk, H, Dv, Dv, 1}, len[] = {Dk, Dk, Dv, H, Dv, Dv, Dv};
  int dim[] = {3, 3, 3, 2, 3, 3, 3};
  for (int i = 0; i < 7; i++) {
    sn_tensor_release(dst[i]);
    cr_assert_eq(sn_narrow(&ctx, dst[i], src[i], dim[i], start[i], len[i]), SN_OK, "%s", ctx.err);
    cr_assert_eq(sn_copy(&ctx, copies[i], dst[i]), SN_OK, "%s", ctx.err);
  }
  cr_assert(!sn_is_contiguous(&s.q) && !sn_is_contiguous(&s.beta) && !sn_is_contiguous(&s.h0));
  fixture_run(&f, true);
  fixture_run(&s, true);
  expect_same_bits(&f, &s, "strided vs contiguous");
  fixture_reference(&f, true);
  expect_forward(&f);
  expect_backward(&f);
  fixture_free(&f), fixture_free(&s);
  sn_tensor_release(&qkv), sn_tensor_release(&bb), sn_tensor_release(&gall), sn_tensor_release(&hall);
  sn_tensor_release(&fall);
}

/* The same bits on 1, 2 and 3 threads, forward and backward. */
Test(delta_rule, results_do_not_depend_on_the_thread_count) {
  cfg c = {2, 130, 3, 20, 36, true, true, 1};
  int saved = omp_get_max_threads();
  fixture one;
  for (int nt = 1; nt <= 3; nt++) {
    omp_set_num_threads(nt);
    fixture f;
    fixture_inputs(&f, &c);
    fixture_run(&f, true);
    if (nt == 1) {
      one = f;
      continue;
    }
    char what[32];
    sprintf(what, "%d threads", nt);
    expect_same_bits(&one, &f, what);
    fixture_free(&f);
  }
  fixture_free(&one);
  omp_set_num_threads(saved);
}

/* Decoding token by token from the initial state (q, k, v, beta as one-step narrows of the
 * sequence) gives the forward's outputs and final state, on every SIMD table. */
Test(delta_rule, step_loop_equals_forward) {
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (int m = 0; m < 2; m++) {
      cfg c = {2, 70, 3, m ? 64 : 20, m ? 64 : 36, true, false, m ? 2 : 1};
      fixture f;
      fixture_inputs(&f, &c);
      fixture_run(&f, false);
      fixture_reference(&f, false);
      int64_t B = c.B, H = c.H, Dk = c.Dk, Dv = c.Dv, T = c.T;
      sn_tensor state = tu_empty(&ctx, SN_F32, 4, (int64_t[]){B, H, Dk, Dv});
      sn_tensor o = tu_empty(&ctx, SN_F32, 4, (int64_t[]){B, T, H, Dv});
      sn_tensor ot = tu_empty(&ctx, SN_F32, 4, (int64_t[]){B, 1, H, Dv});
      sn_copy(&ctx, &state, &f.h0);
      for (int64_t t = 0; t < T; t++) {
        sn_tensor qt, kt, vt, bt, slot;
        sn_narrow(&ctx, &qt, &f.q, 1, t, 1), sn_narrow(&ctx, &kt, &f.k, 1, t, 1);
        sn_narrow(&ctx, &vt, &f.v, 1, t, 1), sn_narrow(&ctx, &bt, &f.beta, 1, t, 1);
        cr_assert_eq(sn_delta_rule_step(&ctx, &ot, &state, &qt, &kt, &vt, &bt, &f.opts), SN_OK, "%s", ctx.err);
        sn_narrow(&ctx, &slot, &o, 1, t, 1);
        sn_copy(&ctx, &slot, &ot);
        sn_tensor *ts[] = {&qt, &kt, &vt, &bt, &slot};
        for (int i = 0; i < 5; i++) sn_tensor_release(ts[i]);
      }
      char d[200];
      double *rf = ref_states(&f, true);
      cr_expect_leq(tu_rel_err(&o, f.ro), FWD_TOL, "step o: %s", describe(&c, d));
      cr_expect_leq(tu_rel_err(&state, rf), FWD_TOL, "step final state: %s", describe(&c, d));
      double *fo = tu_to_double(&f.o), *ff = tu_to_double(&f.fin);
      cr_expect_leq(tu_rel_err(&o, fo), FWD_TOL, "step vs fwd o: %s", describe(&c, d));
      cr_expect_leq(tu_rel_err(&state, ff), FWD_TOL, "step vs fwd final state: %s", describe(&c, d));
      free(rf), free(fo), free(ff);
      sn_tensor_release(&state), sn_tensor_release(&o), sn_tensor_release(&ot);
      fixture_free(&f);
    }
  }
  restore_level();
}

/* T = 0: the final state is the initial one and its gradient passes straight to dh0. */
Test(delta_rule, empty_sequence_passes_the_state_through) {
  cfg c = {2, 0, 3, 20, 36, true, true, 1};
  fixture f;
  fixture_inputs(&f, &c);
  fixture_run(&f, true);
  size_t n = (size_t)(2 * 3 * 20 * 36) * sizeof(float);
  cr_expect(memcmp(sn_f32(&f.fin), sn_f32(&f.h0), n) == 0);
  cr_expect(memcmp(sn_f32(&f.dh0), sn_f32(&f.dfinal), n) == 0);
  fixture_free(&f);
}

/* A call that must fail with SN_EINVAL and exactly this message. */
#define EXPECT_EINVAL(call, msg) TU_EXPECT_EINVAL_MSG(call, "seqnn.F.delta_rule: " msg)

Test(delta_rule, rejects_bad_input) {
  cfg c = {2, 16, 3, 8, 12, true, true, 1};
  fixture f;
  fixture_inputs(&f, &c);
  fixture_run(&f, true);
  sn_tensor q3 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 16, 3}), qi = tu_empty(&ctx, SN_I64, 4, (int64_t[]){2, 16, 3, 8});
  sn_tensor k7 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 16, 3, 7});
  sn_tensor v15 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 15, 3, 12});
  sn_tensor b4 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 16, 4}), s11 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 3, 8, 11});
  sn_tensor ck = tu_empty(&ctx, SN_F32, 5, (int64_t[]){2, 3, 2, 8, 12});
  sn_tensor q0 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 16, 3, 0});
  sn_tensor wide = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 16, 8, 3}), qt;
  sn_transpose(&ctx, &qt, &wide, 2, 3);
  sn_linattn_opts o = f.opts, bad = f.opts, none = {.scale = 1};
  sn_tensor out = f.o;

  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &q3, &f.k, &f.v, &f.beta, &o),
                "q must be (B, T, H, Dk), got 2x16x3");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &qi, &f.k, &f.v, &f.beta, &o), "q must be f32, got i64 (2x16x3x8)");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, NULL, &f.k, &f.v, &f.beta, &o), "q must not be NULL");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &qt, &qt, &f.v, &f.beta, &o),
                "q must have unit stride on its last dim, got stride 3 (2x16x3x8)");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &f.q, &k7, &f.v, &f.beta, &o),
                "k must be (B, T, H, Dk) like q = 2x16x3x8, got 2x16x3x7");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &v15, &f.beta, &o),
                "v must be (B, T, H, Dv) = 2x16x3x?, got 2x15x3x12");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &b4, &o),
                "beta must be (B, T, H) = 2x16x3, got 2x16x4");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, NULL, &o), "beta must not be NULL");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &q0, &q0, &f.v, &f.beta, &o),
                "head dims Dk = 0 and Dv = 12 must be in [1, 65536] (q: 2x16x3x0, v: 2x16x3x12)");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &f.beta, NULL), "opts must not be NULL");
  bad.scale = NAN;
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &f.beta, &bad), "scale must be finite, got nan");
  bad = o, bad.initial_state = &s11;
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &f.beta, &bad),
                "initial_state must be (B, H, Dk, Dv) = 2x3x8x12, got 2x3x8x11");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, NULL, NULL, NULL, &f.q, &f.k, &f.v, &f.beta, &o), "o must not be NULL");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &f.q, NULL, NULL, &f.q, &f.k, &f.v, &f.beta, &o),
                "o must be a contiguous f32 tensor of shape 2x16x3x12, got f32 2x16x3x8");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, &s11, NULL, &f.q, &f.k, &f.v, &f.beta, &o),
                "final_state must be a contiguous f32 tensor of shape 2x3x8x12, got f32 2x3x8x11");
  EXPECT_EINVAL(sn_delta_rule_fwd(&ctx, &out, NULL, &ck, &f.q, &f.k, &f.v, &f.beta, &o),
                "chunk_states must be a contiguous f32 tensor of shape 2x3x1x8x12, got f32 2x3x2x8x12");

  EXPECT_EINVAL(sn_delta_rule_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dbeta, &f.dh0, &f.dout, NULL, &f.chunks, &f.q, &f.k,
                                  &f.v, &f.beta, &none),
                "dh0 was asked for but opts->initial_state is NULL");
  EXPECT_EINVAL(sn_delta_rule_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dbeta, NULL, &f.dout, NULL, NULL, &f.q, &f.k, &f.v,
                                  &f.beta, &o),
                "chunk_states must not be NULL");
  EXPECT_EINVAL(sn_delta_rule_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dbeta, NULL, &f.dout, NULL, &ck, &f.q, &f.k, &f.v,
                                  &f.beta, &o),
                "chunk_states must be a contiguous f32 tensor of shape 2x3x1x8x12, got f32 2x3x2x8x12");
  EXPECT_EINVAL(sn_delta_rule_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dbeta, NULL, &v15, NULL, &f.chunks, &f.q, &f.k, &f.v,
                                  &f.beta, &o),
                "grad_output must be (B, T, H, Dv) = 2x16x3x12, got 2x15x3x12");
  EXPECT_EINVAL(sn_delta_rule_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dbeta, NULL, NULL, NULL, &f.chunks, &f.q, &f.k, &f.v,
                                  &f.beta, &o),
                "grad_output must not be NULL");
  EXPECT_EINVAL(sn_delta_rule_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dbeta, NULL, &f.dout, &s11, &f.chunks, &f.q, &f.k,
                                  &f.v, &f.beta, &o),
                "grad_final_state must be (B, H, Dk, Dv) = 2x3x8x12, got 2x3x8x11");
  EXPECT_EINVAL(sn_delta_rule_bwd(&ctx, &f.dv, &f.dk, &f.dv, &f.dbeta, NULL, &f.dout, NULL, &f.chunks, &f.q, &f.k,
                                  &f.v, &f.beta, &o),
                "dq must be a contiguous f32 tensor of shape 2x16x3x8, got f32 2x16x3x12");
  EXPECT_EINVAL(sn_delta_rule_bwd(&ctx, &f.dq, &f.dk, &f.dv, NULL, NULL, &f.dout, NULL, &f.chunks, &f.q, &f.k, &f.v,
                                  &f.beta, &o),
                "dbeta must not be NULL");
  EXPECT_EINVAL(sn_delta_rule_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dbeta, &s11, &f.dout, NULL, &f.chunks, &f.q, &f.k,
                                  &f.v, &f.beta, &o),
                "dh0 must be a contiguous f32 tensor of shape 2x3x8x12, got f32 2x3x8x11");

  sn_tensor q1, k1, v1, b1, o1 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 1, 3, 12});
  sn_narrow(&ctx, &q1, &f.q, 1, 0, 1), sn_narrow(&ctx, &k1, &f.k, 1, 0, 1);
  sn_narrow(&ctx, &v1, &f.v, 1, 0, 1), sn_narrow(&ctx, &b1, &f.beta, 1, 0, 1);
  EXPECT_EINVAL(sn_delta_rule_step(&ctx, &o1, &f.fin, &f.q, &f.k, &f.v, &f.beta, &o),
                "q must be (B, 1, H, Dk) = ?x1x?x?, got 2x16x3x8");
  EXPECT_EINVAL(sn_delta_rule_step(&ctx, &o1, &f.fin, &q1, &k1, &v1, &f.beta, &o),
                "beta must be (B, 1, H) = 2x1x3, got 2x16x3");
  EXPECT_EINVAL(sn_delta_rule_step(&ctx, &o1, &s11, &q1, &k1, &v1, &b1, &o),
                "state must be a contiguous f32 tensor of shape 2x3x8x12, got f32 2x3x8x11");
  EXPECT_EINVAL(sn_delta_rule_step(&ctx, &o1, NULL, &q1, &k1, &v1, &b1, &o), "state must not be NULL");
  EXPECT_EINVAL(sn_delta_rule_step(&ctx, &f.o, &f.fin, &q1, &k1, &v1, &b1, &o),
                "o must be a contiguous f32 tensor of shape 2x1x3x12, got f32 2x16x3x12");
  cr_expect_eq(sn_delta_rule_step(&ctx, &o1, &f.fin, &q1, &k1, &v1, &b1, &o), SN_OK, "%s", ctx.err);

  sn_tensor *ts[] = {&q3, &qi, &k7, &v15, &b4, &s11, &ck, &q0, &wide, &qt, &q1, &k1, &v1, &b1, &o1};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  fixture_free(&f);
}
