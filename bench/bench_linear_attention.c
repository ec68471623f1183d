/* bench_linear_attention.c -- kernels/delta_rule.c and kernels/linear_attention.c at the
 * sizes of the issue: B = 2, H = 4, Dk = Dv = 64, T = 1024 (and 16384 for flatness).
 *
 * FLOPs are those of the chunked algorithm per (b, h) and chunk of C = 64 steps, a
 * triangular C x C product counted as half of the full one (the kernels skip the upper
 * half), written per token below; exps and other elementwise work are not counted:
 *   gla fwd       C (Dk + Dv) + 4 Dk Dv         (tril(Q K^T), its product with V, Q S, K^T V)
 *   gla bwd       3 C Dk + 2 C Dv + 8 Dk Dv     (dA, dV, dQ, dK, dS and the recomputed Q K^T)
 *   delta fwd     2 C (Dk + Dv) + 6 Dk Dv + C^2 / 3   (K K^T, the inverse, K S, Ai R, Q S,
 *                                                      tril(Q K^T) Vn, K^T Vn)
 *   delta bwd     6 C Dk + 5 C Dv + 14 Dk Dv + C^2 / 3 (the recomputed forward, then the
 *                                                      gradient products of seqnn.h's formulas)
 * The reference is the naive recurrence one token at a time in plain C (the forward only,
 * which is what a straightforward loop over the state does), checked against the kernel
 * first. x_sgemm is our GFLOP/s over cblas_sgemm 1024^3 in the same run (40% is the target).
 * The T = 16384 rows give the per-token time relative to T = 1024 and the process's
 * ru_maxrss. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "bench.h"

static sn_ctx ctx;

#define B_ 2
#define H_ 4
#define D_ 64
#define CH ((double)SN_LINATTN_CHUNK)

typedef enum { GATE_NONE, GATE_HEAD, GATE_KEY, DELTA } kind;
static const char *const names[] = {"linattn", "gla head-gates", "gla key-gates", "delta_rule"};

static double flops_per_token(kind k, bool bwd) {
  double Dk = D_, Dv = D_;
  if (k == DELTA)
    return 2 * CH * (Dk + Dv) + 6 * Dk * Dv + CH * CH / 3 +
           (bwd ? 6 * CH * Dk + 5 * CH * Dv + 14 * Dk * Dv + CH * CH / 3 : 0);
  return CH * (Dk + Dv) + 4 * Dk * Dv + (bwd ? 3 * CH * Dk + 2 * CH * Dv + 8 * Dk * Dv : 0);
}

typedef struct {
  kind k;
  int64_t T;
  bool bwd;
  sn_tensor q, kk, v, g, o, dout, chunks, dq, dk, dv, dg;
  float *ref;
} la_case;

static sn_tensor *gate_of(la_case *c) { return c->k == GATE_NONE ? NULL : &c->g; }

static bool make_case(la_case *c, kind k, int64_t T) {
  *c = (la_case){.k = k, .T = T};
  int64_t btd[] = {B_, T, H_, D_}, bth[] = {B_, T, H_};
  int64_t ck[] = {B_, H_, (T + SN_LINATTN_CHUNK - 1) / SN_LINATTN_CHUNK, D_, D_};
  sn_tensor *four[] = {&c->q, &c->kk, &c->v, &c->o, &c->dout, &c->dq, &c->dk, &c->dv};
  for (int i = 0; i < 8; i++) {
    if (sn_tensor_empty(&ctx, four[i], SN_F32, 4, btd) != SN_OK) return false;
    bench_fill(sn_f32(four[i]), sn_numel(four[i]), (uint32_t)i + 71);
  }
  bool per_key = k == GATE_KEY;
  if (k != GATE_NONE && (sn_tensor_empty(&ctx, &c->g, SN_F32, per_key ? 4 : 3, per_key ? btd : bth) != SN_OK ||
                         sn_tensor_empty(&ctx, &c->dg, SN_F32, per_key ? 4 : 3, per_key ? btd : bth) != SN_OK))
    return false;
  if (sn_tensor_empty(&ctx, &c->chunks, SN_F32, 5, ck) != SN_OK) return false;
  /* Keys of unit length (DeltaNet's L2 norm; it keeps every recurrence bounded); gates as
   * GLA's logsigmoid(x) / 16, beta in (0, 1). */
  float *kp = sn_f32(&c->kk);
  for (int64_t r = 0; r < B_ * T * H_; r++) {
    double s = 0;
    for (int j = 0; j < D_; j++) s += (double)kp[r * D_ + j] * kp[r * D_ + j];
    for (int j = 0; j < D_; j++) kp[r * D_ + j] /= (float)sqrt(s + 1e-6);
  }
  if (k != GATE_NONE) {
    float *g = sn_f32(&c->g);
    bench_fill(g, sn_numel(&c->g), 97);
    for (int64_t i = 0; i < sn_numel(&c->g); i++)
      g[i] = k == DELTA ? 0.5f + 0.49f * g[i] : -(float)log1p(exp(-(4.0 * g[i] + 2.0))) / 16;
  }
  return true;
}

static void release_case(la_case *c) {
  sn_tensor *ts[] = {&c->q, &c->kk, &c->v, &c->g, &c->o, &c->dout, &c->chunks, &c->dq, &c->dk, &c->dv, &c->dg};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  free(c->ref);
}

static sn_status fwd(la_case *c) {
  sn_linattn_opts opts = {.scale = 0.125f};
  sn_tensor *chunks = c->bwd ? &c->chunks : NULL;
  if (c->k == DELTA) return sn_delta_rule_fwd(&ctx, &c->o, NULL, chunks, &c->q, &c->kk, &c->v, &c->g, &opts);
  return sn_gated_linear_attention_fwd(&ctx, &c->o, NULL, chunks, &c->q, &c->kk, &c->v, gate_of(c), &opts);
}

static void run_case(void *p) {
  la_case *c = p;
  sn_linattn_opts opts = {.scale = 0.125f};
  fwd(c);
  if (!c->bwd) return;
  if (c->k == DELTA)
    sn_delta_rule_bwd(&ctx, &c->dq, &c->dk, &c->dv, &c->dg, NULL, &c->dout, NULL, &c->chunks, &c->q, &c->kk, &c->v,
                      &c->g, &opts);
  else
    sn_gated_linear_attention_bwd(&ctx, &c->dq, &c->dk, &c->dv, c->k == GATE_NONE ? NULL : &c->dg, NULL, &c->dout,
                                  NULL, &c->chunks, &c->q, &c->kk, &c->v, gate_of(c), &opts);
}

/* The recurrence one token at a time, per (b, h), on a Dk x Dv state in a local array. */
static void run_reference(void *p) {
  la_case *c = p;
  static float S[D_][D_];
  const float *q = sn_f32(&c->q), *k = sn_f32(&c->kk), *v = sn_f32(&c->v), *g = c->k == GATE_NONE ? NULL : sn_f32(&c->g);
  for (int64_t b = 0; b < B_; b++)
    for (int64_t h = 0; h < H_; h++) {
      for (int i = 0; i < D_; i++)
        for (int j = 0; j < D_; j++) S[i][j] = 0;
      for (int64_t t = 0; t < c->T; t++) {
        int64_t row = (b * c->T + t) * H_ + h;
        const float *qt = q + row * D_, *kt = k + row * D_, *vt = v + row * D_;
        if (c->k == DELTA) {
          float kv[D_] = {0};
          for (int i = 0; i < D_; i++)
            for (int j = 0; j < D_; j++) kv[j] += S[i][j] * kt[i];
          for (int i = 0; i < D_; i++)
            for (int j = 0; j < D_; j++) S[i][j] += kt[i] * g[row] * (vt[j] - kv[j]);
        } else {
          for (int i = 0; i < D_; i++) {
            float decay = c->k == GATE_KEY ? expf(g[row * D_ + i]) : c->k == GATE_HEAD ? expf(g[row]) : 1.0f;
            for (int j = 0; j < D_; j++) S[i][j] = decay * S[i][j] + kt[i] * vt[j];
          }
        }
        float *o = c->ref + row * D_;
        for (int j = 0; j < D_; j++) o[j] = 0;
        for (int i = 0; i < D_; i++)
          for (int j = 0; j < D_; j++) o[j] += S[i][j] * 0.125f * qt[i];
      }
    }
}

static void row(kind k, int64_t T, bool bwd, bool with_ref, double sgemm, double *per_token) {
  la_case c;
  char shape[64], kernel[48], ref[160];
  snprintf(shape, sizeof shape, "B%d H%d T%lld Dk%d Dv%d", B_, H_, (long long)T, D_, D_);
  snprintf(kernel, sizeof kernel, "%s %s", names[k], bwd ? "fwd+bwd" : "fwd");
  if (!make_case(&c, k, T)) {
    bench_ok(&ctx, SN_ENOMEM, kernel, shape);
    release_case(&c);
    return;
  }
  c.bwd = bwd;
  double flops = flops_per_token(k, bwd) * B_ * H_ * (double)T, t, x = 0;
  if (!bench_ok(&ctx, fwd(&c), kernel, shape)) goto done;
  if (with_ref) {
    c.ref = malloc((size_t)sn_numel(&c.o) * sizeof(float));
    run_reference(&c);
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < sn_numel(&c.o); i++) scale = fmax(scale, fabs((double)c.ref[i]));
    for (int64_t i = 0; i < sn_numel(&c.o); i++) {
      double e = fabs((double)sn_f32(&c.o)[i] - c.ref[i]) / (1e-4 * (1 + scale));
      if (!(e <= worst)) worst = e;
    }
    if (!(worst <= 1)) {
      snprintf(ref, sizeof ref, "o: error %.3g x tolerance against the recurrence", worst);
      bench_mismatch(kernel, shape, ref);
      goto done;
    }
    double tr;
    x = bench_time2(run_case, &c, run_reference, &c, &t, &tr);
    snprintf(ref, sizeof ref, "recurrent C loop; x_sgemm %.2f", flops / t / sgemm);
  } else {
    t = bench_time(run_case, &c);
    if (per_token && *per_token > 0) {
      struct rusage ru;
      getrusage(RUSAGE_SELF, &ru);
      snprintf(ref, sizeof ref, "per token x%.2f of T1024; ru_maxrss %.0f MiB; x_sgemm %.2f", t / T / *per_token,
               ru.ru_maxrss / 1024.0, flops / t / sgemm);
    } else {
      snprintf(ref, sizeof ref, "x_sgemm %.2f", flops / t / sgemm);
    }
    if (per_token && *per_token <= 0) *per_token = t / T;
  }
  bench_row(kernel, shape, t, flops, 0, x, ref);
done:
  release_case(&c);
}

void bench_linear_attention(void) {
  sn_ctx_init(&ctx);
  double sgemm = bench_sgemm_rate();
  for (kind k = GATE_NONE; k <= DELTA; k++) {
    double per_token = 0;
    row(k, 1024, false, true, sgemm, NULL);
    row(k, 1024, true, false, sgemm, &per_token);
    if (k == GATE_KEY || k == DELTA) row(k, 16384, true, false, sgemm, &per_token);
  }
  sn_ctx_free(&ctx);
}
