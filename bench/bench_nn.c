/* bench_nn.c -- the nn kernels (csrc/kernels/) against naive loops timed in the same run:
 * rms_norm fwd/bwd and layer_norm fwd on 4096x1024, softmax and cross_entropy fwd+bwd on
 * 2048x8192 (vocabulary-sized rows), embedding fwd/bwd, and AdamW over 10M parameters
 * against memcpy. The naive loops are single-threaded plain C in float with double row
 * sums: what one would write without the kernels. GB/s counts tensor bytes read + written. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static sn_ctx ctx;

static sn_tensor make(int ndim, const int64_t *size, sn_dtype dt, uint32_t seed) {
  sn_tensor t = {0};
  if (sn_tensor_empty(&ctx, &t, dt, ndim, size) != SN_OK) return t;
  if (dt == SN_F32) bench_fill(sn_f32(&t), sn_numel(&t), seed);
  return t;
}

/* Worst |got - want| / (atol + rtol |want|) over n; NaN anywhere fails. */
static double scaled_err(const float *got, const float *want, int64_t n, double atol, double rtol) {
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - want[i]) / (atol + rtol * fabs((double)want[i]));
    if (!(e <= worst)) worst = e;
  }
  return worst;
}

/* Prints MISMATCH (err > 1) or times kernel against ref and prints the row. */
static void row(const char *kernel, const char *shape, double err, bench_fn run, bench_fn ref, void *arg,
                double bytes, const char *ref_name) {
  if (!(err <= 1.0)) {
    char why[96];
    snprintf(why, sizeof why, "error %.3g x tolerance against the naive loop", err);
    bench_mismatch(kernel, shape, why);
    return;
  }
  double t, tr, x = bench_time2(run, arg, ref, arg, &t, &tr);
  bench_row(kernel, shape, t, 0, bytes, x, ref_name);
}

/* ---- norms ----------------------------------------------------------------------------- */

typedef struct {
  sn_tensor x, y, w, gy, gx, gw, mean, rstd;
  float *ry, *rgx, *rgw, *rr;
  int64_t R, C;
} norm_case;

static void rms_fwd(void *p) {
  norm_case *c = p;
  sn_rms_norm_fwd(&ctx, &c->y, &c->rstd, &c->x, &c->w, 1e-6f);
}
static void rms_fwd_naive(void *p) {
  norm_case *c = p;
  const float *x = sn_f32(&c->x), *w = sn_f32(&c->w);
  for (int64_t r = 0; r < c->R; r++) {
    double s = 0;
    for (int64_t j = 0; j < c->C; j++) s += (double)x[r * c->C + j] * x[r * c->C + j];
    float rs = (float)(1 / sqrt(s / c->C + 1e-6));
    c->rr[r] = rs;
    for (int64_t j = 0; j < c->C; j++) c->ry[r * c->C + j] = x[r * c->C + j] * rs * w[j];
  }
}
static void rms_bwd(void *p) {
  norm_case *c = p;
  sn_rms_norm_bwd(&ctx, &c->gx, &c->gw, &c->rstd, &c->gy, &c->x, &c->w);
}
static void rms_bwd_naive(void *p) {
  norm_case *c = p;
  const float *x = sn_f32(&c->x), *w = sn_f32(&c->w), *gy = sn_f32(&c->gy), *rstd = sn_f32(&c->rstd);
  memset(c->rgw, 0, (size_t)c->C * sizeof(float));
  for (int64_t r = 0; r < c->R; r++) {
    const float *xr = x + r * c->C, *gr = gy + r * c->C;
    double s = 0;
    for (int64_t j = 0; j < c->C; j++) s += (double)gr[j] * w[j] * xr[j];
    float rs = rstd[r], k = (float)(rs * rs * s / c->C);
    for (int64_t j = 0; j < c->C; j++) {
      c->rgx[r * c->C + j] = rs * (gr[j] * w[j] - xr[j] * k);
      c->rgw[j] += gr[j] * xr[j] * rs;
    }
  }
}
static void ln_fwd(void *p) {
  norm_case *c = p;
  sn_layer_norm_fwd(&ctx, &c->y, &c->mean, &c->rstd, &c->x, &c->w, NULL, 1e-5f);
}
static void ln_fwd_naive(void *p) {
  norm_case *c = p;
  const float *x = sn_f32(&c->x), *w = sn_f32(&c->w);
  for (int64_t r = 0; r < c->R; r++) {
    const float *xr = x + r * c->C;
    double m = 0, v = 0;
    for (int64_t j = 0; j < c->C; j++) m += xr[j];
    m /= c->C;
    for (int64_t j = 0; j < c->C; j++) v += (xr[j] - m) * (xr[j] - m);
    float rs = (float)(1 / sqrt(v / c->C + 1e-5)), mf = (float)m;
    for (int64_t j = 0; j < c->C; j++) c->ry[r * c->C + j] = (xr[j] - mf) * rs * w[j];
  }
}

static void bench_norms(void) {
  const char *shape = "4096x1024";
  norm_case c = {.R = 4096, .C = 1024};
  int64_t s[2] = {c.R, c.C};
  c.x = make(2, s, SN_F32, 1), c.y = make(2, s, SN_F32, 0), c.gy = make(2, s, SN_F32, 2), c.gx = make(2, s, SN_F32, 0);
  c.w = make(1, &c.C, SN_F32, 3), c.gw = make(1, &c.C, SN_F32, 0), c.mean = make(1, &c.R, SN_F32, 0),
  c.rstd = make(1, &c.R, SN_F32, 0);
  c.ry = malloc((size_t)(c.R * c.C) * 4), c.rgx = malloc((size_t)(c.R * c.C) * 4), c.rgw = malloc((size_t)c.C * 4),
  c.rr = malloc((size_t)c.R * 4);
  double io = 4.0 * c.R * c.C;
  rms_fwd(&c), rms_fwd_naive(&c);
  row("rms_norm fwd", shape, scaled_err(sn_f32(&c.y), c.ry, c.R * c.C, 1e-6, 1e-5), rms_fwd, rms_fwd_naive, &c,
      2 * io, "naive loop");
  rms_bwd(&c), rms_bwd_naive(&c);
  double e = scaled_err(sn_f32(&c.gx), c.rgx, c.R * c.C, 1e-5, 1e-4);
  double ew = scaled_err(sn_f32(&c.gw), c.rgw, c.C, 1e-3, 1e-3); /* the naive gw adds 4096 floats in float */
  row("rms_norm bwd", shape, e > ew ? e : ew, rms_bwd, rms_bwd_naive, &c, 3 * io, "naive loop");
  ln_fwd(&c), ln_fwd_naive(&c);
  row("layer_norm fwd", shape, scaled_err(sn_f32(&c.y), c.ry, c.R * c.C, 1e-5, 1e-4), ln_fwd, ln_fwd_naive, &c,
      2 * io, "naive loop");
  free(c.ry), free(c.rgx), free(c.rgw), free(c.rr);
  sn_tensor *all[] = {&c.x, &c.y, &c.w, &c.gy, &c.gx, &c.gw, &c.mean, &c.rstd};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

/* ---- softmax and cross entropy ------------------------------------------------------------ */

typedef struct {
  sn_tensor x, y, gy, gx, t, loss, lse, g1;
  float *ry, *rgx;
  int64_t N, V;
} sm_case;

static void softmax_fb(void *p) {
  sm_case *c = p;
  sn_softmax_fwd(&ctx, &c->y, &c->x);
  sn_softmax_bwd(&ctx, &c->gx, &c->y, &c->gy);
}
static void softmax_fb_naive(void *p) {
  sm_case *c = p;
  const float *x = sn_f32(&c->x), *gy = sn_f32(&c->gy);
  for (int64_t r = 0; r < c->N; r++) {
    const float *xr = x + r * c->V;
    float *yr = c->ry + r * c->V, m = -INFINITY;
    double s = 0, d = 0;
    for (int64_t j = 0; j < c->V; j++) m = xr[j] > m ? xr[j] : m;
    for (int64_t j = 0; j < c->V; j++) s += yr[j] = expf(xr[j] - m);
    for (int64_t j = 0; j < c->V; j++) yr[j] = (float)(yr[j] / s), d += (double)yr[j] * gy[r * c->V + j];
    for (int64_t j = 0; j < c->V; j++) c->rgx[r * c->V + j] = yr[j] * (gy[r * c->V + j] - (float)d);
  }
}
static void ce_fb(void *p) {
  sm_case *c = p;
  double total;
  int64_t count;
  sn_cross_entropy_fwd(&ctx, &c->loss, &c->lse, &total, &count, &c->x, &c->t, -100);
  sn_cross_entropy_bwd(&ctx, &c->gx, &c->lse, &c->g1, &c->x, &c->t, -100, (float)(1.0 / (double)count));
}
static void ce_fb_naive(void *p) {
  sm_case *c = p;
  const float *x = sn_f32(&c->x);
  const int64_t *t = sn_i64(&c->t);
  for (int64_t r = 0; r < c->N; r++) {
    const float *xr = x + r * c->V;
    float m = -INFINITY;
    double s = 0;
    for (int64_t j = 0; j < c->V; j++) m = xr[j] > m ? xr[j] : m;
    for (int64_t j = 0; j < c->V; j++) s += expf(xr[j] - m);
    float lse = (float)(m + log(s));
    for (int64_t j = 0; j < c->V; j++)
      c->rgx[r * c->V + j] = (expf(xr[j] - lse) - (j == t[r])) / (float)c->N;
  }
}

static void bench_softmax(void) {
  const char *shape = "2048x8192";
  sm_case c = {.N = 2048, .V = 8192};
  int64_t s[2] = {c.N, c.V};
  c.x = make(2, s, SN_F32, 4), c.y = make(2, s, SN_F32, 0), c.gy = make(2, s, SN_F32, 5), c.gx = make(2, s, SN_F32, 0);
  c.t = make(1, &c.N, SN_I64, 0), c.loss = make(1, &c.N, SN_F32, 0), c.lse = make(1, &c.N, SN_F32, 0),
  c.g1 = make(0, NULL, SN_F32, 0);
  for (int64_t r = 0; r < c.N; r++) sn_i64(&c.t)[r] = (r * 7919) % c.V;
  for (int64_t i = 0; i < c.N * c.V; i++) sn_f32(&c.x)[i] *= 10.0f;
  sn_f32(&c.g1)[0] = 1;
  c.ry = malloc((size_t)(c.N * c.V) * 4), c.rgx = malloc((size_t)(c.N * c.V) * 4);
  double io = 4.0 * c.N * c.V;
  softmax_fb(&c), softmax_fb_naive(&c);
  double e = scaled_err(sn_f32(&c.y), c.ry, c.N * c.V, 1e-7, 1e-4), eg = scaled_err(sn_f32(&c.gx), c.rgx, c.N * c.V, 1e-7, 1e-3);
  row("softmax fwd+bwd", shape, e > eg ? e : eg, softmax_fb, softmax_fb_naive, &c, 5 * io, "naive loop");
  ce_fb(&c), ce_fb_naive(&c);
  row("cross_entropy f+b", shape, scaled_err(sn_f32(&c.gx), c.rgx, c.N * c.V, 1e-9, 1e-3), ce_fb, ce_fb_naive, &c,
      3 * io, "naive loop");
  free(c.ry), free(c.rgx);
  sn_tensor *all[] = {&c.x, &c.y, &c.gy, &c.gx, &c.t, &c.loss, &c.lse, &c.g1};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

/* ---- embedding --------------------------------------------------------------------------- */

typedef struct {
  sn_tensor w, ids, out, gy, gw;
  float *rout, *rgw;
  int64_t V, D, n;
} emb_case;

static void emb_fwd(void *p) {
  emb_case *c = p;
  sn_embedding_fwd(&ctx, &c->out, &c->w, &c->ids);
}
static void emb_fwd_naive(void *p) {
  emb_case *c = p;
  for (int64_t i = 0; i < c->n; i++)
    memcpy(c->rout + i * c->D, sn_f32(&c->w) + sn_i64(&c->ids)[i] * c->D, (size_t)c->D * 4);
}
static void emb_bwd(void *p) {
  emb_case *c = p;
  sn_embedding_bwd(&ctx, &c->gw, &c->gy, &c->ids);
}
static void emb_bwd_naive(void *p) {
  emb_case *c = p;
  memset(c->rgw, 0, (size_t)(c->V * c->D) * 4);
  for (int64_t i = 0; i < c->n; i++) {
    float *dst = c->rgw + sn_i64(&c->ids)[i] * c->D;
    const float *src = sn_f32(&c->gy) + i * c->D;
    for (int64_t d = 0; d < c->D; d++) dst[d] += src[d];
  }
}

static void bench_embedding(void) {
  const char *shape = "V32000 D1024 n8192";
  emb_case c = {.V = 32000, .D = 1024, .n = 8192};
  int64_t sw[2] = {c.V, c.D}, so[2] = {c.n, c.D};
  c.w = make(2, sw, SN_F32, 6), c.gw = make(2, sw, SN_F32, 0), c.ids = make(1, &c.n, SN_I64, 0),
  c.out = make(2, so, SN_F32, 0), c.gy = make(2, so, SN_F32, 7);
  uint32_t s = 9;
  for (int64_t i = 0; i < c.n; i++) s = s * 1664525u + 1013904223u, sn_i64(&c.ids)[i] = (s >> 8) % (uint32_t)c.V;
  c.rout = malloc((size_t)(c.n * c.D) * 4), c.rgw = malloc((size_t)(c.V * c.D) * 4);
  emb_fwd(&c), emb_fwd_naive(&c);
  row("embedding fwd", shape, scaled_err(sn_f32(&c.out), c.rout, c.n * c.D, 1e-30, 0), emb_fwd, emb_fwd_naive, &c,
      2.0 * 4 * c.n * c.D, "naive loop");
  emb_bwd(&c), emb_bwd_naive(&c);
  /* Both sum each row's contributions in id order: bitwise equal. gw is written in full. */
  row("embedding bwd", shape, scaled_err(sn_f32(&c.gw), c.rgw, c.V * c.D, 1e-30, 0), emb_bwd, emb_bwd_naive, &c,
      4.0 * (c.n * c.D + c.V * c.D), "naive loop");
  free(c.rout), free(c.rgw);
  sn_tensor *all[] = {&c.w, &c.ids, &c.out, &c.gy, &c.gw};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

/* ---- AdamW --------------------------------------------------------------------------------- */

typedef struct {
  sn_tensor p, g, m, v;
  float *dst, *src;
  int64_t n;
} adam_case;

static void adamw(void *a) {
  adam_case *c = a;
  sn_adamw_step(&ctx, &c->p, &c->m, &c->v, &c->g, 1e-4, 0.9, 0.999, 1e-8, 0.01, 10);
}
/* Each thread copies its share, as the kernel splits its work: the memory-speed reference. */
static void copy_ref(void *a) {
  adam_case *c = a;
#pragma omp parallel
  {
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
    int64_t lo = c->n * id / nt, hi = c->n * (id + 1) / nt;
    memcpy(c->dst + lo, c->src + lo, (size_t)(hi - lo) * 4);
  }
}

static void bench_adamw(void) {
  const char *shape = "10M params";
  adam_case c = {.n = 10000000};
  c.p = make(1, &c.n, SN_F32, 10), c.g = make(1, &c.n, SN_F32, 11), c.m = make(1, &c.n, SN_F32, 12),
  c.v = make(1, &c.n, SN_F32, 13);
  for (int64_t i = 0; i < c.n; i++) sn_f32(&c.v)[i] = fabsf(sn_f32(&c.v)[i]);
  c.dst = malloc((size_t)c.n * 4), c.src = malloc((size_t)c.n * 4);
  memset(c.src, 0, (size_t)c.n * 4);
  /* One step checked against double on the first 4096 parameters. */
  float ref[4096];
  for (int i = 0; i < 4096; i++) {
    double p = sn_f32(&c.p)[i], g = sn_f32(&c.g)[i], m = sn_f32(&c.m)[i], v = sn_f32(&c.v)[i];
    p *= 1 - 1e-4 * 0.01, m = 0.9 * m + 0.1 * g, v = 0.999 * v + 0.001 * g * g;
    ref[i] = (float)(p - 1e-4 / (1 - pow(0.9, 10)) * m / (sqrt(v / (1 - pow(0.999, 10))) + 1e-8));
  }
  adamw(&c);
  double err = scaled_err(sn_f32(&c.p), ref, 4096, 1e-7, 1e-5);
  if (!(err <= 1.0)) {
    bench_mismatch("adamw step", shape, "error against the double formula");
  } else {
    /* x_ref: (our GB/s) / (memcpy GB/s); AdamW reads 4 and writes 3 arrays. */
    double bytes = 7.0 * 4 * c.n, t, tm, x = bench_time2(adamw, &c, copy_ref, &c, &t, &tm);
    bench_row("adamw step", shape, t, 0, bytes, x * bytes / (2.0 * 4 * c.n), "memcpy GB/s");
  }
  free(c.dst), free(c.src);
  sn_tensor_release(&c.p), sn_tensor_release(&c.g), sn_tensor_release(&c.m), sn_tensor_release(&c.v);
}

void bench_nn(void) {
  sn_ctx_init(&ctx);
  bench_norms();
  bench_softmax();
  bench_embedding();
  bench_adamw();
  sn_ctx_free(&ctx);
}
