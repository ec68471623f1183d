/* simd/scan_tile.h -- the selective scan's inner loops (simd/scan.h), included once by each
 * of scan_{scalar,avx2,avx512}.c with SCAN_TABLE naming the table. Written with GCC vector
 * types of 16 floats: with -mavx512f one is a zmm register, otherwise GCC splits it.
 * Floating-point contraction is turned on here (C11 mode turns it off) so that a*b + c
 * becomes one FMA where the ISA has it.
 *
 * The states of a tile are visited in register blocks of NB (the chunk's steps inner), so
 * a block's NB states stay in registers across the chunk; y[t] and the backward's sums
 * over n are the only per-step values carried from block to block, through L1. The hot
 * part is the exp of dt A: B T D N of them, as 2^(dt A log2 e) by a polynomial. */
#pragma GCC optimize("fp-contract=fast")

#include <string.h>

#include "simd/scan.h"
#include "simd/vec.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4))); /* unaligned access */
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));

#define INLINE static inline __attribute__((always_inline))
#define W SCAN_W

/* States per register block. The backward keeps 4 vectors per state in registers (g, h, A,
 * dA): 16 of AVX-512's 32 with NB = 4. Without AVX-512 a vector takes 2 or 4 registers and
 * NB = 2 measured fastest (both 1 and 4 were slower). */
#ifdef __AVX512F__
#define NB 4
#else
#define NB 2
#endif

/* Macros, not functions: no vector is passed or returned by value, so the ABI of the
 * builds without AVX-512 never matters. */
#define ld(p) (*(const vfu *)(p))
#define st(p, v) (*(vfu *)(p) = (v))
/* a - 0 is a for every float (a + 0 is not, for a = -0), so this folds to a broadcast. */
#define splat(a) ((a) - (vf){0})
/* All-ones where the sign bit of v is set: the sign shifted down (logical, so defined for
 * every value) and negated. Shifts exist for 16-lane vectors on every ISA, where a
 * comparison of them is done lane by lane in scalar code without AVX-512. */
#define sign_mask(v) ((vi)(-((vu)(v) >> 31)))
/* Lanes where a < b as an all-ones mask, by the sign of a - b. Exact for a, b not NaN
 * (a - b is exact when they are close, and far apart its sign is right anyway). */
#define lanes_below(a, b) sign_mask((a) - (b))
/* Where `mask`, b, else a. */
#define vselect(mask, a, b) ((vf)(((vi)(a) & ~(mask)) | ((vi)(b) & (mask))))

#define LOG2E 1.44269504088896341f
#define LN2 0.693147180559945309

/* The coefficients of 2^f = e^(f ln2) on |f| <= 1/2: vec.h's polynomial for e^r with ln2
 * folded in (EXP2_POLY[k] multiplies f^(6-k)), so the reduction needs no multiply.
 * Constants, not values computed per call: GCC builds a splat of a variable on the stack
 * when a vector is wider than the ISA's registers. */
#define FOLD_LN2(c6, c5, c4, c3, c2, c1, c0)                                                          \
  (float)(c6 * LN2 * LN2 * LN2 * LN2 * LN2 * LN2), (float)(c5 * LN2 * LN2 * LN2 * LN2 * LN2),        \
      (float)(c4 * LN2 * LN2 * LN2 * LN2), (float)(c3 * LN2 * LN2 * LN2), (float)(c2 * LN2 * LN2), \
      (float)(c1 * LN2), (float)(c0)
#define APPLY(m, ...) m(__VA_ARGS__)
static const float EXP2_POLY[] = {APPLY(FOLD_LN2, SN_EXP_POLY)};

/* 2^x for every float x: 0 below the subnormals, inf above FLT_MAX, NaN for NaN. x = n + f
 * with n = rint(x), |f| <= 1/2; 2^f by the polynomial, scaled by 2^n. */
INLINE void vexp2(vf *xp) {
  vf x = *xp, f, p;
#ifdef __AVX512F__
  /* roundscale and reduce split x exactly (reduce gives f = 0 for +-inf), and scalef
   * applies 2^n with overflow, underflow and subnormals handled. */
  vf n = (vf)_mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  f = (vf)_mm512_reduce_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  p = splat(EXP2_POLY[0]);
#pragma GCC unroll 7
  for (int k = 1; k < 7; k++) p = p * f + EXP2_POLY[k];
  *xp = (vf)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
  /* Clamped to [-127, 128], 2^n is an exponent field of 0 (giving 0) .. 255 (giving inf).
   * Adding 1.5 * 2^23 + 127 rounds x to an integer whose low mantissa bits are n + 127.
   * A NaN x is set back at the end (the clamps do not keep it). */
  vi nan = sign_mask(0x7f800000 - ((vi)x & 0x7fffffff));
  x = vselect(lanes_below(x, -127.0f), x, splat(-127.0f));
  x = vselect(lanes_below(128.0f, x), x, splat(128.0f));
  vf r = x + 12583039.0f;
  f = x - (r - 12583039.0f);
  p = splat(EXP2_POLY[0]);
#pragma GCC unroll 7
  for (int k = 1; k < 7; k++) p = p * f + EXP2_POLY[k];
  *xp = (vf)((vi)(p * (vf)((vu)r << 23)) | (nan & 0x7fc00000));
#endif
}

/* 1 / (1 + e^-x) */
INLINE void vsigmoid(vf *xp) {
  vf e = *xp * -LOG2E;
  vexp2(&e);
  *xp = 1.0f / (e + 1.0f);
}

/* log(1 + e^x) = max(x, 0) + log1p(e^-|x|), with log1p(v) = 2 atanh(v / (2 + v)) for
 * v in (0, 1]: s <= 1/3, so the odd series to s^15 is within 2e-9. Past x = 20 this
 * rounds to x, which is the threshold of mamba's softplus. */
INLINE void vsoftplus(vf *xp) {
  vf x = *xp, v = (vf)((vi)x & 0x7fffffff) * -LOG2E;
  vexp2(&v);
  vf s = v / (v + 2.0f), s2 = s * s, q = splat(1.0f / 15);
  q = q * s2 + 1.0f / 13, q = q * s2 + 1.0f / 11, q = q * s2 + 1.0f / 9, q = q * s2 + 1.0f / 7;
  q = q * s2 + 1.0f / 5, q = q * s2 + 1.0f / 3, q = q * s2 + 1.0f;
  *xp = vselect(lanes_below(x, 0.0f), x, splat(0.0f)) + 2.0f * s * q;
}

/* The per-step vectors of a chunk in work: dt, dt u, y (the running sum_n C h + Dskip u),
 * then for bwd dy, sigmoid(pre) (the softplus derivative), sigmoid(z), sum_n g Bm,
 * sum_n g A exp(dt A) h[t-1]: [L][W] each; and a register block's decays and entering
 * states, [L][NB][W] each. */
typedef struct {
  float *dt, *dtu, *y, *dy, *dsig, *sz, *sgb, *sga, *a, *hp;
} bufs;

static bufs bufs_of(const scan_chunk *c) {
  /* Staggered by SCAN_SKEW so that no two are a multiple of 4 KiB apart: a load whose
   * address matches a pending store's low 12 bits waits for it (4K aliasing). */
  int64_t s = (int64_t)SN_SCAN_CHUNK * W + SCAN_SKEW;
  float *w = c->work;
  return (bufs){w, w + s, w + 2 * s, w + 3 * s, w + 4 * s, w + 5 * s, w + 6 * s, w + 7 * s, w + 8 * s,
                w + 8 * s + NB * s};
}

/* Where the walk over c's prefetch list is, and how many lines to issue per call. */
typedef struct {
  int i, r, j, per;
} pf_pos;

/* per lines of c's prefetch list over `steps` calls. */
static pf_pos pf_start(const scan_chunk *c, int steps) {
  int lines = c->npf * c->pf_rows * ((c->pf_floats + W - 1) / W);
  return (pf_pos){.per = steps > 0 ? (lines + steps - 1) / steps : 0};
}

INLINE void pf_next(const scan_chunk *c, pf_pos *q) {
  for (int m = 0; m < q->per && q->i < c->npf; m++) {
    const float *p = c->pf[q->i] + q->r * c->pf_rs[q->i] + q->j;
    if (q->i < c->pf_write) __builtin_prefetch(p, 0, 2);
    else __builtin_prefetch(p, 1, 2);
    if ((q->j += W) >= c->pf_floats) {
      q->j = 0;
      if (++q->r == c->pf_rows) q->r = 0, q->i++;
    }
  }
}

/* The register blocks FOR_BLOCKS makes of N states. */
static int blocks_of(int N) { return N / NB + N % NB; }

/* dt, dt u and y = Dskip u for step t. */
INLINE void step_in(const scan_chunk *c, const bufs *w, int t, vf *pre) {
  vf u = ld(c->u + t * c->ps), dt = ld(c->delta + t * c->ps) + ld(c->bias);
  *pre = dt;
  if (c->softplus) vsoftplus(&dt);
  st(w->dt + t * W, dt);
  st(w->dtu + t * W, dt * u);
  st(w->y + t * W, ld(c->Dskip) * u);
}

/* States n0 .. n0+K-1 through the chunk from c->h, adding C h into y; c->h becomes the
 * state after the chunk. With keep, each step's decay and entering state go to w->a, w->hp. */
INLINE void block_fwd(const scan_chunk *c, const bufs *w, pf_pos *q, int n0, int K, bool keep) {
  vf h[NB], a2[NB];
#pragma GCC unroll 4
  for (int k = 0; k < K; k++) h[k] = ld(c->h + (n0 + k) * W), a2[k] = ld(c->A2 + (n0 + k) * W);
  for (int t = 0; t < c->L; t++) {
    const float *bt = c->Bm + t * c->bst + n0, *ct = c->Cm + t * c->cst + n0;
    vf dt = ld(w->dt + t * W), dtu = ld(w->dtu + t * W), y = ld(w->y + t * W);
    pf_next(c, q);
#pragma GCC unroll 4
    for (int k = 0; k < K; k++) {
      vf a = dt * a2[k];
      vexp2(&a);
      if (keep) st(w->a + (t * K + k) * W, a), st(w->hp + (t * K + k) * W, h[k]);
      h[k] = a * h[k] + dtu * bt[k];
      y += ct[k] * h[k];
    }
    st(w->y + t * W, y);
  }
#pragma GCC unroll 4
  for (int k = 0; k < K; k++) st(c->h + (n0 + k) * W, h[k]);
}

/* Every state n0 .. n0+K-1 of N in blocks of K = NB (the last N % NB with K = 1), K a
 * constant in body. */
#define FOR_BLOCKS(N, n0, K, body)          \
  do {                                      \
    int n0 = 0;                             \
    for (; n0 + NB <= (N); n0 += NB) {      \
      const int K = NB;                     \
      body;                                 \
    }                                       \
    for (; n0 < (N); n0++) {                \
      const int K = 1;                      \
      body;                                 \
    }                                       \
  } while (0)

static void scan_fwd(const scan_chunk *c) {
  bufs w = bufs_of(c);
  for (int t = 0; t < c->L; t++) {
    vf pre;
    step_in(c, &w, t, &pre);
  }
  pf_pos q = pf_start(c, c->L * blocks_of(c->N));
  FOR_BLOCKS(c->N, n0, K, block_fwd(c, &w, &q, n0, K, false));
  for (int t = 0; t < c->L; t++) {
    vf y = ld(w.y + t * W);
    if (c->z) {
      vf z = ld(c->z + t * c->ps), s = z;
      vsigmoid(&s);
      y *= z * s;
    }
    st(c->out + t * c->ps, y);
  }
}

/* With AVX-512 the per-step dBm, dCm terms are folded in registers before they go to
 * scan_chunk.acc (fold8): one row of W floats per register block and step, 2 lanes per
 * term. Without it GCC does the 16-lane shuffles through memory, so they are added lane by
 * lane instead: a row of 2 W floats (dB's, then dC's) per state and step. */
#ifdef __AVX512F__
#define ACC_ROW W
#else
#define ACC_ROW (2 * W)
#endif

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
/* a and b folded to one vector: each lane group of one holds the pairwise sums of its
 * part of a (the first half of the lanes) or b (the second). */
#define FOLD(a, b, PART) (SHUFFLE(a, b, PART##_LO) + SHUFFLE(a, b, PART##_HI))

/* Folds 8 vectors into one, lanes 2i and 2i+1 holding partial sums of v[i]: three levels
 * of pairwise folding (halves, quarters, eighths), in one fixed order. */
INLINE void fold8(vf *r, const vf *v) {
  vf a0 = FOLD(v[0], v[1], HALVES), a1 = FOLD(v[2], v[3], HALVES);
  vf a2 = FOLD(v[4], v[5], HALVES), a3 = FOLD(v[6], v[7], HALVES);
  vf b0 = FOLD(a0, a1, QUARTERS), b1 = FOLD(a2, a3, QUARTERS);
  *r = FOLD(b0, b1, EIGHTHS);
}
#endif

/* The backward sweep of states n0 .. n0+K-1, t from L-1 down to 0, after block_fwd kept
 * their decays a[t] and entering states h[t-1]. With g = dL/dh[t] (its carried part
 * a[t+1] g[t+1] plus dy[t] C[t]):
 *   dB[t,n] += sum over lanes of g dt u,  dC[t,n] += sum over lanes of dy h[t]
 *   dA[n] += dt g a h[t-1]
 *   sgb[t] += g B[t,n],  sga[t] += A[n] g a h[t-1]   (du = dt sgb + .., d dt = u sgb + sga)
 * The dB, dC terms go to c->acc as ACC_ROW describes. */
INLINE void block_bwd(const scan_chunk *c, const bufs *w, pf_pos *q, int n0, int K) {
  vf g[NB], hn[NB], A[NB], dA[NB];
#pragma GCC unroll 4
  for (int k = 0; k < K; k++) {
    g[k] = ld(c->g + (n0 + k) * W), hn[k] = ld(c->h + (n0 + k) * W), A[k] = ld(c->A + (n0 + k) * W);
    dA[k] = splat(0.0f);
  }
  for (int t = c->L - 1; t >= 0; t--) {
    const float *bt = c->Bm + t * c->bst + n0, *ct = c->Cm + t * c->cst + n0;
    vf dt = ld(w->dt + t * W), dtu = ld(w->dtu + t * W), dy = ld(w->dy + t * W), sb = {0}, sa = {0};
    vf terms[8] = {{0}}; /* dB's for k < K, then dC's from 4 */
    pf_next(c, q);
#pragma GCC unroll 4
    for (int k = 0; k < K; k++) {
      vf a = ld(w->a + (t * K + k) * W), hp = ld(w->hp + (t * K + k) * W);
      vf gk = g[k] + dy * ct[k], gah = gk * (a * hp);
      terms[k] = gk * dtu;
      terms[4 + k] = dy * hn[k];
      sb += gk * bt[k];
      sa += A[k] * gah;
      dA[k] += dt * gah;
      g[k] = a * gk;
      hn[k] = hp;
    }
#ifdef __AVX512F__
    vf folded;
    fold8(&folded, terms);
    float *pa = c->acc + ((int64_t)n0 * SN_SCAN_CHUNK + t) * ACC_ROW;
    st(pa, ld(pa) + folded);
#else
#pragma GCC unroll 4
    for (int k = 0; k < K; k++) {
      float *pa = c->acc + ((int64_t)(n0 + k) * SN_SCAN_CHUNK + t) * ACC_ROW;
      st(pa, ld(pa) + terms[k]);
      st(pa + W, ld(pa + W) + terms[4 + k]);
    }
#endif
    st(w->sgb + t * W, ld(w->sgb + t * W) + sb);
    st(w->sga + t * W, ld(w->sga + t * W) + sa);
  }
#pragma GCC unroll 4
  for (int k = 0; k < K; k++) {
    st(c->g + (n0 + k) * W, g[k]);
    st(c->dA + (n0 + k) * W, ld(c->dA + (n0 + k) * W) + dA[k]);
  }
}

static void scan_bwd(const scan_chunk *c) {
  bufs w = bufs_of(c);
  for (int t = 0; t < c->L; t++) {
    vf pre, dy = ld(c->dout + t * c->ps);
    step_in(c, &w, t, &pre);
    if (c->softplus) vsigmoid(&pre);
    st(w.dsig + t * W, c->softplus ? pre : splat(1.0f));
    if (c->z) {
      vf z = ld(c->z + t * c->ps), s = z;
      vsigmoid(&s);
      st(w.sz + t * W, s);
      dy *= z * s;
    }
    st(w.dy + t * W, dy);
    st(w.sgb + t * W, splat(0.0f));
    st(w.sga + t * W, splat(0.0f));
  }
  pf_pos q = pf_start(c, 2 * c->L * blocks_of(c->N));
  FOR_BLOCKS(c->N, n0, K, {
    block_fwd(c, &w, &q, n0, K, true);
    block_bwd(c, &w, &q, n0, K);
  });
  vf Ds = ld(c->Dskip), dDs = {0}, dbias = {0};
  for (int t = 0; t < c->L; t++) {
    vf u = ld(c->u + t * c->ps), dy = ld(w.dy + t * W), sgb = ld(w.sgb + t * W);
    vf dd = (u * sgb + ld(w.sga + t * W)) * ld(w.dsig + t * W);
    st(c->du + t * c->ps, ld(w.dt + t * W) * sgb + Ds * dy);
    st(c->ddelta + t * c->ps, dd);
    dbias += dd;
    dDs += dy * u;
    if (c->z) {
      /* d/dz of y z sigmoid(z) = y s (1 + z (1 - s)) */
      vf z = ld(c->z + t * c->ps), s = ld(w.sz + t * W);
      st(c->dz + t * c->ps, ld(c->dout + t * c->ps) * ld(w.y + t * W) * s * (1.0f + z * (1.0f - s)));
    }
  }
  st(c->dDskip, ld(c->dDskip) + dDs);
  st(c->dbias, ld(c->dbias) + dbias);
}

/* dB[t][n], dC[t][n] (rows ld floats apart) = the lane sums of block_bwd's rows of acc,
 * for t < L; the rows are zeroed for the next chunk. */
static void take_sums(float *dB, float *dC, int64_t ld, float *acc, int L, int N) {
#ifdef __AVX512F__
  for (int n0 = 0, K; n0 < N; n0 += K) { /* the blocks of FOR_BLOCKS */
    K = n0 + NB <= N ? NB : 1;
    for (int t = 0; t < L; t++) {
      float *r = acc + ((int64_t)n0 * SN_SCAN_CHUNK + t) * ACC_ROW;
      for (int k = 0; k < K; k++) {
        dB[t * ld + n0 + k] = r[2 * k] + r[2 * k + 1];
        dC[t * ld + n0 + k] = r[8 + 2 * k] + r[8 + 2 * k + 1];
      }
      memset(r, 0, ACC_ROW * sizeof(float));
    }
  }
#else
  for (int n = 0; n < N; n++)
    for (int t = 0; t < L; t++) {
      float *r = acc + ((int64_t)n * SN_SCAN_CHUNK + t) * ACC_ROW, sb = 0, sc = 0;
      for (int l = 0; l < W; l++) sb += r[l], sc += r[W + l];
      dB[t * ld + n] = sb, dC[t * ld + n] = sc;
      memset(r, 0, ACC_ROW * sizeof(float));
    }
#endif
}

const sn_scan_ops SCAN_TABLE = {
    .name = SCAN_NAME,
    .fwd = scan_fwd,
    .bwd = scan_bwd,
    .take_sums = take_sums,
};
