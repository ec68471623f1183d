/* bench_attention.c -- kernels/attention.c: causal fwd and fwd+bwd at B=4 H=8 Dh=64 for
 * T = 256, 1024 (and fwd at 4096), against the unfused reference at the same size: per
 * head, S = Q K^T and O = P V (and the five products of the backward) through cblas_sgemm
 * with a masked softmax in between, materializing T x T, which is what an eager framework
 * does. FLOPs: 4 B H T^2 Dh for fwd, halved for causal; fwd+bwd counts 3.5x fwd. x_sgemm
 * is our GFLOP/s over cblas_sgemm 1024^3 measured at the start of this suite. Then the decode
 * step (tokens/s at contexts 64 and 1024) and the memory of fwd+bwd at T = 16384 (B = H = 1):
 * the peak bytes of that case's own context (its tensors, saved lse and the kernels'
 * workspace), and the process's ru_maxrss (which includes the earlier cases; on some VMs
 * the kernel does not track it, see README). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench.h"

static sn_ctx ctx;

typedef struct {
  sn_ctx *cx;
  int64_t B, T, H, D;
  sn_tensor q, k, v, g, o, lse, dq, dk, dv;
  sn_attention_opts opts;
  float *Qh, *Kh, *Vh, *Gh, *P, *dP, *Oh, *dQh, *dKh, *dVh, *ro; /* the reference's buffers */
  bool bwd;
} att_case;

static int make(att_case *c, sn_ctx *cx, int64_t B, int64_t T, int64_t H, int64_t D, bool with_ref) {
  *c = (att_case){.cx = cx, .B = B, .T = T, .H = H, .D = D};
  int64_t s4[] = {B, T, H, D};
  sn_tensor *ts[] = {&c->q, &c->k, &c->v, &c->g, &c->o, &c->dq, &c->dk, &c->dv};
  for (int i = 0; i < 8; i++) {
    if (sn_tensor_empty(cx, ts[i], SN_F32, 4, s4) != SN_OK) return 0;
    bench_fill(sn_f32(ts[i]), sn_numel(ts[i]), (uint32_t)i + 1);
  }
  if (sn_tensor_empty(cx, &c->lse, SN_F32, 3, (int64_t[]){B, H, T}) != SN_OK) return 0;
  c->opts = (sn_attention_opts){.causal = true, .window = -1, .scale = 1.0f / sqrtf((float)D)};
  if (!with_ref) return 1;
  size_t td = (size_t)(T * D), tt = (size_t)(T * T);
  float **bufs[] = {&c->Qh, &c->Kh, &c->Vh, &c->Gh, &c->Oh, &c->dQh, &c->dKh, &c->dVh};
  for (int i = 0; i < 8; i++) *bufs[i] = malloc(td * sizeof(float));
  c->P = malloc(tt * sizeof(float)), c->dP = malloc(tt * sizeof(float));
  c->ro = malloc((size_t)sn_numel(&c->q) * sizeof(float));
  return c->P && c->dP && c->ro;
}

static void release(att_case *c) {
  sn_tensor *ts[] = {&c->q, &c->k, &c->v, &c->g, &c->o, &c->lse, &c->dq, &c->dk, &c->dv};
  for (int i = 0; i < 9; i++) sn_tensor_release(ts[i]);
  float *bufs[] = {c->Qh, c->Kh, c->Vh, c->Gh, c->Oh, c->dQh, c->dKh, c->dVh, c->P, c->dP, c->ro};
  for (int i = 0; i < 11; i++) free(bufs[i]);
}

static void run_kernel(void *p) {
  att_case *c = p;
  sn_attention_fwd(c->cx, &c->o, &c->lse, &c->q, &c->k, &c->v, &c->opts);
  if (c->bwd) sn_attention_bwd(c->cx, &c->dq, &c->dk, &c->dv, &c->g, &c->q, &c->k, &c->v, &c->o, &c->lse, &c->opts);
}

static void gather(float *dst, const sn_tensor *t, int64_t b, int64_t h) {
  int64_t T = t->size[1], H = t->size[2], D = t->size[3];
  for (int64_t i = 0; i < T; i++) memcpy(dst + i * D, sn_f32(t) + ((b * T + i) * H + h) * D, (size_t)D * sizeof(float));
}

/* The unfused reference, head by head; the output goes to c->ro (fwd only, for the check). */
static void run_reference(void *p) {
  att_case *c = p;
  int T = (int)c->T, D = (int)c->D;
  float sc = c->opts.scale;
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t h = 0; h < c->H; h++) {
      gather(c->Qh, &c->q, b, h), gather(c->Kh, &c->k, b, h), gather(c->Vh, &c->v, b, h);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, sc, c->Qh, D, c->Kh, D, 0, c->P, T);
      for (int i = 0; i < T; i++) { /* causal mask and softmax */
        float *r = c->P + (int64_t)i * T, mx = -INFINITY;
        for (int j = 0; j <= i; j++) mx = r[j] > mx ? r[j] : mx;
        float sum = 0;
        for (int j = 0; j <= i; j++) sum += r[j] = expf(r[j] - mx);
        for (int j = 0; j <= i; j++) r[j] /= sum;
        for (int j = i + 1; j < T; j++) r[j] = 0;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, 1, c->P, T, c->Vh, D, 0, c->Oh, D);
      for (int i = 0; i < T; i++) memcpy(c->ro + ((b * T + i) * c->H + h) * D, c->Oh + i * D, (size_t)D * sizeof(float));
      if (!c->bwd) continue;
      gather(c->Gh, &c->g, b, h);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, 1, c->P, T, c->Gh, D, 0, c->dVh, D);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, 1, c->Gh, D, c->Vh, D, 0, c->dP, T);
      for (int i = 0; i < T; i++) {
        float *pr = c->P + (int64_t)i * T, *dr = c->dP + (int64_t)i * T, s = 0;
        for (int j = 0; j < T; j++) s += pr[j] * dr[j];
        for (int j = 0; j < T; j++) dr[j] = pr[j] * (dr[j] - s);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, sc, c->dP, T, c->Kh, D, 0, c->dQh, D);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, sc, c->dP, T, c->Qh, D, 0, c->dKh, D);
    }
}

/* Worst |a - b| / (atol + rtol |b|) over n floats; NaN fails. */
static double scaled_err(const float *a, const float *b, int64_t n, double atol, double rtol) {
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)a[i] - b[i]) / (atol + rtol * fabs((double)b[i]));
    if (!(e <= worst)) worst = e;
  }
  return worst;
}

static void case_row(int64_t T, bool bwd, bool with_ref, double sgemm) {
  att_case c;
  char shape[64], kernel[32], ref[96];
  snprintf(shape, sizeof shape, "B4 T%lld H8 Dh64 causal", (long long)T);
  snprintf(kernel, sizeof kernel, "attention %s", bwd ? "fwd+bwd" : "fwd");
  if (!make(&c, &ctx, 4, T, 8, 64, with_ref)) {
    bench_ok(&ctx, SN_ENOMEM, kernel, shape);
    release(&c);
    return;
  }
  c.bwd = bwd;
  double flops = 4.0 * c.B * c.H * (double)T * T * c.D / 2 * (bwd ? 3.5 : 1), t, x = 0;
  if (!bench_ok(&ctx, sn_attention_fwd(&ctx, &c.o, &c.lse, &c.q, &c.k, &c.v, &c.opts), kernel, shape)) goto done;
  if (with_ref) {
    c.bwd = false;
    run_reference(&c);
    c.bwd = bwd;
    double err = scaled_err(sn_f32(&c.o), c.ro, sn_numel(&c.o), 1e-5, 1e-3);
    if (!(err <= 1)) {
      snprintf(ref, sizeof ref, "o: error %.3g x tolerance against the unfused reference", err);
      bench_mismatch(kernel, shape, ref);
      goto done;
    }
    double tr;
    x = bench_time2(run_kernel, &c, run_reference, &c, &t, &tr);
  } else {
    t = bench_time(run_kernel, &c);
  }
  snprintf(ref, sizeof ref, "%s; x_sgemm %.2f", with_ref ? "unfused cblas" : "-", flops / t / sgemm);
  bench_row(kernel, shape, t, flops, 0, x, ref);
done:
  release(&c);
}

/* ---- decode step ------------------------------------------------------------------------ */

typedef struct {
  sn_tensor q, kn, vn, kc, vc, o;
  int64_t pos;
  sn_attention_opts opts;
} step_case;

static void run_step(void *p) {
  step_case *s = p;
  sn_attention_step(&ctx, &s->o, &s->kc, &s->vc, &s->q, &s->kn, &s->vn, s->pos, &s->opts);
}

static void step_row(int64_t context) {
  int64_t H = 8, D = 64;
  step_case s = {.pos = context - 1, .opts = {.causal = true, .window = -1, .scale = 0.125f}};
  char shape[64], ref[64];
  snprintf(shape, sizeof shape, "B1 ctx%lld H8 Dh64", (long long)context);
  sn_tensor *ts[] = {&s.q, &s.kn, &s.vn, &s.o, &s.kc, &s.vc};
  for (int i = 0; i < 6; i++) {
    int64_t one[] = {1, 1, H, D}, cache[] = {1, H, context, D};
    if (!bench_ok(&ctx, sn_tensor_empty(&ctx, ts[i], SN_F32, 4, i < 4 ? one : cache), "attention step", shape)) return;
    bench_fill(sn_f32(ts[i]), sn_numel(ts[i]), (uint32_t)i + 7);
  }
  if (bench_ok(&ctx, sn_attention_step(&ctx, &s.o, &s.kc, &s.vc, &s.q, &s.kn, &s.vn, s.pos, &s.opts),
               "attention step", shape)) {
    double t = bench_time(run_step, &s);
    snprintf(ref, sizeof ref, "%.0f tokens/s", 1 / t);
    bench_row("attention step", shape, t, 4.0 * H * context * D, 2.0 * H * context * D * sizeof(float), 0, ref);
  }
  for (int i = 0; i < 6; i++) sn_tensor_release(ts[i]);
}

/* ---- memory ----------------------------------------------------------------------------- */

static void memory_row(void) {
  att_case c;
  sn_ctx mctx;
  const char *shape = "B1 T16384 H1 Dh64 causal";
  sn_ctx_init(&mctx);
  if (make(&c, &mctx, 1, 16384, 1, 64, false)) {
    c.bwd = true;
    double t = bench_time(run_kernel, &c);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    char ref[96];
    snprintf(ref, sizeof ref, "peak %.1f MiB; ru_maxrss %.0f MiB",
             (double)(mctx.peak_bytes + (int64_t)mctx.workspace_bytes) / (1 << 20), ru.ru_maxrss / 1024.0);
    bench_row("attention fwd+bwd", shape, t, 4.0 * 16384.0 * 16384.0 * 64 / 2 * 3.5, 0, 0, ref);
  } else {
    bench_ok(&mctx, SN_ENOMEM, "attention fwd+bwd", shape);
  }
  release(&c);
  sn_ctx_free(&mctx);
}

void bench_attention(void) {
  sn_ctx_init(&ctx);
  double sgemm = bench_sgemm_rate();
  case_row(256, false, true, sgemm);
  case_row(1024, false, true, sgemm);
  case_row(4096, false, false, sgemm);
  case_row(256, true, true, sgemm);
  case_row(1024, true, true, sgemm);
  step_row(64);
  step_row(1024);
  memory_row();
  sn_ctx_free(&ctx);
}
