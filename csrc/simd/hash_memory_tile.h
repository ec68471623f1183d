/* simd/hash_memory_tile.h -- the memory layer's inner loops (simd/hash_memory.h), included
 * once by each of hash_memory_{scalar,avx2,avx512}.c with HM_TABLE and HM_NAME naming the
 * table. Written with GCC vector types of VW floats, one register of the ISA. A full column
 * block is NV = HM_CB / VW vectors whose accumulators live in registers for one token; the
 * last, narrower block of a row runs the same code with a partial vector at its end (read
 * and written through memcpy, so nothing past the row is touched). Floating-point
 * contraction is on (C11 mode turns it off) so that acc + p * row is one FMA.
 *
 * The panel a task reads is in L2 (the caller sized it so); prefetching the next token's
 * rows from there did not help. Codes come as panel row numbers laid out per table block
 * (hm_task.off): read in place, h's rows K entries apart missed the cache at the head of
 * every chain code -> row -> FMA. What gather does fetch ahead, spread over its tokens, is
 * the next panel of a packed copy (t->next), which comes from memory. */
#pragma GCC optimize("fp-contract=fast")

#include <string.h>

#include "simd/hash_memory.h"
#include "simd/tile_vec.h"

typedef int32_t vi __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4), aligned(4)));

enum { NV = HM_CB / VW };
_Static_assert(HM_CB % VW == 0, "a column block holds whole vectors");

/* Vector j of a block of nv vectors whose last holds m lanes: whole, or the first m lanes
 * (the rest zero). With nv and m constants the test folds away. */
INLINE vf get(const float *p, int j, int nv, int m) {
  if (j == nv - 1 && m < VW) {
    vf v = splat(0.0f);
    memcpy(&v, p, (size_t)m * sizeof(float));
    return v;
  }
  return ld(p);
}

INLINE void put(float *p, vf v, int j, int nv, int m) {
  if (j == nv - 1 && m < VW) memcpy(p, &v, (size_t)m * sizeof(float));
  else st(p, v);
}

/* Lane q of the result is the sum of v[q]'s lanes, for q < VW (v is overwritten). Pairs are
 * folded by even/odd lane shuffles: after level L vector j holds, in lane blocks of
 * VW / 2^L, the partial sums of vectors j 2^L .. (j+1) 2^L - 1. VW - 1 folds instead of VW
 * horizontal sums. */
INLINE vf sum_lanes(vf *v) {
  vi even = {0}, odd = {0};
  for (int i = 0; i < VW; i++) even[i] = 2 * i, odd[i] = 2 * i + 1;
#pragma GCC unroll 16
  for (int w = VW; w > 1; w /= 2)
#pragma GCC unroll 16
    for (int j = 0; j < w / 2; j++)
      v[j] = __builtin_shuffle(v[2 * j], v[2 * j + 1], even) + __builtin_shuffle(v[2 * j], v[2 * j + 1], odd);
  return v[0];
}

/* ---- gather: the forward's weighted sum of rows ----------------------------------------- */

/* Token n's share of t->next, whole lines, towards L2. */
INLINE void fetch_next(const hm_task *t, int64_t n) {
  const int64_t nn = t->n1 - t->n0;
  if (!t->next || nn <= 0) return;
  const int64_t step = (t->next_bytes + nn * 64 - 1) / (nn * 64) * 64;
  for (int64_t i = 0; i < step; i += 64) {
    int64_t at = (n - t->n0) * step + i;
    if (at < t->next_bytes) __builtin_prefetch(t->next + at, 0, 2);
  }
}

INLINE void gather_cols(const hm_task *t, int64_t c, const int nv, const int m) {
  const int64_t kw = t->k1 - t->k0;
  const float *tab = t->tab;
  for (int64_t n = t->n0; n < t->n1; n++) {
    fetch_next(t, n);
    vf acc[NV] = {0}; /* all set below; the zeros quiet -Wmaybe-uninitialized for runtime nv */
    float *yr = t->out + (n - t->n0) * HM_CB;
#pragma GCC unroll 16
    for (int j = 0; j < nv; j++)
      acc[j] = !t->first ? get(yr + j * VW, j, nv, m) : t->bias ? get(t->bias + c + j * VW, j, nv, m) : splat(0.0f);
    const uint32_t *on = t->off + n * kw;
    const float *pn = t->ps + n * kw;
    /* Odd tables into a second set of sums: two FMA chains of half the length (a chain of
     * 16 dependent FMAs per token bounded the loop, not the loads). */
    vf odd[NV] = {0};
    int64_t k = 0;
    for (; k + 1 < kw; k += 2) {
      const float *r0 = tab + (int64_t)on[k] * HM_CB, *r1 = tab + (int64_t)on[k + 1] * HM_CB;
      vf s0 = splat(pn[k]), s1 = splat(pn[k + 1]);
#pragma GCC unroll 16
      for (int j = 0; j < nv; j++) {
        acc[j] += s0 * get(r0 + j * VW, j, nv, m);
        odd[j] += s1 * get(r1 + j * VW, j, nv, m);
      }
    }
    if (k < kw) {
      const float *row = tab + (int64_t)on[k] * HM_CB;
      vf s = splat(pn[k]);
#pragma GCC unroll 16
      for (int j = 0; j < nv; j++) acc[j] += s * get(row + j * VW, j, nv, m);
    }
#pragma GCC unroll 16
    for (int j = 0; j < nv; j++) put(yr + j * VW, acc[j] + odd[j], j, nv, m);
  }
}

static void gather(const hm_task *t) {
  if (t->nc == HM_CB) {
    gather_cols(t, t->c0, NV, VW);
  } else {
    int nv = (int)((t->nc + VW - 1) / VW), m = (int)(t->nc - (int64_t)(nv - 1) * VW);
    gather_cols(t, t->c0, nv, m);
  }
}

/* Adds s times the bf16 row r (HM_CB / 2 words) into a. */
INLINE void add_bf16(vf *a, vf s, const uint32_t *r) {
#pragma GCC unroll 16
  for (int o = 0; o < HM_CB / 2; o += VW) {
    vu w = *(const vu *)(r + o);
    const int c = o / 16 * 32 + o % 16; /* the low halves' first column */
    a[c / VW] += s * (vf)(w << 16);
    a[(c + 16) / VW] += s * (vf)(w & 0xFFFF0000u);
  }
}

static void gather_bf16(const hm_task *t) {
  const int64_t kw = t->k1 - t->k0;
  const uint32_t *tab = t->tab16;
  for (int64_t n = t->n0; n < t->n1; n++) {
    fetch_next(t, n);
    vf acc[NV], odd[NV]; /* two FMA chains, as in gather_cols */
    float *yr = t->out + (n - t->n0) * HM_CB;
#pragma GCC unroll 16
    for (int j = 0; j < NV; j++) acc[j] = t->first ? splat(0.0f) : ld(yr + j * VW), odd[j] = splat(0.0f);
    const uint32_t *on = t->off + n * kw;
    const float *pn = t->ps + n * kw;
    int64_t k = 0;
    for (; k + 1 < kw; k += 2) {
      add_bf16(acc, splat(pn[k]), tab + (int64_t)on[k] * (HM_CB / 2));
      add_bf16(odd, splat(pn[k + 1]), tab + (int64_t)on[k + 1] * (HM_CB / 2));
    }
    if (k < kw) add_bf16(acc, splat(pn[k]), tab + (int64_t)on[k] * (HM_CB / 2));
#pragma GCC unroll 16
    for (int j = 0; j < NV; j++) st(yr + j * VW, acc[j] + odd[j]);
  }
}

/* ---- dot: the backward's <row, dy> per (token, table) ----------------------------------- */

INLINE void dot_cols(const hm_task *t, int64_t c, const int nv, const int m) {
  const int64_t K = t->K, R = t->R, dout = t->dout;
  for (int64_t n = t->n0; n < t->n1; n++) {
    vf d[NV] = {0};
#pragma GCC unroll 16
    for (int j = 0; j < nv; j++) d[j] = get(t->dy + n * dout + c + j * VW, j, nv, m);
    const int64_t *hn = t->h + n * K;
    float *dp = t->out + n * K;
    /* VW tables at a time: their VW partial vectors fold into one vector of VW sums. */
    for (int64_t k0 = t->k0; k0 < t->k1; k0 += VW) {
      int q = t->k1 - k0 < VW ? (int)(t->k1 - k0) : VW;
      vf part[VW];
#pragma GCC unroll 16
      for (int i = 0; i < VW; i++) {
        part[i] = splat(0.0f);
        if (i < q) {
          const float *row = t->tab + ((k0 + i - t->k0) * R + hn[k0 + i]) * HM_CB;
#pragma GCC unroll 16
          for (int j = 0; j < nv; j++) part[i] += get(row + j * VW, j, nv, m) * d[j];
        }
      }
      vf sum = sum_lanes(part), old = get(dp + k0, 0, 1, q);
      put(dp + k0, old + sum, 0, 1, q);
    }
  }
}

static void dot(const hm_task *t) {
  if (t->nc == HM_CB) {
    dot_cols(t, t->c0, NV, VW);
  } else {
    int nv = (int)((t->nc + VW - 1) / VW), m = (int)(t->nc - (int64_t)(nv - 1) * VW);
    dot_cols(t, t->c0, nv, m);
  }
}

/* ---- scatter: the backward's dtables ------------------------------------------------------ */

INLINE void scatter_cols(const hm_task *t, int64_t c, const int nv, const int m) {
  const int64_t K = t->K, R = t->R, dout = t->dout;
  for (int64_t n = t->n0; n < t->n1; n++) {
    vf d[NV] = {0};
#pragma GCC unroll 16
    for (int j = 0; j < nv; j++) d[j] = get(t->dy + n * dout + c + j * VW, j, nv, m);
    const int64_t *hn = t->h + n * K;
    const float *pn = t->p + n * K;
    for (int64_t k = t->k0; k < t->k1; k++) {
      float *row = t->out + ((k - t->k0) * R + hn[k]) * HM_CB;
      vf s = splat(pn[k]);
#pragma GCC unroll 16
      for (int j = 0; j < nv; j++) put(row + j * VW, get(row + j * VW, j, nv, m) + s * d[j], j, nv, m);
    }
  }
}

static void scatter(const hm_task *t) {
  if (t->nc == HM_CB) {
    scatter_cols(t, t->c0, NV, VW);
  } else {
    int nv = (int)((t->nc + VW - 1) / VW), m = (int)(t->nc - (int64_t)(nv - 1) * VW);
    scatter_cols(t, t->c0, nv, m);
  }
}

const sn_hash_memory_ops HM_TABLE = {HM_NAME, gather, gather_bf16, dot, scatter};
