/* test_linear_attention.c -- kernels/linear_attention.c against a naive double recurrence:
 * the three gate kinds, T around the 64-step chunks and 16-row sub-chunks, Dk != Dv, initial
 * and final states, chunk states, strided views, the backward (whose reference is checked by
 * finite differences), the decode step, strong gates, long sequences, thread-count
 * independence, every SIMD table and bad input. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "simdutil.h"
#include "testutil.h"

enum { NO_GATE, HEAD_GATE, KEY_GATE };

/* ---- naive reference, in double, over contiguous arrays ------------------------------------
 * q, k (B,T,H,Dk), v (B,T,H,Dv), g (B,T,H) or (B,T,H,Dk) or NULL, h0 (B,H,Dk,Dv) or NULL. */
typedef struct {
  int64_t B, T, H, Dk, Dv;
  int gate;
  const double *q, *k, *v, *g, *h0;
  double scale;
} ref_in;

typedef struct {
  double *dq, *dk, *dv, *dg, *dh0;
} ref_grads;

static int64_t tok(const ref_in *r, int64_t b, int64_t t, int64_t h) { return (b * r->T + t) * r->H + h; }

/* exp(g) of step t for key dim j. */
static double decay(const ref_in *r, int64_t b, int64_t t, int64_t h, int64_t j) {
  if (r->gate == NO_GATE) return 1;
  return exp(r->gate == HEAD_GATE ? r->g[tok(r, b, t, h)] : r->g[tok(r, b, t, h) * r->Dk + j]);
}

/* ss (B,H,T+1,Dk,Dv): the state before step t at index t (the last one is the final state). */
static double *state_at(const ref_in *r, const double *ss, int64_t b, int64_t h, int64_t t) {
  return (double *)ss + ((b * r->H + h) * (r->T + 1) + t) * r->Dk * r->Dv;
}

/* S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t). */
static void ref_fwd(const ref_in *r, double *o, double *ss) {
  int64_t Dk = r->Dk, Dv = r->Dv;
  for (int64_t b = 0; b < r->B; b++)
    for (int64_t h = 0; h < r->H; h++) {
      double *S = state_at(r, ss, b, h, 0);
      for (int64_t i = 0; i < Dk * Dv; i++) S[i] = r->h0 ? r->h0[(b * r->H + h) * Dk * Dv + i] : 0;
      for (int64_t t = 0; t < r->T; t++) {
        const double *P = state_at(r, ss, b, h, t), *q = r->q + tok(r, b, t, h) * Dk, *k = r->k + tok(r, b, t, h) * Dk;
        const double *v = r->v + tok(r, b, t, h) * Dv;
        double *N = state_at(r, ss, b, h, t + 1), *out = o + tok(r, b, t, h) * Dv;
        for (int64_t j = 0; j < Dv; j++) out[j] = 0;
        for (int64_t i = 0; i < Dk; i++) {
          double a = decay(r, b, t, h, i);
          for (int64_t j = 0; j < Dv; j++) {
            N[i * Dv + j] = a * P[i * Dv + j] + k[i] * v[j];
            out[j] += r->scale * q[i] * N[i * Dv + j];
          }
        }
      }
    }
}

/* Gradients of L = sum(o dout) + sum(final dfinal) (dfinal may be NULL), back in time with
 * dS = dL/dS_t: dS += scale q_t dout_t^T, then dq_t = scale S_t dout_t, dk_t = dS v_t,
 * dv_t = dS^T k_t, dg_t = sum_j dS S_{t-1} exp(g_t), and dS <- diag(exp(g_t)) dS. */
static void ref_bwd(const ref_in *r, const double *ss, const double *dout, const double *dfinal, ref_grads *gr) {
  int64_t Dk = r->Dk, Dv = r->Dv;
  double *dS = malloc(sizeof(double) * (size_t)(Dk * Dv));
  for (int64_t b = 0; b < r->B; b++)
    for (int64_t h = 0; h < r->H; h++) {
      for (int64_t i = 0; i < Dk * Dv; i++) dS[i] = dfinal ? dfinal[(b * r->H + h) * Dk * Dv + i] : 0;
      for (int64_t t = r->T - 1; t >= 0; t--) {
        int64_t at = tok(r, b, t, h);
        const double *P = state_at(r, ss, b, h, t), *N = state_at(r, ss, b, h, t + 1);
        const double *q = r->q + at * Dk, *k = r->k + at * Dk, *v = r->v + at * Dv, *d = dout + at * Dv;
        double *dq = gr->dq + at * Dk, *dk = gr->dk + at * Dk, *dv = gr->dv + at * Dv;
        if (r->gate == HEAD_GATE) gr->dg[at] = 0;
        for (int64_t i = 0; i < Dk; i++) {
          dq[i] = dk[i] = 0;
          for (int64_t j = 0; j < Dv; j++) {
            dS[i * Dv + j] += r->scale * q[i] * d[j];
            dq[i] += r->scale * N[i * Dv + j] * d[j];
          }
        }
        for (int64_t j = 0; j < Dv; j++) dv[j] = 0;
        for (int64_t i = 0; i < Dk; i++) {
          double a = decay(r, b, t, h, i), da = 0;
          for (int64_t j = 0; j < Dv; j++) {
            dk[i] += dS[i * Dv + j] * v[j];
            dv[j] += dS[i * Dv + j] * k[i];
            da += dS[i * Dv + j] * P[i * Dv + j];
            dS[i * Dv + j] *= a;
          }
          if (r->gate == HEAD_GATE) gr->dg[at] += da * a;
          if (r->gate == KEY_GATE) gr->dg[at * Dk + i] = da * a;
        }
      }
      if (gr->dh0)
        for (int64_t i = 0; i < Dk * Dv; i++) gr->dh0[(b * r->H + h) * Dk * Dv + i] = dS[i];
    }
  free(dS);
}

/* ---- fixtures --------------------------------------------------------------------------------- */

TU_SUITE(linear_attention);

typedef struct {
  int64_t B, T, H, Dk, Dv;
  int gate;
  bool h0, dfinal, strong;
} cfg;

static const char *gate_names[] = {"none", "head", "key"};

static char *describe(const cfg *c, char *buf) {
  sprintf(buf, "B%lld T%lld H%lld Dk%lld Dv%lld gate %s h0 %d dfinal %d strong %d simd %s", (long long)c->B,
          (long long)c->T, (long long)c->H, (long long)c->Dk, (long long)c->Dv, gate_names[c->gate], c->h0, c->dfinal,
          c->strong, sn_simd_level());
  return buf;
}

typedef struct {
  cfg c;
  sn_linattn_opts opts;
  sn_tensor q, k, v, g, h0, dout, dfinal;
  sn_tensor o, fin, chunks, dq, dk, dv, dg, dh0;
  double *ro, *ss;
  ref_grads rg;
} fixture;


static int64_t nchunks(int64_t T) { return (T + SN_LINATTN_CHUNK - 1) / SN_LINATTN_CHUNK; }

/* Gates: in [-0.6, 0) per key dim and [-0.3, 0) per head (decays 0.55 .. 1), or about -5
 * per step when strong (so Gamma reaches -320 over a chunk). */
static void fixture_inputs(fixture *f, const cfg *c) {
  memset(f, 0, sizeof *f);
  f->c = *c;
  int64_t btk[] = {c->B, c->T, c->H, c->Dk}, btv[] = {c->B, c->T, c->H, c->Dv}, bhkv[] = {c->B, c->H, c->Dk, c->Dv};
  f->q = tu_make(&ctx, 4, btk, 1, 1, 0);
  f->k = tu_make(&ctx, 4, btk, 2, 1, 0);
  f->v = tu_make(&ctx, 4, btv, 3, 1, 0);
  f->dout = tu_make(&ctx, 4, btv, 4, 1, 0);
  double gs = c->gate == KEY_GATE ? 0.3 : 0.15;
  if (c->gate != NO_GATE)
    f->g = tu_make(&ctx, c->gate == KEY_GATE ? 4 : 3, btk, 5, c->strong ? 1 : gs, c->strong ? -5 : -gs - 1e-3);
  if (c->h0) f->h0 = tu_make(&ctx, 4, bhkv, 6, 1, 0), f->opts.initial_state = &f->h0;
  if (c->dfinal) f->dfinal = tu_make(&ctx, 4, bhkv, 7, 1, 0);
  f->opts.scale = (float)(1 / sqrt((double)c->Dk));
}

static sn_tensor *opt(sn_tensor *t) { return t->storage ? t : NULL; }

/* Runs fwd (with the final and chunk states) and, when bwd, the backward. */
static void fixture_run(fixture *f, bool bwd) {
  const cfg *c = &f->c;
  int64_t btv[] = {c->B, c->T, c->H, c->Dv}, bhkv[] = {c->B, c->H, c->Dk, c->Dv};
  f->o = tu_empty(&ctx, SN_F32, 4, btv), f->fin = tu_empty(&ctx, SN_F32, 4, bhkv);
  f->chunks = tu_empty(&ctx, SN_F32, 5, (int64_t[]){c->B, c->H, nchunks(c->T), c->Dk, c->Dv});
  cr_assert_eq(sn_gated_linear_attention_fwd(&ctx, &f->o, &f->fin, &f->chunks, &f->q, &f->k, &f->v, opt(&f->g), &f->opts),
               SN_OK, "%s", ctx.err);
  if (!bwd) return;
  f->dq = tu_empty(&ctx, SN_F32, 4, f->q.size), f->dk = tu_empty(&ctx, SN_F32, 4, f->q.size);
  f->dv = tu_empty(&ctx, SN_F32, 4, btv);
  if (c->gate != NO_GATE) f->dg = tu_empty(&ctx, SN_F32, f->g.ndim, f->g.size);
  if (c->h0) f->dh0 = tu_empty(&ctx, SN_F32, 4, bhkv);
  cr_assert_eq(sn_gated_linear_attention_bwd(&ctx, &f->dq, &f->dk, &f->dv, opt(&f->dg), opt(&f->dh0), &f->dout,
                                             opt(&f->dfinal), &f->chunks, &f->q, &f->k, &f->v, opt(&f->g), &f->opts),
               SN_OK, "%s", ctx.err);
}

static void fixture_reference(fixture *f, bool bwd) {
  const cfg *c = &f->c;
  int64_t B = c->B, T = c->T, H = c->H, Dk = c->Dk, Dv = c->Dv;
  double *in[] = {tu_to_double(&f->q), tu_to_double(&f->k), tu_to_double(&f->v), tu_to_double(&f->g), tu_to_double(&f->h0)};
  ref_in r = {B, T, H, Dk, Dv, c->gate, in[0], in[1], in[2], in[3], in[4], f->opts.scale};
  f->ro = tu_dalloc(B * T * H * Dv);
  f->ss = tu_dalloc(B * H * (T + 1) * Dk * Dv);
  ref_fwd(&r, f->ro, f->ss);
  if (bwd) {
    double *dout = tu_to_double(&f->dout), *dfinal = tu_to_double(&f->dfinal);
    f->rg = (ref_grads){tu_dalloc(B * T * H * Dk), tu_dalloc(B * T * H * Dk), tu_dalloc(B * T * H * Dv),
                        tu_dalloc(B * T * H * Dk), c->h0 ? tu_dalloc(B * H * Dk * Dv) : NULL};
    ref_bwd(&r, f->ss, dout, dfinal, &f->rg);
    free(dout), free(dfinal);
  }
  for (int i = 0; i < 5; i++) free(in[i]);
}

static void fixture_free(fixture *f) {
  sn_tensor *ts[] = {&f->q, &f->k, &f->v, &f->g, &f->h0, &f->dout, &f->dfinal, &f->o,
                     &f->fin, &f->chunks, &f->dq, &f->dk, &f->dv, &f->dg, &f->dh0};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  double *ds[] = {f->ro, f->ss, f->rg.dq, f->rg.dk, f->rg.dv, f->rg.dg, f->rg.dh0};
  for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++) free(ds[i]);
}

/* The reference states at the chunk boundaries (B,H,nchunks,Dk,Dv) and at the end (B,H,Dk,Dv). */
static double *ref_states(const fixture *f, bool final) {
  const cfg *c = &f->c;
  int64_t n = final ? 1 : nchunks(c->T), KV = c->Dk * c->Dv;
  double *out = tu_dalloc(c->B * c->H * n * KV);
  for (int64_t bh = 0; bh < c->B * c->H; bh++)
    for (int64_t i = 0; i < n; i++) {
      int64_t t = final ? c->T : i * SN_LINATTN_CHUNK;
      memcpy(out + (bh * n + i) * KV, f->ss + (bh * (c->T + 1) + t) * KV, sizeof(double) * (size_t)KV);
    }
  return out;
}

#define FWD_TOL 2e-5
#define BWD_TOL 1e-4

static void expect_forward(const fixture *f) {
  char d[200];
  double *rc = ref_states(f, false), *rf = ref_states(f, true);
  cr_expect_leq(tu_rel_err(&f->o, f->ro), FWD_TOL, "o: %s (error %g)", describe(&f->c, d), tu_rel_err(&f->o, f->ro));
  cr_expect_leq(tu_rel_err(&f->fin, rf), FWD_TOL, "final state: %s (error %g)", describe(&f->c, d), tu_rel_err(&f->fin, rf));
  cr_expect_leq(tu_rel_err(&f->chunks, rc), FWD_TOL, "chunk states: %s (error %g)", describe(&f->c, d),
                tu_rel_err(&f->chunks, rc));
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
  } gs[] = {{"dq", &f->dq, f->rg.dq, true},
            {"dk", &f->dk, f->rg.dk, true},
            {"dv", &f->dv, f->rg.dv, true},
            {"dg", &f->dg, f->rg.dg, c->gate != NO_GATE},
            {"dh0", &f->dh0, f->rg.dh0, c->h0}};
  for (size_t i = 0; i < sizeof gs / sizeof gs[0]; i++)
    if (gs[i].on)
      cr_expect_leq(tu_rel_err(gs[i].t, gs[i].ref), BWD_TOL, "%s: %s (error %g)", gs[i].name, describe(c, d),
                    tu_rel_err(gs[i].t, gs[i].ref));
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

/* The reference backward against central differences of L = sum(o G) + sum(final Gf), for
 * every gate kind, with an initial state. */
Test(linear_attention, reference_backward_matches_finite_differences) {
  enum { B = 2, T = 5, H = 2, Dk = 3, Dv = 2, NK = B * T * H * Dk, NV = B * T * H * Dv, NS = B * H * Dk * Dv };
  for (int gate = NO_GATE; gate <= KEY_GATE; gate++) {
    double q[NK], k[NK], v[NV], g[NK], h0[NS], G[NV], Gf[NS], o[NV], ss[B * H * (T + 1) * Dk * Dv];
    double *ins[] = {q, k, v, g, h0, G, Gf};
    int64_t lens[] = {NK, NK, NV, gate == KEY_GATE ? NK : B * T * H, NS, NV, NS};
    uint32_t s = 7;
    for (int a = 0; a < 7; a++)
      for (int64_t i = 0; i < lens[a]; i++) s = s * 1664525u + 1013904223u, ins[a][i] = (s >> 8) / 8388608.0 - 1;
    for (int64_t i = 0; i < lens[3]; i++) g[i] = -0.4 + 0.35 * g[i];
    ref_in r = {B, T, H, Dk, Dv, gate, q, k, v, gate == NO_GATE ? NULL : g, h0, 0.7};
    double dq[NK], dk[NK], dv[NV], dg[NK], dh0[NS];
    ref_grads gr = {dq, dk, dv, dg, dh0};
    ref_fwd(&r, o, ss);
    ref_bwd(&r, ss, G, Gf, &gr);
    double *grads[] = {dq, dk, dv, dg, dh0};
    for (int a = 0; a < 5; a++) {
      if (a == 3 && gate == NO_GATE) continue;
      for (int64_t i = 0; i < lens[a]; i++) {
        double keep = ins[a][i], e = 1e-6, L[2];
        for (int side = 0; side < 2; side++) {
          ins[a][i] = keep + (side ? -e : e);
          ref_fwd(&r, o, ss);
          L[side] = 0;
          for (int64_t j = 0; j < NV; j++) L[side] += o[j] * G[j];
          for (int64_t bh = 0; bh < B * H; bh++)
            for (int64_t j = 0; j < Dk * Dv; j++) L[side] += ss[(bh * (T + 1) + T) * Dk * Dv + j] * Gf[bh * Dk * Dv + j];
        }
        ins[a][i] = keep;
        double fd = (L[0] - L[1]) / (2 * e);
        cr_expect(fabs(fd - grads[a][i]) < 1e-6 * (1 + fabs(fd)), "gate %s input %d element %lld: fd %.10g, reference %.10g",
                  gate_names[gate], a, (long long)i, fd, grads[a][i]);
      }
    }
  }
}

/* T of 1, around the 16-row sub-chunks and the 64-step chunks, and past two chunks; Dk != Dv
 * and 64 / 64; every gate kind; with and without initial state and final-state gradient. */
Test(linear_attention, odd_sizes_match_reference) {
  const int64_t Ts[] = {1, 17, 63, 64, 65, 130, 200}, dims[][2] = {{20, 36}, {64, 64}};
  for (int ti = 0; ti < 7; ti++)
    for (int di = 0; di < 2; di++)
      for (int gate = NO_GATE; gate <= KEY_GATE; gate++)
        for (int states = 0; states < 2; states++) {
          cfg c = {2, Ts[ti], 2, dims[di][0], dims[di][1], gate, states, states, false};
          check_case(&c);
        }
}

/* Every SIMD table's products give the reference's results. */
Test(linear_attention, every_simd_level_matches_reference) {
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (int gate = NO_GATE; gate <= KEY_GATE; gate++) {
      cfg c = {1, 130, 3, 20, 36, gate, true, true, false};
      check_case(&c);
      c.Dk = 33, c.Dv = 7, c.T = 77;
      check_case(&c);
    }
  }
  restore_level();
}

/* Gates about -5 per step: decays of e^-5 compound to e^-320 over a chunk, far below what a
 * float holds, yet everything stays finite and accurate. */
Test(linear_attention, strong_gates_stay_finite_and_accurate) {
  for (int gate = HEAD_GATE; gate <= KEY_GATE; gate++) {
    cfg c = {1, 200, 2, 64, 64, gate, true, true, true};
    check_case(&c);
    c.Dk = 20, c.Dv = 36, c.T = 130;
    check_case(&c);
  }
}

/* Per-key gates that are strong only in some chunks and key dims: those chunks take the
 * sub-chunk path, the others the factored one (a spread over a chunk of at most 32). */
Test(linear_attention, mixed_gate_strengths_match_reference) {
  cfg c = {2, 200, 2, 20, 36, KEY_GATE, true, true, false};
  fixture f;
  fixture_inputs(&f, &c);
  float *g = sn_f32(&f.g);
  for (int64_t i = 0; i < sn_numel(&f.g); i++) {
    int64_t k = i % c.Dk, t = i / (c.Dk * c.H) % c.T;
    if (t / 64 % 2 == 1 && k % 3 == 0) g[i] = g[i] * 2 - 1.5f; /* about -2 a step: a spread near 130 */
  }
  fixture_run(&f, true);
  fixture_reference(&f, true);
  expect_forward(&f);
  expect_backward(&f);
  fixture_free(&f);
}

/* Per-key gates of about -0.47 a step: a spread near 30 over a chunk, just inside what goes
 * through one reference row, so its factors reach e^(+-30). */
Test(linear_attention, per_key_gates_near_the_factoring_limit) {
  cfg c = {1, 130, 2, 64, 64, KEY_GATE, true, true, false};
  fixture f;
  fixture_inputs(&f, &c);
  for (int64_t i = 0; i < sn_numel(&f.g); i++) sn_f32(&f.g)[i] = -0.47f + 0.01f * sn_f32(&f.g)[i];
  fixture_run(&f, true);
  fixture_reference(&f, true);
  expect_forward(&f);
  expect_backward(&f);
  fixture_free(&f);
}

/* g = -inf forgets the state entirely (a reset): exact zeros, not NaN, in both gate kinds. */
Test(linear_attention, infinite_gates_reset_the_state) {
  for (int gate = HEAD_GATE; gate <= KEY_GATE; gate++) {
    cfg c = {1, 150, 2, 20, 36, gate, true, true, false};
    fixture f;
    fixture_inputs(&f, &c);
    int64_t per_t = c.H * (gate == KEY_GATE ? c.Dk : 1);
    for (int64_t j = 0; j < per_t; j++) sn_f32(&f.g)[30 * per_t + j] = sn_f32(&f.g)[100 * per_t + j] = -INFINITY;
    sn_f32(&f.g)[0] = -INFINITY; /* the very first step, head 0 */
    fixture_run(&f, true);
    fixture_reference(&f, true);
    expect_forward(&f);
    expect_backward(&f);
    fixture_free(&f);
  }
}

/* A NaN gate is not an error: it reaches the outputs of its head from that step on, and
 * nothing else. */
Test(linear_attention, nan_gate_propagates) {
  for (int gate = HEAD_GATE; gate <= KEY_GATE; gate++) {
    cfg c = {1, 100, 2, 8, 8, gate, false, false, false};
    fixture f;
    fixture_inputs(&f, &c);
    int64_t per_t = c.H * (gate == KEY_GATE ? c.Dk : 1);
    sn_f32(&f.g)[70 * per_t] = NAN; /* head 0, t = 70 */
    fixture_run(&f, false);
    const float *o = sn_f32(&f.o);
    for (int64_t t = 0; t < c.T; t++)
      for (int64_t h = 0; h < c.H; h++) {
        float x = o[(t * c.H + h) * c.Dv];
        if (h == 0 && t >= 70) cr_expect(isnan(x), "gate %s t %lld", gate_names[gate], (long long)t);
        else cr_expect(isfinite(x), "gate %s t %lld head %lld", gate_names[gate], (long long)t, (long long)h);
      }
    fixture_free(&f);
  }
}

/* Drift over a long sequence with weak gates (and none) stays near the double result. */
Test(linear_attention, long_sequence_stays_accurate) {
  for (int gate = NO_GATE; gate <= KEY_GATE; gate++) {
    cfg c = {1, 2048, 1, 16, 16, gate, true, true, false};
    fixture f;
    fixture_inputs(&f, &c);
    if (gate != NO_GATE)
      for (int64_t i = 0; i < sn_numel(&f.g); i++) sn_f32(&f.g)[i] *= 0.02f;
    fixture_run(&f, true);
    fixture_reference(&f, true);
    expect_forward(&f);
    expect_backward(&f);
    fixture_free(&f);
  }
}

/* q, k, v as narrows of one fused projection, g of a wider tensor, h0, grad_output and the
 * final-state gradient strided too: the same bits as contiguous copies. */
Test(linear_attention, strided_views_equal_contiguous_copies) {
  int64_t B = 2, T = 70, H = 2, Dk = 20, Dv = 12;
  for (int gate = HEAD_GATE; gate <= KEY_GATE; gate++) {
    cfg c = {B, T, H, Dk, Dv, gate, true, true, false};
    fixture f, w;
    fixture_inputs(&f, &c);
    fixture_inputs(&w, &c);
    sn_tensor qkv = tu_make(&ctx, 4, (int64_t[]){B, T, H, 2 * Dk + Dv}, 21, 1, 0);
    sn_tensor gall = gate == KEY_GATE ? tu_make(&ctx, 4, (int64_t[]){B, T, H, Dk + 3}, 22, 0.3, -0.3)
                                      : tu_make(&ctx, 3, (int64_t[]){B, T, H + 3}, 22, 0.3, -0.3);
    sn_tensor dall = tu_make(&ctx, 4, (int64_t[]){B, T, H, Dv + 5}, 23, 1, 0), sall = tu_make(&ctx, 4, (int64_t[]){B, H, Dk, 2 * Dv}, 24, 1, 0);
    sn_tensor hall = tu_make(&ctx, 4, (int64_t[]){B, H, Dk, Dv + 1}, 25, 1, 0);
    sn_tensor *dst[] = {&w.q, &w.k, &w.v, &w.g, &w.dout, &w.dfinal, &w.h0};
    sn_tensor *src[] = {&qkv, &qkv, &qkv, &gall, &dall, &sall, &hall};
    int64_t start[] = {0, Dk, 2 * Dk, 3, 5, Dv, 1}, len[] = {Dk, Dk, Dv, gate == KEY_GATE ? Dk : H, Dv, Dv, Dv};
    sn_tensor *copies[] = {&f.q, &f.k, &f.v, &f.g, &f.dout, &f.dfinal, &f.h0};
    for (int i = 0; i < 7; i++) {
      sn_tensor_release(dst[i]);
      int dim = src[i]->ndim - 1;
      cr_assert_eq(sn_narrow(&ctx, dst[i], src[i], dim, start[i], len[i]), SN_OK, "%s", ctx.err);
      cr_assert_eq(sn_copy(&ctx, copies[i], dst[i]), SN_OK, "%s", ctx.err);
      cr_assert(!sn_is_contiguous(dst[i]));
    }
    w.opts.initial_state = &w.h0;
    fixture_run(&f, true);
    fixture_run(&w, true);
    sn_tensor *a[] = {&f.o, &f.fin, &f.chunks, &f.dq, &f.dk, &f.dv, &f.dg, &f.dh0};
    sn_tensor *b[] = {&w.o, &w.fin, &w.chunks, &w.dq, &w.dk, &w.dv, &w.dg, &w.dh0};
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) cr_expect(tu_same_bits(a[i], b[i]), "output %zu, gate %d", i, gate);
    fixture_free(&f), fixture_free(&w);
    sn_tensor_release(&qkv), sn_tensor_release(&gall), sn_tensor_release(&dall), sn_tensor_release(&sall);
    sn_tensor_release(&hall);
  }
}

/* Enough (batch, head) tasks to thread: the same bits on 1, 2 and 3 threads. */
Test(linear_attention, results_do_not_depend_on_the_thread_count) {
  int saved = omp_get_max_threads();
  for (int gate = NO_GATE; gate <= KEY_GATE; gate++) {
    cfg c = {2, 200, 3, 20, 36, gate, true, true, false};
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
      sn_tensor *a[] = {&one.o, &one.fin, &one.chunks, &one.dq, &one.dk, &one.dv, &one.dg, &one.dh0};
      sn_tensor *b[] = {&f.o, &f.fin, &f.chunks, &f.dq, &f.dk, &f.dv, &f.dg, &f.dh0};
      for (size_t i = 0; i < sizeof a / sizeof a[0]; i++)
        if (a[i]->storage) cr_expect(tu_same_bits(a[i], b[i]), "output %zu, gate %d, %d threads", i, gate, nt);
      fixture_free(&f);
    }
    fixture_free(&one);
  }
  omp_set_num_threads(saved);
}

/* Decoding token by token from the initial state gives the forward's outputs and final state
 * (up to rounding: the chunked form sums in another order), on every SIMD table. */
Test(linear_attention, step_loop_equals_forward) {
  for (int lv = 0, nlv = level_count(); lv < nlv; lv++) {
    use_level(lv);
    for (int gate = NO_GATE; gate <= KEY_GATE; gate++) {
      cfg c = {2, 70, 3, 20, 36, gate, true, false, false};
      fixture f;
      fixture_inputs(&f, &c);
      fixture_run(&f, false);
      fixture_reference(&f, false);
      int64_t B = c.B, H = c.H, Dv = c.Dv;
      sn_tensor state = tu_empty(&ctx, SN_F32, 4, f.h0.size), y = tu_empty(&ctx, SN_F32, 4, (int64_t[]){B, 1, H, Dv});
      sn_tensor all = tu_empty(&ctx, SN_F32, 4, f.o.size);
      sn_copy(&ctx, &state, &f.h0);
      for (int64_t t = 0; t < c.T; t++) {
        sn_tensor qt, kt, vt, gt, ot;
        sn_narrow(&ctx, &qt, &f.q, 1, t, 1), sn_narrow(&ctx, &kt, &f.k, 1, t, 1), sn_narrow(&ctx, &vt, &f.v, 1, t, 1);
        if (gate != NO_GATE) sn_narrow(&ctx, &gt, &f.g, 1, t, 1);
        cr_assert_eq(sn_gated_linear_attention_step(&ctx, &y, &state, &qt, &kt, &vt, gate != NO_GATE ? &gt : NULL, &f.opts),
                     SN_OK, "%s", ctx.err);
        sn_narrow(&ctx, &ot, &all, 1, t, 1);
        sn_copy(&ctx, &ot, &y);
        sn_tensor_release(&qt), sn_tensor_release(&kt), sn_tensor_release(&vt), sn_tensor_release(&ot);
        if (gate != NO_GATE) sn_tensor_release(&gt);
      }
      double *rf = ref_states(&f, true);
      cr_expect_leq(tu_rel_err(&all, f.ro), FWD_TOL, "step outputs, gate %s, simd %s", gate_names[gate], sn_simd_level());
      cr_expect_leq(tu_rel_err(&state, rf), FWD_TOL, "step state, gate %s", gate_names[gate]);
      double *fo = tu_to_double(&f.o), *ff = tu_to_double(&f.fin);
      cr_expect_leq(tu_rel_err(&all, fo), FWD_TOL, "step outputs against fwd, gate %s", gate_names[gate]);
      cr_expect_leq(tu_rel_err(&state, ff), FWD_TOL, "step state against fwd, gate %s", gate_names[gate]);
      free(rf), free(fo), free(ff);
      sn_tensor_release(&state), sn_tensor_release(&y), sn_tensor_release(&all);
      fixture_free(&f);
    }
  }
  restore_level();
}

/* T = 0: no output rows, the final state is the initial one and its gradient passes
 * straight to dh0; B = 0 does nothing. */
Test(linear_attention, empty_sequence_passes_the_state_through) {
  for (int gate = NO_GATE; gate <= KEY_GATE; gate++) {
    cfg c = {2, 0, 3, 5, 7, gate, true, true, false};
    fixture f;
    fixture_inputs(&f, &c);
    fixture_run(&f, true);
    cr_expect(tu_same_bits(&f.fin, &f.h0));
    cr_expect(tu_same_bits(&f.dh0, &f.dfinal));
    fixture_free(&f);
    c.B = 0, c.T = 5;
    fixture_inputs(&f, &c);
    fixture_run(&f, true);
    fixture_free(&f);
  }
}

/* dg may be NULL with g given: the other gradients are the same bits. */
Test(linear_attention, gate_gradient_may_be_skipped) {
  for (int gate = HEAD_GATE; gate <= KEY_GATE; gate++) {
    cfg c = {2, 100, 2, 20, 12, gate, true, true, false};
    fixture f;
    fixture_inputs(&f, &c);
    fixture_run(&f, true);
    sn_tensor dq = tu_empty(&ctx, SN_F32, 4, f.dq.size), dk = tu_empty(&ctx, SN_F32, 4, f.dk.size);
    sn_tensor dv = tu_empty(&ctx, SN_F32, 4, f.dv.size), dh0 = tu_empty(&ctx, SN_F32, 4, f.dh0.size);
    cr_assert_eq(sn_gated_linear_attention_bwd(&ctx, &dq, &dk, &dv, NULL, &dh0, &f.dout, &f.dfinal, &f.chunks, &f.q, &f.k,
                                               &f.v, &f.g, &f.opts),
                 SN_OK, "%s", ctx.err);
    cr_expect(tu_same_bits(&dq, &f.dq) && tu_same_bits(&dk, &f.dk) && tu_same_bits(&dv, &f.dv) && tu_same_bits(&dh0, &f.dh0),
              "gate %s", gate_names[gate]);
    sn_tensor_release(&dq), sn_tensor_release(&dk), sn_tensor_release(&dv), sn_tensor_release(&dh0);
    fixture_free(&f);
  }
}

/* Positive gates in several chunks, heads and batches, met by different tasks in another
 * order: fwd and bwd name the first in row-major order, whatever the thread count. */
Test(linear_attention, positive_gates_name_the_first_one) {
  int saved = omp_get_max_threads();
  for (int gate = HEAD_GATE; gate <= KEY_GATE; gate++)
    for (int nt = 1; nt <= 3; nt += 2) {
      omp_set_num_threads(nt);
      cfg c = {2, 200, 3, 20, 36, gate, false, false, false};
      fixture f;
      fixture_inputs(&f, &c);
      fixture_run(&f, true);
      int64_t n = gate == KEY_GATE ? c.Dk : 1;
      float *g = sn_f32(&f.g);
      g[((1 * c.T + 2) * c.H + 0) * n + n - 1] = 0.5f;  /* b 1, t 2 */
      g[((0 * c.T + 150) * c.H + 2) * n] = 0.25f;       /* b 0, t 150, h 2: the first */
      g[((0 * c.T + 190) * c.H + 1) * n] = 2.0f;        /* b 0, t 190 */
      const char *want = gate == KEY_GATE ? "seqnn.F.gated_linear_attention: g must be <= 0 (a log forget gate), got g[0, 150, 2, 0] = 0.25"
                                          : "seqnn.F.gated_linear_attention: g must be <= 0 (a log forget gate), got g[0, 150, 2] = 0.25";
      cr_expect_eq(sn_gated_linear_attention_fwd(&ctx, &f.o, NULL, NULL, &f.q, &f.k, &f.v, &f.g, &f.opts), SN_EINVAL);
      cr_expect_str_eq(ctx.err, want, "fwd, %d threads", nt);
      cr_expect_eq(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dg, NULL, &f.dout, NULL, &f.chunks, &f.q,
                                                 &f.k, &f.v, &f.g, &f.opts),
                   SN_EINVAL);
      cr_expect_str_eq(ctx.err, want, "bwd, %d threads", nt);
      fixture_free(&f);
    }
  omp_set_num_threads(saved);
}

/* A call that must fail with SN_EINVAL and exactly this message. */
#define EXPECT_EINVAL(call, msg) TU_EXPECT_EINVAL_MSG(call, "seqnn.F.gated_linear_attention: " msg)

Test(linear_attention, rejects_bad_input) {
  cfg c = {2, 16, 3, 8, 5, KEY_GATE, true, true, false};
  fixture f;
  fixture_inputs(&f, &c);
  fixture_run(&f, true);
  sn_linattn_opts o = f.opts, bad = f.opts, plain = {.scale = 1};
  sn_tensor q3 = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 16, 3}), qi = tu_empty(&ctx, SN_I64, 4, f.q.size);
  sn_tensor k7 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 16, 3, 7}), v1 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){1, 16, 3, 5});
  sn_tensor g2 = tu_empty(&ctx, SN_F32, 2, (int64_t[]){2, 16}), gh = tu_empty(&ctx, SN_F32, 3, (int64_t[]){2, 16, 4});
  sn_tensor gpos = tu_make(&ctx, 4, f.q.size, 5, 0.3, -0.4), s2 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 3, 8, 6});
  sn_tensor q0 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 16, 3, 0}), wide = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 16, 3, 24});
  sn_tensor qs, gk = f.g, out = f.o;
  sn_f32(&gpos)[((1 * 16 + 2) * 3 + 0) * 8 + 3] = 0.5f;
  cr_assert_eq(sn_narrow(&ctx, &qs, &wide, 3, 0, 8), SN_OK);
  sn_tensor qt;
  cr_assert_eq(sn_transpose(&ctx, &qt, &qs, 2, 3), SN_OK);

  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, NULL, &f.k, &f.v, NULL, &o), "q must not be NULL");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &q3, &f.k, &f.v, NULL, &o),
                "q must be (B, T, H, Dk), got 2x16x3");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &qi, &f.k, &f.v, NULL, &o),
                "q must be f32, got i64 (2x16x3x8)");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &f.q, &k7, &f.v, NULL, &o),
                "k must be (B, T, H, Dk) like q = 2x16x3x8, got 2x16x3x7");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &v1, NULL, &o),
                "v must be (B, T, H, Dv) = 2x16x3x?, got 1x16x3x5");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &qt, &f.k, &f.v, NULL, &o),
                "q must have unit stride on its last dim, got stride 24 (2x16x8x3)");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &q0, &q0, &f.v, NULL, &o),
                "head dims Dk and Dv must be in [1, 1048576], got Dk = 0, Dv = 5 (q: 2x16x3x0, v: 2x16x3x5)");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &g2, &o),
                "g must be (B, T, H) or (B, T, H, Dk) = 2x16x3 or 2x16x3x8, got 2x16");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &gh, &o),
                "g must be (B, T, H) = 2x16x3, got 2x16x4");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &k7, &o),
                "g must be (B, T, H, Dk) = 2x16x3x8, got 2x16x3x7");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &gpos, &o),
                "g must be <= 0 (a log forget gate), got g[1, 2, 0, 3] = 0.5");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &gk, NULL),
                "opts must not be NULL");
  bad.scale = NAN;
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &gk, &bad),
                "scale must be finite, got nan");
  bad = o, bad.initial_state = &s2;
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, NULL, &f.q, &f.k, &f.v, &gk, &bad),
                "initial_state must be (B, H, Dk, Dv) = 2x3x8x5, got 2x3x8x6");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, NULL, NULL, NULL, &f.q, &f.k, &f.v, &gk, &o), "o must not be NULL");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &f.dq, NULL, NULL, &f.q, &f.k, &f.v, &gk, &o),
                "o must be a contiguous f32 tensor of shape 2x16x3x5, got f32 2x16x3x8");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, &s2, NULL, &f.q, &f.k, &f.v, &gk, &o),
                "final_state must be a contiguous f32 tensor of shape 2x3x8x5, got f32 2x3x8x6");
  EXPECT_EINVAL(sn_gated_linear_attention_fwd(&ctx, &out, NULL, &f.fin, &f.q, &f.k, &f.v, &gk, &o),
                "chunk_states must be a contiguous f32 tensor of shape 2x3x1x8x5, got f32 2x3x8x5");

  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dg, NULL, &f.dout, NULL, &f.chunks, &f.q,
                                              &f.k, &f.v, NULL, &o),
                "dg was asked for but g is NULL");
  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dk, &f.dv, NULL, &f.dh0, &f.dout, NULL, &f.chunks, &f.q,
                                              &f.k, &f.v, NULL, &plain),
                "dh0 was asked for but opts->initial_state is NULL");
  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dk, &f.dv, NULL, NULL, &f.dout, NULL, NULL, &f.q, &f.k,
                                              &f.v, NULL, &o),
                "chunk_states (saved by fwd) must not be NULL");
  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, NULL, &f.dk, &f.dv, NULL, NULL, &f.dout, NULL, &f.chunks, &f.q,
                                              &f.k, &f.v, NULL, &o),
                "dq, dk and dv must not be NULL");
  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dk, &f.dv, NULL, NULL, &k7, NULL, &f.chunks, &f.q, &f.k,
                                              &f.v, NULL, &o),
                "grad_output must be (B, T, H, Dv) like v = 2x16x3x5, got 2x16x3x7");
  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dk, &f.dv, NULL, NULL, &f.dout, &s2, &f.chunks, &f.q,
                                              &f.k, &f.v, NULL, &o),
                "grad_final_state must be (B, H, Dk, Dv) = 2x3x8x5, got 2x3x8x6");
  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dk, &f.dv, NULL, NULL, &f.dout, NULL, &f.fin, &f.q, &f.k,
                                              &f.v, NULL, &o),
                "chunk_states must be a contiguous f32 tensor of shape 2x3x1x8x5, got f32 2x3x8x5");
  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dk, &f.dv, &f.dv, NULL, &f.dout, NULL, &f.chunks, &f.q,
                                              &f.k, &f.v, &gk, &o),
                "dg must be a contiguous f32 tensor of shape 2x16x3x8, got f32 2x16x3x5");
  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dv, &f.dv, NULL, NULL, &f.dout, NULL, &f.chunks, &f.q,
                                              &f.k, &f.v, NULL, &o),
                "dk must be a contiguous f32 tensor of shape 2x16x3x8, got f32 2x16x3x5");
  EXPECT_EINVAL(sn_gated_linear_attention_bwd(&ctx, &f.dq, &f.dk, &f.dv, NULL, &s2, &f.dout, NULL, &f.chunks, &f.q,
                                              &f.k, &f.v, NULL, &o),
                "dh0 must be a contiguous f32 tensor of shape 2x3x8x5, got f32 2x3x8x6");

  sn_tensor q1, k1, v1t, g1, y = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 1, 3, 5});
  sn_narrow(&ctx, &q1, &f.q, 1, 0, 1), sn_narrow(&ctx, &k1, &f.k, 1, 0, 1), sn_narrow(&ctx, &v1t, &f.v, 1, 0, 1);
  sn_narrow(&ctx, &g1, &gpos, 1, 2, 1);
  EXPECT_EINVAL(sn_gated_linear_attention_step(&ctx, &y, &f.fin, &f.q, &f.k, &f.v, NULL, &o),
                "q must be (B, 1, H, Dk) = ?x1x?x?, got 2x16x3x8");
  EXPECT_EINVAL(sn_gated_linear_attention_step(&ctx, &y, &s2, &q1, &k1, &v1t, NULL, &o),
                "state must be a contiguous f32 tensor of shape 2x3x8x5, got f32 2x3x8x6");
  EXPECT_EINVAL(sn_gated_linear_attention_step(&ctx, &y, &f.fin, &q1, &k1, &v1t, &f.g, &o),
                "g must be (B, 1, H, Dk) = 2x1x3x8, got 2x16x3x8");
  EXPECT_EINVAL(sn_gated_linear_attention_step(&ctx, &y, &f.fin, &q1, &k1, &v1t, &g1, &o),
                "g must be <= 0 (a log forget gate), got g[1, 0, 0, 3] = 0.5");
  EXPECT_EINVAL(sn_gated_linear_attention_step(&ctx, NULL, &f.fin, &q1, &k1, &v1t, NULL, &o),
                "state and o must not be NULL");
  EXPECT_EINVAL(sn_gated_linear_attention_step(&ctx, &f.o, &f.fin, &q1, &k1, &v1t, NULL, &o),
                "o must be a contiguous f32 tensor of shape 2x1x3x5, got f32 2x16x3x5");
  cr_expect_eq(sn_gated_linear_attention_step(&ctx, &y, &f.fin, &q1, &k1, &v1t, NULL, &o), SN_OK, "%s", ctx.err);

  sn_tensor *ts[] = {&q3, &qi, &k7, &v1, &g2, &gh, &gpos, &s2, &q0, &wide, &qs, &qt, &q1, &k1, &v1t, &g1, &y};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  fixture_free(&f);
}
