/* kernels/optim.c -- fused AdamW and SGD steps over one parameter tensor (formulas in
 * seqnn.h). Elementwise and in place: fixed chunks shared among threads, each walked in
 * stack tiles so the square roots go through sn_vec. Operations and their order follow
 * PyTorch's (lerp_, mul_/addcmul_, sqrt/div/add_, addcdiv_), so results agree to rounding. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "kernels/nn.h"
#include "simd/vec.h"

#define TILE 512
#define CHUNK 65536

static sn_status check_same(sn_ctx *ctx, const char *fn, const sn_tensor *p, const sn_tensor *grad,
                            const char *an, const sn_tensor *a, const char *bn, const sn_tensor *b) {
  int64_t n = sn_numel(p);
  sn_status st = nn_need(ctx, fn, "param", p, SN_F32, n);
  if (st == SN_OK) st = nn_need(ctx, fn, "grad", grad, SN_F32, n);
  if (st == SN_OK && a) st = nn_need(ctx, fn, an, a, SN_F32, n);
  if (st == SN_OK && b) st = nn_need(ctx, fn, bn, b, SN_F32, n);
  return st;
}

/* One tile (m <= TILE) of the AdamW update. The dense and the row-sparse steps both call
 * it, so a row updated lazily gets exactly the bits the dense step would give it. */
static inline void adamw_tile(float *x, float *ea, float *eas, const float *g, int64_t m, float decay, float w1,
                              float b2, float w2, float e, float step_size, float bc2_sqrt) {
  float root[TILE];
#pragma omp simd
  for (int64_t i = 0; i < m; i++) {
    x[i] *= decay;
    ea[i] += w1 * (g[i] - ea[i]);
    eas[i] = eas[i] * b2 + w2 * g[i] * g[i];
  }
  sn_vec->unary(SN_SQRT, root, eas, m);
#pragma omp simd
  for (int64_t i = 0; i < m; i++) x[i] += -step_size * ea[i] / (root[i] / bc2_sqrt + e);
}

sn_status sn_adamw_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *exp_avg, sn_tensor *exp_avg_sq,
                        const sn_tensor *grad, double lr, double beta1, double beta2, double eps,
                        double weight_decay, int64_t step) {
  const char *fn = "seqnn.optim.AdamW";
  sn_status st = check_same(ctx, fn, p, grad, "exp_avg", exp_avg, "exp_avg_sq", exp_avg_sq);
  if (st != SN_OK) return st;
  if (step < 1) return sn_fail(ctx, SN_EINVAL, "%s: step must be >= 1, got %lld", fn, (long long)step);
  float decay = (float)(1.0 - lr * weight_decay), w1 = (float)(1.0 - beta1);
  float b2 = (float)beta2, w2 = (float)(1.0 - beta2), e = (float)eps;
  float step_size = (float)(lr / (1.0 - pow(beta1, (double)step)));
  float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)step));
  float *pp = sn_f32(p), *pm = sn_f32(exp_avg), *pv = sn_f32(exp_avg_sq);
  const float *pg = sn_f32(grad);
  int64_t n = sn_numel(p), chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; c++) {
    int64_t hi = c == chunks - 1 ? n : (c + 1) * CHUNK;
    for (int64_t i0 = c * CHUNK; i0 < hi; i0 += TILE) {
      int64_t m = hi - i0 < TILE ? hi - i0 : TILE;
      adamw_tile(pp + i0, pm + i0, pv + i0, pg + i0, m, decay, w1, b2, w2, e, step_size, bc2_sqrt);
    }
  }
  return SN_OK;
}

/* One element of SGD (momentum buffer b, or NULL), for the dense and the row steps alike. */
static inline void sgd_elem(float *x, float *b, float g, float wd, float mom, float damp, bool nesterov, bool first,
                            float neg_lr) {
  if (wd != 0.0f) g += wd * *x; /* as PyTorch: no 0 * p term (p may be inf) */
  if (b) {
    float bb = first ? g : mom * *b + damp * g;
    *b = bb;
    g = nesterov ? g + mom * bb : bb;
  }
  *x += neg_lr * g;
}

sn_status sn_sgd_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *buf, const sn_tensor *grad, double lr,
                      double momentum, double dampening, double weight_decay, bool nesterov,
                      bool first) {
  sn_status st = check_same(ctx, "seqnn.optim.SGD", p, grad, "momentum_buffer", buf, NULL, NULL);
  if (st != SN_OK) return st;
  float wd = (float)weight_decay, mom = (float)momentum, damp = (float)(1.0 - dampening);
  float neg_lr = (float)-lr;
  float *pp = sn_f32(p), *pb = buf ? sn_f32(buf) : NULL;
  const float *pg = sn_f32(grad);
  int64_t n = sn_numel(p);
#pragma omp parallel for schedule(static) if (n > NN_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) sgd_elem(pp + i, pb ? pb + i : NULL, pg[i], wd, mom, damp, nesterov, first, neg_lr);
  return SN_OK;
}

/* ---- row-sparse gradients and lazy steps ------------------------------------------------
 * A row-sparse gradient is (rows i64 (n), values f32 (n, D)) of a table viewed as (R, D).
 * Every entry point first makes a plan: the entries sorted by (row, position), so that the
 * duplicates of a row are adjacent and summed in the order given, and the start of each
 * row's group. Rows are then split among threads (never entries): no two threads write a
 * row, and the bits do not depend on the thread count. */

typedef struct {
  int64_t row, pos;
} rowpos;

static int cmp_rowpos(const void *a, const void *b) {
  const rowpos *x = a, *y = b;
  if (x->row != y->row) return x->row < y->row ? -1 : 1;
  return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* The plan: rp (n) sorted, gstart (U + 1); returns U, or -1 with ctx->err set when a row is
 * outside [0, R). Rows already strictly ascending (what the kernels emit) skip the sort. */
static int64_t plan_rows(sn_ctx *ctx, const char *fn, const int64_t *rows, int64_t n, int64_t R, rowpos *rp,
                         int64_t *gstart) {
  bool ascending = true;
  for (int64_t i = 0; i < n; i++) {
    if (rows[i] < 0 || rows[i] >= R) {
      sn_fail(ctx, SN_EINVAL, "%s: rows[%lld] = %lld is outside the %lld rows of the parameter", fn, (long long)i,
              (long long)rows[i], (long long)R);
      return -1;
    }
    rp[i].row = rows[i], rp[i].pos = i;
    ascending = ascending && (i == 0 || rows[i] > rows[i - 1]);
  }
  if (!ascending) qsort(rp, (size_t)n, sizeof *rp, cmp_rowpos);
  int64_t U = 0;
  for (int64_t i = 0; i < n; i++)
    if (i == 0 || rp[i].row != rp[i - 1].row) gstart[U++] = i;
  gstart[U] = n;
  return U;
}

/* rows must be a contiguous i64 vector. */
static sn_status check_rows(sn_ctx *ctx, const char *fn, const sn_tensor *rows) {
  if (rows->ndim != 1 || rows->dtype != SN_I64 || !sn_is_contiguous(rows))
    return sn_fail(ctx, SN_EINVAL, "%s: 'rows' must be a contiguous i64 vector, got %s %s", fn,
                   sn_dtype_name(rows->dtype), sn_shape_str(rows, (char[160]){0}, 160));
  return SN_OK;
}

/* The rows argument and the (R, D) view of p: values must hold n rows of D. */
static sn_status rows_args(sn_ctx *ctx, const char *fn, const sn_tensor *p, const sn_tensor *rows,
                           const sn_tensor *values, int64_t *R, int64_t *D) {
  if (p->ndim < 1 || p->size[0] < 1)
    return sn_fail(ctx, SN_EINVAL, "%s: a row-sparse gradient needs a parameter with rows, got %s", fn,
                   sn_shape_str(p, (char[160]){0}, 160));
  *R = p->size[0], *D = sn_numel(p) / *R;
  sn_status st = nn_need(ctx, fn, "param", p, SN_F32, sn_numel(p));
  if (st == SN_OK) st = check_rows(ctx, fn, rows);
  if (st == SN_OK) {
    int64_t n = rows->size[0];
    if (n > 0 && *D > INT64_MAX / n) return sn_fail(ctx, SN_EINVAL, "%s: %lld rows of %lld overflow", fn, (long long)n, (long long)*D);
    st = nn_need(ctx, fn, "values", values, SN_F32, n * *D);
  }
  return st;
}

/* The plan of rows (n entries, see plan_rows) in the workspace, and per thread a buffer of
 * `width` floats for a group's summed gradient (bufs + thread * width). */
typedef struct {
  rowpos *rp;
  int64_t *gstart, U;
  float *bufs;
} plan;

static sn_status make_plan(sn_ctx *ctx, const char *fn, const sn_tensor *rows, int64_t R, int64_t width, plan *pl) {
  int64_t n = rows->size[0];
  size_t need = (size_t)n * sizeof(rowpos) + (size_t)(n + 1) * sizeof(int64_t);
  size_t bufs = (size_t)omp_get_max_threads() * (size_t)width * sizeof(float);
  char *ws = sn_ctx_workspace(ctx, need + bufs + 64);
  if (!ws) return SN_ENOMEM;
  pl->rp = (rowpos *)(void *)ws;
  pl->gstart = (int64_t *)(void *)(ws + (size_t)n * sizeof(rowpos));
  pl->bufs = (float *)(void *)(ws + need);
  pl->U = plan_rows(ctx, fn, sn_i64(rows), n, R, pl->rp, pl->gstart);
  return pl->U < 0 ? SN_EINVAL : SN_OK;
}

/* The gradient of group u: the one values row, or the duplicates summed into buf. */
static const float *group_grad(const rowpos *rp, const int64_t *gstart, int64_t u, const float *values, int64_t D,
                               float *buf) {
  int64_t a = gstart[u], b = gstart[u + 1];
  const float *first = values + rp[a].pos * D;
  if (b - a == 1) return first;
  for (int64_t c = 0; c < D; c++) buf[c] = first[c];
  for (int64_t i = a + 1; i < b; i++) {
    const float *v = values + rp[i].pos * D;
    for (int64_t c = 0; c < D; c++) buf[c] += v[c];
  }
  return buf;
}

sn_status sn_adamw_rows_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *exp_avg, sn_tensor *exp_avg_sq,
                             sn_tensor *row_step, const sn_tensor *rows, const sn_tensor *values, double lr,
                             double beta1, double beta2, double eps, double weight_decay) {
  const char *fn = "seqnn.optim.AdamW";
  int64_t R, D;
  sn_status st = rows_args(ctx, fn, p, rows, values, &R, &D);
  if (st == SN_OK) st = nn_need(ctx, fn, "exp_avg", exp_avg, SN_F32, sn_numel(p));
  if (st == SN_OK) st = nn_need(ctx, fn, "exp_avg_sq", exp_avg_sq, SN_F32, sn_numel(p));
  if (st == SN_OK) st = nn_need(ctx, fn, "row_step", row_step, SN_I64, R);
  if (st != SN_OK) return st;
  plan pl;
  st = make_plan(ctx, fn, rows, R, D, &pl);
  if (st != SN_OK) return st;
  const rowpos *rp = pl.rp;
  const int64_t *gstart = pl.gstart, U = pl.U;
  float decay = (float)(1.0 - lr * weight_decay), w1 = (float)(1.0 - beta1);
  float b2 = (float)beta2, w2 = (float)(1.0 - beta2), e = (float)eps;
  float *pp = sn_f32(p), *pm = sn_f32(exp_avg), *pv = sn_f32(exp_avg_sq);
  const float *pg = sn_f32(values);
  int64_t *steps = sn_i64(row_step);
#pragma omp parallel if (U * D > NN_PARALLEL_MIN)
  {
    float *buf = pl.bufs + (int64_t)omp_get_thread_num() * D;
#pragma omp for schedule(static)
    for (int64_t u = 0; u < U; u++) {
      int64_t r = rp[gstart[u]].row, t = ++steps[r];
      const float *g = group_grad(rp, gstart, u, pg, D, buf);
      /* The same expressions as sn_adamw_step, with this row's own step count. */
      float step_size = (float)(lr / (1.0 - pow(beta1, (double)t)));
      float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)t));
      for (int64_t i0 = 0; i0 < D; i0 += TILE) {
        int64_t m = D - i0 < TILE ? D - i0 : TILE, o = r * D + i0;
        adamw_tile(pp + o, pm + o, pv + o, g + i0, m, decay, w1, b2, w2, e, step_size, bc2_sqrt);
      }
    }
  }
  return SN_OK;
}

sn_status sn_sgd_rows_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *buf, sn_tensor *row_step,
                           const sn_tensor *rows, const sn_tensor *values, double lr, double momentum,
                           double dampening, double weight_decay, bool nesterov) {
  const char *fn = "seqnn.optim.SGD";
  int64_t R, D;
  sn_status st = rows_args(ctx, fn, p, rows, values, &R, &D);
  if (st == SN_OK && (buf == NULL) != (row_step == NULL))
    st = sn_fail(ctx, SN_EINVAL, "%s: momentum_buffer and row_step must be given together", fn);
  if (st == SN_OK && buf) st = nn_need(ctx, fn, "momentum_buffer", buf, SN_F32, sn_numel(p));
  if (st == SN_OK && row_step) st = nn_need(ctx, fn, "row_step", row_step, SN_I64, R);
  if (st != SN_OK) return st;
  plan pl;
  st = make_plan(ctx, fn, rows, R, D, &pl);
  if (st != SN_OK) return st;
  const rowpos *rp = pl.rp;
  const int64_t *gstart = pl.gstart, U = pl.U;
  float wd = (float)weight_decay, mom = (float)momentum, damp = (float)(1.0 - dampening), neg_lr = (float)-lr;
  float *pp = sn_f32(p), *pb = buf ? sn_f32(buf) : NULL;
  const float *pg = sn_f32(values);
  int64_t *steps = row_step ? sn_i64(row_step) : NULL;
#pragma omp parallel if (U * D > NN_PARALLEL_MIN)
  {
    float *tmp = pl.bufs + (int64_t)omp_get_thread_num() * D;
#pragma omp for schedule(static)
    for (int64_t u = 0; u < U; u++) {
      int64_t r = rp[gstart[u]].row;
      const float *grow = group_grad(rp, gstart, u, pg, D, tmp);
      bool first = steps && steps[r]++ == 0;
      float *x = pp + r * D, *b = pb ? pb + r * D : NULL;
      for (int64_t i = 0; i < D; i++)
        sgd_elem(x + i, b ? b + i : NULL, grow[i], wd, mom, damp, nesterov, first, neg_lr);
    }
  }
  return SN_OK;
}

sn_status sn_rows_count(sn_ctx *ctx, int64_t *unique, const sn_tensor *rows, int64_t R) {
  const char *fn = "seqnn.sparse_grad";
  sn_status st = check_rows(ctx, fn, rows);
  if (st != SN_OK) return st;
  plan pl;
  st = make_plan(ctx, fn, rows, R, 0, &pl);
  if (st == SN_OK) *unique = pl.U;
  return st;
}

sn_status sn_rows_coalesce(sn_ctx *ctx, sn_tensor *out_rows, sn_tensor *out_values, const sn_tensor *rows,
                           const sn_tensor *values, int64_t R) {
  const char *fn = "seqnn.sparse_grad";
  sn_status st = check_rows(ctx, fn, rows);
  if (st != SN_OK) return st;
  int64_t n = rows->size[0];
  if (values->ndim < 1 || values->size[0] != n)
    return sn_fail(ctx, SN_EINVAL, "%s: values must have %lld rows, got %s", fn, (long long)n,
                   sn_shape_str(values, (char[160]){0}, 160));
  int64_t D = n > 0 ? sn_numel(values) / n : 0;
  st = nn_need(ctx, fn, "values", values, SN_F32, n * D);
  if (st != SN_OK) return st;
  plan pl;
  st = make_plan(ctx, fn, rows, R, 0, &pl);
  if (st != SN_OK) return st;
  const rowpos *rp = pl.rp;
  const int64_t *gstart = pl.gstart, U = pl.U;
  st = nn_need(ctx, fn, "out_rows", out_rows, SN_I64, U);
  if (st == SN_OK) st = nn_need(ctx, fn, "out_values", out_values, SN_F32, U * D);
  if (st != SN_OK) return st;
  int64_t *orow = sn_i64(out_rows);
  float *ov = sn_f32(out_values);
  const float *pv = sn_f32(values);
#pragma omp parallel for schedule(static) if (n * D > NN_PARALLEL_MIN)
  for (int64_t u = 0; u < U; u++) {
    orow[u] = rp[gstart[u]].row;
    const float *g = group_grad(rp, gstart, u, pv, D, ov + u * D);
    if (g != ov + u * D)
      for (int64_t c = 0; c < D; c++) ov[u * D + c] = g[c];
  }
  return SN_OK;
}

sn_status sn_rows_scatter_add(sn_ctx *ctx, sn_tensor *dense, const sn_tensor *rows, const sn_tensor *values) {
  const char *fn = "seqnn.sparse_grad";
  int64_t R, D;
  sn_status st = rows_args(ctx, fn, dense, rows, values, &R, &D);
  if (st != SN_OK) return st;
  const int64_t *pr = sn_i64(rows), n = rows->size[0];
  for (int64_t i = 0; i < n; i++)
    if (pr[i] < 0 || pr[i] >= R)
      return sn_fail(ctx, SN_EINVAL, "%s: rows[%lld] = %lld is outside the %lld rows of the parameter", fn,
                     (long long)i, (long long)pr[i], (long long)R);
  float *pd = sn_f32(dense);
  const float *pv = sn_f32(values);
  /* Entries in order (duplicates add in the order given); columns are split among threads. */
  const int64_t CB = 256, nb = (D + CB - 1) / CB;
#pragma omp parallel for schedule(static) if (n * D > NN_PARALLEL_MIN && nb > 1)
  for (int64_t b = 0; b < nb; b++) {
    int64_t c0 = b * CB, c1 = c0 + CB < D ? c0 + CB : D;
    for (int64_t i = 0; i < n; i++) {
      float *d = pd + pr[i] * D;
      const float *v = pv + i * D;
      for (int64_t c = c0; c < c1; c++) d[c] += v[c];
    }
  }
  return SN_OK;
}
