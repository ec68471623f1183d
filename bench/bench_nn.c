/* bench_nn.c -- the nn kernels (csrc/kernels/) against naive loops timed in the same run:
 * rms_norm and layer_norm fwd/bwd on 4096x1024, softmax and cross_entropy fwd+bwd on
 * 2048x8192 (vocabulary-sized rows), the activation backwards and dropout fwd/bwd on 4M
 * elements, embedding fwd/bwd, AdamW and SGD over 10M parameters against memcpy, and RoPE
 * fwd/bwd on B4 T1024 H8 Dh64. The naive loops are single-threaded plain C in float with double row
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
  sn_tensor x, y, w, gy, gx, gw, gb, mean, rstd;
  float *ry, *rgx, *rgw, *rgb, *rr;
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

static void ln_bwd(void *p) {
  norm_case *c = p;
  sn_layer_norm_bwd(&ctx, &c->gx, &c->gw, &c->gb, &c->mean, &c->rstd, &c->gy, &c->x, &c->w);
}
/* Uses the mean and rstd saved by the kernel's fwd, as the kernel does. */
static void ln_bwd_naive(void *p) {
  norm_case *c = p;
  const float *x = sn_f32(&c->x), *w = sn_f32(&c->w), *gy = sn_f32(&c->gy);
  const float *mean = sn_f32(&c->mean), *rstd = sn_f32(&c->rstd);
  memset(c->rgw, 0, (size_t)c->C * sizeof(float));
  memset(c->rgb, 0, (size_t)c->C * sizeof(float));
  for (int64_t r = 0; r < c->R; r++) {
    const float *xr = x + r * c->C, *gr = gy + r * c->C;
    float m = mean[r], rs = rstd[r];
    double sg = 0, sgx = 0;
    for (int64_t j = 0; j < c->C; j++) sg += gr[j] * w[j], sgx += (double)gr[j] * w[j] * ((xr[j] - m) * rs);
    float mg = (float)(sg / c->C), k = (float)(sgx / c->C);
    for (int64_t j = 0; j < c->C; j++) {
      float xh = (xr[j] - m) * rs;
      c->rgx[r * c->C + j] = rs * (gr[j] * w[j] - mg - xh * k);
      c->rgw[j] += gr[j] * xh;
      c->rgb[j] += gr[j];
    }
  }
}

static void bench_norms(void) {
  const char *shape = "4096x1024";
  norm_case c = {.R = 4096, .C = 1024};
  int64_t s[2] = {c.R, c.C};
  c.x = make(2, s, SN_F32, 1), c.y = make(2, s, SN_F32, 0), c.gy = make(2, s, SN_F32, 2), c.gx = make(2, s, SN_F32, 0);
  c.w = make(1, &c.C, SN_F32, 3), c.gw = make(1, &c.C, SN_F32, 0), c.mean = make(1, &c.R, SN_F32, 0),
  c.rstd = make(1, &c.R, SN_F32, 0), c.gb = make(1, &c.C, SN_F32, 0);
  c.ry = malloc((size_t)(c.R * c.C) * 4), c.rgx = malloc((size_t)(c.R * c.C) * 4), c.rgw = malloc((size_t)c.C * 4),
  c.rgb = malloc((size_t)c.C * 4), c.rr = malloc((size_t)c.R * 4);
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
  ln_bwd(&c), ln_bwd_naive(&c);
  e = scaled_err(sn_f32(&c.gx), c.rgx, c.R * c.C, 1e-5, 1e-4);
  ew = scaled_err(sn_f32(&c.gw), c.rgw, c.C, 1e-3, 1e-3); /* naive gw, gb add 4096 floats in float */
  double eb = scaled_err(sn_f32(&c.gb), c.rgb, c.C, 1e-3, 1e-3);
  e = e > ew ? e : ew;
  row("layer_norm bwd", shape, e > eb ? e : eb, ln_bwd, ln_bwd_naive, &c, 3 * io, "naive loop");
  free(c.ry), free(c.rgx), free(c.rgw), free(c.rgb), free(c.rr);
  sn_tensor *all[] = {&c.x, &c.y, &c.w, &c.gy, &c.gx, &c.gw, &c.gb, &c.mean, &c.rstd};
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

/* ---- activation backwards and dropout ------------------------------------------------ */

typedef struct {
  sn_tensor x, in, gy, gx;
  float *rgx;
  sn_unop op;
  int64_t n;
} act_case;

static void act_bwd(void *p) {
  act_case *c = p;
  sn_activation_bwd(&ctx, &c->gx, &c->gy, &c->in, c->op);
}
static void act_bwd_naive(void *p) {
  act_case *c = p;
  const float *in = sn_f32(&c->in), *gy = sn_f32(&c->gy);
  for (int64_t i = 0; i < c->n; i++) {
    float v = in[i], d, s;
    switch (c->op) {
    case SN_GELU: d = 0.5f * erfcf(-v * 0.70710678f) + v * expf(-0.5f * v * v) * 0.39894228f; break;
    case SN_SILU: s = 1 / (1 + expf(-v)), d = s * (1 + v * (1 - s)); break;
    case SN_SOFTPLUS: d = 1 / (1 + expf(-v)); break;
    case SN_TANH: d = 1 - v * v; break;
    default: d = v * (1 - v); break; /* SN_SIGMOID */
    }
    c->rgx[i] = gy[i] * d;
  }
}

static void bench_activations(void) {
  const char *shape = "4096x1024";
  act_case c = {.n = 4096 * 1024};
  c.x = make(1, &c.n, SN_F32, 14), c.in = make(1, &c.n, SN_F32, 0), c.gy = make(1, &c.n, SN_F32, 15),
  c.gx = make(1, &c.n, SN_F32, 0);
  c.rgx = malloc((size_t)c.n * 4);
  float *x = sn_f32(&c.x);
  for (int64_t i = 0; i < c.n; i++) x[i] *= 6.0f; /* [-6, 6): the tails as well as the middle */
  const sn_unop ops[] = {SN_GELU, SN_SILU, SN_SOFTPLUS, SN_TANH, SN_SIGMOID};
  for (size_t k = 0; k < sizeof ops / sizeof *ops; k++) {
    c.op = ops[k];
    /* tanh and sigmoid take their output y (what autograd saves); the others take x. */
    float *in = sn_f32(&c.in);
    for (int64_t i = 0; i < c.n; i++)
      in[i] = c.op == SN_TANH ? tanhf(x[i]) : c.op == SN_SIGMOID ? 1 / (1 + expf(-x[i])) : x[i];
    char name[32];
    snprintf(name, sizeof name, "%s bwd", sn_unop_name(c.op));
    act_bwd(&c), act_bwd_naive(&c);
    row(name, shape, scaled_err(sn_f32(&c.gx), c.rgx, c.n, 1e-6, 1e-4), act_bwd, act_bwd_naive, &c,
        3.0 * 4 * c.n, "naive loop");
  }
  free(c.rgx);
  sn_tensor_release(&c.x), sn_tensor_release(&c.in), sn_tensor_release(&c.gy), sn_tensor_release(&c.gx);
}

typedef struct {
  sn_tensor in, out;
  float *rout;
  int64_t n;
  bool bwd;
} drop_case;

#define DROP_P 0.1f
#define DROP_SEED 42u
#define DROP_OFFSET 1000u

static void drop(void *p) {
  drop_case *c = p;
  if (c->bwd) sn_dropout_bwd(&ctx, &c->out, &c->in, DROP_P, DROP_SEED, DROP_OFFSET);
  else sn_dropout_fwd(&ctx, &c->out, &c->in, DROP_P, DROP_SEED, DROP_OFFSET);
}
/* The mask formula of seqnn.h, element by element. */
static void drop_naive(void *p) {
  drop_case *c = p;
  const float *x = sn_f32(&c->in);
  float scale = (float)(1.0 / (1.0 - (double)DROP_P));
  for (int64_t i = 0; i < c->n; i++) {
    double u = (double)(sn_rng_word(DROP_SEED, DROP_OFFSET + (uint64_t)i) >> 40) * 0x1p-24;
    c->rout[i] = u >= DROP_P ? x[i] * scale : 0.0f;
  }
}

static void bench_dropout(void) {
  const char *shape = "4096x1024 p0.1";
  drop_case c = {.n = 4096 * 1024};
  c.in = make(1, &c.n, SN_F32, 16), c.out = make(1, &c.n, SN_F32, 0);
  c.rout = malloc((size_t)c.n * 4);
  /* fwd and bwd are the same pass (bwd regenerates the mask), timed as both rows. */
  for (int b = 0; b < 2; b++) {
    c.bwd = b;
    drop(&c), drop_naive(&c);
    row(b ? "dropout bwd" : "dropout fwd", shape, scaled_err(sn_f32(&c.out), c.rout, c.n, 1e-30, 0), drop,
        drop_naive, &c, 2.0 * 4 * c.n, "naive loop");
  }
  free(c.rout);
  sn_tensor_release(&c.in), sn_tensor_release(&c.out);
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
static void sgd(void *a) {
  adam_case *c = a;
  sn_sgd_step(&ctx, &c->p, &c->m, &c->g, 1e-3, 0.9, 0.0, 0.01, false, false);
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

  /* SGD with momentum 0.9 and weight decay 0.01, m as the momentum buffer: checked against
   * double on the first 4096 parameters, then timed against memcpy like AdamW. */
  for (int i = 0; i < 4096; i++) {
    double p = sn_f32(&c.p)[i], g = sn_f32(&c.g)[i], b = sn_f32(&c.m)[i];
    g += 0.01 * p, b = 0.9 * b + g;
    ref[i] = (float)(p - 1e-3 * b);
  }
  sgd(&c);
  err = scaled_err(sn_f32(&c.p), ref, 4096, 1e-7, 1e-5);
  if (!(err <= 1.0)) {
    bench_mismatch("sgd step", shape, "error against the double formula");
  } else {
    /* SGD reads p, buf, g and writes p, buf. */
    double bytes = 5.0 * 4 * c.n, t, tm, x = bench_time2(sgd, &c, copy_ref, &c, &t, &tm);
    bench_row("sgd step", shape, t, 0, bytes, x * bytes / (2.0 * 4 * c.n), "memcpy GB/s");
  }
  free(c.dst), free(c.src);
  sn_tensor_release(&c.p), sn_tensor_release(&c.g), sn_tensor_release(&c.m), sn_tensor_release(&c.v);
}

/* ---- RoPE ---------------------------------------------------------------------------------- */

typedef struct {
  sn_tensor x, y;
  float *ry;
  int64_t B, T, H, Dh;
  double sign; /* +1 fwd, -1 bwd (the inverse rotation) */
} rope_case;

static void rope(void *p) {
  rope_case *c = p;
  if (c->sign > 0) sn_rope_fwd(&ctx, &c->y, &c->x, 0, 10000.0);
  else sn_rope_bwd(&ctx, &c->y, &c->x, 0, 10000.0);
}
/* Angles in double, cos/sin per element: no table. */
static void rope_naive(void *p) {
  rope_case *c = p;
  const float *x = sn_f32(&c->x);
  int64_t half = c->Dh / 2;
  for (int64_t r = 0; r < c->B * c->T * c->H; r++) {
    int64_t t = r / c->H % c->T;
    const float *xr = x + r * c->Dh;
    float *yr = c->ry + r * c->Dh;
    for (int64_t i = 0; i < half; i++) {
      double a = c->sign * (double)t * pow(10000.0, -2.0 * (double)i / (double)c->Dh);
      float co = (float)cos(a), si = (float)sin(a);
      yr[i] = xr[i] * co - xr[i + half] * si;
      yr[i + half] = xr[i] * si + xr[i + half] * co;
    }
  }
}

static void bench_rope(void) {
  const char *shape = "B4 T1024 H8 Dh64";
  rope_case c = {.B = 4, .T = 1024, .H = 8, .Dh = 64};
  int64_t s[4] = {c.B, c.T, c.H, c.Dh}, n = c.B * c.T * c.H * c.Dh;
  c.x = make(4, s, SN_F32, 17), c.y = make(4, s, SN_F32, 0);
  c.ry = malloc((size_t)n * 4);
  for (int b = 0; b < 2; b++) {
    c.sign = b ? -1.0 : 1.0;
    rope(&c), rope_naive(&c);
    row(b ? "rope bwd" : "rope fwd", shape, scaled_err(sn_f32(&c.y), c.ry, n, 1e-6, 1e-5), rope, rope_naive, &c,
        2.0 * 4 * n, "naive loop");
  }
  free(c.ry);
  sn_tensor_release(&c.x), sn_tensor_release(&c.y);
}

void bench_nn(void) {
  sn_ctx_init(&ctx);
  bench_norms();
  bench_softmax();
  bench_activations();
  bench_dropout();
  bench_embedding();
  bench_adamw();
  bench_rope();
  sn_ctx_free(&ctx);
}
