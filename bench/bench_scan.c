/* bench_scan.c -- kernels/selective_scan.c and kernels/conv1d.c at the Mamba block's sizes
 * (d_model 768: D = d_inner = 1536, N = 16, W = 4).
 *
 * Scan rows count 7 flops per state update forward (dt*A, its exp, the decay, dt*B*u, the
 * add, C*h as a multiply-add) and 3x that for fwd+bwd; the reference is a sequential loop
 * in plain C over (b, d) with the state in a local array, which is what a straightforward
 * port of mamba's selective_scan_ref does, timed on a shorter T (it is slow). x_sgemm is
 * our GFLOP/s over cblas_sgemm 1024^3 in the same run. The T = 16384 row gives the per-token
 * time relative to T = 1024 (flat in T is the target) and the process's ru_maxrss. The
 * conv1d rows give GB/s over the bytes read and written once, against a naive loop. Step
 * rows time one decoding token of a whole d_inner = 1536 layer's scan and conv. The tile
 * row times the scan's inner loops alone (see tile_row). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench.h"
#include "simd/scan.h"

static sn_ctx ctx;

#define D_INNER 1536
#define N_STATE 16
#define W_CONV 4
#define FLOPS_PER_UPDATE 7.0

typedef struct {
  int64_t B, T, D, N;
  sn_tensor u, delta, A, Bm, Cm, Dskip, z, bias, out, chunks, g;
  sn_tensor du, ddelta, dA, dBm, dCm, dDskip, dbias, dz;
  sn_scan_opts opts;
  bool bwd;
  float *ref; /* the reference's output */
} scan_case;

static bool make_scan(scan_case *c, int64_t B, int64_t T) {
  *c = (scan_case){.B = B, .T = T, .D = D_INNER, .N = N_STATE};
  int64_t btd[] = {B, T, D_INNER}, btn[] = {B, T, N_STATE}, dn[] = {D_INNER, N_STATE}, d[] = {D_INNER};
  int64_t ck[] = {B, (T + SN_SCAN_CHUNK - 1) / SN_SCAN_CHUNK, D_INNER, N_STATE};
  struct {
    sn_tensor *t;
    int nd;
    int64_t *s;
  } all[] = {{&c->u, 3, btd},      {&c->delta, 3, btd}, {&c->z, 3, btd},      {&c->g, 3, btd},     {&c->out, 3, btd},
             {&c->du, 3, btd},     {&c->ddelta, 3, btd}, {&c->dz, 3, btd},    {&c->Bm, 3, btn},    {&c->Cm, 3, btn},
             {&c->dBm, 3, btn},    {&c->dCm, 3, btn},   {&c->A, 2, dn},       {&c->dA, 2, dn},     {&c->Dskip, 1, d},
             {&c->dDskip, 1, d},   {&c->bias, 1, d},    {&c->dbias, 1, d},    {&c->chunks, 4, ck}};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    if (sn_tensor_empty(&ctx, all[i].t, SN_F32, all[i].nd, all[i].s) != SN_OK) return false;
    bench_fill(sn_f32(all[i].t), sn_numel(all[i].t), (uint32_t)i + 1);
  }
  /* A < 0 as -exp(A_log); delta around softplus^-1 of Mamba's dt range. */
  for (int64_t i = 0; i < D_INNER * N_STATE; i++) sn_f32(&c->A)[i] = -(float)(i % N_STATE + 1);
  for (int64_t i = 0; i < sn_numel(&c->delta); i++) sn_f32(&c->delta)[i] = sn_f32(&c->delta)[i] - 3.0f;
  c->opts = (sn_scan_opts){.Dskip = &c->Dskip, .z = &c->z, .delta_bias = &c->bias, .delta_softplus = true};
  return true;
}

static void release_scan(scan_case *c) {
  sn_tensor *ts[] = {&c->u,  &c->delta,  &c->A,   &c->Bm,  &c->Cm,  &c->Dskip,  &c->z,     &c->bias,
                     &c->out, &c->chunks, &c->g,  &c->du,  &c->ddelta, &c->dA, &c->dBm, &c->dCm,
                     &c->dDskip, &c->dbias, &c->dz};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  free(c->ref);
}

static void run_scan(void *p) {
  scan_case *c = p;
  sn_selective_scan_fwd(&ctx, &c->out, NULL, c->bwd ? &c->chunks : NULL, &c->u, &c->delta, &c->A, &c->Bm, &c->Cm,
                        &c->opts);
  if (c->bwd)
    sn_selective_scan_bwd(&ctx, &c->du, &c->ddelta, &c->dA, &c->dBm, &c->dCm, &c->dDskip, &c->dbias, &c->dz, NULL,
                          &c->g, NULL, &c->chunks, &c->u, &c->delta, &c->A, &c->Bm, &c->Cm, &c->opts);
}

/* One step of one channel's sequential forward: its N states h advanced from x = delta +
 * delta_bias, u and per-state A, B, C (N each); returns the gated output. */
static float reference_step(float *h, int64_t N, float x, float u, float z, float Ds, const float *A, const float *B,
                            const float *C) {
  float dt = x > 20 ? x : log1pf(expf(x)), y = 0;
  for (int64_t n = 0; n < N; n++) {
    h[n] = expf(dt * A[n]) * h[n] + dt * B[n] * u;
    y += C[n] * h[n];
  }
  y += Ds * u;
  return y * z / (1 + expf(-z));
}

/* The sequential forward, one (b, d) at a time with its N states in a local array. */
static void run_scan_reference(void *p) {
  scan_case *c = p;
  const float *u = sn_f32(&c->u), *dl = sn_f32(&c->delta), *A = sn_f32(&c->A), *Bm = sn_f32(&c->Bm);
  const float *Cm = sn_f32(&c->Cm), *Ds = sn_f32(&c->Dskip), *z = sn_f32(&c->z), *bias = sn_f32(&c->bias);
  int64_t T = c->T, D = c->D, N = c->N;
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t d = 0; d < D; d++) {
      float h[N_STATE] = {0};
      for (int64_t t = 0; t < T; t++) {
        int64_t i = (b * T + t) * D + d;
        c->ref[i] = reference_step(h, N, dl[i] + bias[d], u[i], z[i], Ds[d], A + d * N, Bm + (b * T + t) * N,
                                   Cm + (b * T + t) * N);
      }
    }
}

static void scan_row(int64_t T, bool bwd, bool with_ref, double sgemm, double *per_token) {
  scan_case c;
  char shape[64], kernel[40], ref[128];
  snprintf(shape, sizeof shape, "B2 T%lld D%d N%d", (long long)T, D_INNER, N_STATE);
  snprintf(kernel, sizeof kernel, "selective_scan %s", bwd ? "fwd+bwd" : "fwd");
  if (!make_scan(&c, 2, T)) {
    bench_ok(&ctx, SN_ENOMEM, kernel, shape);
    release_scan(&c);
    return;
  }
  c.bwd = bwd;
  double updates = (double)c.B * T * c.D * c.N, flops = FLOPS_PER_UPDATE * updates * (bwd ? 3 : 1), t, x = 0;
  if (!bench_ok(&ctx, sn_selective_scan_fwd(&ctx, &c.out, NULL, &c.chunks, &c.u, &c.delta, &c.A, &c.Bm, &c.Cm, &c.opts),
                kernel, shape))
    goto done;
  if (with_ref) {
    c.ref = malloc((size_t)sn_numel(&c.out) * sizeof(float));
    run_scan_reference(&c);
    double worst = 0;
    for (int64_t i = 0; i < sn_numel(&c.out); i++) {
      double e = fabs((double)sn_f32(&c.out)[i] - c.ref[i]) / (1e-4 + 1e-3 * fabs((double)c.ref[i]));
      if (!(e <= worst)) worst = e;
    }
    if (!(worst <= 1)) {
      snprintf(ref, sizeof ref, "out: error %.3g x tolerance against the sequential loop", worst);
      bench_mismatch(kernel, shape, ref);
      goto done;
    }
    double tr;
    x = bench_time2(run_scan, &c, run_scan_reference, &c, &t, &tr);
    snprintf(ref, sizeof ref, "sequential C loop; x_sgemm %.2f", flops / t / sgemm);
  } else {
    t = bench_time(run_scan, &c);
    if (per_token && *per_token > 0) {
      struct rusage ru;
      getrusage(RUSAGE_SELF, &ru);
      snprintf(ref, sizeof ref, "per token x%.2f of T1024; ru_maxrss %.0f MiB; x_sgemm %.2f",
               t / T / *per_token, ru.ru_maxrss / 1024.0, flops / t / sgemm);
    } else {
      snprintf(ref, sizeof ref, "x_sgemm %.2f", flops / t / sgemm);
    }
    if (per_token && *per_token <= 0) *per_token = t / T;
  }
  bench_row(kernel, shape, t, flops, 0, x, ref);
done:
  release_scan(&c);
}

/* ---- the scan's inner loops alone ------------------------------------------------------ */

typedef struct {
  const sn_scan_ops *ops;
  scan_chunk c;
  float *h, *g;
  int64_t hn;
} tile_case;

/* The largest error of the tile's forward (from a zero state) against a scalar loop over
 * its lanes, relative to 1e-4 + 1e-3 |ref| (the T256 row's tolerance). */
static double tile_error(tile_case *k) {
  const scan_chunk *c = &k->c;
  memset(k->h, 0, (size_t)k->hn * sizeof(float));
  k->ops->fwd(c);
  double worst = 0;
  for (int l = 0; l < SCAN_W; l++) {
    float h[N_STATE] = {0}, A[N_STATE], B[N_STATE], C[N_STATE];
    for (int n = 0; n < c->N; n++) A[n] = c->A[n * SCAN_W + l];
    for (int t = 0; t < c->L; t++) {
      for (int n = 0; n < c->N; n++) {
        const float *bc = c->bc + (n / 2 * SN_SCAN_CHUNK + t) * 4 + n % 2; /* see scan_chunk.bc */
        B[n] = bc[0], C[n] = bc[2];
      }
      int i = t * SCAN_W + l;
      double ref = reference_step(h, c->N, c->delta[i] + c->bias[l], c->u[i], c->z[i], c->Dskip[l], A, B, C);
      double e = fabs(c->res[i] - ref) / (1e-4 + 1e-3 * fabs(ref));
      if (!(e <= worst)) worst = e;
    }
  }
  return worst;
}

/* One tile's fwd then bwd through one chunk, from a zero state. */
static void run_tile(void *p) {
  tile_case *k = p;
  memset(k->h, 0, (size_t)k->hn * sizeof(float));
  k->ops->fwd(&k->c);
  memset(k->h, 0, (size_t)k->hn * sizeof(float));
  memset(k->g, 0, (size_t)k->hn * sizeof(float));
  k->ops->bwd(&k->c);
}

/* One tile of 16 channels through one 32-step chunk, fwd then bwd (the ISA table the scan
 * uses), with every array in L1 on one thread: the rate of the inner loops without memory
 * traffic, threads or task overhead. Scaled to the tile-chunks each thread of the T = 1024
 * fwd+bwd row runs, it gives the share of that row's time (`whole`) the loops' compute
 * takes. */
static void tile_row(double whole) {
  const char *kernel = "selective_scan tile", *shape = "L32 W16 N16 in L1";
  const sn_scan_ops *ops = sn_scan_ops_now();
  int N = N_STATE, L = SN_SCAN_CHUNK;
  int64_t sizes[] = {L * SCAN_W, L * SCAN_W, L * SCAN_W, L * SCAN_W, SCAN_BC_FLOATS(N), N * SCAN_W, N * SCAN_W,
                     SCAN_W, SCAN_W, N * SCAN_W, SCAN_RES_FLOATS, N * SCAN_W, N * SCAN_W, SCAN_W, SCAN_W,
                     SCAN_ACC_FLOATS(N), SCAN_WORK_FLOATS};
  enum { U, DELTA, Z, DOUT, BC, A, A2, DSKIP, BIAS, H, RES, G, DA, DDSKIP, DBIAS, ACC, WORK, NARR };
  float *a[NARR];
  bool ok = true;
  for (int i = 0; i < NARR; i++) {
    a[i] = aligned_alloc(64, (size_t)(sizes[i] + 15) / 16 * 64);
    ok = ok && a[i];
    if (a[i]) bench_fill(a[i], sizes[i], 100 + i);
  }
  if (!ok) {
    bench_ok(&ctx, SN_ENOMEM, kernel, shape);
    goto done;
  }
  /* The scan's data: A < 0 (A2 = A log2 e), delta around Mamba's dt range, sums zeroed. */
  for (int i = 0; i < N * SCAN_W; i++) a[A][i] = -(float)(i / SCAN_W + 1), a[A2][i] = a[A][i] * 1.44269504f;
  for (int i = 0; i < L * SCAN_W; i++) a[DELTA][i] -= 3.0f;
  memset(a[ACC], 0, (size_t)SCAN_ACC_FLOATS(N) * sizeof(float));
  tile_case k = {.ops = ops, .h = a[H], .g = a[G], .hn = N * SCAN_W};
  k.c = (scan_chunk){.L = L, .N = N, .u = a[U], .delta = a[DELTA], .z = a[Z], .us = SCAN_W, .ds = SCAN_W,
                     .zs = SCAN_W, .bc = a[BC], .A = a[A], .A2 = a[A2], .Dskip = a[DSKIP], .bias = a[BIAS],
                     .softplus = true, .h = a[H], .res = a[RES], .dout = a[DOUT], .dos = SCAN_W, .g = a[G],
                     .dz = true, .dA = a[DA], .dDskip = a[DDSKIP], .dbias = a[DBIAS], .acc = a[ACC],
                     .work = a[WORK]};
  char ref[160];
  double worst = tile_error(&k);
  if (!(worst <= 1)) {
    snprintf(ref, sizeof ref, "out: error %.3g x tolerance against a scalar loop", worst);
    bench_mismatch(kernel, shape, ref);
    goto done;
  }
  double t = bench_time(run_tile, &k), updates = (double)L * SCAN_W * N;
  int threads = sn_get_num_threads();
  double per_thread = 2.0 * (D_INNER / SCAN_W) * (1024 / SN_SCAN_CHUNK) / threads;
  int n = snprintf(ref, sizeof ref, "fwd+bwd of one tile-chunk, 1 thread; x %.0f tile-chunks a thread = %.1f ms",
                   per_thread, t * per_thread * 1e3);
  if (whole > 0) snprintf(ref + n, sizeof ref - n, ", %.0f%% of B2 T1024 fwd+bwd", 100 * t * per_thread / whole);
  bench_row(kernel, shape, t, 3 * FLOPS_PER_UPDATE * updates, 0, 0, ref);
done:
  for (int i = 0; i < NARR; i++) free(a[i]);
}

/* ---- causal conv1d -------------------------------------------------------------------- */

typedef struct {
  int64_t B, T, C;
  sn_tensor x, w, bias, y, g, dx, dw, dbias;
  bool bwd;
  float *ref;
} conv_case;

static void run_conv(void *p) {
  conv_case *c = p;
  if (c->bwd)
    sn_causal_conv1d_bwd(&ctx, &c->dx, &c->dw, &c->dbias, &c->g, &c->x, &c->w, &c->bias, true);
  else
    sn_causal_conv1d_fwd(&ctx, &c->y, &c->x, &c->w, &c->bias, true);
}

/* pre[t,c] = bias + sum_k w[c,k] x[t-W+1+k, c], then silu, one output at a time. */
static void run_conv_reference(void *p) {
  conv_case *c = p;
  const float *x = sn_f32(&c->x), *w = sn_f32(&c->w), *bias = sn_f32(&c->bias);
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t t = 0; t < c->T; t++)
      for (int64_t ch = 0; ch < c->C; ch++) {
        float pre = bias[ch];
        for (int64_t k = 0; k < W_CONV; k++) {
          int64_t s = t - W_CONV + 1 + k;
          if (s >= 0) pre += w[ch * W_CONV + k] * x[(b * c->T + s) * c->C + ch];
        }
        c->ref[(b * c->T + t) * c->C + ch] = pre / (1 + expf(-pre));
      }
}

static void conv_row(bool bwd) {
  conv_case c = {.B = 2, .T = 1024, .C = D_INNER, .bwd = bwd};
  char shape[64], ref[96];
  const char *kernel = bwd ? "causal_conv1d bwd" : "causal_conv1d fwd";
  snprintf(shape, sizeof shape, "B2 T1024 C%d W%d silu", D_INNER, W_CONV);
  int64_t btc[] = {c.B, c.T, c.C}, cw[] = {c.C, W_CONV}, ch[] = {c.C};
  sn_tensor *ts[] = {&c.x, &c.y, &c.g, &c.dx, &c.w, &c.dw, &c.bias, &c.dbias};
  for (int i = 0; i < 8; i++) {
    int64_t *s = i < 4 ? btc : i < 6 ? cw : ch;
    if (!bench_ok(&ctx, sn_tensor_empty(&ctx, ts[i], SN_F32, i < 4 ? 3 : i < 6 ? 2 : 1, s), kernel, shape)) goto done;
    bench_fill(sn_f32(ts[i]), sn_numel(ts[i]), (uint32_t)i + 31);
  }
  double act = (double)c.B * c.T * c.C * sizeof(float), bytes = bwd ? 3 * act : 2 * act, t, x = 0;
  if (!bench_ok(&ctx, sn_causal_conv1d_fwd(&ctx, &c.y, &c.x, &c.w, &c.bias, true), kernel, shape)) goto done;
  if (!bwd) {
    c.ref = malloc((size_t)act);
    run_conv_reference(&c);
    double worst = 0;
    for (int64_t i = 0; i < sn_numel(&c.y); i++) {
      double e = fabs((double)sn_f32(&c.y)[i] - c.ref[i]) / (1e-5 + 1e-4 * fabs((double)c.ref[i]));
      if (!(e <= worst)) worst = e;
    }
    if (!(worst <= 1)) {
      snprintf(ref, sizeof ref, "y: error %.3g x tolerance against the naive loop", worst);
      bench_mismatch(kernel, shape, ref);
      goto done;
    }
    double tr;
    x = bench_time2(run_conv, &c, run_conv_reference, &c, &t, &tr);
    snprintf(ref, sizeof ref, "naive loop");
  } else {
    t = bench_time(run_conv, &c);
    snprintf(ref, sizeof ref, "bytes: x, dy read, dx written");
  }
  bench_row(kernel, shape, t, 0, bytes, x, ref);
done:
  for (int i = 0; i < 8; i++) sn_tensor_release(ts[i]);
  free(c.ref);
}

/* ---- decode steps --------------------------------------------------------------------- */

typedef struct {
  sn_tensor state, u, delta, A, Bm, Cm, Dskip, z, bias, y, cstate, cw, cb;
  sn_scan_opts opts;
} step_case;

static void run_step(void *p) {
  step_case *s = p;
  sn_causal_conv1d_step(&ctx, &s->y, &s->cstate, &s->u, &s->cw, &s->cb, true);
  sn_selective_scan_step(&ctx, &s->y, &s->state, &s->u, &s->delta, &s->A, &s->Bm, &s->Cm, &s->opts);
}

static void step_row(void) {
  step_case s;
  const char *shape = "B1 D1536 N16 W4", *kernel = "scan+conv1d step";
  int64_t bd[] = {1, D_INNER}, bn[] = {1, N_STATE}, dn[] = {D_INNER, N_STATE}, d[] = {D_INNER};
  int64_t bdn[] = {1, D_INNER, N_STATE}, cst[] = {1, W_CONV - 1, D_INNER}, cw[] = {D_INNER, W_CONV};
  struct {
    sn_tensor *t;
    int nd;
    int64_t *sz;
  } all[] = {{&s.state, 3, bdn}, {&s.u, 2, bd},   {&s.delta, 2, bd}, {&s.z, 2, bd},  {&s.y, 2, bd},
             {&s.Bm, 2, bn},     {&s.Cm, 2, bn},  {&s.A, 2, dn},     {&s.Dskip, 1, d}, {&s.bias, 1, d},
             {&s.cstate, 3, cst}, {&s.cw, 2, cw}, {&s.cb, 1, d}};
  size_t n = sizeof all / sizeof all[0];
  for (size_t i = 0; i < n; i++) {
    if (!bench_ok(&ctx, sn_tensor_empty(&ctx, all[i].t, SN_F32, all[i].nd, all[i].sz), kernel, shape)) return;
    bench_fill(sn_f32(all[i].t), sn_numel(all[i].t), (uint32_t)i + 61);
  }
  for (int64_t i = 0; i < D_INNER * N_STATE; i++) sn_f32(&s.A)[i] = -(float)(i % N_STATE + 1);
  s.opts = (sn_scan_opts){.Dskip = &s.Dskip, .z = &s.z, .delta_bias = &s.bias, .delta_softplus = true};
  if (bench_ok(&ctx, sn_selective_scan_step(&ctx, &s.y, &s.state, &s.u, &s.delta, &s.A, &s.Bm, &s.Cm, &s.opts),
               kernel, shape)) {
    double t = bench_time(run_step, &s);
    char ref[64];
    snprintf(ref, sizeof ref, "%.0f steps/s; state %d KiB", 1 / t, D_INNER * N_STATE * 4 / 1024);
    bench_row(kernel, shape, t, FLOPS_PER_UPDATE * D_INNER * N_STATE, (double)D_INNER * N_STATE * 8, 0, ref);
  }
  for (size_t i = 0; i < n; i++) sn_tensor_release(all[i].t);
}

void bench_scan(void) {
  sn_ctx_init(&ctx);
  double sgemm = bench_sgemm_rate(), per_token = 0;
  scan_row(256, false, true, sgemm, NULL);
  scan_row(1024, false, false, sgemm, NULL);
  scan_row(1024, true, false, sgemm, &per_token);
  scan_row(16384, true, false, sgemm, &per_token);
  tile_row(per_token * 1024);
  conv_row(false);
  conv_row(true);
  step_row();
  sn_ctx_free(&ctx);
}
