/* ops/elementwise.c -- out = a op b (numpy broadcasting), out = a op s, out = op(a).
 *
 * Operands are described with out's shape (broadcast dims get stride 0), dims that are
 * contiguous in every operand are merged, and the element range is cut into CHUNK-sized
 * tasks. A task walks runs of the innermost merged dim: unit-stride runs go straight to
 * the sn_vec table, a stride-0 operand becomes its scalar form, other runs are gathered
 * into stack tiles. Each output element is computed once, by one thread, from its own
 * inputs, so in-place calls (out is a, or b) are safe and results ignore the thread count.
 * i64 runs are plain loops in unsigned arithmetic (wraparound, not undefined overflow). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "seqnn.h"
#include "simd/vec.h"

/* Elements per parallel task: enough that scheduling is noise next to the work. */
#define CHUNK 65536
/* Strided runs are gathered into stack tiles of this many floats. */
#define TILE 512

typedef enum { UNARY, BINARY, SCALAR } kind;

/* One call, with its operands (0 = out, 1 = a, 2 = b) in merged-dim form. */
typedef struct {
  kind kind;
  int op; /* sn_unop or sn_binop */
  sn_dtype dtype;
  float s;     /* SCALAR on f32 */
  int64_t si;  /* SCALAR on i64 */
  bool scalar_first;
  int nops;
  int ndim;
  int64_t size[SN_MAX_DIMS];
  int64_t stride[3][SN_MAX_DIMS];
  void *base[3];
} job;

const char *sn_binop_name(sn_binop op) {
  static const char *names[SN_BINOP_COUNT] = {"add", "sub", "mul", "div", "pow", "max", "min"};
  return op >= 0 && op < SN_BINOP_COUNT ? names[op] : "?";
}

const char *sn_unop_name(sn_unop op) {
  static const char *names[SN_UNOP_COUNT] = {"exp",      "log",  "tanh",  "sigmoid", "silu", "gelu",
                                             "softplus", "sqrt", "rsqrt", "abs",     "neg"};
  return op >= 0 && op < SN_UNOP_COUNT ? names[op] : "?";
}

/* ---- layout ------------------------------------------------------------------------ */

/* t's strides seen through shape (nd, size): missing leading dims and size-1 dims get 0. */
static void broadcast_strides(const sn_tensor *t, int nd, int64_t *stride) {
  for (int d = 0; d < nd; d++) {
    int dt = d - (nd - t->ndim);
    stride[d] = (dt < 0 || t->size[dt] == 1) ? 0 : t->stride[dt];
  }
}

/* Fills j->ndim/size/stride from the full shape, dropping size-1 dims and merging a dim
 * into the one outside it when that is contiguous for every operand. */
static void merge_dims(job *j, int nd, const int64_t *size, int64_t st[3][SN_MAX_DIMS]) {
  int m = 0;
  for (int d = 0; d < nd; d++) {
    if (size[d] == 1) continue;
    bool merge = m > 0;
    for (int k = 0; k < j->nops && merge; k++) merge = j->stride[k][m - 1] == st[k][d] * size[d];
    if (merge) {
      j->size[m - 1] *= size[d];
    } else {
      j->size[m] = size[d];
      m++;
    }
    for (int k = 0; k < j->nops; k++) j->stride[k][m - 1] = st[k][d];
  }
  if (m == 0) { /* a single element */
    j->size[0] = 1;
    for (int k = 0; k < j->nops; k++) j->stride[k][0] = 1;
    m = 1;
  }
  j->ndim = m;
}

/* ---- runs -------------------------------------------------------------------------- */

/* y = f(a[, b]) over n contiguous floats (y may alias a or b). */
static void compute_f32(const job *j, float *y, const float *a, const float *b, int64_t n) {
  switch (j->kind) {
  case UNARY: sn_vec->unary((sn_unop)j->op, y, a, n); break;
  case BINARY: sn_vec->binary((sn_binop)j->op, y, a, b, n); break;
  case SCALAR: sn_vec->binary_scalar((sn_binop)j->op, y, a, j->s, n, j->scalar_first); break;
  }
}

/* A contiguous view of n floats at stride s: p itself, or a copy in tile. */
static const float *gather(float *tile, const float *p, int64_t s, int64_t n) {
  if (s == 1) return p;
  for (int64_t i = 0; i < n; i++) tile[i] = p[i * s];
  return tile;
}

static void run_f32(const job *j, float *y, int64_t sy, const float *a, int64_t sa,
                    const float *b, int64_t sb, int64_t n) {
  bool binary = j->kind == BINARY;
  if (sy == 1 && sa == 1 && (!binary || sb == 1)) {
    compute_f32(j, y, a, b, n);
  } else if (binary && sy == 1 && sa == 1 && sb == 0) {
    sn_vec->binary_scalar((sn_binop)j->op, y, a, *b, n, false);
  } else if (binary && sy == 1 && sa == 0 && sb == 1) {
    sn_vec->binary_scalar((sn_binop)j->op, y, b, *a, n, true);
  } else {
    float ta[TILE], tb[TILE], ty[TILE];
    for (int64_t i = 0; i < n; i += TILE) {
      int64_t m = n - i < TILE ? n - i : TILE;
      const float *pa = gather(ta, a + i * sa, sa, m);
      const float *pb = binary ? gather(tb, b + i * sb, sb, m) : NULL;
      if (sy == 1) {
        compute_f32(j, y + i, pa, pb, m);
      } else {
        compute_f32(j, ty, pa, pb, m);
        for (int64_t k = 0; k < m; k++) y[(i + k) * sy] = ty[k];
      }
    }
  }
}

static int64_t binop_i64(sn_binop op, int64_t x, int64_t y) {
  uint64_t ux = (uint64_t)x, uy = (uint64_t)y;
  switch (op) {
  case SN_ADD: return (int64_t)(ux + uy);
  case SN_SUB: return (int64_t)(ux - uy);
  case SN_MUL: return (int64_t)(ux * uy);
  case SN_MAX: return x > y ? x : y;
  case SN_MIN: return x < y ? x : y;
  default: return 0; /* DIV and POW are rejected before any run */
  }
}

static int64_t unop_i64(sn_unop op, int64_t x) {
  uint64_t neg = 0u - (uint64_t)x; /* -INT64_MIN wraps to INT64_MIN, as in PyTorch */
  return (op == SN_NEG || x < 0) ? (int64_t)neg : x;
}

static void run_i64(const job *j, int64_t *y, int64_t sy, const int64_t *a, int64_t sa,
                    const int64_t *b, int64_t sb, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    int64_t x = a[i * sa];
    switch (j->kind) {
    case UNARY: y[i * sy] = unop_i64((sn_unop)j->op, x); break;
    case BINARY: y[i * sy] = binop_i64((sn_binop)j->op, x, b[i * sb]); break;
    case SCALAR:
      y[i * sy] = binop_i64((sn_binop)j->op, j->scalar_first ? j->si : x, j->scalar_first ? x : j->si);
      break;
    }
  }
}

/* Elements [lo, hi) in row-major order of the merged shape, one inner run at a time. */
static void run_chunk(const job *j, int64_t lo, int64_t hi) {
  int nd = j->ndim;
  int64_t inner = j->size[nd - 1], row = lo / inner, col = lo % inner;
  int64_t idx[SN_MAX_DIMS], off[3] = {0, 0, 0}, s[3] = {0, 0, 0};
  for (int k = 0; k < j->nops; k++) s[k] = j->stride[k][nd - 1];
  for (int d = nd - 2; d >= 0; d--) {
    idx[d] = row % j->size[d];
    row /= j->size[d];
    for (int k = 0; k < j->nops; k++) off[k] += idx[d] * j->stride[k][d];
  }
  for (int64_t pos = lo; pos < hi;) {
    int64_t len = inner - col < hi - pos ? inner - col : hi - pos;
    int64_t at[3] = {0, 0, 0}; /* element offsets of the run's first element */
    for (int k = 0; k < j->nops; k++) at[k] = off[k] + col * s[k];
    if (j->dtype == SN_F32)
      run_f32(j, (float *)j->base[0] + at[0], s[0], (const float *)j->base[1] + at[1], s[1],
              j->nops > 2 ? (const float *)j->base[2] + at[2] : NULL, s[2], len);
    else
      run_i64(j, (int64_t *)j->base[0] + at[0], s[0], (const int64_t *)j->base[1] + at[1], s[1],
              j->nops > 2 ? (const int64_t *)j->base[2] + at[2] : NULL, s[2], len);
    pos += len;
    col = 0;
    for (int d = nd - 2; d >= 0; d--) { /* next row: odometer over the outer dims */
      for (int k = 0; k < j->nops; k++) off[k] += j->stride[k][d];
      if (++idx[d] < j->size[d]) break;
      for (int k = 0; k < j->nops; k++) off[k] -= j->stride[k][d] * j->size[d];
      idx[d] = 0;
    }
  }
}

/* Chunks are fixed by the size alone; one chunk runs without entering OpenMP at all. */
static void execute(const job *j, int64_t n) {
  int64_t chunks = (n + CHUNK - 1) / CHUNK;
  if (chunks <= 1) {
    if (n > 0) run_chunk(j, 0, n);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; c++) run_chunk(j, c * CHUNK, c == chunks - 1 ? n : (c + 1) * CHUNK);
}

/* ---- checks and entry points -------------------------------------------------------- */

/* out must have exactly shape (nd, size) and write each element once (no stride-0 dim).
 * Messages are built only on failure: these checks run on every tiny op. */
static sn_status check_out(sn_ctx *ctx, const char *fn, const sn_tensor *out, int nd,
                           const int64_t *size, const sn_tensor *a, const sn_tensor *b) {
  bool same = out->ndim == nd;
  for (int d = 0; same && d < nd; d++) same = out->size[d] == size[d];
  char so[128], sw[128], s1[128], s2[128];
  if (!same) {
    sn_tensor want = {.ndim = nd};
    memcpy(want.size, size, (size_t)nd * sizeof *size);
    if (b)
      return sn_fail(ctx, SN_EINVAL, "%s: out has shape %s but a (%s) and b (%s) give %s", fn,
                     sn_shape_str(out, so, sizeof so), sn_shape_str(a, s1, sizeof s1),
                     sn_shape_str(b, s2, sizeof s2), sn_shape_str(&want, sw, sizeof sw));
    return sn_fail(ctx, SN_EINVAL, "%s: out has shape %s but a (%s) gives %s", fn,
                   sn_shape_str(out, so, sizeof so), sn_shape_str(a, s1, sizeof s1),
                   sn_shape_str(&want, sw, sizeof sw));
  }
  for (int d = 0; d < nd; d++)
    if (out->stride[d] == 0 && out->size[d] > 1)
      return sn_fail(ctx, SN_EINVAL, "%s: out (%s) is a broadcast view; it must not repeat elements", fn,
                     sn_shape_str(out, so, sizeof so));
  return SN_OK;
}

static const char *const binop_fn[SN_BINOP_COUNT] = {"seqnn.add", "seqnn.sub", "seqnn.mul", "seqnn.div",
                                                     "seqnn.pow", "seqnn.max", "seqnn.min"};
static const char *const unop_fn[SN_UNOP_COUNT] = {
    "seqnn.exp", "seqnn.log", "seqnn.tanh", "seqnn.sigmoid", "seqnn.silu", "seqnn.gelu",
    "seqnn.softplus", "seqnn.sqrt", "seqnn.rsqrt", "seqnn.abs", "seqnn.neg"};

static sn_status check_i64_binop(sn_ctx *ctx, const char *fn, sn_dtype dt, sn_binop op) {
  if (dt == SN_I64 && (op == SN_DIV || op == SN_POW))
    return sn_fail(ctx, SN_EINVAL, "%s: %s needs f32 tensors, got i64", fn, sn_binop_name(op));
  return SN_OK;
}

sn_status sn_binary(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, const sn_tensor *b, sn_binop op) {
  if (op < 0 || op >= SN_BINOP_COUNT) return sn_fail(ctx, SN_EINVAL, "seqnn.binary: unknown op %d", (int)op);
  const char *fn = binop_fn[op];
  if (a->dtype != b->dtype || out->dtype != a->dtype)
    return sn_fail(ctx, SN_EINVAL, "%s: dtypes differ (out %s, a %s, b %s)", fn, sn_dtype_name(out->dtype),
                   sn_dtype_name(a->dtype), sn_dtype_name(b->dtype));
  sn_status st = check_i64_binop(ctx, fn, a->dtype, op);
  int nd;
  int64_t size[SN_MAX_DIMS];
  if (st == SN_OK) st = sn_broadcast_shape(ctx, fn, a, b, &nd, size);
  if (st != SN_OK) return st;
  st = check_out(ctx, fn, out, nd, size, a, b);
  if (st != SN_OK) return st;

  job j = {.kind = BINARY, .op = op, .dtype = a->dtype, .nops = 3,
           .base = {sn_data(out), sn_data(a), sn_data(b)}};
  int64_t strides[3][SN_MAX_DIMS];
  memcpy(strides[0], out->stride, sizeof strides[0]);
  broadcast_strides(a, nd, strides[1]);
  broadcast_strides(b, nd, strides[2]);
  merge_dims(&j, nd, size, strides);
  execute(&j, sn_numel(out));
  return SN_OK;
}

sn_status sn_binary_scalar(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, double s, sn_binop op,
                           bool scalar_first) {
  if (op < 0 || op >= SN_BINOP_COUNT)
    return sn_fail(ctx, SN_EINVAL, "seqnn.binary_scalar: unknown op %d", (int)op);
  const char *fn = binop_fn[op];
  if (out->dtype != a->dtype)
    return sn_fail(ctx, SN_EINVAL, "%s: dtypes differ (out %s, a %s)", fn, sn_dtype_name(out->dtype),
                   sn_dtype_name(a->dtype));
  sn_status st = check_i64_binop(ctx, fn, a->dtype, op);
  if (st != SN_OK) return st;
  /* The range check also rejects NaN and inf; 2^63 itself does not fit. */
  if (a->dtype == SN_I64 && !(s == floor(s) && s >= -9223372036854775808.0 && s < 9223372036854775808.0))
    return sn_fail(ctx, SN_EINVAL, "%s: scalar %g is not an integer in the i64 range (a is i64)", fn, s);
  st = check_out(ctx, fn, out, a->ndim, a->size, a, NULL);
  if (st != SN_OK) return st;

  job j = {.kind = SCALAR, .op = op, .dtype = a->dtype, .nops = 2, .scalar_first = scalar_first,
           .base = {sn_data(out), sn_data(a)}};
  if (a->dtype == SN_F32) j.s = (float)s;
  else j.si = (int64_t)s;
  int64_t strides[3][SN_MAX_DIMS];
  memcpy(strides[0], out->stride, sizeof strides[0]);
  broadcast_strides(a, a->ndim, strides[1]);
  merge_dims(&j, a->ndim, a->size, strides);
  execute(&j, sn_numel(out));
  return SN_OK;
}

sn_status sn_unary(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, sn_unop op) {
  if (op < 0 || op >= SN_UNOP_COUNT) return sn_fail(ctx, SN_EINVAL, "seqnn.unary: unknown op %d", (int)op);
  const char *fn = unop_fn[op];
  char s1[128];
  if (out->dtype != a->dtype)
    return sn_fail(ctx, SN_EINVAL, "%s: dtypes differ (out %s, a %s)", fn, sn_dtype_name(out->dtype),
                   sn_dtype_name(a->dtype));
  if (a->dtype == SN_I64 && op != SN_ABS && op != SN_NEG)
    return sn_fail(ctx, SN_EINVAL, "%s: %s needs an f32 tensor, got i64 (a: %s)", fn, sn_unop_name(op),
                   sn_shape_str(a, s1, sizeof s1));
  sn_status st = check_out(ctx, fn, out, a->ndim, a->size, a, NULL);
  if (st != SN_OK) return st;

  job j = {.kind = UNARY, .op = op, .dtype = a->dtype, .nops = 2, .base = {sn_data(out), sn_data(a)}};
  int64_t strides[3][SN_MAX_DIMS];
  memcpy(strides[0], out->stride, sizeof strides[0]);
  broadcast_strides(a, a->ndim, strides[1]);
  merge_dims(&j, a->ndim, a->size, strides);
  execute(&j, sn_numel(out));
  return SN_OK;
}
