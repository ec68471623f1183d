/* kernels/conv1d.c -- causal depthwise conv1d, Mamba's short convolution (math in seqnn.h).
 *
 * Tasks are (batch, chunk of TCH steps) and walk whole rows, so x, dy and the outputs
 * stream through memory in address order. (Tasks per channel tile read a few hundred
 * bytes per row, rows a page or more apart, which the prefetchers did not follow: the
 * backward ran 2-3x slower.) The loops over a row's channels are the ISA tables of
 * simd/conv1d.h; the weights are transposed once per call into the workspace, (W, Cp)
 * with Cp = C rounded up to a vector and zeros past C.
 * fwd: one row at a time. The step runs the same row loop over its state, so decoding
 * reproduces the forward's bits.
 * bwd: each task leaves its float sums for dw and dbias in its own workspace slot; the
 * slots are added in double in task order, so the result has the same bits for any
 * thread count. */
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "kernels/nn.h"
#include "simd/conv1d.h"
#include "simd/vec.h"

#define TCH 128 /* steps per task; also the length of the float sums of dw and dbias */
#define SEG 256 /* channels per block of the final sums */

static const char *FN = "seqnn.F.causal_conv1d", *FN_STEP = "seqnn.F.causal_conv1d_step";

static const sn_conv1d_ops *conv_ops(void) {
  const char *n = sn_vec->name;
  return strcmp(n, "avx512") == 0 ? &sn_conv1d_avx512 : strcmp(n, "avx2") == 0 ? &sn_conv1d_avx2 : &sn_conv1d_scalar;
}

/* ---- validation ------------------------------------------------------------------------ */

/* "(2, 3, 5)" for a shape given as sizes. */
static const char *dims(char *buf, size_t n, int ndim, const int64_t *size) {
  size_t at = (size_t)snprintf(buf, n, "(");
  for (int d = 0; d < ndim && at < n; d++)
    at += (size_t)snprintf(buf + at, n - at, d ? ", %lld" : "%lld", (long long)size[d]);
  if (at < n) snprintf(buf + at, n - at, ")");
  return buf;
}

/* An f32 input of rank ndim (layout names its dims) with unit stride on its last dim. */
static sn_status need_in(sn_ctx *ctx, const char *fn, const char *name, const sn_tensor *t, int ndim,
                         const char *layout) {
  char s[160];
  if (t->dtype != SN_F32)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be f32, got %s", fn, name, sn_dtype_name(t->dtype));
  if (t->ndim != ndim)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be %s, got %s", fn, name, layout, sn_shape_str(t, s, sizeof s));
  if (t->size[ndim - 1] > 1 && t->stride[ndim - 1] != 1)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must have unit stride on its last dim (%s, stride %lld)", fn, name,
                   sn_shape_str(t, s, sizeof s), (long long)t->stride[ndim - 1]);
  return SN_OK;
}

/* An output: a contiguous f32 tensor of the given shape. */
static sn_status need_out(sn_ctx *ctx, const char *fn, const char *name, const sn_tensor *t, int ndim,
                          const int64_t *size) {
  bool ok = t->dtype == SN_F32 && t->ndim == ndim && sn_is_contiguous(t);
  for (int d = 0; ok && d < ndim; d++) ok = t->size[d] == size[d];
  if (ok) return SN_OK;
  char a[160], b[160];
  return sn_fail(ctx, SN_EINVAL, "%s: %s must be a contiguous f32 tensor of shape %s, got %s %s%s", fn, name,
                 dims(a, sizeof a, ndim, size), sn_dtype_name(t->dtype), sn_shape_str(t, b, sizeof b),
                 sn_is_contiguous(t) ? "" : " (not contiguous)");
}

/* w (C, W) with 1 <= W <= CONV_WMAX, bias (C) or NULL; any strides (read once per call). */
static sn_status need_weights(sn_ctx *ctx, const char *fn, const sn_tensor *w, const sn_tensor *bias, int64_t C) {
  char s[160];
  if (w->dtype != SN_F32)
    return sn_fail(ctx, SN_EINVAL, "%s: w must be f32, got %s", fn, sn_dtype_name(w->dtype));
  if (w->ndim != 2 || w->size[0] != C || w->size[1] < 1 || w->size[1] > CONV_WMAX)
    return sn_fail(ctx, SN_EINVAL, "%s: w must be (C, W) with C = %lld and 1 <= W <= %d, got %s", fn, (long long)C,
                   CONV_WMAX, sn_shape_str(w, s, sizeof s));
  if (!bias) return SN_OK;
  if (bias->dtype != SN_F32)
    return sn_fail(ctx, SN_EINVAL, "%s: bias must be f32, got %s", fn, sn_dtype_name(bias->dtype));
  if (bias->ndim != 1 || bias->size[0] != C)
    return sn_fail(ctx, SN_EINVAL, "%s: bias must be (C) with C = %lld, got %s", fn, (long long)C,
                   sn_shape_str(bias, s, sizeof s));
  return SN_OK;
}

/* ---- weights and tasks ----------------------------------------------------------------- */

typedef struct {
  int64_t Cp;
  int W;
  const float *wt, *bt, *zero; /* (W, Cp) transposed weights, bias or zeros, Cp zeros */
} weights;

/* C rounded up to whole vectors. */
static int64_t padded(int64_t C) { return (C + CONV_PAD - 1) / CONV_PAD * CONV_PAD; }

/* Fills the workspace with the weights; `extra` floats (64-byte aligned) follow at *rest. */
static sn_status load_weights(sn_ctx *ctx, weights *p, const sn_tensor *w, const sn_tensor *bias, int64_t extra,
                              float **rest) {
  int64_t C = w->size[0], W = w->size[1], Cp = padded(C);
  float *ws = sn_ctx_workspace(ctx, (size_t)((W + 2) * Cp + extra) * sizeof(float) + 1);
  if (!ws) return SN_ENOMEM;
  memset(ws, 0, (size_t)((W + 2) * Cp) * sizeof(float));
  float *wt = ws, *bt = ws + W * Cp;
  const float *pw = sn_f32(w);
  for (int64_t c = 0; c < C; c++)
    for (int64_t k = 0; k < W; k++) wt[k * Cp + c] = pw[c * w->stride[0] + k * w->stride[1]];
  if (bias)
    for (int64_t c = 0; c < C; c++) bt[c] = sn_f32(bias)[c * bias->stride[0]];
  *p = (weights){Cp, (int)W, wt, bt, bt + Cp};
  if (rest) *rest = bt + 2 * Cp;
  return SN_OK;
}

/* Task i: batch *b, steps [*t0, *t1). */
static void task_steps(int64_t i, int64_t nchunks, int64_t T, int64_t *b, int64_t *t0, int64_t *t1) {
  *b = i / nchunks;
  *t0 = i % nchunks * TCH;
  *t1 = *t0 + TCH < T ? *t0 + TCH : T;
}

/* ---- forward --------------------------------------------------------------------------- */

sn_status sn_causal_conv1d_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, const sn_tensor *w,
                               const sn_tensor *bias, bool silu) {
  sn_status st = need_in(ctx, FN, "x", x, 3, "(B, T, C)");
  if (st == SN_OK) st = need_weights(ctx, FN, w, bias, x->size[2]);
  if (st == SN_OK) st = need_out(ctx, FN, "y", y, 3, x->size);
  if (st != SN_OK) return st;
  const int64_t B = x->size[0], T = x->size[1], C = x->size[2], nchunks = (T + TCH - 1) / TCH;
  weights p;
  if ((st = load_weights(ctx, &p, w, bias, 0, NULL)) != SN_OK) return st;
  const sn_conv1d_ops *ops = conv_ops();
  const float *px = sn_f32(x);
  float *py = sn_f32(y);
#pragma omp parallel for schedule(static) if (B * T * C > NN_PARALLEL_MIN)
  for (int64_t i = 0; i < B * nchunks; i++) {
    int64_t b, t0, t1;
    task_steps(i, nchunks, T, &b, &t0, &t1);
    const float *xb = px + b * x->stride[0], *taps[CONV_WMAX];
    for (int64_t t = t0; t < t1; t++) {
      for (int k = 0; k < p.W; k++) {
        int64_t r = t - p.W + 1 + k; /* rows before t = 0 are zeros */
        taps[k] = r < 0 ? p.zero : xb + r * x->stride[1];
      }
      ops->row(py + (b * T + t) * C, taps, p.wt, p.bt, C, p.Cp, p.W, silu);
    }
  }
  return SN_OK;
}

/* ---- backward -------------------------------------------------------------------------- */

sn_status sn_causal_conv1d_bwd(sn_ctx *ctx, sn_tensor *dx, sn_tensor *dw, sn_tensor *dbias, const sn_tensor *dy,
                               const sn_tensor *x, const sn_tensor *w, const sn_tensor *bias, bool silu) {
  char a[160], b[160];
  sn_status st = need_in(ctx, FN, "x", x, 3, "(B, T, C)");
  if (st == SN_OK) st = need_in(ctx, FN, "grad_output", dy, 3, "(B, T, C)");
  if (st == SN_OK && !sn_same_shape(dy, x))
    st = sn_fail(ctx, SN_EINVAL, "%s: grad_output must have x's shape (x: %s, grad_output: %s)", FN,
                 sn_shape_str(x, a, sizeof a), sn_shape_str(dy, b, sizeof b));
  if (st == SN_OK) st = need_weights(ctx, FN, w, bias, x->size[2]);
  if (st == SN_OK) st = need_out(ctx, FN, "dx", dx, 3, x->size);
  if (st == SN_OK) st = need_out(ctx, FN, "dw", dw, 2, w->size);
  if (st == SN_OK && dbias) st = need_out(ctx, FN, "dbias", dbias, 1, &x->size[2]);
  if (st != SN_OK) return st;
  const int64_t B = x->size[0], T = x->size[1], C = x->size[2], nchunks = (T + TCH - 1) / TCH;
  const int64_t W = w->size[1], Cp = padded(C), ntasks = B * nchunks;
  const int nt = omp_get_max_threads();
  weights p;
  float *ring, *part; /* ring: (W-1, Cp) per thread; part: (W+1, Cp) per task */
  if ((st = load_weights(ctx, &p, w, bias, (nt * (W - 1) + ntasks * (W + 1)) * Cp, &ring)) != SN_OK) return st;
  part = ring + nt * (W - 1) * Cp;
  const sn_conv1d_ops *ops = conv_ops();
#pragma omp parallel for schedule(static) num_threads(nt) if (B * T * C > NN_PARALLEL_MIN)
  for (int64_t i = 0; i < ntasks; i++) {
    int64_t bi, t0, t1;
    task_steps(i, nchunks, T, &bi, &t0, &t1);
    conv_bwd_task task = {.W = p.W, .C = C, .Cp = Cp, .T = T, .t0 = t0, .t1 = t1, .wt = p.wt, .bt = p.bt,
                          .x = sn_f32(x) + bi * x->stride[0], .dy = sn_f32(dy) + bi * dy->stride[0],
                          .sx = x->stride[1], .sdy = dy->stride[1], .silu = silu,
                          .dx = sn_f32(dx) + bi * T * C, .acc = part + i * (W + 1) * Cp,
                          .ring = ring + omp_get_thread_num() * (W - 1) * Cp};
    ops->bwd(&task);
  }
  float *pdw = sn_f32(dw), *pdb = dbias ? sn_f32(dbias) : NULL;
#pragma omp parallel for schedule(static) if (ntasks * (W + 1) * C > NN_PARALLEL_MIN)
  for (int64_t c0 = 0; c0 < C; c0 += SEG) {
    int64_t n = C - c0 < SEG ? C - c0 : SEG;
    double sum[CONV_WMAX + 1][SEG] = {{0}};
    for (int64_t i = 0; i < ntasks; i++)
      for (int64_t k = 0; k <= W; k++)
        for (int64_t c = 0; c < n; c++) sum[k][c] += part[(i * (W + 1) + k) * Cp + c0 + c];
    for (int64_t c = 0; c < n; c++) {
      for (int64_t k = 0; k < W; k++) pdw[(c0 + c) * W + k] = (float)sum[k][c];
      if (pdb) pdb[c0 + c] = (float)sum[W][c];
    }
  }
  return SN_OK;
}

/* ---- decode step ----------------------------------------------------------------------- */

sn_status sn_causal_conv1d_step(sn_ctx *ctx, sn_tensor *y, sn_tensor *state, const sn_tensor *x,
                                const sn_tensor *w, const sn_tensor *bias, bool silu) {
  sn_status st = need_in(ctx, FN_STEP, "x", x, 2, "(B, C)");
  if (st == SN_OK) st = need_weights(ctx, FN_STEP, w, bias, x->size[1]);
  if (st != SN_OK) return st;
  const int64_t B = x->size[0], C = x->size[1], W = w->size[1];
  st = need_out(ctx, FN_STEP, "state", state, 3, (int64_t[]){B, W - 1, C});
  if (st == SN_OK) st = need_out(ctx, FN_STEP, "y", y, 2, x->size);
  weights p;
  if (st == SN_OK) st = load_weights(ctx, &p, w, bias, 0, NULL);
  if (st != SN_OK) return st;
  const sn_conv1d_ops *ops = conv_ops();
#pragma omp parallel for schedule(static) if (B * C * W > NN_PARALLEL_MIN)
  for (int64_t b = 0; b < B; b++) {
    float *s = sn_f32(state) + b * (W - 1) * C, *yb = sn_f32(y) + b * C;
    const float *xb = sn_f32(x) + b * x->stride[0], *taps[CONV_WMAX];
    for (int64_t k = 0; k < W - 1; k++) taps[k] = s + k * C;
    taps[W - 1] = xb;
    ops->row(yb, taps, p.wt, p.bt, C, p.Cp, p.W, silu);
    /* The oldest row leaves, x becomes the newest. */
    if (W > 1) {
      memmove(s, s + C, (size_t)((W - 2) * C) * sizeof(float));
      memcpy(s + (W - 2) * C, xb, (size_t)C * sizeof(float));
    }
  }
  return SN_OK;
}
