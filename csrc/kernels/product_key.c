/* kernels/product_key.c -- product-key memory (Lample et al. 2019; KERNELS.md 4.3):
 * top-k selection, the product-set candidate top-k, the weighted value gather and its
 * backward with a row-sparse value gradient. Formulas and shapes in seqnn.h.
 *
 * Top-k is threshold selection. Split the row into k groups: their k maxima are k
 * elements, so the smallest of them, t0, is at most the k-th largest value. A vector
 * compare keeps the positions with x >= t0 (ops->filter_ge; ~40% of a random row of 256
 * for k = 32), each becomes one 64-bit key that orders (value descending, id ascending),
 * and a quickselect plus an insertion sort of k keys finish. Rows where fewer than k
 * numbers pass (NaN) take a slower exact path (a sorted buffer, better()); both follow one
 * total order, so the result depends neither on the path nor on the vector width.
 *
 * The value gradient is a counting sort of the (token, j) reads by slot: each touched
 * slot's entries end up contiguous in (token, j) order, and one thread sums a row from
 * them. Rows are split among threads, never entries, so no two threads write one row and
 * the sums have one order whatever the thread count. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "kernels/nn.h"
#include "simd/product_key.h"
#include "simd/vec.h"

/* "4x6" for messages; the buffer lives until the end of the enclosing block. */
#define SN_SHAPE_C(t) sn_shape_str((t), (char[160]){0}, 160)

static const char *FN_TOPK = "seqnn.F.product_key_topk", *FN_SEL = "seqnn.F.product_key_select",
                  *FN_GATHER = "seqnn.F.product_key_gather";

static const sn_pkm_ops *pkm_ops(void) {
  const char *n = sn_vec->name;
  return strcmp(n, "avx512") == 0 ? &sn_pkm_avx512 : strcmp(n, "avx2") == 0 ? &sn_pkm_avx2 : &sn_pkm_scalar;
}

/* ---- top-k ------------------------------------------------------------------------------ */

/* (a, ia) ranks before (b, ib): larger value, then the lower id; NaN after every number. */
static inline bool better(float a, int64_t ia, float b, int64_t ib) {
  if (b != b) return a == a || ia < ib;
  if (a != a) return false;
  return a > b || (a == b && ia < ib);
}

/* The k best seen so far, sorted best first; n <= k of them filled. */
typedef struct {
  float *v;
  int64_t *id;
  int64_t n, k;
} topk_buf;

static inline void tk_insert(topk_buf *t, float v, int64_t id) {
  int64_t pos;
  if (t->n < t->k) {
    pos = t->n++;
  } else {
    pos = t->k - 1;
    if (!better(v, id, t->v[pos], t->id[pos])) return;
  }
  while (pos > 0 && better(v, id, t->v[pos - 1], t->id[pos - 1])) {
    t->v[pos] = t->v[pos - 1], t->id[pos] = t->id[pos - 1];
    pos--;
  }
  t->v[pos] = v, t->id[pos] = id;
}

/* t <- the k best of x[0..n) with ids ids[i] (or i when ids is NULL); needs n >= k. */
static void topk_array(const sn_pkm_ops *ops, topk_buf *t, const float *x, const int64_t *ids, int64_t n) {
  t->n = 0;
  int64_t i = 0;
  for (; i < n && t->n < t->k; i++) tk_insert(t, x[i], ids ? ids[i] : i);
  while (i < n) {
    float thr = t->v[t->k - 1];
    if (thr != thr) { /* a NaN is kept: every number beats it, no threshold to scan with */
      for (; i < n; i++) tk_insert(t, x[i], ids ? ids[i] : i);
      break;
    }
    /* >=, not >: an equal value with a lower id (candidate slots are not in order) wins. */
    i = ops->scan_ge(x, i, n, thr);
    if (i >= n) break;
    tk_insert(t, x[i], ids ? ids[i] : i);
    i++;
  }
}

/* A key whose unsigned order is (v descending, id ascending) for numbers v (not NaN); -0
 * ranks as +0, as the comparison does. */
static inline uint64_t rank_key(float v, uint32_t id) {
  uint32_t b;
  if (v == 0) v = 0;
  memcpy(&b, &v, 4);
  uint32_t u = (b & 0x80000000u) ? ~b : (b | 0x80000000u); /* ascending with v */
  return ((uint64_t)~u << 32) | id;
}

static inline float key_value(uint64_t key) {
  uint32_t u = ~(uint32_t)(key >> 32), b = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
  float v;
  memcpy(&v, &b, 4);
  return v;
}

static void insertion_sort(uint64_t *a, int64_t lo, int64_t hi) {
  for (int64_t i = lo + 1; i <= hi; i++) {
    uint64_t v = a[i];
    int64_t j = i;
    while (j > lo && a[j - 1] > v) a[j] = a[j - 1], j--;
    a[j] = v;
  }
}

/* a[0..k) <- the k smallest of the distinct keys a[0..m), ascending (m >= k): a quicksort
 * that only descends into the parts that reach below k. The partition is branch-free
 * (Lomuto with a conditional increment): on random keys it has no branch to mispredict. */
static void smallest_sorted(uint64_t *a, int64_t m, int64_t k) {
  int64_t stack[2 * 64], sp = 0, lo = 0, hi = m - 1;
  for (;;) {
    while (hi - lo > 16) {
      int64_t mid = lo + (hi - lo) / 2;
      uint64_t x = a[lo], y = a[mid], z = a[hi];
      int64_t pi = x < y ? (y < z ? mid : (x < z ? hi : lo)) : (x < z ? lo : (y < z ? hi : mid));
      uint64_t piv = a[pi];
      a[pi] = a[hi], a[hi] = piv;
      int64_t st = lo;
      for (int64_t i = lo; i < hi; i++) {
        uint64_t v = a[i];
        a[i] = a[st];
        a[st] = v;
        st += v < piv;
      }
      a[hi] = a[st], a[st] = piv;
      if (st + 1 < k && st + 1 <= hi) { /* the right part reaches below k: sort it later */
        if (sp == 2 * 64) {
          insertion_sort(a, st + 1, hi);
        } else {
          stack[sp++] = st + 1, stack[sp++] = hi;
        }
      }
      hi = st - 1;
    }
    insertion_sort(a, lo, hi);
    if (sp == 0) break;
    hi = stack[--sp], lo = stack[--sp];
  }
}

/* Scratch of one top-k: k group maxima, n positions, n keys. */
typedef struct {
  float *gmax;
  int32_t *pos;
  uint64_t *keys;
} topk_scratch;

/* Bytes rounded up to a cache line, so that every per-thread block starts aligned. */
static size_t lines(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

static size_t scratch_bytes(int64_t n, int64_t k) { return lines((size_t)k * 4 + (size_t)n * 12); }

static topk_scratch scratch_at(char *p, int64_t n, int64_t k) {
  topk_scratch s;
  s.keys = (uint64_t *)p;
  s.pos = (int32_t *)(p + (size_t)n * 8);
  s.gmax = (float *)(void *)(p + (size_t)n * 12);
  return s;
}

/* outv/outid <- the k best of x[0..n) (ids as in topk_array; ids < 2^32). `lower` is a
 * known lower bound of the k-th value (or -INFINITY), used when it beats the groups'. */
static void topk_fast(const sn_pkm_ops *ops, float *outv, int64_t *outid, const float *x, const int64_t *ids,
                      int64_t n, int64_t k, float lower, topk_scratch *s) {
  float *restrict g = s->gmax; /* restrict: scratch never aliases x, so this vectorizes */
  for (int64_t j = 0; j < k; j++) g[j] = -INFINITY;
  for (int64_t i0 = 0; i0 < n; i0 += k) {
    int64_t len = n - i0 < k ? n - i0 : k;
    const float *restrict xi = x + i0;
#pragma omp simd
    for (int64_t j = 0; j < len; j++) g[j] = xi[j] > g[j] ? xi[j] : g[j];
  }
  float t0 = g[0];
  for (int64_t j = 1; j < k; j++) t0 = g[j] < t0 ? g[j] : t0;
  if (lower > t0) t0 = lower;
  int64_t m = ops->filter_ge(s->pos, x, n, t0);
  if (m < k) { /* NaN left fewer than k numbers */
    topk_buf t = {outv, outid, 0, k};
    topk_array(ops, &t, x, ids, n);
    return;
  }
  for (int64_t i = 0; i < m; i++) {
    int32_t p = s->pos[i];
    s->keys[i] = rank_key(x[p], (uint32_t)(ids ? ids[p] : p));
  }
  smallest_sorted(s->keys, m, k);
  for (int64_t j = 0; j < k; j++) outv[j] = key_value(s->keys[j]), outid[j] = (int64_t)(s->keys[j] & 0xffffffffu);
}

static sn_status need_rows(sn_ctx *ctx, const char *fn, const char *arg, const sn_tensor *t, sn_dtype dt,
                           int64_t R, int64_t C) {
  if (t->dtype == dt && t->ndim == 2 && t->size[0] == R && t->size[1] == C && sn_is_contiguous(t)) return SN_OK;
  return sn_fail(ctx, SN_EINVAL, "%s: '%s' must be a contiguous %s tensor of %lldx%lld, got %s %s%s", fn, arg,
                 sn_dtype_name(dt), (long long)R, (long long)C, sn_dtype_name(t->dtype), SN_SHAPE_C(t),
                 sn_is_contiguous(t) ? "" : " (not contiguous)");
}

sn_status sn_product_key_topk(sn_ctx *ctx, sn_tensor *idx, sn_tensor *val, const sn_tensor *scores, int64_t k) {
  if (scores->ndim != 2) return sn_fail(ctx, SN_EINVAL, "%s: scores must be (rows, n), got %s", FN_TOPK, SN_SHAPE_C(scores));
  int64_t R = scores->size[0], n = scores->size[1];
  if (k < 1 || k > n) return sn_fail(ctx, SN_EINVAL, "%s: k must be in [1, %lld], got %lld", FN_TOPK, (long long)n, (long long)k);
  sn_status st = need_rows(ctx, FN_TOPK, "scores", scores, SN_F32, R, n);
  if (st == SN_OK) st = need_rows(ctx, FN_TOPK, "idx", idx, SN_I64, R, k);
  if (st == SN_OK) st = need_rows(ctx, FN_TOPK, "val", val, SN_F32, R, k);
  if (st != SN_OK) return st;
  if (n > INT32_MAX) return sn_fail(ctx, SN_EINVAL, "%s: rows of %lld scores are too long", FN_TOPK, (long long)n);
  const int nt = omp_get_max_threads();
  const size_t per = scratch_bytes(n, k);
  char *ws = sn_ctx_workspace(ctx, (size_t)nt * per);
  if (!ws) return SN_ENOMEM;
  const sn_pkm_ops *ops = pkm_ops();
  const float *ps = sn_f32(scores);
  float *pv = sn_f32(val);
  int64_t *pi = sn_i64(idx);
#pragma omp parallel num_threads(nt) if (R * n > NN_PARALLEL_MIN)
  {
    topk_scratch sc = scratch_at(ws + (size_t)omp_get_thread_num() * per, n, k);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; r++) topk_fast(ops, pv + r * k, pi + r * k, ps + r * n, NULL, n, k, -INFINITY, &sc);
  }
  return SN_OK;
}

/* Candidate pairs of ranks (a, b) with (a+1)(b+1) <= k: sum over a of floor(k / (a+1)). */
static int64_t n_candidates(int64_t k) {
  int64_t c = 0;
  for (int64_t a = 1; a <= k; a++) c += k / a;
  return c;
}

sn_status sn_product_key_select(sn_ctx *ctx, sn_tensor *slot, sn_tensor *score, const sn_tensor *s1,
                                const sn_tensor *s2, int64_t k) {
  if (s1->ndim != 2 || !sn_same_shape(s1, s2))
    return sn_fail(ctx, SN_EINVAL, "%s: s1 and s2 must both be (rows, n), got %s and %s", FN_SEL, SN_SHAPE_C(s1),
                   SN_SHAPE_C(s2));
  int64_t R = s1->size[0], n = s1->size[1];
  if (k < 1 || k > n) return sn_fail(ctx, SN_EINVAL, "%s: knn must be in [1, %lld], got %lld", FN_SEL, (long long)n, (long long)k);
  if (n > 65536) /* slots are 32-bit in the selection keys */
    return sn_fail(ctx, SN_EINVAL, "%s: n = %lld sub-keys is more than 65536 (n^2 slots)", FN_SEL, (long long)n);
  sn_status st = need_rows(ctx, FN_SEL, "s1", s1, SN_F32, R, n);
  if (st == SN_OK) st = need_rows(ctx, FN_SEL, "s2", s2, SN_F32, R, n);
  if (st == SN_OK) st = need_rows(ctx, FN_SEL, "slot", slot, SN_I64, R, k);
  if (st == SN_OK) st = need_rows(ctx, FN_SEL, "score", score, SN_F32, R, k);
  if (st != SN_OK) return st;
  const int nt = omp_get_max_threads();
  const int64_t nc = n_candidates(k);
  int64_t sq_side = 1;
  while (sq_side * sq_side < k) sq_side++; /* <= k <= n: the square's pairs all exist */
  /* Per thread: both halves' top-k (values, ids), the candidates (values, slots), and the
   * scratch of a top-k over the longer of a row and the candidates. */
  const int64_t per = 2 * k + nc, longest = n > nc ? n : nc;
  const size_t bytes = lines((size_t)per * sizeof(int64_t)) + lines((size_t)per * sizeof(float)) +
                       scratch_bytes(longest, k);
  char *ws = sn_ctx_workspace(ctx, (size_t)nt * bytes);
  if (!ws) return SN_ENOMEM;
  const sn_pkm_ops *ops = pkm_ops();
  const float *p1 = sn_f32(s1), *p2 = sn_f32(s2);
  float *pv = sn_f32(score);
  int64_t *pslot = sn_i64(slot);
#pragma omp parallel num_threads(nt) if (R * n > NN_PARALLEL_MIN)
  {
    char *mine = ws + (size_t)omp_get_thread_num() * bytes;
    int64_t *ids = (int64_t *)mine;
    float *vals = (float *)(void *)(mine + lines((size_t)per * sizeof(int64_t)));
    topk_scratch sc = scratch_at((char *)vals + lines((size_t)per * sizeof(float)), longest, k);
    float *v1 = vals, *v2 = vals + k, *cv = vals + 2 * k;
    int64_t *i1 = ids, *i2 = ids + k, *cid = ids + 2 * k;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; r++) {
      topk_fast(ops, v1, i1, p1 + r * n, NULL, n, k, -INFINITY, &sc);
      topk_fast(ops, v2, i2, p2 + r * n, NULL, n, k, -INFINITY, &sc);
      int64_t c = 0;
      for (int64_t a = 0; a < k; a++) {
        int64_t bmax = k / (a + 1), base = i1[a] * n;
        float va = v1[a];
        for (int64_t b = 0; b < bmax; b++) cv[c + b] = va + v2[b], cid[c + b] = base + i2[b];
        c += bmax;
      }
      /* Any k distinct pairs bound the k-th sum from below by their worst: the first row
       * (v1[0] + v2[k-1]), the first column, and the q x q square with q^2 >= k. */
      float lower = v1[0] + v2[k - 1], alt = v1[k - 1] + v2[0], sq = v1[sq_side - 1] + v2[sq_side - 1];
      lower = alt > lower ? alt : lower;
      lower = sq > lower ? sq : lower;
      topk_fast(ops, pv + r * k, pslot + r * k, cv, cid, c, k, lower == lower ? lower : -INFINITY, &sc);
    }
  }
  return SN_OK;
}

sn_status sn_product_key_select_bwd(sn_ctx *ctx, sn_tensor *ds1, sn_tensor *ds2, const sn_tensor *dscore,
                                    const sn_tensor *slot) {
  if (ds1->ndim != 2 || slot->ndim != 2)
    return sn_fail(ctx, SN_EINVAL, "%s: ds1 must be (rows, n) and slot (rows, k), got %s and %s", FN_SEL,
                   SN_SHAPE_C(ds1), SN_SHAPE_C(slot));
  int64_t R = ds1->size[0], n = ds1->size[1], k = slot->size[1];
  sn_status st = need_rows(ctx, FN_SEL, "ds1", ds1, SN_F32, R, n);
  if (st == SN_OK) st = need_rows(ctx, FN_SEL, "ds2", ds2, SN_F32, R, n);
  if (st == SN_OK) st = need_rows(ctx, FN_SEL, "slot", slot, SN_I64, R, k);
  if (st == SN_OK) st = need_rows(ctx, FN_SEL, "grad_score", dscore, SN_F32, R, k);
  if (st != SN_OK) return st;
  const int64_t *ps = sn_i64(slot);
  const int64_t nslots = n * n;
  for (int64_t e = 0; e < R * k; e++)
    if (ps[e] < 0 || ps[e] >= nslots)
      return sn_fail(ctx, SN_EINVAL, "%s: slot[%lld] = %lld is outside [0, %lld) (n = %lld sub-keys)", FN_SEL,
                     (long long)e, (long long)ps[e], (long long)nslots, (long long)n);
  const float *pg = sn_f32(dscore);
  float *g1 = sn_f32(ds1), *g2 = sn_f32(ds2);
#pragma omp parallel for schedule(static) if (R * n > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < R; r++) {
    float *a = g1 + r * n, *b = g2 + r * n;
    memset(a, 0, (size_t)n * sizeof(float));
    memset(b, 0, (size_t)n * sizeof(float));
    for (int64_t j = 0; j < k; j++) {
      int64_t s = ps[r * k + j];
      a[s / n] += pg[r * k + j];
      b[s % n] += pg[r * k + j];
    }
  }
  return SN_OK;
}

/* ---- weighted value gather ------------------------------------------------------------ */

/* The shapes shared by the forward and backward; checks every index against S. */
static sn_status gather_args(sn_ctx *ctx, const sn_tensor *values, const sn_tensor *idx, const sn_tensor *w) {
  if (values->ndim != 2 || idx->ndim != 2)
    return sn_fail(ctx, SN_EINVAL, "%s: values must be (slots, D) and idx (N, J), got %s and %s", FN_GATHER,
                   SN_SHAPE_C(values), SN_SHAPE_C(idx));
  int64_t S = values->size[0], D = values->size[1], N = idx->size[0], J = idx->size[1];
  sn_status st = need_rows(ctx, FN_GATHER, "values", values, SN_F32, S, D);
  if (st == SN_OK) st = need_rows(ctx, FN_GATHER, "idx", idx, SN_I64, N, J);
  if (st == SN_OK && w) st = need_rows(ctx, FN_GATHER, "w", w, SN_F32, N, J);
  if (st != SN_OK) return st;
  const int64_t *pi = sn_i64(idx);
  for (int64_t e = 0; e < N * J; e++)
    if (pi[e] < 0 || pi[e] >= S)
      return sn_fail(ctx, SN_EINVAL, "%s: idx[%lld][%lld] = %lld is outside the %lld value rows", FN_GATHER,
                     (long long)(e / J), (long long)(e % J), (long long)pi[e], (long long)S);
  return SN_OK;
}

sn_status sn_product_key_gather_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *values, const sn_tensor *idx,
                                    const sn_tensor *w) {
  sn_status st = gather_args(ctx, values, idx, w);
  if (st == SN_OK) st = need_rows(ctx, FN_GATHER, "y", y, SN_F32, idx->size[0], values->size[1]);
  if (st != SN_OK) return st;
  int64_t D = values->size[1], N = idx->size[0], J = idx->size[1];
  const sn_pkm_ops *ops = pkm_ops();
  const float *pv = sn_f32(values), *pw = sn_f32(w);
  const int64_t *pi = sn_i64(idx);
  float *py = sn_f32(y);
#pragma omp parallel for schedule(static) if (N * J * D > NN_PARALLEL_MIN)
  for (int64_t t = 0; t < N; t++) ops->wsum(py + t * D, pv, D, pi + t * J, pw + t * J, J, (N - t) * J, D);
  return SN_OK;
}

sn_status sn_product_key_gather_rows(sn_ctx *ctx, int64_t *unique, const sn_tensor *idx, int64_t S) {
  if (idx->ndim != 2) return sn_fail(ctx, SN_EINVAL, "%s: idx must be (N, J), got %s", FN_GATHER, SN_SHAPE_C(idx));
  sn_status st = need_rows(ctx, FN_GATHER, "idx", idx, SN_I64, idx->size[0], idx->size[1]);
  if (st != SN_OK) return st;
  if (S < 0) return sn_fail(ctx, SN_EINVAL, "%s: %lld value rows", FN_GATHER, (long long)S);
  uint64_t *seen = sn_ctx_workspace(ctx, (size_t)((S + 63) / 64) * 8 + 8);
  if (!seen) return SN_ENOMEM;
  memset(seen, 0, (size_t)((S + 63) / 64) * 8);
  const int64_t *pi = sn_i64(idx), NJ = sn_numel(idx);
  int64_t u = 0;
  for (int64_t e = 0; e < NJ; e++) {
    int64_t s = pi[e];
    if (s < 0 || s >= S)
      return sn_fail(ctx, SN_EINVAL, "%s: idx[%lld][%lld] = %lld is outside the %lld value rows", FN_GATHER,
                     (long long)(e / idx->size[1]), (long long)(e % idx->size[1]), (long long)s, (long long)S);
    uint64_t bit = (uint64_t)1 << (s & 63);
    u += !(seen[s >> 6] & bit);
    seen[s >> 6] |= bit;
  }
  *unique = u;
  return SN_OK;
}

sn_status sn_product_key_gather_bwd(sn_ctx *ctx, sn_tensor *dw, sn_tensor *rows, sn_tensor *drows,
                                    const sn_tensor *dy, const sn_tensor *values, const sn_tensor *idx,
                                    const sn_tensor *w) {
  sn_status st = gather_args(ctx, values, idx, w);
  if (st != SN_OK) return st;
  int64_t S = values->size[0], D = values->size[1], N = idx->size[0], J = idx->size[1];
  st = need_rows(ctx, FN_GATHER, "grad_output", dy, SN_F32, N, D);
  if (st == SN_OK && dw) st = need_rows(ctx, FN_GATHER, "dw", dw, SN_F32, N, J);
  if (st != SN_OK) return st;
  if ((rows == NULL) != (drows == NULL))
    return sn_fail(ctx, SN_EINVAL, "%s: rows and drows must be given together", FN_GATHER);
  const sn_pkm_ops *ops = pkm_ops();
  const float *pv = sn_f32(values), *pdy = sn_f32(dy), *pw = sn_f32(w);
  const int64_t *pi = sn_i64(idx);
  if (dw) {
    float *pdw = sn_f32(dw);
#pragma omp parallel for schedule(static) if (N * J * D > NN_PARALLEL_MIN)
    for (int64_t t = 0; t < N; t++) ops->dots(pdw + t * J, pv, D, pi + t * J, pdy + t * D, J, (N - t) * J, D);
  }
  if (!rows) return SN_OK;
  if (rows->dtype != SN_I64 || rows->ndim != 1 || !sn_is_contiguous(rows))
    return sn_fail(ctx, SN_EINVAL, "%s: rows must be a contiguous i64 vector, got %s %s", FN_GATHER,
                   sn_dtype_name(rows->dtype), SN_SHAPE_C(rows));
  int64_t U = rows->size[0];
  st = need_rows(ctx, FN_GATHER, "drows", drows, SN_F32, U, D);
  if (st != SN_OK) return st;
  const int64_t NJ = N * J;
  /* start[s] (S + 1), then per entry its token and weight in slot order, then the first
   * entry of each touched row (U + 1). */
  size_t bytes = (size_t)(S + 1) * 8 + (size_t)NJ * 12 + (size_t)(U + 1) * 8 + 64;
  char *ws = sn_ctx_workspace(ctx, bytes);
  if (!ws) return SN_ENOMEM;
  int64_t *start = (int64_t *)ws, *tok = start + S + 1, *ustart = tok + NJ;
  float *sw = (float *)(void *)(ustart + U + 1);
  memset(start, 0, (size_t)(S + 1) * 8);
  for (int64_t e = 0; e < NJ; e++) start[pi[e] + 1]++;
  int64_t distinct = 0;
  for (int64_t s = 0; s < S; s++) distinct += start[s + 1] > 0;
  if (distinct != U)
    return sn_fail(ctx, SN_EINVAL, "%s: rows has %lld entries but idx reads %lld distinct value rows", FN_GATHER,
                   (long long)U, (long long)distinct);
  int64_t *prow = sn_i64(rows), u = 0;
  for (int64_t s = 0; s < S; s++) {
    /* here start[s] = entries of the slots before s (where s's begin), start[s + 1] = s's count */
    if (start[s + 1] > 0) prow[u] = s, ustart[u] = start[s], u++;
    start[s + 1] += start[s];
  }
  ustart[U] = NJ;
  for (int64_t e = 0; e < NJ; e++) {
    int64_t p = start[pi[e]]++;
    tok[p] = e / J, sw[p] = pw[e];
  }
  float *pd = sn_f32(drows);
#pragma omp parallel for schedule(static) if (NJ * D > NN_PARALLEL_MIN)
  for (int64_t r = 0; r < U; r++)
    ops->wsum(pd + r * D, pdy, D, tok + ustart[r], sw + ustart[r], ustart[r + 1] - ustart[r], NJ - ustart[r], D);
  return SN_OK;
}
