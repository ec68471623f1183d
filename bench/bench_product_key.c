/* bench_product_key.c -- product-key memory kernels (kernels/product_key.c) against naive
 * loops, at the PKM shape of the target: |C| = 256 sub-keys (65536 value rows), d = 512,
 * heads 4, knn 32. Each kernel is first checked against its naive loop (MISMATCH and no
 * timing when off), then both are timed in the same run. The gather rows also give their
 * FLOP rate as a fraction of the cblas_sgemm rate measured at the start of the suite: the
 * gather is memory-bound, so this says how far from compute-bound it is, not a target.
 * The lazy AdamW rows are compared with the dense AdamW step over the whole table. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define NKEYS 256
#define SLOTS (NKEYS * NKEYS)
#define DV 512
#define HEADS 4
#define KNN 32
#define NTOK 4096
#define J (HEADS * KNN)

static sn_ctx ctx;

static bool make(sn_tensor *t, sn_dtype dt, int nd, const int64_t *size, const char *kernel, const char *shape) {
  return bench_ok(&ctx, sn_tensor_empty(&ctx, t, dt, nd, size), kernel, shape);
}

/* ---- top-k and select ------------------------------------------------------------------ */

typedef struct {
  sn_tensor s1, s2, idx, val, slot, score;
  int64_t R;
  int64_t *ref_idx;
} sel_case;

static void run_topk(void *p) {
  sel_case *c = p;
  sn_product_key_topk(&ctx, &c->idx, &c->val, &c->s1, KNN);
}
static void run_select(void *p) {
  sel_case *c = p;
  sn_product_key_select(&ctx, &c->slot, &c->score, &c->s1, &c->s2, KNN);
}

/* The k best of x (n) by repeated arg-max (larger value, then lower id), ids given. */
static void naive_topk_row(int64_t *out, float *outv, const float *x, const int64_t *ids, int64_t n, int64_t k,
                           unsigned char *used) {
  memset(used, 0, (size_t)n);
  for (int64_t j = 0; j < k; j++) {
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++)
      if (!used[i] && (best < 0 || x[i] > x[best] || (x[i] == x[best] && ids[i] < ids[best]))) best = i;
    used[best] = 1;
    out[j] = ids[best];
    if (outv) outv[j] = x[best];
  }
}

static int64_t pos_ids[SLOTS];

static void naive_topk(void *p) {
  sel_case *c = p;
  unsigned char used[NKEYS];
  for (int64_t r = 0; r < c->R; r++)
    naive_topk_row(c->ref_idx + r * KNN, NULL, sn_f32(&c->s1) + r * NKEYS, pos_ids, NKEYS, KNN, used);
}

static void naive_select(void *p) {
  sel_case *c = p;
  static unsigned char used[KNN * KNN];
  int64_t i1[KNN], i2[KNN], cid[KNN * KNN];
  float v1[KNN], v2[KNN], cv[KNN * KNN];
  for (int64_t r = 0; r < c->R; r++) {
    naive_topk_row(i1, v1, sn_f32(&c->s1) + r * NKEYS, pos_ids, NKEYS, KNN, used);
    naive_topk_row(i2, v2, sn_f32(&c->s2) + r * NKEYS, pos_ids, NKEYS, KNN, used);
    for (int a = 0; a < KNN; a++)
      for (int b = 0; b < KNN; b++) cv[a * KNN + b] = v1[a] + v2[b], cid[a * KNN + b] = i1[a] * NKEYS + i2[b];
    naive_topk_row(c->ref_idx + r * KNN, NULL, cv, cid, KNN * KNN, KNN, used);
  }
}

static void bench_select_rows(void) {
  sel_case c = {0};
  c.R = 1024 * HEADS;
  char shape[64];
  snprintf(shape, sizeof shape, "R%lld n%d k%d", (long long)c.R, NKEYS, KNN);
  int64_t sz[2] = {c.R, NKEYS}, szk[2] = {c.R, KNN};
  if (!make(&c.s1, SN_F32, 2, sz, "pkm topk", shape) || !make(&c.s2, SN_F32, 2, sz, "pkm topk", shape) ||
      !make(&c.idx, SN_I64, 2, szk, "pkm topk", shape) || !make(&c.val, SN_F32, 2, szk, "pkm topk", shape) ||
      !make(&c.slot, SN_I64, 2, szk, "pkm select", shape) || !make(&c.score, SN_F32, 2, szk, "pkm select", shape))
    goto done;
  for (int64_t i = 0; i < SLOTS; i++) pos_ids[i] = i;
  bench_fill(sn_f32(&c.s1), c.R * NKEYS, 11), bench_fill(sn_f32(&c.s2), c.R * NKEYS, 12);
  c.ref_idx = malloc((size_t)(c.R * KNN) * sizeof(int64_t));
  struct {
    const char *kernel;
    bench_fn run, naive;
    sn_tensor *out;
  } ks[] = {{"pkm topk", run_topk, naive_topk, &c.idx}, {"pkm select", run_select, naive_select, &c.slot}};
  for (int k = 0; k < 2; k++) {
    ks[k].run(&c);
    ks[k].naive(&c);
    if (memcmp(sn_i64(ks[k].out), c.ref_idx, (size_t)(c.R * KNN) * 8) != 0) {
      bench_mismatch(ks[k].kernel, shape, "indices differ from the naive selection");
      continue;
    }
    double t, tr, x = bench_time2(ks[k].run, &c, ks[k].naive, &c, &t, &tr);
    bench_row(ks[k].kernel, shape, t, 0, (double)c.R * NKEYS * 4 * (k + 1), x, "naive");
  }
done:
  free(c.ref_idx);
  sn_tensor_release(&c.s1), sn_tensor_release(&c.s2), sn_tensor_release(&c.idx), sn_tensor_release(&c.val);
  sn_tensor_release(&c.slot), sn_tensor_release(&c.score);
}

/* ---- gather forward and backward ---------------------------------------------------------- */

typedef struct {
  sn_tensor V, idx, w, y, dy, dw, rows, drows;
  float *ref;
  double *dref;
} gather_case;

static void run_fwd(void *p) {
  gather_case *c = p;
  sn_product_key_gather_fwd(&ctx, &c->y, &c->V, &c->idx, &c->w);
}
static void run_bwd(void *p) {
  gather_case *c = p;
  sn_product_key_gather_bwd(&ctx, &c->dw, &c->rows, &c->drows, &c->dy, &c->V, &c->idx, &c->w);
}
static void naive_fwd(void *p) {
  gather_case *c = p;
  const float *V = sn_f32(&c->V), *w = sn_f32(&c->w);
  const int64_t *idx = sn_i64(&c->idx);
  for (int64_t t = 0; t < NTOK; t++) {
    float *y = c->ref + t * DV;
    for (int64_t d = 0; d < DV; d++) y[d] = 0;
    for (int64_t j = 0; j < J; j++)
      for (int64_t d = 0; d < DV; d++) y[d] += w[t * J + j] * V[idx[t * J + j] * DV + d];
  }
}
/* dw by dot products and the dense value gradient by scatter (what a dense backward does). */
static void naive_bwd(void *p) {
  gather_case *c = p;
  const float *V = sn_f32(&c->V), *w = sn_f32(&c->w), *dy = sn_f32(&c->dy);
  const int64_t *idx = sn_i64(&c->idx);
  memset(c->ref + NTOK * DV, 0, sizeof(float) * (size_t)SLOTS * DV);
  for (int64_t t = 0; t < NTOK; t++)
    for (int64_t j = 0; j < J; j++) {
      const float *row = V + idx[t * J + j] * DV, *g = dy + t * DV;
      float *dv = c->ref + NTOK * DV + idx[t * J + j] * DV, a = 0;
      for (int64_t d = 0; d < DV; d++) a += row[d] * g[d], dv[d] += w[t * J + j] * g[d];
      c->ref[t * J + j] = a;
    }
}

static double worst_err(const float *got, const float *want, int64_t n) {
  double worst = 0, scale = 1e-30;
  for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)want[i]));
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - want[i]) / scale;
    if (!(e <= worst)) worst = e;
  }
  return worst;
}

/* Random slots over the whole table: with 4096 tokens x 128 reads nearly every row is read. */
static void fill_idx(sn_tensor *idx, int64_t n, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 99u;
  for (int64_t e = 0; e < n; e++) {
    s = s * 1664525u + 1013904223u;
    sn_i64(idx)[e] = (int64_t)(s >> 16);
  }
}

typedef struct {
  sn_tensor p, m, v, g, steps, rows, vals;
} adam_case;

static void run_adam_dense(void *p) {
  adam_case *c = p;
  sn_adamw_step(&ctx, &c->p, &c->m, &c->v, &c->g, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1);
}
static void run_adam_rows(void *p) {
  adam_case *c = p;
  sn_adamw_rows_step(&ctx, &c->p, &c->m, &c->v, &c->steps, &c->rows, &c->vals, 1e-3, 0.9, 0.999, 1e-8, 0.0);
}

static void bench_adam_rows(int64_t ntok, double sgemm) {
  adam_case c = {0};
  char shape[64], kernel[48];
  int64_t sz[2] = {SLOTS, DV}, n = SLOTS, nidx[2] = {ntok, J};
  sn_tensor idx = {0};
  if (!make(&c.p, SN_F32, 2, sz, "adamw", "") || !make(&c.m, SN_F32, 2, sz, "adamw", "") ||
      !make(&c.v, SN_F32, 2, sz, "adamw", "") || !make(&c.g, SN_F32, 2, sz, "adamw", "") ||
      !make(&c.steps, SN_I64, 1, &n, "adamw", "") || !make(&idx, SN_I64, 2, nidx, "adamw", ""))
    goto done;
  bench_fill(sn_f32(&c.p), SLOTS * DV, 1), bench_fill(sn_f32(&c.g), SLOTS * DV, 2);
  memset(sn_f32(&c.m), 0, sizeof(float) * SLOTS * DV), memset(sn_f32(&c.v), 0, sizeof(float) * SLOTS * DV);
  memset(sn_i64(&c.steps), 0, sizeof(int64_t) * SLOTS);
  fill_idx(&idx, ntok * J, 7);
  int64_t U;
  if (!bench_ok(&ctx, sn_product_key_gather_rows(&ctx, &U, &idx, SLOTS), "adamw rows", "")) goto done;
  int64_t szu[2] = {U, DV};
  if (!make(&c.rows, SN_I64, 1, &U, "adamw rows", "") || !make(&c.vals, SN_F32, 2, szu, "adamw rows", "")) goto done;
  {
    unsigned char *seen = calloc(SLOTS, 1);
    int64_t u = 0;
    for (int64_t e = 0; e < ntok * J; e++) seen[sn_i64(&idx)[e]] = 1;
    for (int64_t s = 0; s < SLOTS; s++)
      if (seen[s]) sn_i64(&c.rows)[u++] = s;
    free(seen);
  }
  bench_fill(sn_f32(&c.vals), U * DV, 3);
  snprintf(shape, sizeof shape, "%dx%d, %lld rows (%d tok)", SLOTS, DV, (long long)U, (int)ntok);
  snprintf(kernel, sizeof kernel, "adamw rows (lazy)");
  {
    /* Check first: the first touched row against the dense step on that row alone. */
    int64_t r = sn_i64(&c.rows)[0], one[2] = {1, DV};
    sn_tensor rp = {0}, rm = {0}, rv = {0}, rg = {0};
    bool ok = make(&rp, SN_F32, 2, one, kernel, shape) && make(&rm, SN_F32, 2, one, kernel, shape) &&
              make(&rv, SN_F32, 2, one, kernel, shape) && make(&rg, SN_F32, 2, one, kernel, shape);
    if (ok) {
      memcpy(sn_f32(&rp), sn_f32(&c.p) + r * DV, DV * 4), memcpy(sn_f32(&rm), sn_f32(&c.m) + r * DV, DV * 4);
      memcpy(sn_f32(&rv), sn_f32(&c.v) + r * DV, DV * 4), memcpy(sn_f32(&rg), sn_f32(&c.vals), DV * 4);
      run_adam_rows(&c);
      sn_adamw_step(&ctx, &rp, &rm, &rv, &rg, 1e-3, 0.9, 0.999, 1e-8, 0.0, sn_i64(&c.steps)[r]);
      ok = memcmp(sn_f32(&rp), sn_f32(&c.p) + r * DV, DV * 4) == 0;
      if (!ok) bench_mismatch(kernel, shape, "a touched row differs from the dense step on it");
    }
    sn_tensor_release(&rp), sn_tensor_release(&rm), sn_tensor_release(&rv), sn_tensor_release(&rg);
    if (!ok) goto done;
  }
  double t, td, x = bench_time2(run_adam_rows, &c, run_adam_dense, &c, &t, &td);
  char ref[64];
  snprintf(ref, sizeof ref, "dense adamw (%.2f ms)", td * 1e3);
  /* bytes: p, m, v read+written and the gradient read, for the touched rows */
  bench_row(kernel, shape, t, 0, (double)U * DV * 4 * 7, x, ref);
  (void)sgemm;
done:
  sn_tensor_release(&c.p), sn_tensor_release(&c.m), sn_tensor_release(&c.v), sn_tensor_release(&c.g);
  sn_tensor_release(&c.steps), sn_tensor_release(&c.rows), sn_tensor_release(&c.vals), sn_tensor_release(&idx);
}

void bench_product_key(void) {
  sn_ctx_init(&ctx);
  double sgemm = bench_sgemm_rate();
  bench_select_rows();
  gather_case c = {0};
  char shape[64], ref[64];
  snprintf(shape, sizeof shape, "N%d J%d D%d S%d", NTOK, J, DV, SLOTS);
  int64_t sv[2] = {SLOTS, DV}, si[2] = {NTOK, J}, sy[2] = {NTOK, DV};
  if (!make(&c.V, SN_F32, 2, sv, "pkm gather", shape) || !make(&c.idx, SN_I64, 2, si, "pkm gather", shape) ||
      !make(&c.w, SN_F32, 2, si, "pkm gather", shape) || !make(&c.y, SN_F32, 2, sy, "pkm gather", shape) ||
      !make(&c.dy, SN_F32, 2, sy, "pkm gather", shape) || !make(&c.dw, SN_F32, 2, si, "pkm gather", shape))
    goto done;
  bench_fill(sn_f32(&c.V), (int64_t)SLOTS * DV, 21), bench_fill(sn_f32(&c.w), NTOK * J, 22);
  bench_fill(sn_f32(&c.dy), NTOK * DV, 23);
  fill_idx(&c.idx, NTOK * J, 24);
  int64_t U;
  if (!bench_ok(&ctx, sn_product_key_gather_rows(&ctx, &U, &c.idx, SLOTS), "pkm gather", shape)) goto done;
  int64_t sd[2] = {U, DV};
  if (!make(&c.rows, SN_I64, 1, &U, "pkm gather", shape) || !make(&c.drows, SN_F32, 2, sd, "pkm gather", shape))
    goto done;
  c.ref = malloc(sizeof(float) * ((size_t)NTOK * DV + (size_t)SLOTS * DV));
  const double flops = 2.0 * NTOK * J * DV;
  run_fwd(&c), naive_fwd(&c);
  double e = worst_err(sn_f32(&c.y), c.ref, NTOK * DV);
  if (e > 1e-5) {
    bench_mismatch("pkm gather fwd", shape, "output differs from the naive loop");
  } else {
    double t, tr, x = bench_time2(run_fwd, &c, naive_fwd, &c, &t, &tr);
    snprintf(ref, sizeof ref, "naive; %.3f x sgemm rate", flops / t / sgemm);
    bench_row("pkm gather fwd", shape, t, flops, (double)NTOK * J * DV * 4, x, ref);
  }
  run_bwd(&c), naive_bwd(&c);
  e = worst_err(sn_f32(&c.dw), c.ref, NTOK * J);
  /* the sparse rows against the dense scatter */
  float *dense = c.ref + NTOK * DV;
  double worst = 0, scale = 1e-30;
  for (int64_t u = 0; u < U; u++)
    for (int64_t d = 0; d < DV; d++) scale = fmax(scale, fabs((double)dense[sn_i64(&c.rows)[u] * DV + d]));
  for (int64_t u = 0; u < U; u++)
    for (int64_t d = 0; d < DV; d++)
      worst = fmax(worst, fabs((double)sn_f32(&c.drows)[u * DV + d] - dense[sn_i64(&c.rows)[u] * DV + d]) / scale);
  if (e > 1e-5 || worst > 1e-5) {
    bench_mismatch("pkm gather bwd", shape, "dw or the value rows differ from the naive loop");
  } else {
    double t, tr, x = bench_time2(run_bwd, &c, naive_bwd, &c, &t, &tr);
    snprintf(ref, sizeof ref, "naive dense; %.3f x sgemm rate", 2 * flops / t / sgemm);
    bench_row("pkm gather bwd (dw+dV rows)", shape, t, 2 * flops, (double)NTOK * J * DV * 4 * 2, x, ref);
  }
done:
  free(c.ref);
  sn_tensor_release(&c.V), sn_tensor_release(&c.idx), sn_tensor_release(&c.w), sn_tensor_release(&c.y);
  sn_tensor_release(&c.dy), sn_tensor_release(&c.dw), sn_tensor_release(&c.rows), sn_tensor_release(&c.drows);
  bench_adam_rows(NTOK, sgemm);
  bench_adam_rows(256, sgemm);
  bench_adam_rows(16, sgemm);
  sn_ctx_free(&ctx);
}
