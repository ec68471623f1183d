/* test_selective_scan.c -- kernels/selective_scan.c against a naive double reference: every
 * option, sizes that do not divide the 16-channel tiles or the SN_SCAN_CHUNK-step chunks, odd N,
 * strided views, the backward (whose reference is checked by finite differences), the
 * decode step, long sequences, thread-count independence, every SIMD table and bad input. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "simdutil.h"
#include "testutil.h"

/* ---- naive reference, in double, over contiguous arrays ------------------------------------
 * u, delta, z (B,T,D); A (D,N); Bm, Cm (B,T,N); Ds, bias (D); h0 (B,D,N); NULL when absent. */
typedef struct {
  int64_t B, T, D, N;
  const double *u, *delta, *A, *Bm, *Cm, *Ds, *z, *bias, *h0;
  bool softplus;
} ref_in;

/* The reference's gradients, laid out like their inputs. */
typedef struct {
  double *du, *ddelta, *dA, *dBm, *dCm, *dDs, *dbias, *dz, *dh0;
} ref_grads;

static double softplus_ref(double x) { return x > 20 ? x : log1p(exp(x)); }
static double sigmoid_ref(double x) { return 1 / (1 + exp(-x)); }

/* hs (B, T+1, D, N): hs[b][0] = h0, hs[b][t+1] = the state after step t. */
static int64_t state_at(const ref_in *r, int64_t b, int64_t t, int64_t d) {
  return ((b * (r->T + 1) + t) * r->D + d) * r->N;
}

static double dt_of(const ref_in *r, int64_t i, int64_t d, double *pre) {
  *pre = r->delta[i] + (r->bias ? r->bias[d] : 0);
  return r->softplus ? softplus_ref(*pre) : *pre;
}

/* out (B,T,D) and the states hs. */
static void ref_fwd(const ref_in *r, double *out, double *hs) {
  int64_t T = r->T, D = r->D, N = r->N;
  for (int64_t b = 0; b < r->B; b++)
    for (int64_t d = 0; d < D; d++) {
      for (int64_t n = 0; n < N; n++) hs[state_at(r, b, 0, d) + n] = r->h0 ? r->h0[(b * D + d) * N + n] : 0;
      for (int64_t t = 0; t < T; t++) {
        int64_t i = (b * T + t) * D + d;
        double pre, dt = dt_of(r, i, d, &pre), y = r->Ds ? r->Ds[d] * r->u[i] : 0;
        const double *hp = hs + state_at(r, b, t, d), *Bt = r->Bm + (b * T + t) * N, *Ct = r->Cm + (b * T + t) * N;
        double *h = hs + state_at(r, b, t + 1, d);
        for (int64_t n = 0; n < N; n++) {
          h[n] = exp(dt * r->A[d * N + n]) * hp[n] + dt * Bt[n] * r->u[i];
          y += Ct[n] * h[n];
        }
        out[i] = r->z ? y * r->z[i] * sigmoid_ref(r->z[i]) : y;
      }
    }
}

/* The gradients of L = sum(out * dout) + sum(final * dfinal) (dfinal may be NULL), from the
 * formulas of seqnn.h, sweeping each channel back in time with g = dL/dh. */
static void ref_bwd(const ref_in *r, const double *hs, const double *dout, const double *dfinal, ref_grads *g) {
  int64_t B = r->B, T = r->T, D = r->D, N = r->N;
  memset(g->dA, 0, sizeof(double) * (size_t)(D * N));
  memset(g->dBm, 0, sizeof(double) * (size_t)(B * T * N));
  memset(g->dCm, 0, sizeof(double) * (size_t)(B * T * N));
  memset(g->dDs, 0, sizeof(double) * (size_t)D);
  memset(g->dbias, 0, sizeof(double) * (size_t)D);
  double *gn = malloc(sizeof(double) * (size_t)N);
  for (int64_t b = 0; b < B; b++)
    for (int64_t d = 0; d < D; d++) {
      for (int64_t n = 0; n < N; n++) gn[n] = dfinal ? dfinal[(b * D + d) * N + n] : 0;
      for (int64_t t = T - 1; t >= 0; t--) {
        int64_t i = (b * T + t) * D + d;
        double pre, dt = dt_of(r, i, d, &pre), u = r->u[i], dy = dout[i], sgb = 0, sga = 0;
        const double *hp = hs + state_at(r, b, t, d), *h = hs + state_at(r, b, t + 1, d);
        const double *Bt = r->Bm + (b * T + t) * N, *Ct = r->Cm + (b * T + t) * N;
        double y = r->Ds ? r->Ds[d] * u : 0;
        for (int64_t n = 0; n < N; n++) y += Ct[n] * h[n];
        if (r->z) {
          double z = r->z[i], s = sigmoid_ref(z);
          g->dz[i] = dout[i] * y * s * (1 + z * (1 - s));
          dy = dout[i] * z * s;
        }
        g->dDs[d] += dy * u;
        for (int64_t n = 0; n < N; n++) {
          double a = exp(dt * r->A[d * N + n]), gt = gn[n] + dy * Ct[n];
          g->dCm[(b * T + t) * N + n] += dy * h[n];
          g->dBm[(b * T + t) * N + n] += gt * dt * u;
          sgb += gt * Bt[n];
          g->dA[d * N + n] += gt * dt * a * hp[n];
          sga += gt * r->A[d * N + n] * a * hp[n];
          gn[n] = a * gt;
        }
        g->du[i] = dt * sgb + (r->Ds ? r->Ds[d] * dy : 0);
        double ddt = u * sgb + sga, dpre = r->softplus && pre <= 20 ? ddt * sigmoid_ref(pre) : ddt;
        g->ddelta[i] = dpre;
        g->dbias[d] += dpre;
      }
      for (int64_t n = 0; n < N; n++) g->dh0[(b * D + d) * N + n] = gn[n];
    }
  free(gn);
}

/* ---- fixtures --------------------------------------------------------------------------------- */

TU_SUITE(selective_scan);

typedef struct {
  int64_t B, T, D, N;
  bool Ds, z, bias, softplus, h0, dfinal;
} cfg;

static char *describe(const cfg *c, char *buf) {
  sprintf(buf, "B%lld T%lld D%lld N%lld Dskip%d z%d bias%d softplus%d h0%d dfinal%d simd %s", (long long)c->B,
          (long long)c->T, (long long)c->D, (long long)c->N, c->Ds, c->z, c->bias, c->softplus, c->h0, c->dfinal,
          sn_simd_level());
  return buf;
}

/* Inputs, the kernels' outputs and the reference's results of one case. Absent optional
 * tensors are left with a NULL storage. */
typedef struct {
  cfg c;
  sn_tensor u, delta, A, Bm, Cm, Ds, z, bias, h0, dout, dfinal;
  sn_tensor out, fin, chunks, du, ddelta, dA, dBm, dCm, dDs, dbias, dz, dh0;
  sn_scan_opts opts;
  double *rout, *hs;
  ref_grads rg;
} fixture;


/* Inputs for c: decays exp(dt A) in (0, 1) (A in [-2, -0.1], dt > 0 in both modes), a few
 * deltas of 25 (past the softplus threshold), gates z in [-2, 2]. */
static void fixture_inputs(fixture *f, const cfg *c) {
  memset(f, 0, sizeof *f);
  f->c = *c;
  int64_t btd[] = {c->B, c->T, c->D}, btn[] = {c->B, c->T, c->N}, bdn[] = {c->B, c->D, c->N};
  f->u = tu_make(&ctx, 3, btd, 1, 1, 0);
  f->delta = c->softplus ? tu_make(&ctx, 3, btd, 2, 3, -2) : tu_make(&ctx, 3, btd, 2, 0.25, 0.25);
  for (int64_t i = 5; i < sn_numel(&f->delta); i += 97) sn_f32(&f->delta)[i] = 25;
  f->A = tu_make(&ctx, 2, (int64_t[]){c->D, c->N}, 3, 0.95, -1.05);
  f->Bm = tu_make(&ctx, 3, btn, 4, 1, 0);
  f->Cm = tu_make(&ctx, 3, btn, 5, 1, 0);
  f->dout = tu_make(&ctx, 3, btd, 6, 1, 0);
  if (c->Ds) f->Ds = tu_make(&ctx, 1, &c->D, 7, 1, 0), f->opts.Dskip = &f->Ds;
  if (c->z) f->z = tu_make(&ctx, 3, btd, 8, 2, 0), f->opts.z = &f->z;
  if (c->bias) f->bias = tu_make(&ctx, 1, &c->D, 9, 0.1, 0.1), f->opts.delta_bias = &f->bias;
  if (c->h0) f->h0 = tu_make(&ctx, 3, bdn, 10, 1, 0), f->opts.initial_state = &f->h0;
  if (c->dfinal) f->dfinal = tu_make(&ctx, 3, bdn, 11, 1, 0);
  f->opts.delta_softplus = c->softplus;
}

/* Runs fwd (with the final state and the chunk states) and, when bwd, the backward. */
static void fixture_run(fixture *f, bool bwd) {
  const cfg *c = &f->c;
  int64_t btd[] = {c->B, c->T, c->D}, btn[] = {c->B, c->T, c->N}, bdn[] = {c->B, c->D, c->N};
  int64_t ck[] = {c->B, (c->T + SN_SCAN_CHUNK - 1) / SN_SCAN_CHUNK, c->D, c->N};
  f->out = tu_empty(&ctx, SN_F32, 3, btd), f->fin = tu_empty(&ctx, SN_F32, 3, bdn);
  f->chunks = tu_empty(&ctx, SN_F32, 4, ck);
  cr_assert_eq(sn_selective_scan_fwd(&ctx, &f->out, &f->fin, &f->chunks, &f->u, &f->delta, &f->A, &f->Bm, &f->Cm,
                                     &f->opts),
               SN_OK, "%s", ctx.err);
  if (!bwd) return;
  f->du = tu_empty(&ctx, SN_F32, 3, btd), f->ddelta = tu_empty(&ctx, SN_F32, 3, btd);
  f->dA = tu_empty(&ctx, SN_F32, 2, (int64_t[]){c->D, c->N});
  f->dBm = tu_empty(&ctx, SN_F32, 3, btn), f->dCm = tu_empty(&ctx, SN_F32, 3, btn);
  if (c->Ds) f->dDs = tu_empty(&ctx, SN_F32, 1, &c->D);
  if (c->bias) f->dbias = tu_empty(&ctx, SN_F32, 1, &c->D);
  if (c->z) f->dz = tu_empty(&ctx, SN_F32, 3, btd);
  if (c->h0) f->dh0 = tu_empty(&ctx, SN_F32, 3, bdn);
  cr_assert_eq(sn_selective_scan_bwd(&ctx, &f->du, &f->ddelta, &f->dA, &f->dBm, &f->dCm, c->Ds ? &f->dDs : NULL,
                                     c->bias ? &f->dbias : NULL, c->z ? &f->dz : NULL, c->h0 ? &f->dh0 : NULL,
                                     &f->dout, c->dfinal ? &f->dfinal : NULL, &f->chunks, &f->u, &f->delta, &f->A,
                                     &f->Bm, &f->Cm, &f->opts),
               SN_OK, "%s", ctx.err);
}

static void fixture_reference(fixture *f, bool bwd) {
  const cfg *c = &f->c;
  int64_t B = c->B, T = c->T, D = c->D, N = c->N;
  double *in[] = {tu_to_double(&f->u), tu_to_double(&f->delta), tu_to_double(&f->A), tu_to_double(&f->Bm), tu_to_double(&f->Cm),
                  tu_to_double(&f->Ds), tu_to_double(&f->z), tu_to_double(&f->bias), tu_to_double(&f->h0)};
  ref_in r = {B, T, D, N, in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8], c->softplus};
  f->rout = tu_dalloc(B * T * D);
  f->hs = tu_dalloc(B * (T + 1) * D * N);
  ref_fwd(&r, f->rout, f->hs);
  if (bwd) {
    double *dout = tu_to_double(&f->dout), *dfinal = tu_to_double(&f->dfinal);
    f->rg = (ref_grads){tu_dalloc(B * T * D), tu_dalloc(B * T * D), tu_dalloc(D * N), tu_dalloc(B * T * N), tu_dalloc(B * T * N),
                        tu_dalloc(D), tu_dalloc(D), tu_dalloc(B * T * D), tu_dalloc(B * D * N)};
    ref_bwd(&r, f->hs, dout, dfinal, &f->rg);
    free(dout), free(dfinal);
  }
  for (int i = 0; i < 9; i++) free(in[i]);
}

static void fixture_free(fixture *f) {
  sn_tensor *ts[] = {&f->u,   &f->delta, &f->A,      &f->Bm,  &f->Cm,     &f->Ds,  &f->z,   &f->bias,
                     &f->h0,  &f->dout,  &f->dfinal, &f->out, &f->fin,    &f->chunks, &f->du, &f->ddelta,
                     &f->dA,  &f->dBm,   &f->dCm,    &f->dDs, &f->dbias,  &f->dz,  &f->dh0};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  double *ds[] = {f->rout, f->hs, f->rg.du, f->rg.ddelta, f->rg.dA, f->rg.dBm, f->rg.dCm, f->rg.dDs, f->rg.dbias,
                  f->rg.dz, f->rg.dh0};
  for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++) free(ds[i]);
}

/* The reference's states at the chunk boundaries (B, nchunks, D, N) and at the end (B,D,N). */
static double *ref_chunk_states(const fixture *f) {
  const cfg *c = &f->c;
  int64_t nc = (c->T + SN_SCAN_CHUNK - 1) / SN_SCAN_CHUNK, DN = c->D * c->N;
  double *r = tu_dalloc(c->B * nc * DN);
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t k = 0; k < nc; k++)
      memcpy(r + (b * nc + k) * DN, f->hs + (b * (c->T + 1) + k * SN_SCAN_CHUNK) * DN, sizeof(double) * (size_t)DN);
  return r;
}

static double *ref_final_state(const fixture *f) {
  const cfg *c = &f->c;
  int64_t DN = c->D * c->N;
  double *r = tu_dalloc(c->B * DN);
  for (int64_t b = 0; b < c->B; b++)
    memcpy(r + b * DN, f->hs + (b * (c->T + 1) + c->T) * DN, sizeof(double) * (size_t)DN);
  return r;
}

#define FWD_TOL 1e-5, 1e-5
#define BWD_TOL 1e-4, 1e-4

static void expect_forward(const fixture *f) {
  char d[200];
  double *rc = ref_chunk_states(f), *rf = ref_final_state(f);
  cr_expect_leq(tu_max_scaled_err(&f->out, f->rout, FWD_TOL), 1.0, "out: %s", describe(&f->c, d));
  cr_expect_leq(tu_max_scaled_err(&f->fin, rf, FWD_TOL), 1.0, "final state: %s", describe(&f->c, d));
  cr_expect_leq(tu_max_scaled_err(&f->chunks, rc, FWD_TOL), 1.0, "chunk states: %s", describe(&f->c, d));
  free(rc), free(rf);
}

static void expect_backward(const fixture *f) {
  char d[200];
  const cfg *c = &f->c;
  struct {
    const char *name;
    const sn_tensor *t;
    const double *ref;
    bool on;
  } gs[] = {{"du", &f->du, f->rg.du, true},        {"ddelta", &f->ddelta, f->rg.ddelta, true},
            {"dA", &f->dA, f->rg.dA, true},        {"dB", &f->dBm, f->rg.dBm, true},
            {"dC", &f->dCm, f->rg.dCm, true},      {"dDskip", &f->dDs, f->rg.dDs, c->Ds},
            {"ddelta_bias", &f->dbias, f->rg.dbias, c->bias}, {"dz", &f->dz, f->rg.dz, c->z},
            {"dh0", &f->dh0, f->rg.dh0, c->h0}};
  for (size_t i = 0; i < sizeof gs / sizeof gs[0]; i++)
    if (gs[i].on)
      cr_expect_leq(tu_max_scaled_err(gs[i].t, gs[i].ref, BWD_TOL), 1.0, "%s: %s", gs[i].name, describe(c, d));
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

/* ---- tests ------------------------------------------------------------------------------------ */

/* The reference backward against central differences of L = sum(out G) + sum(final Gf). */
Test(selective_scan, reference_backward_matches_finite_differences) {
  for (int softplus = 0; softplus < 2; softplus++) {
    enum { B = 2, T = 5, D = 3, N = 2 };
    double u[B * T * D], delta[B * T * D], A[D * N], Bm[B * T * N], Cm[B * T * N], Ds[D], z[B * T * D], bias[D];
    double h0[B * D * N], G[B * T * D], Gf[B * D * N], out[B * T * D], hs[B * (T + 1) * D * N];
    double *ins[] = {u, delta, A, Bm, Cm, Ds, z, bias, h0, G, Gf};
    int64_t lens[] = {B * T * D, B * T * D, D * N, B * T * N, B * T * N, D, B * T * D, D, B * D * N, B * T * D, B * D * N};
    uint32_t s = 3;
    for (int a = 0; a < 11; a++)
      for (int64_t i = 0; i < lens[a]; i++) s = s * 1664525u + 1013904223u, ins[a][i] = (s >> 8) / 8388608.0 - 1;
    for (int64_t i = 0; i < D * N; i++) A[i] = -0.6 + 0.5 * A[i];
    delta[4] = 22; /* past the softplus threshold */
    ref_in r = {B, T, D, N, u, delta, A, Bm, Cm, Ds, z, bias, h0, softplus};
    double du[B * T * D], dd[B * T * D], dA[D * N], dB[B * T * N], dC[B * T * N], dDs[D], dbias[D], dz[B * T * D];
    double dh0[B * D * N];
    ref_grads g = {du, dd, dA, dB, dC, dDs, dbias, dz, dh0};
    ref_fwd(&r, out, hs);
    ref_bwd(&r, hs, G, Gf, &g);
    double *grads[] = {du, dd, dA, dB, dC, dDs, dz, dbias, dh0};
    for (int a = 0; a < 9; a++)
      for (int64_t i = 0; i < lens[a]; i++) {
        double keep = ins[a][i], h = 1e-6, L[2];
        for (int side = 0; side < 2; side++) {
          ins[a][i] = keep + (side ? -h : h);
          ref_fwd(&r, out, hs);
          L[side] = 0;
          for (int64_t j = 0; j < B * T * D; j++) L[side] += out[j] * G[j];
          for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < D * N; j++) L[side] += hs[(b * (T + 1) + T) * D * N + j] * Gf[b * D * N + j];
        }
        ins[a][i] = keep;
        double fd = (L[0] - L[1]) / (2 * h);
        cr_expect(fabs(fd - grads[a][i]) < 1e-6 * (1 + fabs(fd)), "softplus %d input %d element %lld: fd %.10g, reference %.10g",
                  softplus, a, (long long)i, fd, grads[a][i]);
      }
  }
}

/* Every combination of Dskip, z, delta_bias, softplus, initial state and final-state
 * gradient, on every SIMD table. */
Test(selective_scan, every_option_matches_reference) {
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (int m = 0; m < 64; m++) {
      cfg c = {2, 130, 33, 5, m & 1, m & 2, m & 4, m & 8, m & 16, m & 32};
      check_case(&c);
      c.N = 16, c.T = 70;
      check_case(&c);
    }
  }
  restore_level();
}

/* T of 1 and around the chunk, D of 1 and not a multiple of 8 or 16, N = 16, odd and 2
 * (register blocks of 4, then of 2 and 1). */
Test(selective_scan, odd_sizes_match_reference) {
  const int64_t CH = SN_SCAN_CHUNK, Ts[] = {1, CH - 1, CH, CH + 1, 2 * CH + 2}, Ds[] = {1, 17, 33}, Ns[] = {16, 7, 2};
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (int ti = 0; ti < 5; ti++)
      for (int di = 0; di < 3; di++)
        for (int ni = 0; ni < 2; ni++)
          for (int all = 0; all < 2; all++) {
            cfg c = {2, Ts[ti], Ds[di], Ns[ni], all, all, all, all, all, all};
            check_case(&c);
          }
  }
  restore_level();
}

/* Drift over a long sequence with small steps (decays near 1) stays near the double result. */
Test(selective_scan, long_sequence_stays_accurate) {
  cfg c = {1, 4096, 17, 16, true, true, true, true, false, false};
  fixture f;
  fixture_inputs(&f, &c);
  for (int64_t i = 0; i < sn_numel(&f.delta); i++) sn_f32(&f.delta)[i] = sn_f32(&f.delta)[i] * 0.5f - 4.5f;
  fixture_run(&f, true);
  fixture_reference(&f, true);
  cr_expect_leq(tu_max_scaled_err(&f.out, f.rout, 1e-4, 1e-4), 1.0, "out");
  cr_expect_leq(tu_max_scaled_err(&f.dA, f.rg.dA, 1e-3, 1e-4), 1.0, "dA");
  cr_expect_leq(tu_max_scaled_err(&f.ddelta, f.rg.ddelta, 1e-4, 1e-4), 1.0, "ddelta");
  cr_expect_leq(tu_max_scaled_err(&f.dBm, f.rg.dBm, 1e-4, 1e-4), 1.0, "dB");
  fixture_free(&f);
}

/* u, delta, z as narrows of one (B, T, 3D) projection and B, C of one (B, T, r + 2N): the
 * same bits as contiguous copies, forward and backward (grad_output and the final-state
 * gradient strided too). */
Test(selective_scan, strided_views_equal_contiguous_copies) {
  int64_t B = 2, T = 70, D = 20, N = 5, r = 3;
  cfg c = {B, T, D, N, true, true, true, true, true, true};
  fixture f, v;
  fixture_inputs(&f, &c);
  fixture_inputs(&v, &c);
  sn_tensor xz = tu_make(&ctx, 3, (int64_t[]){B, T, 3 * D}, 21, 1, 0), xdbl = tu_make(&ctx, 3, (int64_t[]){B, T, r + 2 * N}, 22, 1, 0);
  sn_tensor gall = tu_make(&ctx, 3, (int64_t[]){B, T, 2 * D}, 23, 1, 0), hall = tu_make(&ctx, 3, (int64_t[]){B, 2 * D, N}, 24, 1, 0);
  sn_tensor *dst[] = {&v.u, &v.delta, &v.z, &v.Bm, &v.Cm, &v.dout, &v.dfinal};
  sn_tensor *src[] = {&xz, &xz, &xz, &xdbl, &xdbl, &gall, &hall};
  int64_t start[] = {0, D, 2 * D, r, r + N, D, D}, len[] = {D, D, D, N, N, D, D};
  int dim[] = {2, 2, 2, 2, 2, 2, 1};
  sn_tensor *copies[] = {&f.u, &f.delta, &f.z, &f.Bm, &f.Cm, &f.dout, &f.dfinal};
  for (int i = 0; i < 7; i++) {
    sn_tensor_release(dst[i]);
    cr_assert_eq(sn_narrow(&ctx, dst[i], src[i], dim[i], start[i], len[i]), SN_OK, "%s", ctx.err);
    cr_assert_eq(sn_copy(&ctx, copies[i], dst[i]), SN_OK, "%s", ctx.err);
  }
  cr_assert(!sn_is_contiguous(&v.u) && !sn_is_contiguous(&v.Bm) && !sn_is_contiguous(&v.dfinal));
  /* the rest (A, Dskip, bias, h0) is filled alike in both */
  fixture_run(&f, true);
  fixture_run(&v, true);
  sn_tensor *a[] = {&f.out, &f.fin, &f.chunks, &f.du, &f.ddelta, &f.dA, &f.dBm, &f.dCm, &f.dDs, &f.dbias, &f.dz, &f.dh0};
  sn_tensor *b[] = {&v.out, &v.fin, &v.chunks, &v.du, &v.ddelta, &v.dA, &v.dBm, &v.dCm, &v.dDs, &v.dbias, &v.dz, &v.dh0};
  for (size_t i = 0; i < sizeof a / sizeof a[0]; i++)
    cr_expect(memcmp(sn_f32(a[i]), sn_f32(b[i]), (size_t)sn_numel(a[i]) * sizeof(float)) == 0, "output %zu", i);
  fixture_free(&f), fixture_free(&v);
  sn_tensor_release(&xz), sn_tensor_release(&xdbl), sn_tensor_release(&gall), sn_tensor_release(&hall);
}

/* With z but no dz asked for, the other gradients are the same bits (whole tiles write
 * their results straight to the caller's tensors, a partial one through a copy). */
Test(selective_scan, gradients_without_dz_are_the_same) {
  cfg c = {2, 70, 48 + 5, 16, true, true, true, true, true, true};
  fixture f;
  fixture_inputs(&f, &c);
  fixture_run(&f, true);
  int64_t btd[] = {c.B, c.T, c.D}, btn[] = {c.B, c.T, c.N}, dn[] = {c.D, c.N};
  sn_tensor du = tu_empty(&ctx, SN_F32, 3, btd), dd = tu_empty(&ctx, SN_F32, 3, btd), dA = tu_empty(&ctx, SN_F32, 2, dn);
  sn_tensor dB = tu_empty(&ctx, SN_F32, 3, btn), dC = tu_empty(&ctx, SN_F32, 3, btn);
  cr_assert_eq(sn_selective_scan_bwd(&ctx, &du, &dd, &dA, &dB, &dC, NULL, NULL, NULL, NULL, &f.dout, &f.dfinal, &f.chunks,
                                     &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &f.opts),
               SN_OK, "%s", ctx.err);
  sn_tensor *a[] = {&f.du, &f.ddelta, &f.dA, &f.dBm, &f.dCm}, *b[] = {&du, &dd, &dA, &dB, &dC};
  for (size_t i = 0; i < 5; i++)
    cr_expect(memcmp(sn_f32(a[i]), sn_f32(b[i]), (size_t)sn_numel(a[i]) * sizeof(float)) == 0, "gradient %zu", i);
  for (size_t i = 0; i < 5; i++) sn_tensor_release(b[i]);
  fixture_free(&f);
}

/* Decoding token by token from the initial state gives the forward's outputs and final state
 * bit for bit, on every SIMD table. */
Test(selective_scan, step_loop_equals_forward) {
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (int m = 0; m < 4; m++) {
      cfg c = {3, 70, m < 2 ? 33 : 16, m % 2 ? 5 : 16, m != 1, m != 2, m != 3, m != 0, true, false};
      fixture f;
      fixture_inputs(&f, &c);
      fixture_run(&f, false);
      int64_t B = c.B, D = c.D, N = c.N, T = c.T;
      sn_tensor state = tu_empty(&ctx, SN_F32, 3, (int64_t[]){B, D, N}), y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){B, D});
      sn_copy(&ctx, &state, &f.h0);
      for (int64_t t = 0; t < T; t++) {
        sn_tensor ut, dt, zt, bt, ct;
        sn_select(&ctx, &ut, &f.u, 1, t), sn_select(&ctx, &dt, &f.delta, 1, t);
        sn_select(&ctx, &bt, &f.Bm, 1, t), sn_select(&ctx, &ct, &f.Cm, 1, t);
        sn_scan_opts o = f.opts;
        if (c.z) sn_select(&ctx, &zt, &f.z, 1, t), o.z = &zt;
        cr_assert_eq(sn_selective_scan_step(&ctx, &y, &state, &ut, &dt, &f.A, &bt, &ct, &o), SN_OK, "%s", ctx.err);
        for (int64_t b = 0; b < B; b++)
          cr_expect(memcmp(sn_f32(&y) + b * D, sn_f32(&f.out) + (b * T + t) * D, (size_t)D * sizeof(float)) == 0,
                    "step %lld, b %lld, case %d, simd %s", (long long)t, (long long)b, m, sn_simd_level());
        sn_tensor_release(&ut), sn_tensor_release(&dt), sn_tensor_release(&bt), sn_tensor_release(&ct);
        if (c.z) sn_tensor_release(&zt);
      }
      cr_expect(memcmp(sn_f32(&state), sn_f32(&f.fin), (size_t)(B * D * N) * sizeof(float)) == 0, "final state, case %d", m);
      sn_tensor_release(&state), sn_tensor_release(&y);
      fixture_free(&f);
    }
  }
  restore_level();
}

/* Several slices of channel tiles and enough work to thread: the same bits on 1, 2 and 3
 * threads, forward and backward. */
Test(selective_scan, results_do_not_depend_on_the_thread_count) {
  cfg c = {2, 150, 300, 16, true, true, true, true, true, true};
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
    sn_tensor *a[] = {&one.out, &one.fin, &one.chunks, &one.du, &one.ddelta, &one.dA, &one.dBm, &one.dCm,
                      &one.dDs, &one.dbias, &one.dz, &one.dh0};
    sn_tensor *b[] = {&f.out, &f.fin, &f.chunks, &f.du, &f.ddelta, &f.dA, &f.dBm, &f.dCm,
                      &f.dDs, &f.dbias, &f.dz, &f.dh0};
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++)
      cr_expect(memcmp(sn_f32(a[i]), sn_f32(b[i]), (size_t)sn_numel(a[i]) * sizeof(float)) == 0,
                "output %zu, %d threads", i, nt);
    fixture_free(&f);
  }
  fixture_free(&one);
  omp_set_num_threads(saved);
}

/* T = 0: the final state is the initial one and its gradient passes straight to dh0. */
Test(selective_scan, empty_sequence_passes_the_state_through) {
  cfg c = {2, 0, 17, 5, true, true, true, true, true, true};
  fixture f;
  fixture_inputs(&f, &c);
  fixture_run(&f, true);
  size_t n = (size_t)(2 * 17 * 5) * sizeof(float);
  cr_expect(memcmp(sn_f32(&f.fin), sn_f32(&f.h0), n) == 0);
  cr_expect(memcmp(sn_f32(&f.dh0), sn_f32(&f.dfinal), n) == 0);
  for (int64_t i = 0; i < 17 * 5; i++) cr_expect_eq(sn_f32(&f.dA)[i], 0.0f);
  fixture_free(&f);
}

/* A call that must fail with SN_EINVAL and exactly this message. */
#define EXPECT_EINVAL(call, msg) TU_EXPECT_EINVAL_MSG(call, "seqnn.F.selective_scan: " msg)

Test(selective_scan, rejects_bad_input) {
  cfg c = {2, 16, 32, 8, true, true, true, true, true, true};
  fixture f;
  fixture_inputs(&f, &c);
  fixture_run(&f, true);
  int64_t btd[] = {2, 16, 32};
  sn_tensor u2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 16}), d31 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 16, 31});
  sn_tensor A = tu_empty(&ctx, SN_F32, 2, (int64_t[]){16, 48}), B5 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 16, 5});
  sn_tensor ui = tu_empty(&ctx, SN_I64, 3, btd), A0 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){32, 0});
  sn_tensor D31 = tu_empty(&ctx, SN_F32, 1, (int64_t[]){31}), ck = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 2, 32, 8});
  sn_tensor s2 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 31, 8}), ut, out = f.out;
  sn_transpose(&ctx, &ut, &d31, 1, 2);
  sn_scan_opts o = f.opts, bad = f.opts, none = {.delta_softplus = true};

  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &u2, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "u must be (batch, T, D), got 2x16");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &ui, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "u must be f32, got i64 (2x16x32)");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &f.u, &d31, &f.A, &f.Bm, &f.Cm, &o),
                "delta must be (batch, T, D) like u = 2x16x32, got 2x16x31");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &f.u, &f.delta, &A, &f.Bm, &f.Cm, &o),
                "A must be (D, N) = 32x?, got 16x48");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &f.u, &f.delta, &A0, &f.Bm, &f.Cm, &o),
                "A must have N >= 1 states, got 32x0");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &f.u, &f.delta, &f.A, &B5, &f.Cm, &o),
                "B must be (batch, T, N) = 2x16x8, got 2x16x5");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &f.u, &f.delta, &f.A, &f.Bm, &B5, &o),
                "C must be (batch, T, N) = 2x16x8, got 2x16x5");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &ut, &ut, &f.A, &f.Bm, &f.Cm, &o),
                "u must have unit stride on its last dim, got stride 31 (2x31x16)");
  bad.Dskip = &D31;
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &bad),
                "Dskip must be (D) = 32, got 31");
  bad = o, bad.z = &d31;
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &bad),
                "z must be (batch, T, D) like u = 2x16x32, got 2x16x31");
  bad = o, bad.initial_state = &s2;
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &bad),
                "initial_state must be (batch, D, N) = 2x32x8, got 2x31x8");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &d31, NULL, NULL, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "out must be a contiguous f32 tensor of shape 2x16x32, got f32 2x16x31");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, &out, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "chunk_states must be a contiguous f32 tensor of shape 2x1x32x8, got f32 2x16x32");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, &ck, NULL, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "final_state must be a contiguous f32 tensor of shape 2x32x8, got f32 2x2x32x8");
  EXPECT_EINVAL(sn_selective_scan_fwd(&ctx, &out, NULL, NULL, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, NULL),
                "opts must not be NULL");

  EXPECT_EINVAL(sn_selective_scan_bwd(&ctx, &f.du, &f.ddelta, &f.dA, &f.dBm, &f.dCm, &f.dDs, NULL, NULL, NULL, &f.dout,
                                      NULL, &f.chunks, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &none),
                "dDskip was asked for but opts->Dskip is NULL");
  EXPECT_EINVAL(sn_selective_scan_bwd(&ctx, &f.du, &f.ddelta, &f.dA, &f.dBm, &f.dCm, NULL, NULL, NULL, NULL, &f.dout,
                                      NULL, &ck, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "chunk_states must be a contiguous f32 tensor of shape 2x1x32x8, got f32 2x2x32x8");
  EXPECT_EINVAL(sn_selective_scan_bwd(&ctx, &f.du, &f.ddelta, &f.dA, &f.dBm, &f.dCm, NULL, NULL, NULL, NULL, &d31,
                                      NULL, &f.chunks, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "grad_output must be (batch, T, D) like u = 2x16x32, got 2x16x31");
  EXPECT_EINVAL(sn_selective_scan_bwd(&ctx, &f.du, &f.ddelta, &f.dA, &f.dBm, &f.dCm, NULL, NULL, NULL, NULL, &f.dout,
                                      &s2, &f.chunks, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "grad_final_state must be (batch, D, N) = 2x32x8, got 2x31x8");
  EXPECT_EINVAL(sn_selective_scan_bwd(&ctx, &f.du, &f.ddelta, &A, &f.dBm, &f.dCm, NULL, NULL, NULL, NULL, &f.dout,
                                      NULL, &f.chunks, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "dA must be a contiguous f32 tensor of shape 32x8, got f32 16x48");
  EXPECT_EINVAL(sn_selective_scan_bwd(&ctx, &f.du, &f.ddelta, &f.dA, &f.dBm, &f.dCm, NULL, NULL, NULL, NULL, &f.dout,
                                      NULL, NULL, &f.u, &f.delta, &f.A, &f.Bm, &f.Cm, &o),
                "chunk_states (saved by fwd) must not be NULL");

  sn_tensor us, ds, bs, cs, y = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 32});
  sn_select(&ctx, &us, &f.u, 1, 0), sn_select(&ctx, &ds, &f.delta, 1, 0);
  sn_select(&ctx, &bs, &f.Bm, 1, 0), sn_select(&ctx, &cs, &f.Cm, 1, 0);
  sn_scan_opts so = {.delta_softplus = true};
  EXPECT_EINVAL(sn_selective_scan_step(&ctx, &y, &f.fin, &f.u, &f.delta, &f.A, &bs, &cs, &so),
                "u must be (batch, D), got 2x16x32");
  EXPECT_EINVAL(sn_selective_scan_step(&ctx, &y, &s2, &us, &ds, &f.A, &bs, &cs, &so),
                "state must be a contiguous f32 tensor of shape 2x32x8, got f32 2x31x8");
  EXPECT_EINVAL(sn_selective_scan_step(&ctx, &y, &f.fin, &us, &ds, &f.A, &f.Bm, &cs, &so),
                "B must be (batch, N) = 2x8, got 2x16x8");
  cr_expect_eq(sn_selective_scan_step(&ctx, &y, &f.fin, &us, &ds, &f.A, &bs, &cs, &so), SN_OK, "%s", ctx.err);

  sn_tensor *ts[] = {&u2, &d31, &A, &B5, &ui, &A0, &D31, &ck, &s2, &ut, &us, &ds, &bs, &cs, &y};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  fixture_free(&f);
}
