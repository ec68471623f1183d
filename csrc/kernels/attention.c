/* kernels/attention.c -- softmax attention, FlashAttention-style (math in seqnn.h).
 *
 * fwd: first packs each (sequence, kv head)'s K transposed (Dp x S, so q.k is a
 *   row-broadcast product) and V row major, head dim padded to Dp = 16k with zeros. Then
 *   one task per (sequence, head, tile of BR queries) visits keys in tiles of BC (aligned
 *   to multiples of BC, only those the masks allow). Scores are kept in log2 units
 *   (scale * log2 e folded in) so the exponentials are exp2; the online softmax rescales
 *   the running output only when the max moves.
 * bwd: K (transposed and row major) and V (transposed) are packed once per (sequence,
 *   kv head). Then one task per (sequence, kv head), for each query head of the group and
 *   each query tile, recomputes S and P = exp(S - lse) per key tile and accumulates
 *   dV += P^T dO, dS = P (dO V^T - D), dQ += dS K, dK += dS^T Q. With fewer such tasks than
 *   threads (one long sequence), two passes instead: dK, dV per key tile, then dQ per query
 *   tile, recomputing S and dP (7 tile products instead of 5). Both visit the same tiles in
 *   the same order, so every output has one writer and the same bits for any thread count.
 * The tile products and row passes are the ISA tables of simd/attn.h. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "seqnn.h"
#include "simd/attn.h"
#include "simd/vec.h"

#define BR 64  /* queries per tile */
#define BC 64  /* keys per tile */
#define LOG2E 1.4426950408889634
#define LN2 0.6931471805599453

static const char *FN = "seqnn.F.attention";


static int64_t pad16(int64_t n) { return (n + ATTN_W - 1) / ATTN_W * ATTN_W; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* A (B,T,H,D) tensor with unit stride on D; sb is 0 for varlen (B = 1, rows are global). */
typedef struct {
  float *p;
  int64_t sb, st, sh;
} view;

static view view_of(const sn_tensor *t, bool varlen) {
  return (view){sn_f32(t), varlen ? 0 : t->stride[0], t->stride[1], t->stride[2]};
}
static float *at(view v, int64_t s, int64_t row, int64_t h) { return v.p + s * v.sb + row * v.st + h * v.sh; }

typedef struct {
  int64_t nseq, H, Hkv, G, D, Dp, T, S; /* T, S: dim 1 of q and k (totals when varlen) */
  const int64_t *cuq, *cuk;             /* NULL unless varlen */
  bool causal;
  int64_t window;
  float scale;
} problem;

/* Sequence s: q rows q0 .. q0+tq-1 and k rows k0 .. k0+tk-1 (row indices of the views). */
static void seq_rows(const problem *P, int64_t s, int64_t *q0, int64_t *tq, int64_t *k0, int64_t *tk) {
  if (P->cuq) {
    *q0 = P->cuq[s], *tq = P->cuq[s + 1] - P->cuq[s];
    *k0 = P->cuk[s], *tk = P->cuk[s + 1] - P->cuk[s];
  } else {
    *q0 = 0, *tq = P->T, *k0 = 0, *tk = P->S;
  }
}

static float *lse_at(const problem *P, float *lse, int64_t s, int64_t h, int64_t row) {
  return lse + ((P->cuq ? 0 : s) * P->H + h) * P->T + row;
}

/* Keys [lo, hi) that query i of a (tq, tk) sequence may see. */
static void key_range(const problem *P, int64_t tq, int64_t tk, int64_t i, int64_t *lo, int64_t *hi) {
  int64_t p = i + tk - tq; /* bottom-right alignment */
  *lo = 0, *hi = tk;
  if (P->causal || P->window >= 0) *hi = min64(tk, max64(p + 1, 0));
  if (P->window >= 0) *lo = min64(*hi, max64(0, p - P->window));
}

/* Scores of the tile (rows i0.., keys j0 .. j0+np) outside each row's range become -inf. */
static void mask_tile(const problem *P, float *S, int64_t tq, int64_t tk, int64_t i0, int m, int64_t j0,
                      int np) {
  for (int r = 0; r < m; r++) {
    int64_t lo, hi;
    key_range(P, tq, tk, i0 + r, &lo, &hi);
    int64_t a = min64(max64(lo - j0, 0), np), b = min64(max64(hi - j0, 0), np);
    float *sr = S + (int64_t)r * np;
    for (int64_t c = 0; c < a; c++) sr[c] = -INFINITY;
    for (int64_t c = b; c < np; c++) sr[c] = -INFINITY;
  }
}

/* dst[r][0..Dp) = row r of (s, row0 + r, h), zero padded, for r < m. */
static void pack_rows(float *dst, int64_t Dp, view v, int64_t s, int64_t row0, int64_t h, int m, int64_t D) {
  for (int r = 0; r < m; r++) {
    memcpy(dst + r * Dp, at(v, s, row0 + r, h), (size_t)D * sizeof(float));
    memset(dst + r * Dp + D, 0, (size_t)(Dp - D) * sizeof(float));
  }
}

/* dst[d][c] (row stride ld) = element d of row row0 + c, for c < n; zero for c in [n, np)
 * and for d in [D, Dp). Sixteen rows at a time, so each write is a contiguous run. */
static void pack_transposed(float *dst, int64_t ld, int64_t Dp, view v, int64_t s, int64_t row0, int64_t h,
                            int64_t n, int64_t np, int64_t D) {
  for (int64_t c0 = 0; c0 < np; c0 += ATTN_W) {
    const float *src[ATTN_W];
    int cn = (int)max64(0, min64(ATTN_W, n - c0));
    for (int c = 0; c < cn; c++) src[c] = at(v, s, row0 + c0 + c, h);
    for (int64_t d = 0; d < Dp; d++) {
      float *out = dst + d * ld + c0;
      int c = 0;
      if (d < D)
        for (; c < cn; c++) out[c] = src[c][d];
      for (; c < ATTN_W; c++) out[c] = 0;
    }
  }
}

/* The packed K and V of (s, g) for all of s's keys: K^T (Dp x tkp) then V (tkp x Dp). */
static void pack_kv(const problem *P, float *dst, view k, view v, int64_t s, int64_t g) {
  int64_t q0, tq, k0, tk, Dp = P->Dp, tkp;
  seq_rows(P, s, &q0, &tq, &k0, &tk);
  tkp = pad16(tk);
  pack_transposed(dst, tkp, Dp, k, s, k0, g, tk, tkp, P->D);
  pack_rows(dst + Dp * tkp, Dp, v, s, k0, g, (int)tk, P->D);
  memset(dst + Dp * tkp + tk * Dp, 0, (size_t)((tkp - tk) * Dp) * sizeof(float));
}

/* ---- validation ------------------------------------------------------------------------ */

static sn_status need_4d(sn_ctx *ctx, const char *name, const sn_tensor *t, const char *layout) {
  char sh[160];
  if (t->dtype != SN_F32)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be f32, got %s", FN, name, sn_dtype_name(t->dtype));
  if (t->ndim != 4)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be %s, got %s", FN, name, layout, sn_shape_str(t, sh, sizeof sh));
  if (t->size[3] > 1 && t->stride[3] != 1)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must have unit stride on its last dim (%s)", FN, name,
                   sn_shape_str(t, sh, sizeof sh));
  return SN_OK;
}

/* A gradient output: an f32 tensor with the shape of like, unit stride on the last dim
 * (a view into a larger gradient, such as one part of a packed q|k|v, is written in place). */
static sn_status need_grad_out(sn_ctx *ctx, const char *name, const sn_tensor *t, const sn_tensor *like) {
  char a[160], b[160];
  if (t->dtype == SN_F32 && sn_same_shape(t, like) && (t->ndim != 4 || t->size[3] <= 1 || t->stride[3] == 1))
    return SN_OK;
  return sn_fail(ctx, SN_EINVAL, "%s: %s must be an f32 tensor of shape %s with unit stride on its last dim, got %s %s",
                 FN, name, sn_shape_str(like, a, sizeof a), sn_dtype_name(t->dtype), sn_shape_str(t, b, sizeof b));
}

/* An output: a contiguous f32 tensor with the shape of like. */
static sn_status need_out(sn_ctx *ctx, const char *name, const sn_tensor *t, const sn_tensor *like) {
  char a[160], b[160];
  if (t->dtype == SN_F32 && sn_is_contiguous(t) && sn_same_shape(t, like)) return SN_OK;
  return sn_fail(ctx, SN_EINVAL, "%s: %s must be a contiguous f32 tensor of shape %s, got %s %s", FN, name,
                 sn_shape_str(like, a, sizeof a), sn_dtype_name(t->dtype), sn_shape_str(t, b, sizeof b));
}

static sn_status check_cu(sn_ctx *ctx, const char *name, const sn_tensor *cu, int64_t total, const char *tname,
                          const sn_tensor *t) {
  char sh[160];
  if (cu->dtype != SN_I64 || cu->ndim != 1 || cu->size[0] < 1 || !sn_is_contiguous(cu))
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be a contiguous 1-dim i64 tensor of nseq + 1 prefix sums, got %s %s",
                   FN, name, sn_dtype_name(cu->dtype), sn_shape_str(cu, sh, sizeof sh));
  const int64_t *c = sn_i64(cu);
  if (c[0] != 0) return sn_fail(ctx, SN_EINVAL, "%s: %s must start at 0, got %lld", FN, name, (long long)c[0]);
  for (int64_t i = 1; i < cu->size[0]; i++)
    if (c[i] < c[i - 1])
      return sn_fail(ctx, SN_EINVAL, "%s: %s must not decrease, got %s[%lld] = %lld after %lld", FN, name, name,
                     (long long)i, (long long)c[i], (long long)c[i - 1]);
  if (c[cu->size[0] - 1] != total)
    return sn_fail(ctx, SN_EINVAL, "%s: %s ends at %lld but %s has %lld tokens (%s: %s)", FN, name,
                   (long long)c[cu->size[0] - 1], tname, (long long)total, tname, sn_shape_str(t, sh, sizeof sh));
  return SN_OK;
}

/* lse must be a contiguous f32 (B, H, T) tensor. */
static sn_status need_lse(sn_ctx *ctx, const sn_tensor *lse, const sn_tensor *q) {
  char a[160];
  if (lse->dtype == SN_F32 && sn_is_contiguous(lse) && lse->ndim == 3 && lse->size[0] == q->size[0] &&
      lse->size[1] == q->size[2] && lse->size[2] == q->size[1])
    return SN_OK;
  return sn_fail(ctx, SN_EINVAL, "%s: lse must be a contiguous f32 (B, H, T) = %lldx%lldx%lld tensor, got %s %s", FN,
                 (long long)q->size[0], (long long)q->size[2], (long long)q->size[1], sn_dtype_name(lse->dtype),
                 sn_shape_str(lse, a, sizeof a));
}

/* Checks q, k, v and the options and fills P. */
static sn_status check_inputs(sn_ctx *ctx, problem *P, const sn_tensor *q, const sn_tensor *k, const sn_tensor *v,
                              const sn_attention_opts *opts) {
  char a[160], b[160];
  sn_status st = need_4d(ctx, "q", q, "(B, T, H, Dh)");
  if (st == SN_OK) st = need_4d(ctx, "k", k, "(B, S, Hkv, Dh)");
  if (st == SN_OK) st = need_4d(ctx, "v", v, "(B, S, Hkv, Dh)");
  if (st != SN_OK) return st;
  if (!opts) return sn_fail(ctx, SN_EINVAL, "%s: opts must not be NULL", FN);
  sn_shape_str(q, a, sizeof a);
  if (!sn_same_shape(k, v))
    return sn_fail(ctx, SN_EINVAL, "%s: v must have k's shape (k: %s, v: %s)", FN, sn_shape_str(k, b, sizeof b),
                   sn_shape_str(v, (char[160]){0}, 160));
  sn_shape_str(k, b, sizeof b);
  if (k->size[3] != q->size[3])
    return sn_fail(ctx, SN_EINVAL, "%s: k has head dim %lld but q has %lld (q: %s, k: %s)", FN,
                   (long long)k->size[3], (long long)q->size[3], a, b);
  if (k->size[0] != q->size[0])
    return sn_fail(ctx, SN_EINVAL, "%s: k has batch size %lld but q has %lld (q: %s, k: %s)", FN,
                   (long long)k->size[0], (long long)q->size[0], a, b);
  if (k->size[2] < 1 || q->size[2] % k->size[2] != 0)
    return sn_fail(ctx, SN_EINVAL, "%s: q has %lld heads, not a multiple of k's %lld heads (q: %s, k: %s)", FN,
                   (long long)q->size[2], (long long)k->size[2], a, b);
  if (q->size[3] < 1) return sn_fail(ctx, SN_EINVAL, "%s: head dim must be at least 1 (q: %s)", FN, a);
  if (isnan(opts->scale)) return sn_fail(ctx, SN_EINVAL, "%s: scale must be a number, got NaN", FN);
  *P = (problem){.nseq = q->size[0], .H = q->size[2], .Hkv = k->size[2], .G = q->size[2] / k->size[2],
                 .D = q->size[3], .Dp = pad16(q->size[3]), .T = q->size[1], .S = k->size[1],
                 .causal = opts->causal, .window = opts->window, .scale = opts->scale};
  /* Past T + S a window changes nothing; clamped, p - window cannot overflow. */
  P->window = min64(P->window, P->T + P->S);
  if (!opts->cu_seqlens_q != !opts->cu_seqlens_k)
    return sn_fail(ctx, SN_EINVAL, "%s: varlen needs both cu_seqlens_q and cu_seqlens_k", FN);
  if (opts->cu_seqlens_q) {
    const sn_tensor *cq = opts->cu_seqlens_q, *ck = opts->cu_seqlens_k;
    if (q->size[0] != 1)
      return sn_fail(ctx, SN_EINVAL, "%s: varlen q must be packed as (1, total, H, Dh), got %s", FN, a);
    st = check_cu(ctx, "cu_seqlens_q", cq, q->size[1], "q", q);
    if (st == SN_OK) st = check_cu(ctx, "cu_seqlens_k", ck, k->size[1], "k", k);
    if (st != SN_OK) return st;
    if (cq->size[0] != ck->size[0])
      return sn_fail(ctx, SN_EINVAL, "%s: cu_seqlens_q has %lld entries but cu_seqlens_k has %lld", FN,
                     (long long)cq->size[0], (long long)ck->size[0]);
    P->nseq = cq->size[0] - 1;
    P->cuq = sn_i64(cq), P->cuk = sn_i64(ck);
  }
  return SN_OK;
}

/* Workspace: `index` int64 slots (*slots), then nt per-thread blocks of `per` floats, then
 * `shared` floats at the returned pointer + nt * per. Every block starts 64-byte aligned
 * (per is a multiple of 16). NULL when the workspace cannot grow. */
static float *scratch(sn_ctx *ctx, int nt, int64_t per, int64_t shared, int64_t index, int64_t **slots) {
  size_t head = ((size_t)index * sizeof(int64_t) + 63) / 64 * 64;
  char *base = sn_ctx_workspace(ctx, head + ((size_t)nt * (size_t)per + (size_t)shared) * sizeof(float));
  if (!base) return NULL;
  if (slots) *slots = (int64_t *)(void *)base;
  return (float *)(void *)(base + head);
}

/* ---- forward --------------------------------------------------------------------------- */

/* kv: the packed K^T and V of this task's (s, kv head), see pack_kv. */
static void fwd_tile(const problem *P, const sn_attn_ops *A, float *w, view q, const float *kv, view o, float *lse,
                     int64_t s, int64_t h, int64_t i0, int m) {
  int64_t D = P->D, Dp = P->Dp, q0, tq, k0, tk;
  seq_rows(P, s, &q0, &tq, &k0, &tk);
  int64_t tkp = pad16(tk);
  const float *Kt = kv, *V = kv + Dp * tkp;
  float *Qp = w, *Sb = Qp + BR * Dp, *O = Sb + BR * BC, *mx = O + BR * Dp, *l = mx + BR;
  pack_rows(Qp, Dp, q, s, q0 + i0, h, m, D);
  memset(O, 0, (size_t)(m * Dp) * sizeof(float));
  for (int r = 0; r < m; r++) mx[r] = -INFINITY, l[r] = 0;
  int64_t lo, hi, lo_last, hi_first;
  key_range(P, tq, tk, i0, &lo, &hi_first);
  key_range(P, tq, tk, i0 + m - 1, &lo_last, &hi);
  float c = (float)(P->scale * LOG2E);
  for (int64_t j0 = lo / BC * BC; j0 < hi; j0 += BC) {
    int n = (int)min64(BC, tk - j0), np = (int)pad16(n);
    A->mm(Sb, np, Qp, Dp, 1, Kt + j0, tkp, m, np, (int)Dp, c, false);
    /* Only tiles crossing a row's range need the mask (and the last one its padding). */
    if (j0 < lo_last || j0 + np > hi_first) mask_tile(P, Sb, tq, tk, i0, m, j0, np);
    for (int r = 0; r < m; r++) {
      float *sr = Sb + (int64_t)r * np;
      float mnew = fmaxf(mx[r], A->max(sr, np));
      if (mnew == -INFINITY) { /* nothing allowed yet: P = 0 (exp2(-inf - -inf) would be NaN) */
        memset(sr, 0, (size_t)np * sizeof(float));
        continue;
      }
      float alpha = exp2f(mx[r] - mnew);
      l[r] = alpha * l[r] + A->exp2(sr, np, mnew);
      if (alpha != 1.0f) A->scale(O + r * Dp, alpha, (int)Dp);
      mx[r] = mnew;
    }
    A->mm(O, Dp, Sb, np, 1, V + j0 * Dp, Dp, m, (int)Dp, np, 1.0f, true);
  }
  for (int r = 0; r < m; r++) {
    float *orow = at(o, s, q0 + i0 + r, h), *lr = lse_at(P, lse, s, h, q0 + i0 + r);
    if (l[r] == 0) { /* no allowed key */
      memset(orow, 0, (size_t)D * sizeof(float));
      *lr = INFINITY;
      continue;
    }
    float inv = 1.0f / l[r];
    for (int64_t d = 0; d < D; d++) orow[d] = O[r * Dp + d] * inv;
    *lr = (float)(LN2 * (mx[r] + log2((double)l[r])));
  }
}

/* The last s with first[s] <= it: the sequence of item it, given each one's first item. */
static int64_t seq_of(const int64_t *first, int64_t nseq, int64_t it) {
  int64_t a = 0, b = nseq;
  while (b - a > 1) {
    int64_t mid = (a + b) / 2;
    if (first[mid] <= it) a = mid;
    else b = mid;
  }
  return a;
}

/* Items: (sequence, head, query tile); first[s] = index of sequence s's first item. The
 * tiles of a head run last to first, so under causal masks the long ones start early. */
static void item_of(const problem *P, const int64_t *first, int64_t it, int64_t *s, int64_t *h, int64_t *i0) {
  int64_t a = seq_of(first, P->nseq, it), q0, tq, k0, tk;
  seq_rows(P, a, &q0, &tq, &k0, &tk);
  int64_t nqb = (tq + BR - 1) / BR, r = it - first[a];
  *s = a, *h = r / nqb, *i0 = (nqb - 1 - r % nqb) * BR;
}

sn_status sn_attention_fwd(sn_ctx *ctx, sn_tensor *o, sn_tensor *lse, const sn_tensor *q, const sn_tensor *k,
                           const sn_tensor *v, const sn_attention_opts *opts) {
  problem P;
  sn_status st = check_inputs(ctx, &P, q, k, v, opts);
  if (st == SN_OK) st = need_out(ctx, "o", o, q);
  if (st == SN_OK) st = need_lse(ctx, lse, q);
  if (st != SN_OK) return st;
  /* Slots: first[s] (first item of s), then kvoff[s] (where s's packed K, V start). */
  int nt = omp_get_max_threads();
  int64_t per = BR * P.Dp + BR * BC + BR * P.Dp + 2 * BR, *first = NULL, kvfloats = 0;
  for (int64_t s = 0; s < P.nseq; s++) {
    int64_t q0, tq, k0, tk;
    seq_rows(&P, s, &q0, &tq, &k0, &tk);
    kvfloats += 2 * P.Hkv * P.Dp * pad16(tk);
  }
  float *w = scratch(ctx, nt, per, kvfloats, 2 * (P.nseq + 1), &first);
  if (!w) return SN_ENOMEM;
  int64_t *kvoff = first + P.nseq + 1;
  float *kv = w + nt * per;
  first[0] = kvoff[0] = 0;
  for (int64_t s = 0; s < P.nseq; s++) {
    int64_t q0, tq, k0, tk;
    seq_rows(&P, s, &q0, &tq, &k0, &tk);
    first[s + 1] = first[s] + P.H * ((tq + BR - 1) / BR);
    kvoff[s + 1] = kvoff[s] + 2 * P.Hkv * P.Dp * pad16(tk);
  }
  bool varlen = P.cuq != NULL;
  view vq = view_of(q, varlen), vk = view_of(k, varlen), vv = view_of(v, varlen), vo = view_of(o, varlen);
  const sn_attn_ops *A = sn_attn_current();
  float *plse = sn_f32(lse);
  int64_t items = first[P.nseq];
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < P.nseq * P.Hkv; it++) {
      int64_t s = it / P.Hkv, g = it % P.Hkv;
      pack_kv(&P, kv + kvoff[s] + g * (kvoff[s + 1] - kvoff[s]) / P.Hkv, vk, vv, s, g);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
      int64_t s, h, i0, q0, tq, k0, tk, g;
      item_of(&P, first, it, &s, &h, &i0);
      seq_rows(&P, s, &q0, &tq, &k0, &tk);
      g = h / P.G;
      fwd_tile(&P, A, w + omp_get_thread_num() * per, vq, kv + kvoff[s] + g * (kvoff[s + 1] - kvoff[s]) / P.Hkv, vo,
               plse, s, h, i0, (int)min64(BR, tq - i0));
    }
  }
  return SN_OK;
}

/* ---- backward -------------------------------------------------------------------------- */

/* The backward's packed (s, g): K^T and V^T (Dp x tkp each), then K row major (tkp x Dp). */
static int64_t bwd_pack_floats(const problem *P, int64_t tk) { return 3 * P->Dp * pad16(tk); }

static void pack_bwd(const problem *P, float *dst, view k, view v, int64_t s, int64_t g) {
  int64_t q0, tq, k0, tk, Dp = P->Dp, tkp;
  seq_rows(P, s, &q0, &tq, &k0, &tk);
  tkp = pad16(tk);
  pack_transposed(dst, tkp, Dp, k, s, k0, g, tk, tkp, P->D);
  pack_transposed(dst + Dp * tkp, tkp, Dp, v, s, k0, g, tk, tkp, P->D);
  float *Kp = dst + 2 * Dp * tkp;
  pack_rows(Kp, Dp, k, s, k0, g, (int)tk, P->D);
  memset(Kp + tk * Dp, 0, (size_t)((tkp - tk) * Dp) * sizeof(float));
}

/* A query tile of one head, loaded for the backward, and the tile buffers it works in. */
typedef struct {
  float *Qp, *dOp, *dQ, *Sb, *dP, *Dr, *L2; /* BR x Dp (3), BR x BC (2), BR (2) */
  int64_t i0, h;
  int m;
  int64_t jfirst, hi, lo_last, hi_first; /* key tiles jfirst, jfirst + BC, .. below hi */
} qtile;

static int64_t qtile_floats(const problem *P) { return 3 * BR * P->Dp + 2 * BR * BC + 2 * BR; }

static void qtile_init(qtile *t, const problem *P, float *w) {
  t->Qp = w, t->dOp = w + BR * P->Dp, t->dQ = t->dOp + BR * P->Dp, t->Sb = t->dQ + BR * P->Dp;
  t->dP = t->Sb + BR * BC, t->Dr = t->dP + BR * BC, t->L2 = t->Dr + BR;
}

/* Packs q and dO rows i0 .. i0+m-1 of head h, D_i = rowsum(dO_i o_i) and lse in log2 units. */
static void qtile_load(qtile *t, const problem *P, view q, view dout, view o, const float *lse, int64_t s, int64_t h,
                       int64_t i0) {
  int64_t D = P->D, Dp = P->Dp, q0, tq, k0, tk, lo;
  seq_rows(P, s, &q0, &tq, &k0, &tk);
  t->h = h, t->i0 = i0, t->m = (int)min64(BR, tq - i0);
  pack_rows(t->Qp, Dp, q, s, q0 + i0, h, t->m, D);
  pack_rows(t->dOp, Dp, dout, s, q0 + i0, h, t->m, D);
  for (int r = 0; r < t->m; r++) {
    const float *orow = at(o, s, q0 + i0 + r, h);
    double acc = 0;
    for (int64_t d = 0; d < D; d++) acc += (double)t->dOp[r * Dp + d] * orow[d];
    t->Dr[r] = (float)acc;
    t->L2[r] = (float)(*lse_at(P, (float *)lse, s, h, q0 + i0 + r) * LOG2E);
  }
  key_range(P, tq, tk, i0, &lo, &t->hi_first);
  key_range(P, tq, tk, i0 + t->m - 1, &t->lo_last, &t->hi);
  t->jfirst = lo / BC * BC;
}

/* P = exp(S - lse) into Sb and dS = P (dO V^T - D) into dP for key tile j0 (np columns).
 * A row without keys has lse = +inf and gets P = 0. */
static void qtile_scores(qtile *t, const problem *P, const sn_attn_ops *A, const float *kv, int64_t tq, int64_t tk,
                         int64_t j0, int np) {
  int64_t Dp = P->Dp, tkp = pad16(tk);
  A->mm(t->Sb, np, t->Qp, Dp, 1, kv + j0, tkp, t->m, np, (int)Dp, (float)(P->scale * LOG2E), false);
  if (j0 < t->lo_last || j0 + np > t->hi_first) mask_tile(P, t->Sb, tq, tk, t->i0, t->m, j0, np);
  for (int r = 0; r < t->m; r++) A->exp2(t->Sb + (int64_t)r * np, np, t->L2[r]);
  A->mm(t->dP, np, t->dOp, Dp, 1, kv + Dp * tkp + j0, tkp, t->m, np, (int)Dp, 1.0f, false);
  for (int r = 0; r < t->m; r++) A->dsoftmax(t->dP + (int64_t)r * np, t->Sb + (int64_t)r * np, t->Dr[r], np);
}

/* dV[0..n) += P^T dO and dK[0..n) += dS^T Q for the key tile the scores were made for. */
static void qtile_dkv(qtile *t, const problem *P, const sn_attn_ops *A, float *dK, float *dV, int n, int np) {
  int64_t Dp = P->Dp;
  A->mm(dV, Dp, t->Sb, 1, np, t->dOp, Dp, n, (int)Dp, t->m, 1.0f, true);
  A->mm(dK, Dp, t->dP, 1, np, t->Qp, Dp, n, (int)Dp, t->m, 1.0f, true);
}

/* dQ += dS K (key tile j0). */
static void qtile_dq(qtile *t, const problem *P, const sn_attn_ops *A, const float *kv, int64_t tk, int64_t j0, int n,
                     int np) {
  int64_t Dp = P->Dp;
  A->mm(t->dQ, Dp, t->dP, np, 1, kv + 2 * Dp * pad16(tk) + j0 * Dp, Dp, t->m, (int)Dp, n, 1.0f, true);
}

static void qtile_store_dq(qtile *t, const problem *P, view dq, int64_t s, int64_t q0) {
  for (int r = 0; r < t->m; r++) {
    float *row = at(dq, s, q0 + t->i0 + r, t->h);
    for (int64_t d = 0; d < P->D; d++) row[d] = P->scale * t->dQ[r * P->Dp + d];
  }
}

/* Rows j0 .. j0+n-1 of kv head g: dk = scale * dK, dv = dV. */
static void store_dkv(const problem *P, view dk, view dv, const float *dK, const float *dV, int64_t s, int64_t row0,
                      int64_t g, int64_t n) {
  for (int64_t j = 0; j < n; j++) {
    float *kr = at(dk, s, row0 + j, g), *vr = at(dv, s, row0 + j, g);
    for (int64_t d = 0; d < P->D; d++) kr[d] = P->scale * dK[j * P->Dp + d], vr[d] = dV[j * P->Dp + d];
  }
}

typedef struct {
  const problem *P;
  const sn_attn_ops *A;
  view q, o, dout, dq, dk, dv;
  const float *lse, *kv;      /* kv: the packed K and V of every (s, g), see pack_bwd */
  const int64_t *kvoff;       /* where sequence s's packed block starts */
} bwd_args;

static const float *packed_of(const bwd_args *a, int64_t s, int64_t g) {
  return a->kv + a->kvoff[s] + g * (a->kvoff[s + 1] - a->kvoff[s]) / a->P->Hkv;
}

/* One task per (s, g): dk, dv of kv head g (accumulated over its whole sequence in w) and
 * the dq of the group's query heads. */
static void bwd_fused(const bwd_args *a, float *w, int64_t s, int64_t g) {
  const problem *P = a->P;
  int64_t q0, tq, k0, tk, Dp = P->Dp;
  seq_rows(P, s, &q0, &tq, &k0, &tk);
  const float *kv = packed_of(a, s, g);
  float *dK = w, *dV = dK + pad16(tk) * Dp;
  qtile t;
  qtile_init(&t, P, dV + pad16(tk) * Dp);
  memset(dK, 0, (size_t)(2 * pad16(tk) * Dp) * sizeof(float));
  for (int64_t h = g * P->G; h < (g + 1) * P->G; h++)
    for (int64_t i0 = 0; i0 < tq; i0 += BR) {
      qtile_load(&t, P, a->q, a->dout, a->o, a->lse, s, h, i0);
      memset(t.dQ, 0, (size_t)(t.m * Dp) * sizeof(float));
      for (int64_t j0 = t.jfirst; j0 < t.hi; j0 += BC) {
        int n = (int)min64(BC, tk - j0), np = (int)pad16(n);
        qtile_scores(&t, P, a->A, kv, tq, tk, j0, np);
        qtile_dkv(&t, P, a->A, dK + j0 * Dp, dV + j0 * Dp, n, np);
        qtile_dq(&t, P, a->A, kv, tk, j0, n, np);
      }
      qtile_store_dq(&t, P, a->dq, s, q0);
    }
  store_dkv(P, a->dk, a->dv, dK, dV, s, k0, g, tk);
}

/* Two-pass, first pass: dk, dv of key tile j0 of kv head g. The same query tiles in the
 * same order as bwd_fused, so the sums are the same bit for bit. */
static void bwd_keys(const bwd_args *a, float *w, int64_t s, int64_t g, int64_t j0) {
  const problem *P = a->P;
  int64_t q0, tq, k0, tk, Dp = P->Dp;
  seq_rows(P, s, &q0, &tq, &k0, &tk);
  const float *kv = packed_of(a, s, g);
  int n = (int)min64(BC, tk - j0), np = (int)pad16(n);
  float *dK = w, *dV = dK + BC * Dp;
  qtile t;
  qtile_init(&t, P, dV + BC * Dp);
  memset(dK, 0, (size_t)(2 * BC * Dp) * sizeof(float));
  for (int64_t h = g * P->G; h < (g + 1) * P->G; h++)
    for (int64_t i0 = 0; i0 < tq; i0 += BR) {
      qtile_load(&t, P, a->q, a->dout, a->o, a->lse, s, h, i0);
      if (j0 < t.jfirst || j0 >= t.hi) continue;
      qtile_scores(&t, P, a->A, kv, tq, tk, j0, np);
      qtile_dkv(&t, P, a->A, dK, dV, n, np);
    }
  store_dkv(P, a->dk, a->dv, dK, dV, s, k0 + j0, g, n);
}

/* Two-pass, second pass: dq of query tile i0 of head h. */
static void bwd_queries(const bwd_args *a, float *w, int64_t s, int64_t h, int64_t i0) {
  const problem *P = a->P;
  int64_t q0, tq, k0, tk;
  seq_rows(P, s, &q0, &tq, &k0, &tk);
  const float *kv = packed_of(a, s, h / P->G);
  qtile t;
  qtile_init(&t, P, w);
  qtile_load(&t, P, a->q, a->dout, a->o, a->lse, s, h, i0);
  memset(t.dQ, 0, (size_t)(t.m * P->Dp) * sizeof(float));
  for (int64_t j0 = t.jfirst; j0 < t.hi; j0 += BC) {
    int n = (int)min64(BC, tk - j0), np = (int)pad16(n);
    qtile_scores(&t, P, a->A, kv, tq, tk, j0, np);
    qtile_dq(&t, P, a->A, kv, tk, j0, n, np);
  }
  qtile_store_dq(&t, P, a->dq, s, q0);
}

sn_status sn_attention_bwd(sn_ctx *ctx, sn_tensor *dq, sn_tensor *dk, sn_tensor *dv, const sn_tensor *dout,
                           const sn_tensor *q, const sn_tensor *k, const sn_tensor *v, const sn_tensor *o,
                           const sn_tensor *lse, const sn_attention_opts *opts) {
  problem P;
  char a[160], b[160];
  sn_status st = check_inputs(ctx, &P, q, k, v, opts);
  if (st == SN_OK) st = need_4d(ctx, "grad_output", dout, "(B, T, H, Dh)");
  if (st == SN_OK) st = need_4d(ctx, "o", o, "(B, T, H, Dh)");
  if (st != SN_OK) return st;
  if (!sn_same_shape(dout, q) || !sn_same_shape(o, q))
    return sn_fail(ctx, SN_EINVAL, "%s: grad_output and o must have q's shape %s, got %s and %s", FN,
                   sn_shape_str(q, a, sizeof a), sn_shape_str(dout, b, sizeof b), sn_shape_str(o, (char[160]){0}, 160));
  st = need_lse(ctx, lse, q);
  if (st == SN_OK) st = need_grad_out(ctx, "dq", dq, q);
  if (st == SN_OK) st = need_grad_out(ctx, "dk", dk, k);
  if (st == SN_OK) st = need_grad_out(ctx, "dv", dv, v);
  if (st != SN_OK) return st;
  /* Slots: kvoff[s], then the first item of s in the key pass (Hkv x key tiles) and in the
   * query pass (H x query tiles). */
  int64_t *kvoff = NULL, tkmax = 0;
  int nt = omp_get_max_threads();
  /* With fewer (s, g) tasks than threads, two passes: more tasks, 7 tile products, not 5. */
  bool two_pass = P.nseq * P.Hkv < nt;
  int64_t kvfloats = 0;
  for (int64_t s = 0; s < P.nseq; s++) {
    int64_t q0, tq, k0, tk;
    seq_rows(&P, s, &q0, &tq, &k0, &tk);
    tkmax = max64(tkmax, tk);
    kvfloats += P.Hkv * bwd_pack_floats(&P, tk);
  }
  int64_t per = qtile_floats(&P) + 2 * P.Dp * (two_pass ? BC : pad16(tkmax));
  float *w = scratch(ctx, nt, per, kvfloats, 3 * (P.nseq + 1), &kvoff);
  if (!w) return SN_ENOMEM;
  int64_t *firstk = kvoff + P.nseq + 1, *firstq = firstk + P.nseq + 1;
  kvoff[0] = firstk[0] = firstq[0] = 0;
  for (int64_t s = 0; s < P.nseq; s++) {
    int64_t q0, tq, k0, tk;
    seq_rows(&P, s, &q0, &tq, &k0, &tk);
    kvoff[s + 1] = kvoff[s] + P.Hkv * bwd_pack_floats(&P, tk);
    firstk[s + 1] = firstk[s] + P.Hkv * ((tk + BC - 1) / BC);
    firstq[s + 1] = firstq[s] + P.H * ((tq + BR - 1) / BR);
  }
  bool varlen = P.cuq != NULL;
  bwd_args args = {.P = &P, .A = sn_attn_current(), .q = view_of(q, varlen), .o = view_of(o, varlen),
                   .dout = view_of(dout, varlen), .dq = view_of(dq, varlen), .dk = view_of(dk, varlen),
                   .dv = view_of(dv, varlen), .lse = sn_f32(lse), .kvoff = kvoff};
  view vk = view_of(k, varlen), vv = view_of(v, varlen);
  float *kv = w + nt * per;
  args.kv = kv;
#pragma omp parallel num_threads(nt)
  {
    float *mine = w + omp_get_thread_num() * per;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < P.nseq * P.Hkv; it++)
      pack_bwd(&P, kv + kvoff[it / P.Hkv] + (it % P.Hkv) * (kvoff[it / P.Hkv + 1] - kvoff[it / P.Hkv]) / P.Hkv, vk,
               vv, it / P.Hkv, it % P.Hkv);
    if (!two_pass) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < P.nseq * P.Hkv; it++) bwd_fused(&args, mine, it / P.Hkv, it % P.Hkv);
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < firstk[P.nseq]; it++) {
        int64_t s = seq_of(firstk, P.nseq, it), q0, tq, k0, tk;
        seq_rows(&P, s, &q0, &tq, &k0, &tk);
        int64_t nkt = (tk + BC - 1) / BC, r = it - firstk[s];
        bwd_keys(&args, mine, s, r / nkt, r % nkt * BC);
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < firstq[P.nseq]; it++) {
        int64_t s, h, i0;
        item_of(&P, firstq, it, &s, &h, &i0);
        bwd_queries(&args, mine, s, h, i0);
      }
    }
  }
  return SN_OK;
}

/* ---- decode step ----------------------------------------------------------------------- */

sn_status sn_attention_step(sn_ctx *ctx, sn_tensor *o, sn_tensor *k_cache, sn_tensor *v_cache,
                            const sn_tensor *q, const sn_tensor *k_new, const sn_tensor *v_new, int64_t pos,
                            const sn_attention_opts *opts) {
  char a[160], b[160];
  problem P;
  sn_status st = check_inputs(ctx, &P, q, k_new, v_new, opts);
  if (st == SN_OK) st = need_out(ctx, "o", o, q);
  if (st != SN_OK) return st;
  if (opts->cu_seqlens_q) return sn_fail(ctx, SN_EINVAL, "%s: the decode step takes no cu_seqlens", FN);
  if (q->size[1] != 1 || k_new->size[1] != 1)
    return sn_fail(ctx, SN_EINVAL, "%s: the decode step takes one token: q (B,1,H,Dh) and k, v (B,1,Hkv,Dh), got q: %s, k: %s",
                   FN, sn_shape_str(q, a, sizeof a), sn_shape_str(k_new, b, sizeof b));
  int64_t B = q->size[0], Hkv = P.Hkv, D = P.D;
  for (int i = 0; i < 2; i++) {
    const sn_tensor *c = i ? v_cache : k_cache;
    const char *name = i ? "v_cache" : "k_cache";
    if (c->dtype != SN_F32 || c->ndim != 4 || !sn_is_contiguous(c) || c->size[0] != B || c->size[1] != Hkv ||
        c->size[3] != D || c->size[2] != k_cache->size[2])
      return sn_fail(ctx, SN_EINVAL, "%s: %s must be a contiguous f32 (B, Hkv, Tmax, Dh) = %lldx%lldxTmaxx%lld tensor, got %s %s",
                     FN, name, (long long)B, (long long)Hkv, (long long)D, sn_dtype_name(c->dtype),
                     sn_shape_str(c, a, sizeof a));
  }
  int64_t Tmax = k_cache->size[2];
  if (pos < 0 || pos >= Tmax)
    return sn_fail(ctx, SN_EINVAL, "%s: pos %lld is outside the cache's %lld positions (k_cache: %s)", FN,
                   (long long)pos, (long long)Tmax, sn_shape_str(k_cache, a, sizeof a));
  float *kc = sn_f32(k_cache), *vc = sn_f32(v_cache);
  for (int64_t bb = 0; bb < B; bb++)
    for (int64_t g = 0; g < Hkv; g++) {
      int64_t off = ((bb * Hkv + g) * Tmax + pos) * D;
      memcpy(kc + off, sn_f32(k_new) + bb * k_new->stride[0] + g * k_new->stride[2], (size_t)D * sizeof(float));
      memcpy(vc + off, sn_f32(v_new) + bb * v_new->stride[0] + g * v_new->stride[2], (size_t)D * sizeof(float));
    }
  int64_t lo = opts->window >= 0 ? max64(0, pos - opts->window) : 0, n = pos - lo + 1;
  int nt = omp_get_max_threads();
  int64_t per = pad16(n) + pad16(D);
  float *w = scratch(ctx, nt, per, 0, 0, NULL);
  if (!w) return SN_ENOMEM;
  int64_t items = B * P.H;
  const float *pq = sn_f32(q);
  const sn_attn_ops *A = sn_attn_current();
  float *po = sn_f32(o), scale = P.scale;
#pragma omp parallel for schedule(static) num_threads(nt) if (items * n * D > 32768)
  for (int64_t it = 0; it < items; it++) {
    int64_t bb = it / P.H, h = it % P.H, g = h / P.G;
    const float *qr = pq + bb * q->stride[0] + h * q->stride[2];
    const float *kr = kc + ((bb * Hkv + g) * Tmax + lo) * D, *vr = vc + ((bb * Hkv + g) * Tmax + lo) * D;
    float *sc = w + omp_get_thread_num() * per, *acc = sc + pad16(n);
    for (int64_t j = 0; j < n; j++) sc[j] = scale * A->dot(qr, kr + j * D, (int)D);
    float mx = sn_vec->max(sc, n);
    sn_vec->binary_scalar(SN_SUB, sc, sc, mx, n, false);
    sn_vec->unary(SN_EXP, sc, sc, n);
    float inv = (float)(1.0 / sn_vec->sum(sc, n));
    memset(acc, 0, (size_t)D * sizeof(float));
    for (int64_t j = 0; j < n; j++) A->axpy(acc, sc[j], vr + j * D, (int)D);
    float *orow = po + bb * P.H * D + h * D;
    for (int64_t d = 0; d < D; d++) orow[d] = acc[d] * inv;
  }
  return SN_OK;
}
