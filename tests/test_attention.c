/* test_attention.c -- kernels/attention.c against a naive double reference: every option,
 * sizes that do not divide the 64 x 64 tiles, GQA, bottom-right causal cross-attention,
 * varlen packing, the decode step, thread-count independence and bad input. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "simd/vec.h"
#include "testutil.h"

typedef struct {
  int64_t B, T, S, H, Hkv, D;
  bool causal;
  int64_t window;
} cfg;

static const cfg cases[] = {
    {1, 1, 1, 1, 1, 1, false, -1},     {2, 17, 17, 4, 4, 16, false, -1},  {2, 17, 17, 4, 2, 24, true, -1},
    {1, 129, 129, 4, 1, 32, true, -1}, {1, 200, 200, 2, 1, 64, true, 7},  {1, 65, 65, 2, 2, 80, false, 300},
    {1, 40, 300, 4, 2, 16, true, -1},  {1, 300, 40, 2, 1, 8, true, -1},   {2, 70, 150, 4, 4, 20, false, -1},
    {1, 33, 190, 8, 2, 48, true, 100}, {3, 1, 130, 4, 2, 64, true, -1},   {1, 130, 1, 2, 1, 5, false, -1},
};
#define NCASES (sizeof cases / sizeof cases[0])

/* ---- naive reference, in double: sequences packed row-wise (q row r of sequence s is row
 * cq[s] + r of a (rows, H, D) array), o/dq/dk/dv in the same layout, lse[row * H + h]. */

static bool allowed(const cfg *c, int64_t i, int64_t j, int64_t tq, int64_t tk) {
  int64_t p = i + tk - tq;
  if ((c->causal || c->window >= 0) && j > p) return false;
  if (c->window >= 0 && j < p - c->window) return false;
  return true;
}

static void reference(const cfg *c, int64_t nseq, const int64_t *cq, const int64_t *ck, const double *q,
                      const double *k, const double *v, const double *dout, double scale, double *o, double *lse,
                      double *dq, double *dk, double *dv) {
  int64_t H = c->H, Hkv = c->Hkv, D = c->D, G = H / Hkv;
  if (dk) memset(dk, 0, sizeof(double) * (size_t)(ck[nseq] * Hkv * D));
  if (dv) memset(dv, 0, sizeof(double) * (size_t)(ck[nseq] * Hkv * D));
  for (int64_t s = 0; s < nseq; s++) {
    int64_t tq = cq[s + 1] - cq[s], tk = ck[s + 1] - ck[s];
    double *P = calloc((size_t)(tk ? tk : 1), sizeof(double)), *dP = calloc((size_t)(tk ? tk : 1), sizeof(double));
    for (int64_t h = 0; h < H; h++) {
      int64_t g = h / G;
      for (int64_t i = 0; i < tq; i++) {
        const double *qi = q + ((cq[s] + i) * H + h) * D;
        double mx = -INFINITY;
        for (int64_t j = 0; j < tk; j++) {
          const double *kj = k + ((ck[s] + j) * Hkv + g) * D;
          double acc = 0;
          for (int64_t d = 0; d < D; d++) acc += qi[d] * kj[d];
          P[j] = allowed(c, i, j, tq, tk) ? scale * acc : -INFINITY;
          if (P[j] > mx) mx = P[j];
        }
        double sum = 0;
        for (int64_t j = 0; j < tk; j++) sum += P[j] = mx == -INFINITY ? 0 : exp(P[j] - mx);
        double *oi = o + ((cq[s] + i) * H + h) * D;
        lse[(cq[s] + i) * H + h] = sum == 0 ? INFINITY : mx + log(sum);
        for (int64_t d = 0; d < D; d++) oi[d] = 0;
        for (int64_t j = 0; j < tk; j++) {
          if (sum > 0) P[j] /= sum;
          for (int64_t d = 0; d < D; d++) oi[d] += P[j] * v[((ck[s] + j) * Hkv + g) * D + d];
        }
        if (!dq) continue;
        /* dP = dO V^T, dS = P (dP - sum_j P dP), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO */
        const double *gi = dout + ((cq[s] + i) * H + h) * D;
        double Di = 0;
        for (int64_t j = 0; j < tk; j++) {
          dP[j] = 0;
          for (int64_t d = 0; d < D; d++) dP[j] += gi[d] * v[((ck[s] + j) * Hkv + g) * D + d];
          Di += P[j] * dP[j];
        }
        double *dqi = dq + ((cq[s] + i) * H + h) * D;
        for (int64_t d = 0; d < D; d++) dqi[d] = 0;
        for (int64_t j = 0; j < tk; j++) {
          double ds = P[j] * (dP[j] - Di);
          for (int64_t d = 0; d < D; d++) {
            int64_t kj = ((ck[s] + j) * Hkv + g) * D + d;
            dqi[d] += scale * ds * k[kj];
            dk[kj] += scale * ds * qi[d];
            dv[kj] += P[j] * gi[d];
          }
        }
      }
    }
    free(P);
    free(dP);
  }
}

/* ---- helpers ------------------------------------------------------------------------------ */

TU_SUITE(attention);

static sn_tensor t4(int64_t a, int64_t b, int64_t c, int64_t d, uint32_t seed) {
  sn_tensor t = tu_empty(&ctx, SN_F32, 4, (int64_t[]){a, b, c, d});
  tu_fill_f32(&t, seed);
  return t;
}

static double *to_double(const sn_tensor *t) {
  double *d = malloc(sizeof(double) * (size_t)(sn_numel(t) ? sn_numel(t) : 1));
  for (int64_t i = 0; i < sn_numel(t); i++) d[i] = tu_get(t, i);
  return d;
}

static char *describe(const cfg *c, char *buf) {
  sprintf(buf, "B%lld T%lld S%lld H%lld Hkv%lld D%lld causal%d window%lld", (long long)c->B, (long long)c->T,
          (long long)c->S, (long long)c->H, (long long)c->Hkv, (long long)c->D, c->causal, (long long)c->window);
  return buf;
}

/* Everything one case needs: inputs, outputs, and the reference's results. */
typedef struct {
  sn_tensor q, k, v, g, o, lse, dq, dk, dv;
  double *ro, *rlse, *rdq, *rdk, *rdv;
  sn_attention_opts opts;
} run;

static void run_case(const cfg *c, run *r, bool bwd) {
  r->q = t4(c->B, c->T, c->H, c->D, 1);
  r->k = t4(c->B, c->S, c->Hkv, c->D, 2);
  r->v = t4(c->B, c->S, c->Hkv, c->D, 3);
  r->g = t4(c->B, c->T, c->H, c->D, 4);
  r->o = t4(c->B, c->T, c->H, c->D, 0);
  r->lse = tu_empty(&ctx, SN_F32, 3, (int64_t[]){c->B, c->H, c->T});
  r->dq = t4(c->B, c->T, c->H, c->D, 0);
  r->dk = t4(c->B, c->S, c->Hkv, c->D, 0);
  r->dv = t4(c->B, c->S, c->Hkv, c->D, 0);
  r->opts = (sn_attention_opts){.causal = c->causal, .window = c->window, .scale = 1.0f / sqrtf((float)c->D)};
  cr_assert_eq(sn_attention_fwd(&ctx, &r->o, &r->lse, &r->q, &r->k, &r->v, &r->opts), SN_OK, "%s", ctx.err);
  if (bwd)
    cr_assert_eq(sn_attention_bwd(&ctx, &r->dq, &r->dk, &r->dv, &r->g, &r->q, &r->k, &r->v, &r->o, &r->lse, &r->opts),
                 SN_OK, "%s", ctx.err);
  int64_t cq[64], ck[64];
  for (int64_t b = 0; b <= c->B; b++) cq[b] = b * c->T, ck[b] = b * c->S;
  double *q = to_double(&r->q), *k = to_double(&r->k), *v = to_double(&r->v), *g = to_double(&r->g);
  int64_t nq = c->B * c->T * c->H * c->D, nk = c->B * c->S * c->Hkv * c->D;
  r->ro = malloc(sizeof(double) * (size_t)nq), r->rdq = malloc(sizeof(double) * (size_t)nq);
  r->rdk = malloc(sizeof(double) * (size_t)nk), r->rdv = malloc(sizeof(double) * (size_t)nk);
  double *lse_rows = malloc(sizeof(double) * (size_t)(c->B * c->T * c->H));
  reference(c, c->B, cq, ck, q, k, v, g, r->opts.scale, r->ro, lse_rows, r->rdq, r->rdk, r->rdv);
  /* lse: (B,H,T) from the reference's [row][h] */
  r->rlse = malloc(sizeof(double) * (size_t)(c->B * c->T * c->H));
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t h = 0; h < c->H; h++)
      for (int64_t i = 0; i < c->T; i++) r->rlse[(b * c->H + h) * c->T + i] = lse_rows[(b * c->T + i) * c->H + h];
  free(q), free(k), free(v), free(g), free(lse_rows);
}

static void free_run(run *r) {
  sn_tensor *ts[] = {&r->q, &r->k, &r->v, &r->g, &r->o, &r->lse, &r->dq, &r->dk, &r->dv};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  free(r->ro), free(r->rlse), free(r->rdq), free(r->rdk), free(r->rdv);
}

/* ---- tests -------------------------------------------------------------------------------- */

Test(attention, forward_matches_reference) {
  for (size_t i = 0; i < NCASES; i++) {
    char d[160];
    run r;
    run_case(&cases[i], &r, false);
    cr_expect_leq(tu_max_scaled_err(&r.o, r.ro, 1e-5, 1e-4), 1.0, "o: %s", describe(&cases[i], d));
    cr_expect_leq(tu_max_scaled_err(&r.lse, r.rlse, 1e-5, 1e-5), 1.0, "lse: %s", describe(&cases[i], d));
    free_run(&r);
  }
}

Test(attention, forward_matches_reference_on_every_simd_table) {
  const char *levels[] = {"scalar", "avx2", "avx512"};
  const cfg c = {2, 77, 140, 4, 2, 40, true, 50};
  for (int l = 0; l < 3; l++) {
    setenv("SEQNN_SIMD", levels[l], 1);
    sn_vec_init();
    run r;
    run_case(&c, &r, true);
    cr_expect_leq(tu_max_scaled_err(&r.o, r.ro, 1e-5, 1e-4), 1.0, "o, simd %s", sn_simd_level());
    cr_expect_leq(tu_max_scaled_err(&r.dq, r.rdq, 1e-4, 1e-3), 1.0, "dq, simd %s", sn_simd_level());
    free_run(&r);
  }
  unsetenv("SEQNN_SIMD");
  sn_vec_init();
}

Test(attention, backward_matches_reference) {
  for (size_t i = 0; i < NCASES; i++) {
    char d[160];
    run r;
    run_case(&cases[i], &r, true);
    cr_expect_leq(tu_max_scaled_err(&r.dq, r.rdq, 1e-4, 1e-3), 1.0, "dq: %s", describe(&cases[i], d));
    cr_expect_leq(tu_max_scaled_err(&r.dk, r.rdk, 1e-4, 1e-3), 1.0, "dk: %s", describe(&cases[i], d));
    cr_expect_leq(tu_max_scaled_err(&r.dv, r.rdv, 1e-4, 1e-3), 1.0, "dv: %s", describe(&cases[i], d));
    free_run(&r);
  }
}

/* The reference backward itself against central differences of L = sum(o * g), in double. */
Test(attention, reference_backward_matches_finite_differences) {
  const cfg c = {1, 5, 7, 4, 2, 3, true, 3};
  int64_t cq[] = {0, 5}, ck[] = {0, 7}, nq = 5 * 4 * 3, nk = 7 * 2 * 3;
  double q[60], k[42], v[42], g[60], o[60], lse[20], dq[60], dk[42], dv[42];
  uint32_t s = 7;
  double *all[] = {q, k, v, g};
  int64_t len[] = {nq, nk, nk, nq};
  for (int a = 0; a < 4; a++)
    for (int64_t i = 0; i < len[a]; i++) s = s * 1664525u + 1013904223u, all[a][i] = (s >> 8) / 8388608.0 - 1;
  reference(&c, 1, cq, ck, q, k, v, g, 0.7, o, lse, dq, dk, dv);
  double *grads[] = {dq, dk, dv};
  for (int a = 0; a < 3; a++)
    for (int64_t i = 0; i < len[a]; i++) {
      double keep = all[a][i], h = 1e-6, lp = 0, lm = 0;
      all[a][i] = keep + h;
      reference(&c, 1, cq, ck, q, k, v, g, 0.7, o, lse, NULL, NULL, NULL);
      for (int64_t j = 0; j < nq; j++) lp += o[j] * g[j];
      all[a][i] = keep - h;
      reference(&c, 1, cq, ck, q, k, v, g, 0.7, o, lse, NULL, NULL, NULL);
      for (int64_t j = 0; j < nq; j++) lm += o[j] * g[j];
      all[a][i] = keep;
      cr_expect(fabs((lp - lm) / (2 * h) - grads[a][i]) < 1e-6, "input %d element %lld: fd %g, reference %g", a,
                (long long)i, (lp - lm) / (2 * h), grads[a][i]);
    }
}

Test(attention, empty_rows_give_zero_output_and_infinite_lse) {
  const cfg c = {1, 9, 4, 2, 1, 8, true, -1}; /* queries 0..4 precede every key */
  run r;
  run_case(&c, &r, true);
  for (int64_t h = 0; h < 2; h++)
    for (int64_t i = 0; i < 5; i++) {
      cr_expect(isinf(sn_f32(&r.lse)[h * 9 + i]));
      for (int64_t d = 0; d < 8; d++) {
        cr_expect_eq(sn_f32(&r.o)[(i * 2 + h) * 8 + d], 0.0f);
        cr_expect_eq(sn_f32(&r.dq)[(i * 2 + h) * 8 + d], 0.0f);
      }
    }
  cr_expect_leq(tu_max_scaled_err(&r.dk, r.rdk, 1e-4, 1e-3), 1.0);
  free_run(&r);
}

/* B x Hkv = 1 takes the fused backward on one thread and the two-pass one on more. */
Test(attention, results_do_not_depend_on_the_thread_count) {
  const cfg cs[] = {{2, 150, 150, 4, 2, 32, true, -1}, {1, 300, 260, 2, 1, 24, true, 100}, {1, 200, 200, 4, 1, 16, false, -1}};
  int saved = omp_get_max_threads();
  for (int ci = 0; ci < 3; ci++) {
    sn_tensor o1, dq1, dk1, dv1;
    for (int nt = 1; nt <= 3; nt++) {
      omp_set_num_threads(nt);
      run r;
      run_case(&cs[ci], &r, true);
      if (nt == 1) {
        sn_tensor_share(&o1, &r.o), sn_tensor_share(&dq1, &r.dq), sn_tensor_share(&dk1, &r.dk),
            sn_tensor_share(&dv1, &r.dv);
        cr_expect_leq(tu_max_scaled_err(&r.dk, r.rdk, 1e-4, 1e-3), 1.0, "dk, case %d", ci);
      } else {
        size_t nq = (size_t)sn_numel(&r.o) * 4, nk = (size_t)sn_numel(&r.dk) * 4;
        cr_expect(memcmp(sn_f32(&o1), sn_f32(&r.o), nq) == 0, "o, case %d, %d threads", ci, nt);
        cr_expect(memcmp(sn_f32(&dq1), sn_f32(&r.dq), nq) == 0, "dq, case %d, %d threads", ci, nt);
        cr_expect(memcmp(sn_f32(&dk1), sn_f32(&r.dk), nk) == 0, "dk, case %d, %d threads", ci, nt);
        cr_expect(memcmp(sn_f32(&dv1), sn_f32(&r.dv), nk) == 0, "dv, case %d, %d threads", ci, nt);
      }
      free_run(&r);
    }
    sn_tensor_release(&o1), sn_tensor_release(&dq1), sn_tensor_release(&dk1), sn_tensor_release(&dv1);
  }
  omp_set_num_threads(saved);
}

/* q, k, v as views into one fused (B, T, (H + 2 Hkv) D) projection: same bits as copies. */
Test(attention, strided_views_equal_contiguous_copies) {
  int64_t B = 2, T = 70, H = 4, Hkv = 2, D = 16;
  sn_tensor qkv = t4(B, T, H + 2 * Hkv, D, 9), q, k, v, qc, kc, vc;
  sn_attention_opts opts = {.causal = true, .window = -1, .scale = 0.25f};
  cr_assert_eq(sn_narrow(&ctx, &q, &qkv, 2, 0, H), SN_OK);
  cr_assert_eq(sn_narrow(&ctx, &k, &qkv, 2, H, Hkv), SN_OK);
  cr_assert_eq(sn_narrow(&ctx, &v, &qkv, 2, H + Hkv, Hkv), SN_OK);
  qc = tu_empty(&ctx, SN_F32, 4, q.size), kc = tu_empty(&ctx, SN_F32, 4, k.size), vc = tu_empty(&ctx, SN_F32, 4, v.size);
  sn_copy(&ctx, &qc, &q), sn_copy(&ctx, &kc, &k), sn_copy(&ctx, &vc, &v);
  sn_tensor o1 = tu_empty(&ctx, SN_F32, 4, q.size), o2 = tu_empty(&ctx, SN_F32, 4, q.size);
  sn_tensor lse = tu_empty(&ctx, SN_F32, 3, (int64_t[]){B, H, T});
  cr_assert_eq(sn_attention_fwd(&ctx, &o1, &lse, &q, &k, &v, &opts), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_attention_fwd(&ctx, &o2, &lse, &qc, &kc, &vc, &opts), SN_OK, "%s", ctx.err);
  cr_expect(memcmp(sn_f32(&o1), sn_f32(&o2), (size_t)sn_numel(&o1) * 4) == 0);
  sn_tensor *ts[] = {&qkv, &q, &k, &v, &qc, &kc, &vc, &o1, &o2, &lse};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
}

/* Packed sequences of lengths 0, 1 and odd sizes equal separate runs of each sequence. */
Test(attention, varlen_equals_per_sequence_runs) {
  const int64_t lq[] = {3, 0, 1, 130, 17, 0, 64}, lk[] = {5, 2, 1, 130, 200, 0, 64};
  const int nseq = 7;
  int64_t H = 4, Hkv = 2, D = 24, cq[8] = {0}, ck[8] = {0};
  for (int s = 0; s < nseq; s++) cq[s + 1] = cq[s] + lq[s], ck[s + 1] = ck[s] + lk[s];
  for (int causal = 0; causal < 2; causal++) {
    sn_tensor q = t4(1, cq[nseq], H, D, 11), k = t4(1, ck[nseq], Hkv, D, 12), v = t4(1, ck[nseq], Hkv, D, 13);
    sn_tensor g = t4(1, cq[nseq], H, D, 14), o = t4(1, cq[nseq], H, D, 0), dq = t4(1, cq[nseq], H, D, 0);
    sn_tensor dk = t4(1, ck[nseq], Hkv, D, 0), dv = t4(1, ck[nseq], Hkv, D, 0);
    sn_tensor lse = tu_empty(&ctx, SN_F32, 3, (int64_t[]){1, H, cq[nseq]});
    sn_tensor cuq = tu_empty(&ctx, SN_I64, 1, (int64_t[]){nseq + 1}), cuk = tu_empty(&ctx, SN_I64, 1, (int64_t[]){nseq + 1});
    memcpy(sn_i64(&cuq), cq, sizeof cq), memcpy(sn_i64(&cuk), ck, sizeof ck);
    sn_attention_opts opts = {.causal = causal, .window = -1, .scale = 0.3f, .cu_seqlens_q = &cuq, .cu_seqlens_k = &cuk};
    cr_assert_eq(sn_attention_fwd(&ctx, &o, &lse, &q, &k, &v, &opts), SN_OK, "%s", ctx.err);
    cr_assert_eq(sn_attention_bwd(&ctx, &dq, &dk, &dv, &g, &q, &k, &v, &o, &lse, &opts), SN_OK, "%s", ctx.err);
    sn_attention_opts one = {.causal = causal, .window = -1, .scale = 0.3f};
    for (int s = 0; s < nseq; s++) {
      if (lq[s] == 0 && lk[s] == 0) continue;
      sn_tensor qs, ks, vs, gs;
      sn_narrow(&ctx, &qs, &q, 1, cq[s], lq[s]), sn_narrow(&ctx, &gs, &g, 1, cq[s], lq[s]);
      sn_narrow(&ctx, &ks, &k, 1, ck[s], lk[s]), sn_narrow(&ctx, &vs, &v, 1, ck[s], lk[s]);
      sn_tensor os = t4(1, lq[s], H, D, 0), dqs = t4(1, lq[s], H, D, 0), dks = t4(1, lk[s], Hkv, D, 0);
      sn_tensor dvs = t4(1, lk[s], Hkv, D, 0), lses = tu_empty(&ctx, SN_F32, 3, (int64_t[]){1, H, lq[s]});
      cr_assert_eq(sn_attention_fwd(&ctx, &os, &lses, &qs, &ks, &vs, &one), SN_OK, "%s", ctx.err);
      cr_assert_eq(sn_attention_bwd(&ctx, &dqs, &dks, &dvs, &gs, &qs, &ks, &vs, &os, &lses, &one), SN_OK, "%s", ctx.err);
      size_t rq = (size_t)(H * D) * 4, rk = (size_t)(Hkv * D) * 4;
      cr_expect(memcmp(sn_f32(&os), sn_f32(&o) + cq[s] * H * D, rq * (size_t)lq[s]) == 0, "o, seq %d", s);
      cr_expect(memcmp(sn_f32(&dqs), sn_f32(&dq) + cq[s] * H * D, rq * (size_t)lq[s]) == 0, "dq, seq %d", s);
      cr_expect(memcmp(sn_f32(&dks), sn_f32(&dk) + ck[s] * Hkv * D, rk * (size_t)lk[s]) == 0, "dk, seq %d", s);
      cr_expect(memcmp(sn_f32(&dvs), sn_f32(&dv) + ck[s] * Hkv * D, rk * (size_t)lk[s]) == 0, "dv, seq %d", s);
      for (int64_t h = 0; h < H; h++)
        cr_expect(memcmp(sn_f32(&lses) + h * lq[s], sn_f32(&lse) + h * cq[nseq] + cq[s], 4 * (size_t)lq[s]) == 0,
                  "lse, seq %d", s);
      sn_tensor *ts[] = {&qs, &ks, &vs, &gs, &os, &dqs, &dks, &dvs, &lses};
      for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
    }
    sn_tensor *ts[] = {&q, &k, &v, &g, &o, &dq, &dk, &dv, &lse, &cuq, &cuk};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  }
}

/* Decoding token by token through the cache gives the causal forward, with and without a
 * window, for G = 1, 2, 4. */
Test(attention, step_loop_equals_causal_forward) {
  const int64_t Gs[] = {1, 2, 4}, windows[] = {-1, 5};
  for (int gi = 0; gi < 3; gi++)
    for (int wi = 0; wi < 2; wi++) {
      int64_t B = 2, T = 37, Hkv = 2, H = Hkv * Gs[gi], D = 20, Tmax = 40;
      cfg c = {B, T, T, H, Hkv, D, true, windows[wi]};
      run r;
      run_case(&c, &r, false);
      sn_tensor kc = t4(B, Hkv, Tmax, D, 0), vc = t4(B, Hkv, Tmax, D, 0), o = t4(B, 1, H, D, 0);
      double *want = malloc(sizeof(double) * (size_t)(B * H * D));
      for (int64_t t = 0; t < T; t++) {
        sn_tensor qt, kt, vt;
        sn_narrow(&ctx, &qt, &r.q, 1, t, 1), sn_narrow(&ctx, &kt, &r.k, 1, t, 1), sn_narrow(&ctx, &vt, &r.v, 1, t, 1);
        cr_assert_eq(sn_attention_step(&ctx, &o, &kc, &vc, &qt, &kt, &vt, t, &r.opts), SN_OK, "%s", ctx.err);
        for (int64_t b = 0; b < B; b++)
          for (int64_t j = 0; j < H * D; j++) want[b * H * D + j] = r.ro[(b * T + t) * H * D + j];
        cr_expect_leq(tu_max_scaled_err(&o, want, 1e-5, 1e-4), 1.0, "step %lld, G %lld, window %lld", (long long)t,
                      (long long)Gs[gi], (long long)windows[wi]);
        sn_tensor_release(&qt), sn_tensor_release(&kt), sn_tensor_release(&vt);
      }
      free(want);
      sn_tensor_release(&kc), sn_tensor_release(&vc), sn_tensor_release(&o);
      free_run(&r);
    }
}

Test(attention, rejects_bad_input) {
  sn_tensor q = t4(2, 16, 4, 32, 1), k64 = t4(2, 16, 4, 64, 2), k = t4(2, 16, 4, 32, 2), k3 = t4(2, 16, 3, 32, 2);
  sn_tensor kb = t4(3, 16, 4, 32, 2), o = t4(2, 16, 4, 32, 0), lse = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 4, 16});
  sn_tensor q3 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 16, 4});
  sn_attention_opts opts = {.window = -1, .scale = 1};
  cr_assert_eq(sn_attention_fwd(&ctx, &o, &lse, &q, &k64, &k64, &opts), SN_EINVAL);
  cr_expect(strstr(ctx.err, "seqnn.F.attention: k has head dim 64 but q has 32 (q: 2x16x4x32, k: 2x16x4x64)"),
            "message was: %s", ctx.err);
  cr_assert_eq(sn_attention_fwd(&ctx, &o, &lse, &q, &k3, &k3, &opts), SN_EINVAL);
  cr_expect(strstr(ctx.err, "not a multiple"), "message was: %s", ctx.err);
  cr_assert_eq(sn_attention_fwd(&ctx, &o, &lse, &q, &kb, &kb, &opts), SN_EINVAL);
  cr_expect(strstr(ctx.err, "batch size 3 but q has 2"), "message was: %s", ctx.err);
  cr_assert_eq(sn_attention_fwd(&ctx, &o, &lse, &q3, &k, &k, &opts), SN_EINVAL);
  cr_expect(strstr(ctx.err, "q must be (B, T, H, Dh), got 2x16x4"), "message was: %s", ctx.err);
  cr_assert_eq(sn_attention_fwd(&ctx, &o, &lse, &q, &k, &k64, &opts), SN_EINVAL);
  cr_expect(strstr(ctx.err, "v must have k's shape"), "message was: %s", ctx.err);
  cr_assert_eq(sn_attention_fwd(&ctx, &o, &q3, &q, &k, &k, &opts), SN_EINVAL);
  cr_expect(strstr(ctx.err, "lse must be"), "message was: %s", ctx.err);

  /* varlen: B must be 1, cu_seqlens must start at 0, not decrease and end at the total */
  sn_tensor q1 = t4(1, 10, 4, 32, 1), k1 = t4(1, 12, 4, 32, 2), o1 = t4(1, 10, 4, 32, 0);
  sn_tensor l1 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){1, 4, 10});
  sn_tensor cq = tu_empty(&ctx, SN_I64, 1, (int64_t[]){3}), ck = tu_empty(&ctx, SN_I64, 1, (int64_t[]){3});
  int64_t *pq = sn_i64(&cq), *pk = sn_i64(&ck);
  pk[0] = 0, pk[1] = 5, pk[2] = 12;
  sn_attention_opts vo = {.window = -1, .scale = 1, .cu_seqlens_q = &cq, .cu_seqlens_k = &ck};
  pq[0] = 0, pq[1] = 7, pq[2] = 5;
  cr_assert_eq(sn_attention_fwd(&ctx, &o1, &l1, &q1, &k1, &k1, &vo), SN_EINVAL);
  cr_expect(strstr(ctx.err, "cu_seqlens_q must not decrease"), "message was: %s", ctx.err);
  pq[0] = 1, pq[1] = 4, pq[2] = 10;
  cr_assert_eq(sn_attention_fwd(&ctx, &o1, &l1, &q1, &k1, &k1, &vo), SN_EINVAL);
  cr_expect(strstr(ctx.err, "cu_seqlens_q must start at 0"), "message was: %s", ctx.err);
  pq[0] = 0, pq[2] = 9;
  cr_assert_eq(sn_attention_fwd(&ctx, &o1, &l1, &q1, &k1, &k1, &vo), SN_EINVAL);
  cr_expect(strstr(ctx.err, "cu_seqlens_q ends at 9 but q has 10 tokens"), "message was: %s", ctx.err);
  pq[2] = 10;
  cr_assert_eq(sn_attention_fwd(&ctx, &o1, &l1, &q1, &k1, &k1, &vo), SN_OK, "%s", ctx.err);
  vo.cu_seqlens_k = NULL;
  cr_assert_eq(sn_attention_fwd(&ctx, &o1, &l1, &q1, &k1, &k1, &vo), SN_EINVAL);
  cr_expect(strstr(ctx.err, "both cu_seqlens_q and cu_seqlens_k"), "message was: %s", ctx.err);

  /* step: pos inside the cache, caches of the right shape */
  sn_tensor qs = t4(2, 1, 4, 32, 1), ks = t4(2, 1, 2, 32, 2), kc = t4(2, 2, 8, 32, 0), vc = t4(2, 2, 8, 32, 0);
  sn_tensor vbad = t4(2, 4, 8, 32, 0), os = t4(2, 1, 4, 32, 0);
  cr_assert_eq(sn_attention_step(&ctx, &os, &kc, &vc, &qs, &ks, &ks, 8, &opts), SN_EINVAL);
  cr_expect(strstr(ctx.err, "pos 8 is outside the cache's 8 positions"), "message was: %s", ctx.err);
  cr_assert_eq(sn_attention_step(&ctx, &os, &kc, &vc, &qs, &ks, &ks, -1, &opts), SN_EINVAL);
  cr_assert_eq(sn_attention_step(&ctx, &os, &kc, &vbad, &qs, &ks, &ks, 0, &opts), SN_EINVAL);
  cr_expect(strstr(ctx.err, "v_cache must be"), "message was: %s", ctx.err);
  cr_assert_eq(sn_attention_step(&ctx, &os, &kc, &vc, &qs, &ks, &ks, 7, &opts), SN_OK, "%s", ctx.err);

  sn_tensor *ts[] = {&q, &k64, &k, &k3, &kb, &o, &lse, &q3, &q1, &k1, &o1, &l1, &cq, &ck, &qs, &ks, &kc, &vc, &vbad, &os};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
}
