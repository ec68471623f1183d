/* kernels/block_sparse.c -- f32 block-sparse (BSR) matmul (format and math in seqnn.h).
 *
 * Tokens are the SIMD lanes (KERNELS.md 5.2): the tokens go in chunks of CHUNK; each chunk
 * of x (and dy) is packed transposed into the workspace, one row of CHUNK-at-most tokens
 * per input (output), zero-padded to whole panels, then
 *   fwd: y^T = W x^T, tasks (panel, group of block-rows): per nonzero block one broadcast
 *        per weight against the panel's x^T row (simd/spmm.h), the tile staged per thread
 *        and copied out as whole runs of y's rows;
 *   dx:  dx^T = W^T dy^T. Blocks of several columns: tasks (panel, block-columns) over a
 *        transposed (BSC) index built per call in O(nnzb), block-rows ascending within each
 *        column. 1-column blocks (4x1, 16x1), where a BSC task loads ro dy^T vectors per
 *        FMA'd column: tasks panels, each walking the BSR in order with a block-row's dy^T
 *        rows in registers, adding into its panel of dx^T (K x 64 floats, in L2);
 *   dW:  SDDMM, tasks block-rows: per stored block the dot products of its dy^T and x^T
 *        rows over the chunk's lanes, added to the previous chunks' sums; dy^T x never
 *        exists;
 *   db:  dy^T row sums in double, chunk after chunk.
 * Every output element belongs to one task and is summed in a fixed order, so the bits do
 * not depend on the thread count. The chunk bounds the workspace to CHUNK (K + M) floats
 * whatever N is. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/bsr.h"
#include "kernels/check.h"
#include "kernels/nn.h"
#include "simd/spmm.h"
#include "simd/vec.h"

/* A task owns at least this many consecutive outputs of a token row (64 floats: whole cache
 * lines), so two threads rarely write the same line (a task of one 4x1 block-column would
 * own one float per row). */
#define GROUP_FLOATS 64

/* Tokens per chunk: dW's dot products run over this many lanes between stores, and a
 * chunk's x^T (K = 1024: 1 MiB) stays in L2 for the fwd's tasks. */
#define CHUNK 256
_Static_assert(CHUNK % SPMM_PWMAX == 0, "whole panels per chunk");

static const char *FN_MASK = "seqnn.sparse.bsr_mask", *FN_PACK = "seqnn.sparse.bsr_pack",
                  *FN_DENSE = "seqnn.sparse.bsr_to_dense", *FN_MM = "seqnn.sparse.bsr_matmul",
                  *FN_BWD = "seqnn.sparse.bsr_matmul_bwd";

static const sn_spmm_ops *spmm_ops(void) {
  const char *n = sn_vec->name;
  return strcmp(n, "avx512") == 0 ? &sn_spmm_avx512 : strcmp(n, "avx2") == 0 ? &sn_spmm_avx2 : &sn_spmm_scalar;
}

/* ---- index check ----------------------------------------------------------------------- */

/* An i64 vector of n entries, contiguous. */
static sn_status check_index(sn_ctx *ctx, const char *fn, const char *name, const sn_tensor *t, int64_t n,
                             const char *what) {
  char s[160];
  if (!t) return sn_fail(ctx, SN_EINVAL, "%s: %s must not be NULL", fn, name);
  if (t->dtype != SN_I64)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be i64, got %s (%s)", fn, name, sn_dtype_name(t->dtype),
                   sn_shape_str(t, s, sizeof s));
  if (t->ndim != 1 || (n >= 0 && t->size[0] != n))
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be a vector of %lld (%s), got %s", fn, name, (long long)n, what,
                   sn_shape_str(t, s, sizeof s));
  if (!sn_is_contiguous(t))
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be contiguous (%s)", fn, name, sn_shape_str(t, s, sizeof s));
  return SN_OK;
}

sn_status bsr_check(sn_ctx *ctx, const char *fn, const sn_tensor *values, const sn_tensor *browptr,
                    const sn_tensor *bcol, int64_t K, bsr_shape *out) {
  char s[160];
  if (!values) return sn_fail(ctx, SN_EINVAL, "%s: values must not be NULL", fn);
  if (values->dtype != SN_F32)
    return sn_fail(ctx, SN_EINVAL, "%s: values must be f32, got %s (%s)", fn, sn_dtype_name(values->dtype),
                   sn_shape_str(values, s, sizeof s));
  if (values->ndim != 3 || values->size[1] < 1 || values->size[2] < 1)
    return sn_fail(ctx, SN_EINVAL, "%s: values must be (nnzb, ro, ri) with ro, ri >= 1, got %s", fn,
                   sn_shape_str(values, s, sizeof s));
  if (!sn_is_contiguous(values))
    return sn_fail(ctx, SN_EINVAL, "%s: values must be contiguous (%s)", fn, sn_shape_str(values, s, sizeof s));
  const int64_t nnzb = values->size[0], ro = values->size[1], ri = values->size[2];
  if (K < 0 || K % ri != 0)
    return sn_fail(ctx, SN_EINVAL, "%s: K = %lld inputs must be a multiple of the block's ri = %lld", fn,
                   (long long)K, (long long)ri);
  sn_status st;
  if (!browptr) return sn_fail(ctx, SN_EINVAL, "%s: browptr must not be NULL", fn);
  if ((st = check_index(ctx, fn, "browptr", browptr, -1, "M/ro + 1")) != SN_OK) return st;
  if (browptr->size[0] < 1)
    return sn_fail(ctx, SN_EINVAL, "%s: browptr must have M/ro + 1 >= 1 entries, got 0", fn);
  if ((st = check_index(ctx, fn, "bcol", bcol, nnzb, "nnzb, values' first dim")) != SN_OK) return st;
  const int64_t Mb = browptr->size[0] - 1, Kb = K / ri;
  if (Mb > INT64_MAX / ro)
    return sn_fail(ctx, SN_EINVAL, "%s: M = %lld block-rows x ro = %lld overflows", fn, (long long)Mb,
                   (long long)ro);
  const int64_t *bp = sn_i64(browptr), *bc = sn_i64(bcol);
  if (bp[0] != 0) return sn_fail(ctx, SN_EINVAL, "%s: browptr[0] must be 0, got %lld", fn, (long long)bp[0]);
  for (int64_t r = 0; r < Mb; r++)
    if (bp[r + 1] < bp[r] || bp[r + 1] > nnzb)
      return sn_fail(ctx, SN_EINVAL, "%s: browptr must be non-decreasing within [0, nnzb = %lld], got browptr[%lld] = %lld after %lld",
                     fn, (long long)nnzb, (long long)(r + 1), (long long)bp[r + 1], (long long)bp[r]);
  if (bp[Mb] != nnzb)
    return sn_fail(ctx, SN_EINVAL, "%s: browptr[%lld] must be nnzb = %lld, got %lld", fn, (long long)Mb,
                   (long long)nnzb, (long long)bp[Mb]);
  for (int64_t r = 0; r < Mb; r++)
    for (int64_t b = bp[r]; b < bp[r + 1]; b++) {
      if (bc[b] < 0 || bc[b] >= Kb)
        return sn_fail(ctx, SN_EINVAL, "%s: bcol[%lld] = %lld is out of range [0, K/ri = %lld) (block-row %lld)",
                       fn, (long long)b, (long long)bc[b], (long long)Kb, (long long)r);
      if (b > bp[r] && bc[b] <= bc[b - 1])
        return sn_fail(ctx, SN_EINVAL, "%s: bcol must be strictly ascending within a block-row, got bcol[%lld] = %lld after %lld (block-row %lld)",
                       fn, (long long)b, (long long)bc[b], (long long)bc[b - 1], (long long)r);
    }
  if (out) *out = (bsr_shape){.M = Mb * ro, .ro = ro, .ri = ri, .nnzb = nnzb, .Mb = Mb};
  return SN_OK;
}

/* ro and ri as ints for the inner loops (an empty values tensor may claim any size). */
static sn_status check_block(sn_ctx *ctx, const char *fn, int64_t ro, int64_t ri) {
  if (ro < 1 || ri < 1 || ro > INT32_MAX || ri > INT32_MAX)
    return sn_fail(ctx, SN_EINVAL, "%s: the block shape ro x ri = %lld x %lld must have 1 <= ro, ri <= %d", fn,
                   (long long)ro, (long long)ri, INT32_MAX);
  return SN_OK;
}

/* A 2-D f32 weight (M, K) read through its strides. */
static sn_status check_w(sn_ctx *ctx, const char *fn, const sn_tensor *w) {
  char s[160];
  if (!w) return sn_fail(ctx, SN_EINVAL, "%s: w must not be NULL", fn);
  if (w->dtype != SN_F32 || w->ndim != 2)
    return sn_fail(ctx, SN_EINVAL, "%s: w must be an f32 matrix (M, K), got %s %s", fn, sn_dtype_name(w->dtype),
                   sn_shape_str(w, s, sizeof s));
  return SN_OK;
}

static int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* The workspace `off` bytes in (offsets 64-byte aligned by the caller). */
static void *at(void *base, size_t off) { return (char *)base + off; }

/* ---- mask ------------------------------------------------------------------------------ */

typedef struct {
  double norm; /* squared L2 norm of the block: the same order as the norm */
  int64_t i;   /* row-major block index */
} ranked;

/* Largest norm first, ties by lower index; a NaN norm ranks above all (the NaN stays
 * visible in the packed weight instead of vanishing). */
static int by_norm(const void *pa, const void *pb) {
  const ranked *a = pa, *b = pb;
  bool na = isnan(a->norm), nb = isnan(b->norm);
  if (na != nb) return na ? -1 : 1;
  if (!na && a->norm != b->norm) return a->norm > b->norm ? -1 : 1;
  return (a->i > b->i) - (a->i < b->i);
}

sn_status sn_bsr_mask(sn_ctx *ctx, sn_tensor *mask, const sn_tensor *w, int64_t ro, int64_t ri, double sparsity) {
  sn_status st = check_w(ctx, FN_MASK, w);
  if (st == SN_OK) st = check_block(ctx, FN_MASK, ro, ri);
  if (st != SN_OK) return st;
  const int64_t M = w->size[0], K = w->size[1];
  if (M % ro != 0 || K % ri != 0)
    return sn_fail(ctx, SN_EINVAL, "%s: w's shape %lldx%lld must be a multiple of the block ro x ri = %lld x %lld",
                   FN_MASK, (long long)M, (long long)K, (long long)ro, (long long)ri);
  if (!(sparsity >= 0 && sparsity <= 1))
    return sn_fail(ctx, SN_EINVAL, "%s: sparsity must be in [0, 1], got %g", FN_MASK, sparsity);
  const int64_t Mb = M / ro, Kb = K / ri, nb = Mb * Kb;
  if ((st = check_out(ctx, FN_MASK, "mask", mask, false, 2, (int64_t[]){Mb, Kb})) != SN_OK) return st;
  int64_t keep = (int64_t)llround((1.0 - sparsity) * (double)nb);
  keep = keep < 0 ? 0 : keep > nb ? nb : keep;
  float *pm = sn_f32(mask);
  if (keep == 0 || keep == nb) {
    for (int64_t i = 0; i < nb; i++) pm[i] = keep ? 1.0f : 0.0f;
    return SN_OK;
  }
  ranked *rk = sn_ctx_workspace(ctx, (size_t)nb * sizeof(ranked));
  if (!rk) return SN_ENOMEM;
  const float *pw = sn_f32(w);
  const int64_t s0 = w->stride[0], s1 = w->stride[1];
#pragma omp parallel for schedule(static) if (M * K > NN_PARALLEL_MIN)
  for (int64_t bi = 0; bi < Mb; bi++)
    for (int64_t bj = 0; bj < Kb; bj++) {
      double s = 0;
      for (int64_t r = 0; r < ro; r++)
        for (int64_t c = 0; c < ri; c++) {
          double v = pw[(bi * ro + r) * s0 + (bj * ri + c) * s1];
          s += v * v;
        }
      rk[bi * Kb + bj] = (ranked){s, bi * Kb + bj};
    }
  qsort(rk, (size_t)nb, sizeof *rk, by_norm);
  memset(pm, 0, (size_t)nb * sizeof(float));
  for (int64_t i = 0; i < keep; i++) pm[rk[i].i] = 1.0f;
  return SN_OK;
}

/* ---- pack and unpack ------------------------------------------------------------------- */

/* An i64 output vector of n entries, contiguous. */
static sn_status check_index_out(sn_ctx *ctx, const char *fn, const char *name, const sn_tensor *t, int64_t n) {
  char s[160];
  if (!t) return sn_fail(ctx, SN_EINVAL, "%s: %s must not be NULL", fn, name);
  if (t->dtype != SN_I64 || t->ndim != 1 || t->size[0] != n || !sn_is_contiguous(t))
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be a contiguous i64 vector of %lld, got %s %s", fn, name,
                   (long long)n, sn_dtype_name(t->dtype), sn_shape_str(t, s, sizeof s));
  return SN_OK;
}

sn_status sn_bsr_pack(sn_ctx *ctx, sn_tensor *values, sn_tensor *browptr, sn_tensor *bcol, const sn_tensor *w,
                      const sn_tensor *mask) {
  char a[160], b[160];
  sn_status st = check_w(ctx, FN_PACK, w);
  if (st != SN_OK) return st;
  if (!values) return sn_fail(ctx, SN_EINVAL, "%s: values must not be NULL", FN_PACK);
  if (values->dtype != SN_F32 || values->ndim != 3 || !sn_is_contiguous(values))
    return sn_fail(ctx, SN_EINVAL, "%s: values must be a contiguous f32 tensor (nnzb, ro, ri), got %s %s", FN_PACK,
                   sn_dtype_name(values->dtype), sn_shape_str(values, a, sizeof a));
  const int64_t M = w->size[0], K = w->size[1], nnzb = values->size[0], ro = values->size[1], ri = values->size[2];
  if ((st = check_block(ctx, FN_PACK, ro, ri)) != SN_OK) return st;
  if (M % ro != 0 || K % ri != 0)
    return sn_fail(ctx, SN_EINVAL, "%s: w's shape %lldx%lld must be a multiple of the block ro x ri = %lld x %lld",
                   FN_PACK, (long long)M, (long long)K, (long long)ro, (long long)ri);
  const int64_t Mb = M / ro, Kb = K / ri;
  if (!mask) return sn_fail(ctx, SN_EINVAL, "%s: mask must not be NULL", FN_PACK);
  if (mask->dtype != SN_F32 || mask->ndim != 2 || mask->size[0] != Mb || mask->size[1] != Kb)
    return sn_fail(ctx, SN_EINVAL, "%s: mask must be f32 (M/ro, K/ri) = %s, got %s %s", FN_PACK,
                   check_dims(b, sizeof b, 2, (int64_t[]){Mb, Kb}), sn_dtype_name(mask->dtype),
                   sn_shape_str(mask, a, sizeof a));
  const float *pm = sn_f32(mask);
  const int64_t m0 = mask->stride[0], m1 = mask->stride[1];
  int64_t count = 0;
  for (int64_t i = 0; i < Mb; i++)
    for (int64_t j = 0; j < Kb; j++) count += pm[i * m0 + j * m1] != 0;
  if (count != nnzb)
    return sn_fail(ctx, SN_EINVAL, "%s: values has room for %lld blocks but the mask has %lld nonzeros", FN_PACK,
                   (long long)nnzb, (long long)count);
  if ((st = check_index_out(ctx, FN_PACK, "browptr", browptr, Mb + 1)) != SN_OK ||
      (st = check_index_out(ctx, FN_PACK, "bcol", bcol, nnzb)) != SN_OK)
    return st;
  int64_t *bp = sn_i64(browptr), *bc = sn_i64(bcol);
  bp[0] = 0;
  for (int64_t i = 0, n = 0; i < Mb; i++) {
    for (int64_t j = 0; j < Kb; j++)
      if (pm[i * m0 + j * m1] != 0) bc[n++] = j;
    bp[i + 1] = n;
  }
  const float *pw = sn_f32(w);
  float *pv = sn_f32(values);
  const int64_t s0 = w->stride[0], s1 = w->stride[1];
#pragma omp parallel for schedule(static) if (nnzb * ro * ri > NN_PARALLEL_MIN)
  for (int64_t i = 0; i < Mb; i++)
    for (int64_t e = bp[i]; e < bp[i + 1]; e++)
      for (int64_t r = 0; r < ro; r++)
        for (int64_t c = 0; c < ri; c++) pv[(e * ro + r) * ri + c] = pw[(i * ro + r) * s0 + (bc[e] * ri + c) * s1];
  return SN_OK;
}

sn_status sn_bsr_to_dense(sn_ctx *ctx, sn_tensor *w, const sn_tensor *values, const sn_tensor *browptr,
                          const sn_tensor *bcol) {
  char a[160];
  if (!w) return sn_fail(ctx, SN_EINVAL, "%s: w must not be NULL", FN_DENSE);
  if (w->ndim != 2)
    return sn_fail(ctx, SN_EINVAL, "%s: w must be (M, K), got %s", FN_DENSE, sn_shape_str(w, a, sizeof a));
  bsr_shape sh;
  sn_status st = bsr_check(ctx, FN_DENSE, values, browptr, bcol, w->size[1], &sh);
  if (st == SN_OK) st = check_block(ctx, FN_DENSE, sh.ro, sh.ri);
  if (st == SN_OK) st = check_out(ctx, FN_DENSE, "w", w, false, 2, (int64_t[]){sh.M, w->size[1]});
  if (st != SN_OK) return st;
  const int64_t K = w->size[1], ro = sh.ro, ri = sh.ri, *bp = sn_i64(browptr), *bc = sn_i64(bcol);
  const float *pv = sn_f32(values);
  float *pw = sn_f32(w);
#pragma omp parallel for schedule(static) if (sh.M * K > NN_PARALLEL_MIN)
  for (int64_t i = 0; i < sh.Mb; i++) {
    memset(pw + i * ro * K, 0, (size_t)(ro * K) * sizeof(float));
    for (int64_t e = bp[i]; e < bp[i + 1]; e++)
      for (int64_t r = 0; r < ro; r++)
        memcpy(pw + (i * ro + r) * K + bc[e] * ri, pv + (e * ro + r) * ri, (size_t)ri * sizeof(float));
  }
  return SN_OK;
}

/* ---- packing tokens -------------------------------------------------------------------- */

/* dst[k * ld + t] = src[t * s + k] for t < nc, k < rows, by 4x4 transposes in registers
 * (scalar at the edges). */
static void transpose(float *dst, int64_t ld, const float *src, int64_t s, int64_t nc, int64_t rows) {
  int64_t t = 0;
  for (; t + 4 <= nc; t += 4) {
    int64_t k = 0;
    for (; k + 4 <= rows; k += 4) spmm_tr4(dst + k * ld + t, ld, src + t * s + k, s, NULL);
    for (; k < rows; k++)
      for (int64_t i = 0; i < 4; i++) dst[k * ld + t + i] = src[(t + i) * s + k];
  }
  for (; t < nc; t++)
    for (int64_t k = 0; k < rows; k++) dst[k * ld + t] = src[t * s + k];
}

/* dst[k * ld + t] = src[(n0 + t) * s + k] for t < nc, zeros for t in [nc, ld), rows k of
 * [0, rows); a work-shared loop of the enclosing parallel region over blocks of 16 rows
 * (64-byte runs of each token). dst's rows are ld floats apart, often a multiple of 128:
 * blocks of 256 rows fall into 8 L1 sets (measured slower). */
static void pack_t(float *dst, int64_t ld, const float *src, int64_t s, int64_t n0, int64_t nc, int64_t rows) {
#pragma omp for schedule(static)
  for (int64_t k0 = 0; k0 < rows; k0 += 16) {
    int64_t kn = rows - k0 < 16 ? rows - k0 : 16;
    transpose(dst + k0 * ld, ld, src + n0 * s + k0, s, nc, kn);
    for (int64_t k = 0; k < kn; k++) memset(dst + (k0 + k) * ld + nc, 0, (size_t)(ld - nc) * sizeof(float));
  }
}

/* ---- matmul ---------------------------------------------------------------------------- */

sn_status sn_bsr_matmul(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, const sn_tensor *values,
                        const sn_tensor *browptr, const sn_tensor *bcol, const sn_tensor *bias) {
  bsr_shape sh;
  sn_status st = check_in(ctx, FN_MM, "x", x, "(N, K)", 2, NULL);
  if (st == SN_OK) st = bsr_check(ctx, FN_MM, values, browptr, bcol, x->size[1], &sh);
  if (st == SN_OK) st = check_block(ctx, FN_MM, sh.ro, sh.ri);
  if (st == SN_OK) st = check_opt(ctx, FN_MM, "bias", bias, "(M)", 1, &sh.M);
  if (st == SN_OK) st = check_out(ctx, FN_MM, "y", y, false, 2, (int64_t[]){x->size[0], sh.M});
  if (st != SN_OK) return st;
  const sn_spmm_ops *ops = spmm_ops();
  const int64_t N = x->size[0], K = x->size[1], M = sh.M, Mb = sh.Mb, pw = ops->pw, sx = x->stride[0];
  const int ro = (int)sh.ro, ri = (int)sh.ri;
  const int64_t G = (GROUP_FLOATS + ro - 1) / ro, ngroups = (Mb + G - 1) / G, GR = G * ro;
  const int nt = omp_get_max_threads();
  /* x^T chunk, then one staging tile (pw tokens x GR outputs) per thread. */
  const int64_t o_stage = round_up(CHUNK * K, 16);
  float *xt = sn_ctx_workspace(ctx, (size_t)(o_stage + nt * pw * GR) * sizeof(float) + 1);
  if (!xt) return SN_ENOMEM;
  const float *px = sn_f32(x), *pv = sn_f32(values), *pb = bias ? sn_f32(bias) : NULL;
  const int64_t *bp = sn_i64(browptr), *bc = sn_i64(bcol);
  float *py = sn_f32(y);
#pragma omp parallel num_threads(nt) if ((double)N * (sh.nnzb * ro * ri + K + M) > NN_PARALLEL_MIN)
  for (int64_t n0 = 0; n0 < N; n0 += CHUNK) {
    const int64_t nc = N - n0 < CHUNK ? N - n0 : CHUNK, ld = round_up(nc, pw), np = ld / pw;
    pack_t(xt, ld, px, sx, n0, nc, K);
    /* Tasks: (group of block-rows, panel). The tile is written to the thread's staging
     * rows, then copied out as whole runs: y's rows are M floats apart, and with M a
     * multiple of 1024 the 16-byte writes of a panel's rows all hit one L1 set. */
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < ngroups * np; i++) {
      const int64_t g = i / np, t0 = i % np * pw, end = (g + 1) * G < Mb ? (g + 1) * G : Mb;
      const int n = (int)(nc - t0 < pw ? nc - t0 : pw);
      float *stage = xt + o_stage + omp_get_thread_num() * pw * GR;
      for (int64_t ob = g * G; ob < end; ob++)
        ops->fwd(stage + (ob - g * G) * ro, GR, pb ? pb + ob * ro : NULL, n, xt + t0, ld, pv, bc, bp[ob], bp[ob + 1],
                 ro, ri);
      for (int t = 0; t < n; t++)
        memcpy(py + (n0 + t0 + t) * M + g * GR, stage + t * GR, (size_t)((end - g * G) * ro) * sizeof(float));
    }
  }
  return SN_OK;
}

sn_status sn_bsr_matmul_bwd(sn_ctx *ctx, sn_tensor *dx, sn_tensor *dvalues, sn_tensor *dbias, const sn_tensor *dy,
                            const sn_tensor *x, const sn_tensor *values, const sn_tensor *browptr,
                            const sn_tensor *bcol) {
  bsr_shape sh;
  sn_status st = check_in(ctx, FN_BWD, "x", x, "(N, K)", 2, NULL);
  if (st == SN_OK) st = bsr_check(ctx, FN_BWD, values, browptr, bcol, x->size[1], &sh);
  if (st == SN_OK) st = check_block(ctx, FN_BWD, sh.ro, sh.ri);
  if (st == SN_OK) st = check_in(ctx, FN_BWD, "dy", dy, "(N, M)", 2, (int64_t[]){x->size[0], sh.M});
  if (st == SN_OK) st = check_out(ctx, FN_BWD, "dx", dx, true, 2, x->size);
  if (st == SN_OK) st = check_out(ctx, FN_BWD, "dvalues", dvalues, true, 3, values->size);
  if (st == SN_OK) st = check_out(ctx, FN_BWD, "dbias", dbias, true, 1, &sh.M);
  if (st != SN_OK) return st;
  const sn_spmm_ops *ops = spmm_ops();
  const int64_t N = x->size[0], K = x->size[1], M = sh.M, Mb = sh.Mb, Kb = K / sh.ri, nnzb = sh.nnzb;
  const int64_t pw = ops->pw, ch = N < CHUNK ? round_up(N, pw) : CHUNK;
  const int ro = (int)sh.ro, ri = (int)sh.ri;
  if (N == 0 && dvalues) memset(sn_f32(dvalues), 0, (size_t)sn_numel(dvalues) * sizeof(float));
  if (N == 0 && dbias) memset(sn_f32(dbias), 0, (size_t)M * sizeof(float));
  if (N == 0 || (!dx && !dvalues && !dbias)) return SN_OK;
  /* Workspace: dy^T and x^T chunks, the BSC index (colptr, entries' block and block-row),
   * dbias's double sums; each part 64-byte aligned. */
  const bool bsc = dx && ri > 1, rows = dx && ri == 1; /* dx by the BSC index, or by block-rows */
  const int64_t G = (GROUP_FLOATS + ri - 1) / ri, ngroups = (Kb + G - 1) / G, GC = G * ri; /* BSC tasks' columns */
  const int nt = omp_get_max_threads();
  const size_t a = 64, o_xt = round_up((int64_t)ch * M * 4, a), o_cp = o_xt + (dvalues ? round_up(ch * K * 4, a) : 0),
               o_blk = o_cp + (bsc ? round_up((Kb + 1) * 8, a) : 0), o_brow = o_blk + (bsc ? round_up(nnzb * 8, a) : 0),
               o_dxt = o_brow + (bsc ? round_up(nnzb * 8, a) : 0),
               o_db = o_dxt + (rows ? round_up(ch * K * 4, a) : bsc ? round_up(nt * pw * GC * 4, a) : 0),
               total = o_db + (dbias ? (size_t)M * 8 : 0) + 1;
  void *ws = sn_ctx_workspace(ctx, total);
  if (!ws) return SN_ENOMEM;
  float *dyt = ws, *xt = at(ws, o_xt), *dxt = at(ws, o_dxt);
  int64_t *colptr = at(ws, o_cp), *blk = at(ws, o_blk), *brow = at(ws, o_brow);
  double *dbs = at(ws, o_db);
  const int64_t *bp = sn_i64(browptr), *bc = sn_i64(bcol);
  if (bsc) {
    /* BSC: count per block-column, prefix sums, then fill walking block-rows in order. */
    memset(colptr, 0, (size_t)(Kb + 1) * sizeof(int64_t));
    for (int64_t e = 0; e < nnzb; e++) colptr[bc[e] + 1]++;
    for (int64_t j = 0; j < Kb; j++) colptr[j + 1] += colptr[j];
    for (int64_t i = 0; i < Mb; i++)
      for (int64_t e = bp[i]; e < bp[i + 1]; e++) {
        int64_t at = colptr[bc[e]]++;
        blk[at] = e;
        brow[at] = i;
      }
    for (int64_t j = Kb; j > 0; j--) colptr[j] = colptr[j - 1];
    colptr[0] = 0;
  }
  if (dbias) memset(dbs, 0, (size_t)M * sizeof(double));
  const float *px = sn_f32(x), *pdy = sn_f32(dy), *pv = sn_f32(values);
  float *pdx = dx ? sn_f32(dx) : NULL, *pdv = dvalues ? sn_f32(dvalues) : NULL;
#pragma omp parallel num_threads(nt) if ((double)N * (nnzb * ro * ri + K + M) > NN_PARALLEL_MIN)
  for (int64_t n0 = 0; n0 < N; n0 += CHUNK) {
    const int64_t nc = N - n0 < CHUNK ? N - n0 : CHUNK, ld = round_up(nc, pw), np = ld / pw;
    pack_t(dyt, ld, pdy, dy->stride[0], n0, nc, M);
    if (pdv) pack_t(xt, ld, px, x->stride[0], n0, nc, K);
    if (rows) {
      /* Tasks: panels; each sums its dx^T panel over all block-rows, then writes it out. */
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t p = 0; p < np; p++) {
        const int64_t t0 = p * pw, n = nc - t0 < pw ? nc - t0 : pw;
        float *o = dxt + t0;
        for (int64_t k = 0; k < K; k++) memset(o + k * ld, 0, (size_t)pw * sizeof(float));
        ops->dx_rows(o, ld, dyt + t0, pv, bp, bc, Mb, ro, ri);
        transpose(pdx + (n0 + t0) * K, K, o, ld, K, n);
      }
    }
    if (bsc) {
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t i = 0; i < ngroups * np; i++) {
        const int64_t g = i / np, t0 = i % np * pw, end = (g + 1) * G < Kb ? (g + 1) * G : Kb;
        const int n = (int)(nc - t0 < pw ? nc - t0 : pw);
        float *stage = dxt + omp_get_thread_num() * pw * GC; /* as the forward's */
        for (int64_t jb = g * G; jb < end; jb++)
          ops->dx(stage + (jb - g * G) * ri, GC, n, dyt + t0, ld, pv, blk, brow, colptr[jb], colptr[jb + 1], ro, ri);
        for (int t = 0; t < n; t++)
          memcpy(pdx + (n0 + t0 + t) * K + g * GC, stage + t * GC, (size_t)((end - g * G) * ri) * sizeof(float));
      }
    }
    if (pdv) {
#pragma omp for schedule(dynamic, 4) nowait
      for (int64_t ob = 0; ob < Mb; ob++) ops->dw(pdv, dyt, xt, ld, ld, bc, ob, bp[ob], bp[ob + 1], ro, ri, n0 > 0);
    }
    if (dbias) {
#pragma omp for schedule(static) nowait
      for (int64_t o = 0; o < M; o++) {
        double s = 0;
        for (int64_t t = 0; t < nc; t++) s += dyt[o * ld + t];
        dbs[o] += s;
      }
    }
    /* The next chunk's packing overwrites dy^T and x^T. */
#pragma omp barrier
  }
  if (dbias)
    for (int64_t o = 0; o < M; o++) sn_f32(dbias)[o] = (float)dbs[o];
  return SN_OK;
}
