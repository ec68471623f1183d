/* ops/matmul.c -- sn_matmul: batched, broadcasting f32 matrix product on OpenBLAS.
 *   out[..., i, j] = sum_k a[..., i, k] * b[..., k, j]
 * Shapes: a (..., M, K), b (..., K, N), out (..., M, N) contiguous; the batch dims (...)
 * broadcast like numpy and out holds the broadcast batch shape.
 * An operand whose matrices have strides (ld, 1) goes to cblas_sgemm as NoTrans, one with
 * strides (1, ld) as Trans, both in place; any other layout is first copied contiguous
 * into the ctx workspace. On AVX-512 CPUs, large products go to sn_sgemm_avx512 instead:
 * OpenBLAS 0.3.21 does not recognise them and runs its SSE3 kernel (SEQNN_GEMM=blas forces
 * OpenBLAS, for comparison). */
#include <cblas.h>
#include <limits.h>

#include "seqnn.h"
#include "simd/gemm.h"

/* Each of M, N, K at least this for seqnn's sgemm: it packs both operands, which costs
 * 1/M, 1/N of the work (generation's 1-row products ran 2x slower), and below it OpenBLAS's
 * lower call overhead wins anyway. */
#define OWN_GEMM_MIN 32

/* Row-major C (ldc = N) = op(A) @ op(B), on seqnn's AVX-512 sgemm or OpenBLAS. */
static void sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, const float *A,
                  int lda, const float *B, int ldb, float *C) {
  if (M >= OWN_GEMM_MIN && N >= OWN_GEMM_MIN && K >= OWN_GEMM_MIN && sn_gemm_avx512_available()) {
    sn_sgemm_avx512(ta == CblasTrans, tb == CblasTrans, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
    return;
  }
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
}

/* One operand as sgemm sees it: base pointer, transpose flag and leading dim of its
 * matrices, and its batch strides over out's batch shape (0 = broadcast), with dims merged
 * where the strides allow, so most batches walk with a single stride. */
typedef struct {
  const float *data;
  CBLAS_TRANSPOSE trans;
  int64_t ld;
  int nd;
  int64_t size[SN_MAX_DIMS], stride[SN_MAX_DIMS];
} operand;

/* Decides whether sgemm can read t's matrices in place; sets trans and ld if so. Strides
 * of size-1 dims are never used, so they do not disqualify a layout. */
static bool blas_layout(const sn_tensor *t, CBLAS_TRANSPOSE *trans, int64_t *ld) {
  int64_t rows = t->size[t->ndim - 2], cols = t->size[t->ndim - 1];
  int64_t sr = t->stride[t->ndim - 2], sc = t->stride[t->ndim - 1];
  int64_t min_row_ld = cols > 1 ? cols : 1, min_col_ld = rows > 1 ? rows : 1;
  if ((cols <= 1 || sc == 1) && (rows <= 1 || sr >= min_row_ld)) {
    *trans = CblasNoTrans;
    *ld = rows <= 1 ? min_row_ld : sr;
  } else if ((rows <= 1 || sr == 1) && (cols <= 1 || sc >= min_col_ld)) {
    *trans = CblasTrans;
    *ld = cols <= 1 ? min_col_ld : sc;
  } else {
    return false;
  }
  return *ld <= INT_MAX;
}

/* Fills op's batch walk from t's batch dims, right-aligned against out's nb batch dims. */
static void set_batch(operand *op, const sn_tensor *t, int nb, const int64_t *bsize) {
  int tb = t->ndim - 2;
  op->nd = 0;
  for (int d = 0; d < nb; d++) {
    int dt = d - (nb - tb);
    int64_t size = bsize[d], stride = dt >= 0 && t->size[dt] != 1 ? t->stride[dt] : 0;
    if (size == 1) continue;
    if (op->nd > 0 && op->stride[op->nd - 1] == stride * size) {
      op->size[op->nd - 1] *= size;
      op->stride[op->nd - 1] = stride;
      continue;
    }
    op->size[op->nd] = size, op->stride[op->nd] = stride;
    op->nd++;
  }
}

static int64_t batch_offset(const operand *op, int64_t i) {
  if (op->nd == 1) return i * op->stride[0];
  int64_t off = 0;
  for (int d = op->nd - 1; d >= 0; d--) {
    off += (i % op->size[d]) * op->stride[d];
    i /= op->size[d];
  }
  return off;
}

/* Inclusive range of storage elements a view can touch (numel > 0). */
static void extent(const sn_tensor *t, int64_t *lo, int64_t *hi) {
  *lo = *hi = t->offset;
  for (int d = 0; d < t->ndim; d++) {
    int64_t span = (t->size[d] - 1) * t->stride[d];
    if (span < 0) *lo += span;
    else *hi += span;
  }
}

static bool overlaps(const sn_tensor *x, const sn_tensor *y) {
  if (x->storage != y->storage || sn_numel(x) == 0 || sn_numel(y) == 0) return false;
  int64_t xlo, xhi, ylo, yhi;
  extent(x, &xlo, &xhi);
  extent(y, &ylo, &yhi);
  return xlo <= yhi && ylo <= xhi;
}

/* Copies t contiguous into `buf` (sized numel(t) floats) and describes that copy. */
static sn_status copy_contiguous(sn_ctx *ctx, sn_tensor *dst, sn_storage *st, float *buf,
                                 const sn_tensor *t) {
  *st = (sn_storage){.refcount = 1, .data = buf, .nbytes = sn_numel(t) * (int64_t)sizeof(float)};
  *dst = (sn_tensor){.storage = st, .dtype = SN_F32, .ndim = t->ndim};
  int64_t s = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    dst->size[d] = t->size[d];
    dst->stride[d] = s;
    s *= t->size[d];
  }
  return sn_copy(ctx, dst, t);
}

/* The three shapes for a message, formatted only on failure (not on every call). */
typedef struct {
  char a[128], b[128], out[128];
} shapes;

static shapes shapes_of(const sn_tensor *a, const sn_tensor *b, const sn_tensor *out) {
  shapes s = {{0}, {0}, {0}};
  sn_shape_str(a, s.a, sizeof s.a);
  sn_shape_str(b, s.b, sizeof s.b);
  sn_shape_str(out, s.out, sizeof s.out);
  return s;
}

sn_status sn_matmul(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, const sn_tensor *b) {
  const char *fn = "seqnn.matmul";
  if (a->dtype != SN_F32 || b->dtype != SN_F32 || out->dtype != SN_F32)
    return sn_fail(ctx, SN_EINVAL, "%s: a, b and out must be f32, got a %s, b %s, out %s", fn,
                   sn_dtype_name(a->dtype), sn_dtype_name(b->dtype), sn_dtype_name(out->dtype));
  if (a->ndim < 2 || b->ndim < 2 || out->ndim < 2) {
    shapes s = shapes_of(a, b, out);
    return sn_fail(ctx, SN_EINVAL, "%s: a, b and out need at least 2 dims (a: %s, b: %s, out: %s)",
                   fn, s.a, s.b, s.out);
  }
  int64_t M = a->size[a->ndim - 2], K = a->size[a->ndim - 1], N = b->size[b->ndim - 1];
  if (b->size[b->ndim - 2] != K) {
    shapes s = shapes_of(a, b, out);
    return sn_fail(ctx, SN_EINVAL, "%s: a is %s but b is %s (inner dims %lld and %lld differ)", fn,
                   s.a, s.b, (long long)K, (long long)b->size[b->ndim - 2]);
  }

  /* Broadcast batch shape, then out must be exactly (batch..., M, N). */
  int nb = (a->ndim > b->ndim ? a->ndim : b->ndim) - 2;
  int64_t bsize[SN_MAX_DIMS], nbatch = 1;
  for (int d = 0; d < nb; d++) {
    int da = d - (nb - (a->ndim - 2)), db = d - (nb - (b->ndim - 2));
    int64_t x = da >= 0 ? a->size[da] : 1, y = db >= 0 ? b->size[db] : 1;
    if (x != y && x != 1 && y != 1) {
      shapes s = shapes_of(a, b, out);
      return sn_fail(ctx, SN_EINVAL, "%s: the batch dims of a (%s) and b (%s) do not broadcast "
                     "(%lld vs %lld)", fn, s.a, s.b, (long long)x, (long long)y);
    }
    bsize[d] = x == 1 ? y : x;
    nbatch *= bsize[d];
  }
  bool shape_ok = out->ndim == nb + 2 && out->size[nb] == M && out->size[nb + 1] == N;
  for (int d = 0; shape_ok && d < nb; d++) shape_ok = out->size[d] == bsize[d];
  if (!shape_ok) {
    sn_tensor want = {.ndim = nb + 2};
    for (int d = 0; d < nb; d++) want.size[d] = bsize[d];
    want.size[nb] = M, want.size[nb + 1] = N;
    char sw[128];
    shapes s = shapes_of(a, b, out);
    return sn_fail(ctx, SN_EINVAL, "%s: out is %s but a %s @ b %s gives %s", fn, s.out, s.a, s.b,
                   sn_shape_str(&want, sw, sizeof sw));
  }
  if (!sn_is_contiguous(out)) {
    shapes s = shapes_of(a, b, out);
    return sn_fail(ctx, SN_EINVAL, "%s: out (%s) must be contiguous", fn, s.out);
  }
  bool over_a = overlaps(out, a);
  if (over_a || overlaps(out, b)) {
    shapes s = shapes_of(a, b, out);
    return sn_fail(ctx, SN_EINVAL, "%s: out (%s) shares memory with %s (%s); write to a new tensor",
                   fn, s.out, over_a ? "a" : "b", over_a ? s.a : s.b);
  }
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX) {
    shapes s = shapes_of(a, b, out);
    return sn_fail(ctx, SN_EINVAL, "%s: a %s @ b %s has a matrix dim above 2^31-1, beyond BLAS",
                   fn, s.a, s.b);
  }
  if (sn_numel(out) == 0) return SN_OK;
  if (K == 0) return sn_fill(ctx, out, 0.0); /* an empty sum */

  operand op[2];
  const sn_tensor *src[2] = {a, b};
  bool copy[2];
  int64_t padded[2] = {0, 0}; /* floats per copy, rounded up to keep each 64-byte aligned */
  for (int i = 0; i < 2; i++) {
    copy[i] = !blas_layout(src[i], &op[i].trans, &op[i].ld);
    if (copy[i]) padded[i] = (sn_numel(src[i]) + 15) / 16 * 16;
  }
  /* One request for both copies: a second call would invalidate the first pointer. */
  float *ws = NULL;
  if (copy[0] || copy[1]) {
    ws = sn_ctx_workspace(ctx, (size_t)(padded[0] + padded[1]) * sizeof(float));
    if (!ws) return SN_ENOMEM;
  }
  for (int i = 0; i < 2; i++) {
    sn_tensor packed;
    sn_storage st;
    const sn_tensor *t = src[i];
    if (copy[i]) {
      sn_status s = copy_contiguous(ctx, &packed, &st, ws + (i ? padded[0] : 0), t);
      if (s != SN_OK) return s;
      t = &packed;
      op[i].trans = CblasNoTrans;
      op[i].ld = t->size[t->ndim - 1];
    }
    op[i].data = sn_f32(t);
    set_batch(&op[i], t, nb, bsize);
  }

  float *c = sn_f32(out);
  /* Same b for every batch and a's matrices stacked row after row: one tall GEMM, which
   * is the (B, T, C) @ (C, D) case of every linear layer. */
  bool b_shared = op[1].nd == 0 || (op[1].nd == 1 && op[1].stride[0] == 0);
  bool a_stacked = op[0].trans == CblasNoTrans &&
                   (op[0].nd == 0 || (op[0].nd == 1 && op[0].stride[0] == M * op[0].ld));
  if (b_shared && a_stacked && nbatch * M <= INT_MAX) {
    sgemm(CblasNoTrans, op[1].trans, (int)(nbatch * M), (int)N, (int)K, op[0].data, (int)op[0].ld,
          op[1].data, (int)op[1].ld, c);
    return SN_OK;
  }
  /* Sequential on purpose, even for many tiny matrices. Splitting the batch over OpenMP
   * threads, each calling this pthread OpenBLAS (single-threaded at these sizes), was
   * 1.3-1.9x faster at 32^3..64^3 only in isolation; right after a large multithreaded
   * sgemm, whose pool threads still busy-wait, it was 1.4-16x slower (~6 ms more per
   * batch), and at 8^3..16^3 slower either way. Numbers in bench/README.md. */
  for (int64_t i = 0; i < nbatch; i++)
    sgemm(op[0].trans, op[1].trans, (int)M, (int)N, (int)K, op[0].data + batch_offset(&op[0], i),
          (int)op[0].ld, op[1].data + batch_offset(&op[1], i), (int)op[1].ld, c + i * M * N);
  return SN_OK;
}
