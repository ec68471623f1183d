/* simd/scan_tile.h -- the selective scan's inner loops (simd/scan.h), included once by each
 * of scan_{scalar,avx2,avx512}.c with SCAN_TABLE naming the table. Written with GCC vector
 * types as wide as the ISA's registers: 16 floats with AVX-512 (a whole tile), 8 with AVX2,
 * 4 otherwise (see VW).
 * Floating-point contraction is turned on here (C11 mode turns it off) so that a*b + c
 * becomes one FMA where the ISA has it.
 *
 * The states of a tile are visited in register blocks of FWD_NB or BWD_NB (the chunk's
 * steps inner), so a block's states stay in registers across the chunk; y[t] and the
 * backward's sums over n are the only per-step values carried from block to block, through
 * L1. The hot part is the exp of dt A: B T D N of them, as 2^(dt A log2 e) by a polynomial.
 * The backward computes it once: its recomputing pass keeps each decay (and a h[t-1]) for
 * the sweep back. The dBm, dCm terms are sums over lanes: with AVX-512 two states' terms
 * fold to one vector per step in the hot loops, and take_sums finishes them per chunk. */
#pragma GCC optimize("fp-contract=fast")

#include <string.h>

#include "simd/scan.h"
#include "simd/tile_vec.h"
#include "simd/vec.h"

/* A row (a line) holds the W = 16 channels of a tile; a vector holds VW of them (tile_vec.h).
 * GCC keeps a vector wider than the ISA's registers in memory (it has no machine mode for
 * it): written with 16-float vectors throughout, the AVX2 loops spent their time moving
 * halves through the stack. So without AVX-512 a tile is computed in W / VW parts of VW
 * channels, each through the whole chunk (see part_of): with AVX2, fwd+bwd at B2 T1024
 * D1536 N16 went from 126 to 62 ms. */
#define W SCAN_W

/* States per register block: the forward keeps 2 vectors per state in registers (h, A),
 * the backward's sweep 3 (g, A, dA). Its recomputing pass also keeps 2 vectors per state
 * and step for the sweep, [L][BWD_NB] of them in L1 with the per-step vectors: with
 * 32-step chunks BWD_NB = 4 fits, and its sweep loads each step's vectors for four states
 * (fwd+bwd 12% faster on 2 threads than 64-step chunks with BWD_NB = 2, whose 4 spilled to
 * L2; 4% faster with AVX2 too). FWD_NB = 8 was no faster with AVX-512. */
#define FWD_NB 4
#define BWD_NB 4
#define NB_MAX 4

/* All-ones where the sign bit of v is set: the sign shifted down (logical, so defined for
 * every value) and negated. */
#define sign_mask(v) ((vi)(-((vu)(v) >> 31)))
/* Where `mask`, b, else a. */
#define vselect(mask, a, b) ((vf)(((vi)(a) & ~(mask)) | ((vi)(b) & (mask))))

#define LOG2E 1.44269504088896341f

#ifdef __AVX512F__
/* 2^f on [0, 1), degree 5, highest power first: a minimax fit for relative error with the
 * constant term held at 1, so that 2^x is exact at integers (1.5e-7, 2.0e-7 evaluated in
 * float; a free constant term gains little and gives 2^0 = 1 - 2^-24). */
static const float EXP2_POLY[] = {0.00189510733f, 0.00895988848f, 0.0558360219f,
                                  0.240157738f,   0.693151236f,   1.0f};
#else
#define LN2 0.693147180559945309
/* The coefficients of 2^f = e^(f ln2) on |f| <= 1/2: vec.h's polynomial for e^r with ln2
 * folded in (EXP2_POLY[k] multiplies f^(6-k)), so the reduction needs no multiply.
 * Folded at compile time, not per call. */
#define FOLD_LN2(c6, c5, c4, c3, c2, c1, c0)                                                          \
  (float)(c6 * LN2 * LN2 * LN2 * LN2 * LN2 * LN2), (float)(c5 * LN2 * LN2 * LN2 * LN2 * LN2),        \
      (float)(c4 * LN2 * LN2 * LN2 * LN2), (float)(c3 * LN2 * LN2 * LN2), (float)(c2 * LN2 * LN2), \
      (float)(c1 * LN2), (float)(c0)
#define APPLY(m, ...) m(__VA_ARGS__)
static const float EXP2_POLY[] = {APPLY(FOLD_LN2, SN_EXP_POLY)};
#endif
#define EXP2_DEG ((int)(sizeof EXP2_POLY / sizeof EXP2_POLY[0]) - 1)

/* 2^x for every float x: 0 below the subnormals, inf above FLT_MAX, NaN for NaN. */
INLINE void vexp2(vf *xp) {
  vf x = *xp, f, p = splat(EXP2_POLY[0]);
#ifdef __AVX512F__
  /* x = floor(x) + f, f in [0, 1), by reduce (f = 0 for +-inf); scalef multiplies by
   * 2^floor(x) itself, handling overflow, underflow and subnormals: 7 instructions. */
  f = (vf)_mm512_reduce_ps((__m512)x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
#pragma GCC unroll 7
  for (int k = 1; k <= EXP2_DEG; k++) p = p * f + EXP2_POLY[k];
  *xp = (vf)_mm512_scalef_ps((__m512)p, (__m512)x);
#else
  /* x = n + f with n = rint(x), |f| <= 1/2. Clamped to [-127, 128], 2^n is an exponent
   * field of 0 (giving 0) .. 255 (giving inf). Adding 1.5 * 2^23 + 127 rounds x to an
   * integer whose low mantissa bits are n + 127. A NaN stays NaN through the clamp and the
   * polynomial. */
  x = vclamp(x, -127.0f, 128.0f);
  vf r = x + 12583039.0f;
  f = x - (r - 12583039.0f);
#pragma GCC unroll 7
  for (int k = 1; k <= EXP2_DEG; k++) p = p * f + EXP2_POLY[k];
  *xp = p * (vf)((vu)r << 23);
#endif
}

/* sigmoid(x) = 1 / (1 + e^-x) into *sp from x and e = e^-|x|: r = 1 / (1 + e) for x >= 0,
 * else e r. */
INLINE void sigmoid_of(vf *sp, const vf *xp, const vf *ep) {
  vf r = *ep + 1.0f;
  vrecip(&r);
#ifdef __AVX512F__
  *sp = (vf)_mm512_mask_mul_ps((__m512)r, _mm512_cmp_ps_mask((__m512)*xp, _mm512_setzero_ps(), _CMP_LT_OQ),
                               (__m512)*ep, (__m512)r);
#else
  *sp = vselect(sign_mask(*xp), r, *ep * r);
#endif
}

/* log(1 + e^x) = max(x, 0) + log1p(v), v = e^-|x| in (0, 1], with log1p(v) = v P(v), P a
 * degree 8 minimax fit of log1p(v) / v (relative error 3e-8; 1.7e-7 evaluated in float).
 * Past x = 20 this rounds to x, which is the threshold of mamba's softplus. With sig, also
 * its derivative sigmoid(x). */
static const float LOG1P_POLY[] = {0.00523268897f, -0.0295052156f, 0.0782259107f,
                                   -0.136632413f,  0.191060051f,   -0.24842982f,
                                   0.333190978f,   -0.499994934f,  0.99999994f};
INLINE void vsoftplus(vf *xp, vf *sig) {
  vf x = *xp, v = (vf)((vi)x & 0x7fffffff) * -LOG2E, p = splat(LOG1P_POLY[0]);
  vexp2(&v);
#pragma GCC unroll 9
  for (int k = 1; k < 9; k++) p = p * v + LOG1P_POLY[k];
#ifdef __AVX512F__
  *xp = (vf)_mm512_max_ps((__m512)x, _mm512_setzero_ps()) + v * p;
#else
  *xp = vmax(x, splat(0.0f)) + v * p;
#endif
  if (sig) sigmoid_of(sig, &x, &v);
}

/* The per-step vectors of a chunk in work: dt, dt u, y (the running sum_n C h + Dskip u),
 * then for bwd dy, sigmoid(pre) (the softplus derivative), sigmoid(z), sum_n g Bm,
 * sum_n g A exp(dt A) h[t-1]: [L][W] each; and a register block's decays a and a h[t-1],
 * [L][BWD_NB][W] each. What the backward's blocks touch stays in L1 (with 64-step chunks,
 * where it filled L1, another array there measured 25% slower). */
typedef struct {
  float *dt, *dtu, *y, *dy, *dsig, *sz, *sgb, *sga, *a, *ah;
} bufs;

static bufs bufs_of(const scan_chunk *c) {
  /* Staggered by SCAN_SKEW so that no two are a multiple of 4 KiB apart: a load whose
   * address matches a pending store's low 12 bits waits for it (4K aliasing). */
  int64_t s = (int64_t)SN_SCAN_CHUNK * W + SCAN_SKEW;
  _Static_assert((8 + 2 * BWD_NB) * (SN_SCAN_CHUNK * W + SCAN_SKEW) <= SCAN_WORK_FLOATS, "work too small");
  float *w = c->work;
  return (bufs){w, w + s, w + 2 * s, w + 3 * s, w + 4 * s, w + 5 * s, w + 6 * s, w + 7 * s, w + 8 * s,
                w + 8 * s + BWD_NB * s};
}

/* Evenly spread events: `lines` of them over `calls` calls of due, at most one per call (a
 * burst of prefetches or streaming stores would hold the line fill buffers the loops' own
 * misses need). */
typedef struct {
  int lines, calls, credit;
} pace;

INLINE bool due(pace *p) {
  if ((p->credit += p->lines) < p->calls) return false;
  p->credit -= p->calls;
  return true;
}

/* Where the sending of c->held is: result k, row t. */
typedef struct {
  pace pc;
  int k, t;
} wb_pos;

static wb_pos wb_start(const scan_chunk *c, int calls) {
  return (wb_pos){.pc = {.lines = c->held_n * c->held_L, .calls = calls}};
}

/* Sends held line (q->k, q->t) on. */
INLINE void wb_line(const scan_chunk *c, wb_pos *q) {
  const float *v = c->held + ((int64_t)q->k * SN_SCAN_CHUNK + q->t) * W;
  float *p = c->held_dst[q->k] + q->t * c->held_rs;
#if defined(__AVX512F__)
  if (c->held_stream) _mm512_stream_ps(p, _mm512_loadu_ps(v));
  else
#elif defined(__AVX2__)
  if (c->held_stream) _mm256_stream_ps(p, _mm256_loadu_ps(v)), _mm256_stream_ps(p + 8, _mm256_loadu_ps(v + 8));
  else
#endif
    for (int j = 0; j < W; j += VW) st(p + j, ld(v + j));
  if (++q->t == c->held_L) q->t = 0, q->k++;
}

INLINE void wb_next(const scan_chunk *c, wb_pos *q) {
  if (due(&q->pc) && q->k < c->held_n) wb_line(c, q);
}

/* The held lines not sent yet, then a fence: streaming stores are weakly ordered. */
static void wb_finish(const scan_chunk *c, wb_pos *q) {
  while (q->k < c->held_n) wb_line(c, q);
#ifdef __AVX2__
  if (c->held_stream && c->held_n) _mm_sfence();
#endif
}

/* Where the walk over c's prefetch list is: line p of row r of array i (the row ends at
 * end). With more lines than calls the last ones are left to the loops' own misses. */
typedef struct {
  pace pc;
  const float *p, *end;
  int i, r;
} pf_pos;

/* Points q at row r of array i, or stops the walk past the last. */
static void pf_seek(const scan_chunk *c, pf_pos *q) {
  if (q->r == c->pf_rows) q->r = 0, q->i++;
  if (q->i >= c->npf) {
    q->pc.lines = 0;
    return;
  }
  q->p = c->pf[q->i] + q->r * c->pf_rs[q->i];
  q->end = q->p + c->pf_floats;
}

/* c's prefetch list over `calls` calls of pf_next. */
static pf_pos pf_start(const scan_chunk *c, int calls) {
  pf_pos q = {.pc = {.lines = c->pf_rows * ((c->pf_floats + W - 1) / W) * c->npf, .calls = calls}};
  pf_seek(c, &q);
  return q;
}

INLINE void pf_next(const scan_chunk *c, pf_pos *q) {
  if (!due(&q->pc)) return;
  __builtin_prefetch(q->p, 0, 2);
  if ((q->p += W) >= q->end) q->r++, pf_seek(c, q);
}

/* The register blocks FOR_BLOCKS makes of N states with blocks of nb (nb even). */
static int blocks_of(int N, int nb) { return N / nb + N % nb / 2 + N % 2; }

/* Every state n0 .. n0+K-1 of N in blocks of K = nb, then of 2, then of 1, K a constant in
 * body. The blocks of two keep each pair of states (2p, 2p+1) in one block and the last
 * state, when N is odd, starts a pair: acc_add and BC_AT rely on it. */
#define FOR_BLOCKS(N, nb, n0, K, body)      \
  do {                                      \
    int n0 = 0;                             \
    for (; n0 + (nb) <= (N); n0 += (nb)) {  \
      const int K = (nb);                   \
      body;                                 \
    }                                       \
    for (; n0 + 2 <= (N); n0 += 2) {        \
      const int K = 2;                      \
      body;                                 \
    }                                       \
    if (n0 < (N)) {                         \
      const int K = 1;                      \
      body;                                 \
    }                                       \
  } while (0)

#ifdef __AVX512F__
/* A lane permutation of the concatenation of a and b (indices 0..31), in GCC's and clang's
 * spellings. */
#ifdef __clang__
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (vi){__VA_ARGS__})
#endif
#define HALVES_LO 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HALVES_HI 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define QUARTERS_LO 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27
#define QUARTERS_HI 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31
#define EIGHTHS_LO 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29
#define EIGHTHS_HI 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31
#define LANES_LO 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define LANES_HI 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
/* a and b folded to one vector: each lane group of one holds the pairwise sums of its
 * part of a (the first half of the lanes) or b (the second). */
#define FOLD(a, b, PART) (SHUFFLE(a, b, PART##_LO) + SHUFFLE(a, b, PART##_HI))
/* The halves of a swapped; a's first half then b's second; a's second half then b's first. */
#define SWAP_HALVES(a) SHUFFLE(a, a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)
#define LO_HI(a, b) SHUFFLE(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 24, 25, 26, 27, 28, 29, 30, 31)
#define HI_LO(a, b) SHUFFLE(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23)
/* States per row of scan_chunk.acc: a pair's two terms folded to one vector, halving the
 * rows the sweep and its recomputing pass read and write back. */
#define ACC_STATES 2
#else
/* Without AVX-512 GCC does the 16-lane shuffles through memory: one row per state. */
#define ACC_STATES 1
#endif

/* The row of acc with the dBm terms of step t and state n; the dCm terms' rows follow
 * acc_part(N) floats on. A backward register block's rows of a step are adjacent and its
 * steps follow each other, so the block walks one run of rows, which the hardware
 * prefetches from L2; with all states' rows of a step together, a block's rows of two
 * steps were 512 bytes apart and came in line by line as the loops missed them (the tile
 * loops' bwd 3-4% slower). */
#define ACC_GROUP (BWD_NB / ACC_STATES)
INLINE float *acc_row(float *acc, int t, int n) {
  return acc + (((int64_t)(n / BWD_NB) * SN_SCAN_CHUNK + t) * ACC_GROUP + n % BWD_NB / ACC_STATES) * W;
}
INLINE int64_t acc_part(int N) { return (int64_t)(N + BWD_NB - 1) / BWD_NB * SN_SCAN_CHUNK * ACC_GROUP * W; }
_Static_assert(BWD_NB <= SCAN_ACC_GROUP, "scan_chunk.acc too small");

/* Adds the terms m v[k] of a block's K states to their (adjacent) rows of acc from r on.
 * Each pair of states folds to one row as, with ms = m's halves swapped,
 *   [v0 lo, v1 hi] m + [v0 hi, v1 lo] ms = [v0 lo m lo + v0 hi m hi, v1 lo m lo + v1 hi m hi]:
 * three shuffles where the products then a fold would take four and two more adds. */
INLINE void acc_add(float *r, const vf *v, int K, const vf *m) {
#if ACC_STATES == 2
  vf ms = SWAP_HALVES(*m);
#pragma GCC unroll 2
  for (int p = 0; p < (K + 1) / 2; p++) {
    vf v0 = v[2 * p], v1 = 2 * p + 1 < K ? v[2 * p + 1] : splat(0.0f);
    st(r + p * W, ld(r + p * W) + LO_HI(v0, v1) * *m + HI_LO(v0, v1) * ms);
  }
#else
#pragma GCC unroll 4
  for (int k = 0; k < K; k++) st(r + k * W, ld(r + k * W) + v[k] * *m);
#endif
}

/* Bm (which = 0) or Cm (which = 1) of state n0 + k at step t, from the block's base
 * bc_of(c, n0) (n0 is even but in a block of one state). */
INLINE const float *bc_of(const scan_chunk *c, int n0) { return c->bc + n0 / 2 * SN_SCAN_CHUNK * 4 + n0 % 2; }
#define BC_AT(base, t, k, which) ((base)[((k) / 2 * SN_SCAN_CHUNK + (t)) * 4 + (which) * 2 + (k) % 2])

/* dt, dt u and y = Dskip u for step t; with dsig, the softplus derivative (when softplus). */
INLINE void step_in(const scan_chunk *c, const bufs *w, int t, vf *dsig) {
  vf u = ld(c->u + t * c->us), dt = ld(c->delta + t * c->ds) + ld(c->bias);
  if (c->softplus) vsoftplus(&dt, dsig);
  st(w->dt + t * W, dt);
  st(w->dtu + t * W, dt * u);
  st(w->y + t * W, ld(c->Dskip) * u);
}

/* States n0 .. n0+K-1 through the chunk from c->h, adding C h into y; c->h becomes the
 * state after the chunk. With keep (the backward's pass, K <= BWD_NB), each step's decay a
 * and a h[t-1] go to w->a, w->ah for block_bwd, and the dCm terms dy h[t] to c->acc. */
INLINE void block_fwd(const scan_chunk *c, const bufs *w, pf_pos *q, wb_pos *o, int n0, int K, bool keep) {
  vf h[NB_MAX], a2[NB_MAX];
  const float *bc = bc_of(c, n0);
#pragma GCC unroll 4
  for (int k = 0; k < K; k++) h[k] = ld(c->h + (n0 + k) * W), a2[k] = ld(c->A2 + (n0 + k) * W);
  for (int t = 0; t < c->L; t++) {
    vf dt = ld(w->dt + t * W), dtu = ld(w->dtu + t * W), y = ld(w->y + t * W);
    pf_next(c, q);
    wb_next(c, o);
#pragma GCC unroll 4
    for (int k = 0; k < K; k++) {
      vf a = dt * a2[k];
      vexp2(&a);
      vf ah = a * h[k];
      h[k] = ah + dtu * BC_AT(bc, t, k, 0);
      y += BC_AT(bc, t, k, 1) * h[k];
      if (keep) st(w->a + (t * K + k) * W, a), st(w->ah + (t * K + k) * W, ah);
    }
    if (keep) {
      vf dy = ld(w->dy + t * W);
      acc_add(acc_row(c->acc + acc_part(c->N), t, n0), h, K, &dy);
    }
    st(w->y + t * W, y);
  }
#pragma GCC unroll 4
  for (int k = 0; k < K; k++) st(c->h + (n0 + k) * W, h[k]);
}

/* Channels j .. j+VW-1 of c's tile: every per-channel pointer moved on by j (rows keep
 * their strides), the scratch too, so that the parts of a tile share nothing per channel.
 * The prefetch list and the held results are the whole tile's. */
static scan_chunk part_of(const scan_chunk *c, int j) {
  scan_chunk p = *c;
  p.u += j, p.delta += j, p.A += j, p.A2 += j, p.Dskip += j, p.bias += j, p.h += j, p.res += j, p.work += j;
  if (p.z) p.z += j;
  if (p.dout) p.dout += j, p.g += j, p.dA += j, p.dDskip += j, p.dbias += j, p.acc += j;
  return p;
}

static void fwd_part(const scan_chunk *c, pf_pos *q, wb_pos *o) {
  bufs w = bufs_of(c);
  for (int t = 0; t < c->L; t++) step_in(c, &w, t, NULL);
  FOR_BLOCKS(c->N, FWD_NB, n0, K, block_fwd(c, &w, q, o, n0, K, false));
  for (int t = 0; t < c->L; t++) {
    vf y = ld(w.y + t * W);
    if (c->z) {
      vf z = ld(c->z + t * c->zs), s = z;
      vsigmoid(&s);
      y *= z * s;
    }
    st(c->res + t * W, y);
  }
}

static void scan_fwd(const scan_chunk *c) {
  int calls = W / VW * c->L * blocks_of(c->N, FWD_NB);
  pf_pos q = pf_start(c, calls);
  wb_pos o = wb_start(c, calls);
  for (int j = 0; j < W; j += VW) {
    scan_chunk p = part_of(c, j);
    fwd_part(&p, &q, &o);
  }
  wb_finish(c, &o);
}

/* The backward sweep of states n0 .. n0+K-1, t from L-1 down to 0, after block_fwd kept
 * their decays a[t] and a[t] h[t-1]. With g = dL/dh[t] (its carried part a[t+1] g[t+1]
 * plus dy[t] C[t]):
 *   dB[t,n] += sum over lanes of g dt u    (the terms go to c->acc, take_sums adds lanes)
 *   dA[n] += dt g a h[t-1]
 *   sgb[t] += g B[t,n],  sga[t] += A[n] g a h[t-1]   (du = dt sgb + .., d dt = u sgb + sga) */
INLINE void block_bwd(const scan_chunk *c, const bufs *w, pf_pos *q, int n0, int K) {
  vf g[NB_MAX], A[NB_MAX], dA[NB_MAX];
  const float *bc = bc_of(c, n0);
#pragma GCC unroll 4
  for (int k = 0; k < K; k++) {
    g[k] = ld(c->g + (n0 + k) * W), A[k] = ld(c->A + (n0 + k) * W);
    dA[k] = splat(0.0f);
  }
  for (int t = c->L - 1; t >= 0; t--) {
    vf dt = ld(w->dt + t * W), dtu = ld(w->dtu + t * W), dy = ld(w->dy + t * W), sb = {0}, sa = {0};
    vf gks[NB_MAX];
    pf_next(c, q);
#pragma GCC unroll 4
    for (int k = 0; k < K; k++) {
      vf a = ld(w->a + (t * K + k) * W), ah = ld(w->ah + (t * K + k) * W);
      vf gk = g[k] + dy * BC_AT(bc, t, k, 1), gah = gk * ah;
      gks[k] = gk;
      sb += gk * BC_AT(bc, t, k, 0);
      sa += A[k] * gah;
      dA[k] += dt * gah;
      g[k] = a * gk;
    }
    acc_add(acc_row(c->acc, t, n0), gks, K, &dtu);
    st(w->sgb + t * W, ld(w->sgb + t * W) + sb);
    st(w->sga + t * W, ld(w->sga + t * W) + sa);
  }
#pragma GCC unroll 4
  for (int k = 0; k < K; k++) {
    st(c->g + (n0 + k) * W, g[k]);
    st(c->dA + (n0 + k) * W, ld(c->dA + (n0 + k) * W) + dA[k]);
  }
}

static void bwd_part(const scan_chunk *c, pf_pos *q, wb_pos *o) {
  bufs w = bufs_of(c);
  for (int t = 0; t < c->L; t++) {
    vf dsig = splat(1.0f), dy = ld(c->dout + t * c->dos);
    step_in(c, &w, t, &dsig);
    st(w.dsig + t * W, dsig);
    if (c->z) {
      vf z = ld(c->z + t * c->zs), s = z;
      vsigmoid(&s);
      st(w.sz + t * W, s);
      dy *= z * s;
    }
    st(w.dy + t * W, dy);
    st(w.sgb + t * W, splat(0.0f));
    st(w.sga + t * W, splat(0.0f));
  }
  FOR_BLOCKS(c->N, BWD_NB, n0, K, {
    block_fwd(c, &w, q, o, n0, K, true);
    block_bwd(c, &w, q, n0, K);
  });
  vf Ds = ld(c->Dskip), dDs = {0}, dbias = {0};
  for (int t = 0; t < c->L; t++) {
    vf u = ld(c->u + t * c->us), dy = ld(w.dy + t * W), sgb = ld(w.sgb + t * W);
    vf dd = (u * sgb + ld(w.sga + t * W)) * ld(w.dsig + t * W);
    st(c->res + t * W, ld(w.dt + t * W) * sgb + Ds * dy);
    st(c->res + (SN_SCAN_CHUNK + t) * W, dd);
    dbias += dd;
    dDs += dy * u;
    if (c->dz) {
      /* d/dz of y z sigmoid(z) = y s (1 + z (1 - s)) */
      vf z = ld(c->z + t * c->zs), s = ld(w.sz + t * W);
      st(c->res + (2 * SN_SCAN_CHUNK + t) * W, ld(c->dout + t * c->dos) * ld(w.y + t * W) * s * (1.0f + z * (1.0f - s)));
    }
  }
  st(c->dDskip, ld(c->dDskip) + dDs);
  st(c->dbias, ld(c->dbias) + dbias);
}

static void scan_bwd(const scan_chunk *c) {
  /* The held results go out during the recomputing passes: the sweep's loop is the tighter. */
  int calls = W / VW * c->L * blocks_of(c->N, BWD_NB);
  pf_pos q = pf_start(c, 2 * calls);
  wb_pos o = wb_start(c, calls);
  for (int j = 0; j < W; j += VW) {
    scan_chunk p = part_of(c, j);
    bwd_part(&p, &q, &o);
  }
  wb_finish(c, &o);
}

/* dB[t][n], dC[t][n] (rows ld floats apart) = the lane sums of acc's rows, for t < L; the
 * rows are zeroed for the next chunk. Always in the same order. */
static void take_sums(float *dB, float *dC, int64_t ld, float *acc, int L, int N) {
  for (int part = 0; part < 2; part++) {
    float *out = part ? dC : dB, *rows = acc + part * acc_part(N);
    for (int t = 0; t < L; t++) {
#if ACC_STATES == 2
      /* Eight rows hold 16 states' sums over 8 lanes each: three more levels of folding. */
      for (int n0 = 0; n0 < N; n0 += W) {
        int m = N - n0 < W ? N - n0 : W;
        vf v[8], b[4], c[2];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
          float *ri = acc_row(rows, t, n0 + 2 * i);
          v[i] = splat(0.0f);
          if (2 * i < m) v[i] = ld(ri), st(ri, splat(0.0f));
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) b[i] = FOLD(v[2 * i], v[2 * i + 1], QUARTERS);
        c[0] = FOLD(b[0], b[1], EIGHTHS), c[1] = FOLD(b[2], b[3], EIGHTHS);
        _mm512_mask_storeu_ps(out + t * ld + n0, (__mmask16)((1u << m) - 1), (__m512)FOLD(c[0], c[1], LANES));
      }
#else
      for (int n = 0; n < N; n++) {
        float *r = acc_row(rows, t, n), s = 0;
        for (int l = 0; l < W; l++) s += r[l];
        out[t * ld + n] = s;
        memset(r, 0, W * sizeof(float));
      }
#endif
    }
  }
}

#ifdef __AVX512F__
/* Stage m of a 16 x 16 transpose: rows i and i + m swap their off-diagonal m x m blocks. */
#define T8_LO HALVES_LO
#define T8_HI HALVES_HI
#define T4_LO 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define T4_HI 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define T2_LO 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define T2_HI 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define T1_LO 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define T1_HI 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#define T_STAGE(r, m)                                      \
  _Pragma("GCC unroll 16") for (int i = 0; i < W; i++)     \
    if (!(i & (m))) {                                      \
      vf a = r[i], b = r[i + (m)];                         \
      r[i] = SHUFFLE(a, b, T##m##_LO);                     \
      r[i + (m)] = SHUFFLE(a, b, T##m##_HI);               \
    }

/* r[j][i] = r[i][j]: the 8 x 8 blocks swapped across the diagonal, then the 4 x 4 blocks
 * within them, and so on: 64 shuffles. */
INLINE void transpose16(vf *r) {
  T_STAGE(r, 8) T_STAGE(r, 4) T_STAGE(r, 2) T_STAGE(r, 1)
}
#endif

static void load_state(float *h, const float *src, int64_t sd, int N, int dn) {
  int n = 0;
#ifdef __AVX512F__
  for (; dn == W && n + W <= N; n += W) {
    vf r[W];
#pragma GCC unroll 16
    for (int l = 0; l < W; l++) r[l] = ld(src + l * sd + n);
    transpose16(r);
#pragma GCC unroll 16
    for (int i = 0; i < W; i++) st(h + (n + i) * W, r[i]);
  }
#endif
  for (; n < N; n++)
    for (int l = 0; l < W; l++) h[n * W + l] = l < dn ? src[l * sd + n] : 0;
}

static void store_state(float *dst, const float *h, int N, int dn, bool stream) {
  int n = 0;
#ifdef __AVX512F__
  stream = stream && N % W == 0 && (uintptr_t)dst % 64 == 0;
  for (; dn == W && n + W <= N; n += W) {
    vf r[W];
#pragma GCC unroll 16
    for (int i = 0; i < W; i++) r[i] = ld(h + (n + i) * W);
    transpose16(r);
#pragma GCC unroll 16
    for (int l = 0; l < W; l++) {
      if (stream) _mm512_stream_ps(dst + l * N + n, (__m512)r[l]);
      else st(dst + l * N + n, r[l]);
    }
  }
#endif
  for (; n < N; n++)
    for (int l = 0; l < dn; l++) dst[l * N + n] = h[n * W + l];
}

const sn_scan_ops SCAN_TABLE = {
    .name = SCAN_NAME,
    .fwd = scan_fwd,
    .bwd = scan_bwd,
    .take_sums = take_sums,
    .load_state = load_state,
    .store_state = store_state,
};
