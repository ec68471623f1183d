/* ops/reduce.c -- sum, mean, max, min, argmax, argmin and logsumexp over one dim or all.
 *
 * a is seen as (outer, R, inner): R is the reduced dim, inner the dims after it. Inner dims
 * must be contiguous and, when inner is 1, the reduced dim too; outer dims may have any
 * strides. Anything else is first copied into the workspace (contiguous).
 *   inner == 1: each output reduces a contiguous run of R. Runs are cut into BLOCK-sized
 *     blocks (when R > BLOCK) whose partial results are combined in block order.
 *   inner > 1:  tasks own TILE consecutive outputs and sweep the R rows with the
 *     sn_vec acc_* kernels, so the loads vectorize along inner.
 * Both cuts depend on the shape alone, so results are bitwise the same for any thread
 * count. Sums are accumulated in double (float lanes inside sn_vec->sum's short blocks).
 * Logsumexp is m + log(sum exp(x - m)), m a reference near the max that sn_vec->lse picks
 * in its one read of a run (blocks merge by rescaling to the largest m); an infinite or
 * NaN max is the result itself. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "seqnn.h"
#include "simd/vec.h"

/* Elements per block of a long run (parallel work unit). */
#define BLOCK 65536
/* Outputs per task when reducing a dim that is not last (stack accumulators). */
#define TILE 1024
/* Rows per acc_add call: this many concurrent streams, each a TILE-long run. */
#define ACC_ROWS 8
/* Below this many input elements everything runs on the calling thread. */
#define PARALLEL_MIN 65536

const char *sn_redop_name(sn_redop op) {
  static const char *names[SN_REDOP_COUNT] = {"sum", "mean", "max", "min", "argmax", "argmin", "logsumexp"};
  return op >= 0 && op < SN_REDOP_COUNT ? names[op] : "?";
}

typedef struct {
  const void *x; /* first element */
  int n_outer;   /* outer dims (outermost first) */
  int64_t osize[SN_MAX_DIMS], ostride[SN_MAX_DIMS];
  int64_t outer, R, rstride, inner; /* inner dims have stride 1 */
} layout;

/* One block's (or whole run's) result: a sum, an extreme value, an extreme and its index,
 * or for logsumexp a reference m and v = sum exp(x - m) (m is the max when not finite). */
typedef struct {
  double v;
  int64_t i;
  float m;
} partial;

typedef struct {
  sn_redop op;
  layout l;
  void *out;
  int64_t blocks; /* per run (inner == 1) or TILE tasks per outer index (inner > 1) */
  partial *parts; /* outer * blocks, when inner == 1 and blocks > 1 */
} task;

static int64_t outer_offset(const layout *l, int64_t o) {
  int64_t off = 0;
  for (int d = l->n_outer - 1; d >= 0; d--) {
    off += (o % l->osize[d]) * l->ostride[d];
    o /= l->osize[d];
  }
  return off;
}

/* Points l (outer, R, inner already set) at a's own memory for reducing dim (dim < 0:
 * all); false when a's strides do not fit the layout. */
static bool direct_layout(layout *l, const sn_tensor *a, int dim) {
  l->x = sn_data(a);
  if (dim < 0) {
    l->n_outer = 0;
    l->rstride = 1;
    return sn_is_contiguous(a);
  }
  int64_t inner = 1;
  for (int d = a->ndim - 1; d > dim; d--) {
    if (a->size[d] != 1 && a->stride[d] != inner) return false;
    inner *= a->size[d];
  }
  l->n_outer = dim;
  for (int d = 0; d < dim; d++) {
    l->osize[d] = a->size[d];
    l->ostride[d] = a->stride[d];
  }
  l->rstride = l->R == 1 ? inner : a->stride[dim];
  return inner > 1 || l->rstride == 1;
}

/* The same reduction over a contiguous copy of a at x. */
static void contiguous_layout(layout *l, const void *x) {
  l->x = x;
  l->n_outer = 1;
  l->osize[0] = l->outer;
  l->ostride[0] = l->R * l->inner;
  l->rstride = l->inner;
}

/* NaN wins; otherwise strictly better, so ties keep the earlier index. */
static bool beats(sn_redop op, double v, double best) {
  if (isnan(v)) return !isnan(best);
  return (op == SN_RMAX || op == SN_ARGMAX) ? v > best : v < best;
}

/* (m, sum exp(x - m)) of x[0..n) in one read (sn_vec->lse); runs it cannot do (inf, NaN,
 * leading -inf) take two: the max, then the sum when the max is finite. */
static partial lse_partial(const float *x, int64_t n) {
  partial p = {0, 0, 0};
  sn_vec->lse(x, n, &p.m, &p.v);
  if (isfinite(p.m) && isfinite(p.v)) return p;
  p.m = sn_vec->max(x, n);
  p.v = isfinite(p.m) ? sn_vec->sumexp(x, p.m, n) : 0;
  return p;
}

/* x[0..n) of a run whose first element has index `start`. */
static partial block_partial(sn_redop op, const float *x, int64_t n, int64_t start) {
  partial p = {0, 0, 0};
  switch (op) {
  case SN_SUM:
  case SN_MEAN: p.v = sn_vec->sum(x, n); break;
  case SN_LOGSUMEXP: p = lse_partial(x, n); break;
  case SN_RMAX:
  case SN_ARGMAX: p.v = sn_vec->max(x, n); break;
  case SN_RMIN:
  case SN_ARGMIN: p.v = sn_vec->min(x, n); break;
  default: break;
  }
  if (op == SN_ARGMAX || op == SN_ARGMIN) p.i = start + sn_vec->find(x, n, (float)p.v);
  return p;
}

/* Folds the blocks of one run in order; logsumexp sums each block's exps rescaled to the
 * largest m (a NaN m wins). */
static partial combine(sn_redop op, const partial *p, int64_t n) {
  partial r = p[0];
  if (op == SN_LOGSUMEXP) {
    for (int64_t b = 1; b < n; b++)
      if (isnan(p[b].m) || p[b].m > r.m) r.m = p[b].m;
    if (!isfinite(r.m)) return r;
    r.v = 0;
    for (int64_t b = 0; b < n; b++) r.v += p[b].v * exp((double)p[b].m - r.m);
    return r;
  }
  for (int64_t b = 1; b < n; b++) {
    if (op == SN_SUM || op == SN_MEAN) r.v += p[b].v;
    else if (beats(op, p[b].v, r.v)) r = p[b];
  }
  return r;
}

/* Writes output o from its run's combined partial. */
static void finish(const task *t, int64_t o, partial p) {
  float *y = t->out;
  switch (t->op) {
  case SN_MEAN: y[o] = (float)(p.v / (double)t->l.R); break;
  case SN_LOGSUMEXP: y[o] = isfinite(p.m) ? (float)(p.m + log(p.v)) : p.m; break;
  case SN_ARGMAX:
  case SN_ARGMIN: ((int64_t *)t->out)[o] = p.i; break;
  default: y[o] = (float)p.v; break;
  }
}

/* inner == 1, one task per run: the whole reduction of run o. */
static void run_task(const task *t, int64_t o) {
  const float *x = (const float *)t->l.x + outer_offset(&t->l, o);
  finish(t, o, block_partial(t->op, x, t->l.R, 0));
}

/* inner == 1, long runs: block b of run o into t->parts. */
static void block_task(const task *t, int64_t item) {
  int64_t o = item / t->blocks, start = item % t->blocks * BLOCK;
  int64_t n = t->l.R - start < BLOCK ? t->l.R - start : BLOCK;
  const float *x = (const float *)t->l.x + outer_offset(&t->l, o) + start;
  t->parts[item] = block_partial(t->op, x, n, start);
}

/* inner > 1: outputs [j0, j0 + n) of outer index o, sweeping the R rows. */
static void tile_task(const task *t, int64_t item) {
  const layout *l = &t->l;
  int64_t o = item / t->blocks, j0 = item % t->blocks * TILE;
  int64_t n = l->inner - j0 < TILE ? l->inner - j0 : TILE, at = o * l->inner + j0, rs = l->rstride;
  const float *x = (const float *)l->x + outer_offset(l, o) + j0;
  float *y = (float *)t->out + at;
  double acc[TILE];
  float best[TILE];
  switch (t->op) {
  case SN_SUM:
  case SN_MEAN:
    memset(acc, 0, (size_t)n * sizeof *acc);
    for (int64_t r = 0; r < l->R; r += ACC_ROWS)
      sn_vec->acc_add(acc, x + r * rs, rs, l->R - r < ACC_ROWS ? l->R - r : ACC_ROWS, n);
    for (int64_t j = 0; j < n; j++) y[j] = (float)(t->op == SN_MEAN ? acc[j] / (double)l->R : acc[j]);
    break;
  case SN_RMAX:
  case SN_RMIN: {
    sn_binop pick = t->op == SN_RMAX ? SN_MAX : SN_MIN;
    memcpy(y, x, (size_t)n * sizeof *y);
    for (int64_t r = 1; r < l->R; r++) sn_vec->binary(pick, y, y, x + r * rs, n);
    break;
  }
  case SN_ARGMAX:
  case SN_ARGMIN: {
    int64_t *idx = (int64_t *)t->out + at;
    memcpy(best, x, (size_t)n * sizeof *best);
    memset(idx, 0, (size_t)n * sizeof *idx);
    for (int64_t r = 1; r < l->R; r++)
      (t->op == SN_ARGMAX ? sn_vec->acc_argmax : sn_vec->acc_argmin)(best, idx, x + r * rs, r, n);
    break;
  }
  case SN_LOGSUMEXP:
    memcpy(best, x, (size_t)n * sizeof *best);
    for (int64_t r = 1; r < l->R; r++) sn_vec->binary(SN_MAX, best, best, x + r * rs, n);
    memset(acc, 0, (size_t)n * sizeof *acc);
    for (int64_t r = 0; r < l->R; r++) sn_vec->acc_sumexp(acc, x + r * rs, best, n);
    for (int64_t j = 0; j < n; j++) y[j] = isfinite(best[j]) ? (float)(best[j] + log(acc[j])) : best[j];
    break;
  default: break;
  }
}

/* Tasks never share an output, so they may run in any order on any thread. */
static void run_all(const task *t, int64_t tasks, void (*fn)(const task *, int64_t)) {
  if (tasks < 2 || t->l.outer * t->l.R * t->l.inner < PARALLEL_MIN) {
    for (int64_t i = 0; i < tasks; i++) fn(t, i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < tasks; i++) fn(t, i);
}

static void reduce_f32(task *t) {
  const layout *l = &t->l;
  if (l->inner > 1) {
    t->blocks = (l->inner + TILE - 1) / TILE;
    run_all(t, l->outer * t->blocks, tile_task);
  } else if (t->blocks == 1) {
    run_all(t, l->outer, run_task);
  } else {
    run_all(t, l->outer * t->blocks, block_task);
    for (int64_t o = 0; o < l->outer; o++) finish(t, o, combine(t->op, t->parts + o * t->blocks, t->blocks));
  }
}

/* i64 (SUM, RMAX, RMIN, ARG*): plain loops; sums wrap around like PyTorch's. */
static void reduce_i64(const layout *l, sn_redop op, int64_t *out) {
  bool want_max = op == SN_RMAX || op == SN_ARGMAX;
  for (int64_t o = 0; o < l->outer; o++) {
    const int64_t *x = (const int64_t *)l->x + outer_offset(l, o);
    for (int64_t j = 0; j < l->inner; j++) {
      int64_t best = x[j], at = 0;
      uint64_t sum = (uint64_t)x[j];
      for (int64_t r = 1; r < l->R; r++) {
        int64_t v = x[r * l->rstride + j];
        sum += (uint64_t)v;
        if (want_max ? v > best : v < best) best = v, at = r;
      }
      out[o * l->inner + j] = op == SN_SUM ? (int64_t)sum : (op == SN_ARGMAX || op == SN_ARGMIN) ? at : best;
    }
  }
}

/* The workspace is not ours to free. */
static void keep_workspace(void *ud, void *data, int64_t nbytes) {}

sn_status sn_reduce(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, int dim, sn_redop op) {
  if (op < 0 || op >= SN_REDOP_COUNT) return sn_fail(ctx, SN_EINVAL, "seqnn.reduce: unknown op %d", (int)op);
  char fn[32], sa[128], so[128];
  snprintf(fn, sizeof fn, "seqnn.%s", sn_redop_name(op));
  sn_shape_str(a, sa, sizeof sa);
  if (a->ndim == 0 && dim == 0) dim = -1; /* a 0-dim tensor's only dim is everything */
  if (dim >= a->ndim)
    return sn_fail(ctx, SN_EINVAL, "%s: dim %d out of range for a %d-dim tensor (a: %s)", fn, dim + 1,
                   a->ndim, sa);
  bool arg = op == SN_ARGMAX || op == SN_ARGMIN;
  sn_dtype odt = arg ? SN_I64 : a->dtype;
  if (a->dtype == SN_I64 && (op == SN_MEAN || op == SN_LOGSUMEXP))
    return sn_fail(ctx, SN_EINVAL, "%s: needs an f32 tensor, got i64 (a: %s)", fn, sa);

  int64_t numel = sn_numel(a), R = dim < 0 ? numel : a->size[dim], inner = 1, kept = 1;
  for (int d = 0; dim >= 0 && d < a->ndim; d++) {
    if (d != dim) kept *= a->size[d];
    if (d > dim) inner *= a->size[d];
  }
  char where[160];
  if (dim < 0) snprintf(where, sizeof where, "a: %s", sa);
  else snprintf(where, sizeof where, "a: %s, dim %d", sa, dim + 1);
  if (out->dtype != odt || sn_numel(out) != kept || !sn_is_contiguous(out))
    return sn_fail(ctx, SN_EINVAL, "%s: out must be a contiguous %s tensor of %lld elements (%s), got %s %s",
                   fn, sn_dtype_name(odt), (long long)kept, where, sn_dtype_name(out->dtype),
                   sn_shape_str(out, so, sizeof so));
  if (R == 0) {
    if (op != SN_SUM && op != SN_MEAN && op != SN_LOGSUMEXP)
      return sn_fail(ctx, SN_EINVAL, "%s: cannot reduce an empty dim (%s)", fn, where);
    return sn_fill(ctx, out, op == SN_SUM ? 0.0 : op == SN_MEAN ? NAN : -INFINITY);
  }
  if (kept == 0) return SN_OK;

  task t = {.op = op, .out = sn_data(out), .l = {.outer = kept / inner, .R = R, .inner = inner}};
  bool direct = direct_layout(&t.l, a, dim);
  t.blocks = (R + BLOCK - 1) / BLOCK;
  size_t esize = sn_dtype_size(a->dtype);
  size_t copy_bytes = direct ? 0 : ((size_t)numel * esize + SN_ALIGN - 1) / SN_ALIGN * SN_ALIGN;
  size_t part_bytes = t.l.inner == 1 && t.blocks > 1 ? (size_t)(t.l.outer * t.blocks) * sizeof(partial) : 0;
  char *ws = NULL;
  if (copy_bytes + part_bytes > 0 && !(ws = sn_ctx_workspace(ctx, copy_bytes + part_bytes))) return SN_ENOMEM;
  if (!direct) {
    sn_tensor copy;
    sn_status st = sn_tensor_wrap(ctx, &copy, ws, (int64_t)copy_bytes, a->dtype, a->ndim, a->size,
                                  keep_workspace, NULL);
    if (st == SN_OK) st = sn_copy(ctx, &copy, a);
    sn_tensor_release(&copy);
    if (st != SN_OK) return st;
    contiguous_layout(&t.l, ws);
  }
  if (part_bytes > 0) t.parts = (partial *)(ws + copy_bytes);
  if (a->dtype == SN_I64) reduce_i64(&t.l, op, t.out);
  else reduce_f32(&t);
  return SN_OK;
}
