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

#include <math.h>
#include <string.h>

#include "simd/hash_memory.h"
#include "simd/tile_vec.h"

typedef uint32_t vuu __attribute__((vector_size(VW * 4), aligned(4))); /* unaligned words */
typedef int64_t vl __attribute__((vector_size(VW * 8)));              /* VW codes */
typedef int64_t vlu __attribute__((vector_size(VW * 8), aligned(8)));

enum { NV = HM_CB / VW, NV16 = HM_CB16 / VW };
_Static_assert(HM_CB % VW == 0 && HM_CB16 % VW == 0, "a column block holds whole vectors");

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

/* v[j] <- vector j of the nv vectors at p, the last holding m lanes. */
INLINE void get_cols(vf *v, const float *p, const int nv, const int m) {
#pragma GCC unroll 16
  for (int j = 0; j < nv; j++) v[j] = get(p + j * VW, j, nv, m);
}

/* fn(t, t->c0, nv, m) over the task's columns: nv vectors, the last holding m lanes; a full
 * column block passes the constants NV, VW, so its loops unroll without tests. */
#define BY_COLUMNS(fn, t)                                                        \
  do {                                                                           \
    if ((t)->nc == HM_CB) {                                                      \
      fn(t, (t)->c0, NV, VW);                                                    \
    } else {                                                                     \
      int nv_ = (int)(((t)->nc + VW - 1) / VW), m_ = (int)((t)->nc - (int64_t)(nv_ - 1) * VW); \
      fn(t, (t)->c0, nv_, m_);                                                   \
    }                                                                            \
  } while (0)

/* ---- gather: the forward's weighted sum of rows ----------------------------------------- */

/* Bytes of t->next per token, whole lines (0: none). */
INLINE int64_t next_step(const hm_task *t) {
  const int64_t nn = t->n1 - t->n0;
  return t->next && nn > 0 ? (t->next_bytes + nn * 64 - 1) / (nn * 64) * 64 : 0;
}

/* Token n's share of t->next towards L2 (step from next_step, hoisted: a division). */
INLINE void fetch_next(const hm_task *t, int64_t n, int64_t step) {
  for (int64_t i = 0; i < step; i += 64) {
    int64_t at = (n - t->n0) * step + i;
    if (at < t->next_bytes) __builtin_prefetch(t->next + at, 0, 2);
  }
}

/* A store that bypasses the caches (p aligned to a vector), for y's rows: they are d_out
 * floats apart and written once; stored through the caches they were slower than the old
 * copy from the y panel at 2 threads (a few sets of L2 fill up, evicting the panel). */
#if defined(__AVX512F__)
#define st_nt(p, v) _mm512_stream_ps(p, (__m512)(v))
#elif defined(__AVX2__)
#define st_nt(p, v) _mm256_stream_ps(p, (__m256)(v))
#else
#define st_nt(p, v) st(p, v)
#endif
#ifdef __AVX2__
#define nt_fence() _mm_sfence() /* streaming stores are weakly ordered */
#else
#define nt_fence() ((void)0)
#endif

/* Token n's sums v (nvb vectors, the block's width; zero past nc): to the y panel (whole
 * rows, nvb VW floats apart), or to y's row when t->y is set, plus the bias when add_bias
 * (columns past nc are not written). */
INLINE void put_sums(const hm_task *t, int64_t n, vf *v, const int nvb, bool add_bias) {
  if (!t->y) {
#pragma GCC unroll 16
    for (int j = 0; j < nvb; j++) st(t->out + (n - t->n0) * nvb * VW + j * VW, v[j]);
    return;
  }
  float *yr = t->y + n * t->dout + t->c0;
  const float *b = t->bias ? t->bias + t->c0 : NULL;
  if (t->nc == nvb * VW && (uintptr_t)yr % (VW * 4) == 0) {
#pragma GCC unroll 16
    for (int j = 0; j < nvb; j++) st_nt(yr + j * VW, add_bias && b ? v[j] + ld(b + j * VW) : v[j]);
  } else {
    int nv = (int)((t->nc + VW - 1) / VW), m = (int)(t->nc - (int64_t)(nv - 1) * VW);
    for (int j = 0; j < nv; j++) put(yr + j * VW, add_bias && b ? v[j] + get(b + j * VW, j, nv, m) : v[j], j, nv, m);
  }
}

INLINE void gather_cols(const hm_task *t, int64_t c, const int nv, const int m) {
  const int64_t kw = t->k1 - t->k0;
  const float *tab = t->tab;
  const int64_t step = next_step(t);
  for (int64_t n = t->n0; n < t->n1; n++) {
    fetch_next(t, n, step);
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
    for (int j = 0; j < nv; j++) acc[j] += odd[j];
    put_sums(t, n, acc, NV, false);
  }
}

static void gather(const hm_task *t) {
  BY_COLUMNS(gather_cols, t);
  if (t->y) nt_fence();
}

/* Adds s times the bf16 row r (HM_CB16 / 2 words) into a. */
INLINE void add_bf16(vf *a, vf s, const uint32_t *r) {
#pragma GCC unroll 16
  for (int o = 0; o < HM_CB16 / 2; o += VW) {
    vu w = *(const vuu *)(r + o);
    a[o / VW] += s * (vf)(w << 16);
    a[(o + 16) / VW] += s * (vf)w; /* the whole word: see simd/hash_memory.h */
  }
}

static void gather_bf16(const hm_task *t) {
  const int64_t kw = t->k1 - t->k0;
  const uint32_t *tab = t->tab16;
  const int64_t step = next_step(t);
  for (int64_t n = t->n0; n < t->n1; n++) {
    fetch_next(t, n, step);
    vf acc[NV16], odd[NV16]; /* two FMA chains, as in gather_cols */
    float *yr = t->out + (n - t->n0) * HM_CB16;
#pragma GCC unroll 16
    for (int j = 0; j < NV16; j++) acc[j] = t->first ? splat(0.0f) : ld(yr + j * VW), odd[j] = splat(0.0f);
    const uint32_t *on = t->off + n * kw;
    const float *pn = t->ps + n * kw;
    int64_t k = 0;
    for (; k + 1 < kw; k += 2) {
      add_bf16(acc, splat(pn[k]), tab + (int64_t)on[k] * (HM_CB16 / 2));
      add_bf16(odd, splat(pn[k + 1]), tab + (int64_t)on[k + 1] * (HM_CB16 / 2));
    }
    if (k < kw) add_bf16(acc, splat(pn[k]), tab + (int64_t)on[k] * (HM_CB16 / 2));
#pragma GCC unroll 16
    for (int j = 0; j < NV16; j++) acc[j] += odd[j];
    put_sums(t, n, acc, NV16, true);
  }
  if (t->y) nt_fence();
}

/* ---- hash8: codes and scores at 8 bits ---------------------------------------------------- */

/* v[i] <- feature i of the VW chunks of 8 floats at p, chunk q in lane q. A round splits
 * the 8 vectors, read as one stream, into its even elements (v[0..3]) and its odd ones
 * (v[4..7]); after three, v[i] holds the elements at i mod 8, in order. */
INLINE void transpose8(vf *v, const float *p) {
  vi even = {0}, odd = {0};
  for (int i = 0; i < VW; i++) even[i] = 2 * i, odd[i] = 2 * i + 1;
  vf a[8];
#pragma GCC unroll 8
  for (int j = 0; j < 8; j++) v[j] = ld(p + j * VW);
#pragma GCC unroll 3
  for (int r = 0; r < 3; r++) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) a[j] = v[j];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
      v[j] = __builtin_shuffle(a[2 * j], a[2 * j + 1], even), v[j + 4] = __builtin_shuffle(a[2 * j], a[2 * j + 1], odd);
  }
}

/* The product of sigmoid(2|z_i|) as 1 / prod (1 + e^(-2|z_i|)): one reciprocal per chunk
 * (1e-7 from hash_row's product of 1 - sigmoid(-2|z_i|), which the backward uses). */
static void hash8(const float *z, int64_t K, bool paper, int64_t *h, float *p) {
  int64_t k = 0;
  for (; k + VW <= K; k += VW) {
    vf zt[8], den = splat(1.0f), S = splat(0.0f);
    vi code = {0};
    transpose8(zt, z + k * 8);
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
      vf a = (vf)((vi)zt[i] & 0x7fffffff), e = -2.0f * a;
      vexp_plus1(&e);
      code |= (vi)(zt[i] >= 0.0f) & (1 << i);
      den *= e;
      S += a;
    }
    vf prod = den;
    vrecip(&prod);
    st(p + k, paper ? prod : S * prod);
    *(vlu *)(h + k) = __builtin_convertvector(code, vl);
  }
  for (; k < K; k++) {
    const float *zk = z + k * 8;
    int64_t c = 0;
    float prod = 1.0f, S = 0.0f;
    for (int i = 0; i < 8; i++) {
      c |= (int64_t)(zk[i] >= 0.0f) << i;
      prod /= 1.0f + expf(-2.0f * fabsf(zk[i]));
      S += fabsf(zk[i]);
    }
    h[k] = c, p[k] = paper ? prod : S * prod;
  }
}

/* ---- dot: the backward's <row, dy> per (token, table) ----------------------------------- */

INLINE void dot_cols(const hm_task *t, int64_t c, const int nv, const int m) {
  const int64_t K = t->K, R = t->R, dout = t->dout;
  for (int64_t n = t->n0; n < t->n1; n++) {
    vf d[NV] = {0};
    get_cols(d, t->dy + n * dout + c, nv, m);
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
  BY_COLUMNS(dot_cols, t);
}

/* ---- scatter: the backward's dtables ------------------------------------------------------ */

INLINE void scatter_cols(const hm_task *t, int64_t c, const int nv, const int m) {
  const int64_t K = t->K, R = t->R, dout = t->dout;
  for (int64_t n = t->n0; n < t->n1; n++) {
    vf d[NV] = {0};
    get_cols(d, t->dy + n * dout + c, nv, m);
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
  BY_COLUMNS(scatter_cols, t);
}

const sn_hash_memory_ops HM_TABLE = {HM_NAME, gather, gather_bf16, hash8, dot, scatter};
