/* simd/binary_attention_tile.h -- the binary-code attention sweeps (simd/binary_attention.h),
 * included once by each of binary_attention_{scalar,avx2,avx512}.c with BA_TABLE and BA_NAME
 * naming the table (and BA_POPCNT512 for the VPOPCNTDQ build). */
#include "simd/binary_attention.h"

#include <string.h>

#include "simd/tile_vec.h"

_Static_assert(BA_PAD % VW == 0, "padded rows hold whole vectors");

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

/* sum_j a[j] b[j] over n (a multiple of 16) floats, in the same order in every build. */
static inline float dot16(const float *a, const float *b, int64_t n) {
  v16 s = {0};
  for (int64_t j = 0; j < n; j += 16) s += *(const v16u *)(a + j) * *(const v16u *)(b + j);
  float r = 0;
  for (int k = 0; k < 16; k++) r += s[k];
  return r;
}

/* y[:n] += a x[:n] */
static inline void axpy(float *y, float a, const float *x, int64_t n) {
  vf va = splat(a);
  for (int64_t j = 0; j < n; j += VW) st(y + j, ld(y + j) + va * ld(x + j));
}

static inline int bit(uint64_t code, int n) { return (int)((code >> n) & 1u); }

/* The sign bit where bit n of code is 0: x ^ sign_of is -x for h_n = -1 and x otherwise,
 * so acc + (x ^ sign_of) is exactly acc + x or acc - x, without a data-dependent branch
 * (random codes mispredicted half of them). */
static inline vi sign_of(uint64_t code, int n) {
  return (vi){0} + (int32_t)((uint32_t)(~code >> n & 1u) << 31);
}

#ifdef BA_POPCNT512
/* Eight 64-bit codes per vpopcntq; the counts (<= 64) convert to floats exactly. */
static void weights(float *w, const uint64_t *codes, int64_t n, uint64_t code, int bits) {
  const __m512i c = _mm512_set1_epi64((long long)code);
  const __m256 top = _mm256_set1_ps((float)(2 * bits + 1)), two = _mm256_set1_ps(2.0f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m512i pc = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(codes + j), c));
    __m256 f = _mm256_cvtepi32_ps(_mm512_cvtepi64_epi32(pc));
    _mm256_storeu_ps(w + j, _mm256_sub_ps(top, _mm256_mul_ps(two, f)));
  }
  if (j < n) {
    __mmask8 m = (__mmask8)((1u << (n - j)) - 1);
    __m512i pc = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(m, codes + j), c));
    __m256 f = _mm256_cvtepi32_ps(_mm512_cvtepi64_epi32(pc));
    _mm256_mask_storeu_ps(w + j, m, _mm256_sub_ps(top, _mm256_mul_ps(two, f)));
  }
}
#else
static void weights(float *w, const uint64_t *codes, int64_t n, uint64_t code, int bits) {
  for (int64_t j = 0; j < n; j++) w[j] = (float)(2 * bits + 1) - 2.0f * (float)__builtin_popcountll(codes[j] ^ code);
}
#endif

/* Chunk rows: the codes, v~ rows (v, 1, zeros) into V. */
static void load_chunk(const ba_seq *s, int64_t t0, int64_t L, uint64_t *cd) {
  for (int64_t r = 0; r < L; r++) {
    cd[r] = (uint64_t)s->codes[(t0 + r) * s->cs];
    float *row = s->V + r * s->Dp;
    memcpy(row, s->v + (t0 + r) * s->vs, (size_t)s->Dv * sizeof(float));
    row[s->Dv] = 1.0f;
    memset(row + s->Dv + 1, 0, (size_t)(s->Dp - s->Dv - 1) * sizeof(float));
  }
}

/* Column blocks of up to NVMAX vectors keep their sums in registers over a whole loop of
 * rows (as memory operands they were 3x slower); f(..., j0, NV) runs block j0 with NV a
 * constant. Dp is a multiple of BA_PAD, so every block holds whole vectors. */
#define NVMAX 4
#define FOR_BLOCKS(Dp, f, ...)                                       \
  for (int64_t j0_ = 0; j0_ < (Dp); j0_ += NVMAX * VW) {             \
    switch ((int)(((Dp) - j0_) / VW)) {                              \
    case 1: f(__VA_ARGS__, j0_, 1); break;                           \
    case 2: f(__VA_ARGS__, j0_, 2); break;                           \
    case 3: f(__VA_ARGS__, j0_, 3); break;                           \
    default: f(__VA_ARGS__, j0_, 4); break;                          \
    }                                                                \
  }

/* dst = a base + sum_n (+-R1[n]) (sign: bit n of code, n < n1) + sum_c w[c] R2[c] (c < n2),
 * rows lda floats apart, in that order per element. */
INLINE void combine_blk(float *dst, const float *base, float a, const float *R1, int n1, uint64_t code,
                        const float *R2, const float *w, int64_t n2, int64_t lda, int64_t j0, const int NV) {
  vf acc[NVMAX];
  const vf va = splat(a);
#pragma GCC unroll 4
  for (int k = 0; k < NV; k++) acc[k] = va * ld(base + j0 + k * VW);
  for (int n = 0; n < n1; n++) {
    const float *row = R1 + n * lda + j0;
    const vi flip = sign_of(code, n);
#pragma GCC unroll 4
    for (int k = 0; k < NV; k++) acc[k] += (vf)((vi)ld(row + k * VW) ^ flip);
  }
  for (int64_t c = 0; c < n2; c++) {
    const float *row = R2 + c * lda + j0;
    const vf wc = splat(w[c]);
#pragma GCC unroll 4
    for (int k = 0; k < NV; k++) acc[k] += wc * ld(row + k * VW);
  }
#pragma GCC unroll 4
  for (int k = 0; k < NV; k++) st(dst + j0 + k * VW, acc[k]);
}

static void combine(float *dst, const float *base, float a, const float *R1, int n1, uint64_t code, const float *R2,
                    const float *w, int64_t n2, int64_t lda) {
  FOR_BLOCKS(lda, combine_blk, dst, base, a, R1, n1, code, R2, w, n2, lda)
}

/* S += sum_r k~_r x_r^T over the chunk's L rows X (Dp apart): each row of S takes the tokens
 * in order (as the decoding step does). cq scales the last row: 1 for the forward state
 * (k~ = [h; 1]), c for the backward's (q~ = [h; c]). */
INLINE void update_blk(float *S, const float *X, const uint64_t *cd, int64_t L, int bits, int64_t Dp, float cq,
                       int64_t j0, const int NV) {
  vf acc[NVMAX];
  for (int n = 0; n < bits; n++) {
    float *row = S + n * Dp + j0;
#pragma GCC unroll 4
    for (int k = 0; k < NV; k++) acc[k] = ld(row + k * VW);
    for (int64_t r = 0; r < L; r++) {
      const float *x = X + r * Dp + j0;
      const vi flip = sign_of(cd[r], n);
#pragma GCC unroll 4
      for (int k = 0; k < NV; k++) acc[k] += (vf)((vi)ld(x + k * VW) ^ flip);
    }
#pragma GCC unroll 4
    for (int k = 0; k < NV; k++) st(row + k * VW, acc[k]);
  }
  float *row = S + (int64_t)bits * Dp + j0;
  const vf c = splat(cq);
#pragma GCC unroll 4
  for (int k = 0; k < NV; k++) acc[k] = ld(row + k * VW);
  for (int64_t r = 0; r < L; r++) {
    const float *x = X + r * Dp + j0;
    if (cq == 1.0f) {
#pragma GCC unroll 4
      for (int k = 0; k < NV; k++) acc[k] += ld(x + k * VW);
    } else {
#pragma GCC unroll 4
      for (int k = 0; k < NV; k++) acc[k] += c * ld(x + k * VW);
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < NV; k++) st(row + k * VW, acc[k]);
}

static void update_state(float *S, const float *X, const uint64_t *cd, int64_t L, int bits, int64_t Dp, float cq) {
  FOR_BLOCKS(Dp, update_blk, S, X, cd, L, bits, Dp, cq)
}

/* dst[j0 ..] = sum_{j<m} a[j] Bm[j ldb + j0 ..] (+ a2[j] B2[j ldb + j0 ..]), j in order: the
 * products of the backward with rows transposed so that lanes run over their outputs (the
 * dot products they replace ended in a 16-lane horizontal sum each). */
INLINE void gemv_blk(float *dst, const float *a, const float *Bm, const float *a2, const float *B2, int64_t m,
                     int64_t ldb, int64_t j0, const int NV) {
  vf acc[NVMAX];
#pragma GCC unroll 4
  for (int k = 0; k < NV; k++) acc[k] = splat(0.0f);
  for (int64_t j = 0; j < m; j++) {
    const vf x = splat(a[j]);
    const float *row = Bm + j * ldb + j0;
#pragma GCC unroll 4
    for (int k = 0; k < NV; k++) acc[k] += x * ld(row + k * VW);
    if (a2) {
      const vf x2 = splat(a2[j]);
      const float *row2 = B2 + j * ldb + j0;
#pragma GCC unroll 4
      for (int k = 0; k < NV; k++) acc[k] += x2 * ld(row2 + k * VW);
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < NV; k++) st(dst + j0 + k * VW, acc[k]);
}

/* n (a multiple of VW) outputs */
static void gemv(float *dst, int64_t n, const float *a, const float *Bm, const float *a2, const float *B2, int64_t m,
                 int64_t ldb) {
  FOR_BLOCKS(n, gemv_blk, dst, a, Bm, a2, B2, m, ldb)
}

/* dst (cols x ldd) = the first rows rows of src (rows x lds) transposed, zeros past rows. */
static void transpose(float *dst, int64_t ldd, const float *src, int64_t rows, int64_t cols, int64_t lds) {
  for (int64_t j = 0; j < cols; j++) {
    float *d = dst + j * ldd;
    for (int64_t i = 0; i < rows; i++) d[i] = src[i * lds + j];
    for (int64_t i = rows; i < ldd; i++) d[i] = 0.0f;
  }
}

static void fwd(const ba_seq *s) {
  const int bits = s->bits;
  const int64_t Dp = s->Dp, Dv = s->Dv;
  uint64_t cd[BA_CHUNK];
  for (int64_t t0 = 0; t0 < s->T; t0 += BA_CHUNK) {
    int64_t L = s->T - t0 < BA_CHUNK ? s->T - t0 : BA_CHUNK;
    load_chunk(s, t0, L, cd);
    for (int64_t r = 0; r < L; r++) {
      float *w = s->W + r * BA_CHUNK, *acc = s->acc;
      weights(w, cd, r + 1, cd[r], bits);
      /* [num, den] = q~^T S_prev + sum_{c<=r} w_rc v~_c */
      combine(acc, s->S + (int64_t)bits * Dp, (float)(bits + 1), s->S, bits, cd[r], s->V, w, r + 1, Dp);
      const vf den = splat(acc[Dv]);
      s->den[(t0 + r) * s->ds] = acc[Dv];
      for (int64_t j = 0; j < Dp; j += VW) st(acc + j, ld(acc + j) / den);
      memcpy(s->out + (t0 + r) * s->os, acc, (size_t)Dv * sizeof(float));
    }
    update_state(s->S, s->V, cd, L, bits, Dp, 1.0f);
  }
}

/* Backward (notation of the header comment; u~_i = [g_i / den_i ; -(g_i . o_i) / den_i] is
 * the gradient of token i's [numerator, denominator]):
 *   ds_ij = u~_i . v~_j                       (the gradient of the similarity, j <= i)
 *   dv_j  = sum_{i>=j} (q~_i . k~_j) u_i      = intra-chunk sum + (k~_j^T D)[:Dv]
 *   dh_i  = sum_{j<=i} ds_ij h_j + sum_{i'>=i} ds_i'i h_i'
 *         = intra-chunk sums + (S_prev u~_i)[:b] + (D v~_i)[:b]
 * with S_prev the state entering the chunk (recomputed forward, saved per chunk) and D the
 * gradient of the state leaving it, D += sum_i q~_i u~_i^T chunk by chunk from the last.
 * The diagonal pair (i, i) counts in both sums: h_i . h_i is a product of two features. */
static void bwd(const ba_seq *s) {
  const int bits = s->bits;
  const int64_t Dp = s->Dp, Dv = s->Dv, bp = s->bp, st_n = (bits + 1) * Dp;
  const int64_t nch = (s->T + BA_CHUNK - 1) / BA_CHUNK;
  uint64_t cd[BA_CHUNK];
  for (int64_t k = 0; k < nch; k++) {
    int64_t t0 = k * BA_CHUNK, L = s->T - t0 < BA_CHUNK ? s->T - t0 : BA_CHUNK;
    memcpy(s->states + k * st_n, s->S, (size_t)st_n * sizeof(float));
    if (k + 1 < nch) {
      load_chunk(s, t0, L, cd);
      update_state(s->S, s->V, cd, L, bits, Dp, 1.0f);
    }
  }
  float *acc = s->acc;
  for (int64_t k = nch - 1; k >= 0; k--) {
    int64_t t0 = k * BA_CHUNK, L = s->T - t0 < BA_CHUNK ? s->T - t0 : BA_CHUNK;
    const float *Sp = s->states + k * st_n;
    load_chunk(s, t0, L, cd);
    for (int64_t r = 0; r < L; r++) {
      float *u = s->U + r * Dp, *hf = s->Hf + r * bp;
      const float *g = s->g + (t0 + r) * s->gs, *o = s->out + (t0 + r) * s->os;
      float den = s->den[(t0 + r) * s->ds];
      memset(u, 0, (size_t)Dp * sizeof(float));
      memcpy(u, g, (size_t)Dv * sizeof(float));
      memset(acc, 0, (size_t)Dp * sizeof(float));
      memcpy(acc, o, (size_t)Dv * sizeof(float));
      float go = dot16(u, acc, Dp);
      for (int64_t j = 0; j < Dv; j++) u[j] = g[j] / den;
      u[Dv] = -go / den;
      for (int n = 0; n < bp; n++) hf[n] = n < bits ? (bit(cd[r], n) ? 1.0f : -1.0f) : 0.0f;
      weights(s->W + r * BA_CHUNK, cd, L, cd[r], bits);
    }
    /* dv: column c of the (symmetric) similarity block against the u rows r >= c */
    for (int64_t c = 0; c < L; c++) {
      /* k~_c^T D + sum_{r>=c} w_rc u~_r */
      combine(acc, s->D + (int64_t)bits * Dp, 1.0f, s->D, bits, cd[c], s->U + c * Dp, s->W + c * BA_CHUNK + c, L - c, Dp);
      memcpy(s->dv + (t0 + c) * s->os, acc, (size_t)Dv * sizeof(float));
    }
    /* ds (lower triangle incl. the diagonal): row r against V^T, over Dv + 1 columns (the
     * rest are zero padding) and the whole vectors that hold c <= r */
    const int64_t W1 = Dv + 1;
    transpose(s->VT, BA_CHUNK, s->V, L, W1, Dp);
    for (int64_t r = 0; r < L; r++) {
      int64_t n = (r + VW) / VW * VW;
      gemv(s->dS + r * BA_CHUNK, n, s->U + r * Dp, s->VT, NULL, NULL, W1, BA_CHUNK);
    }
    /* dh: inter-chunk terms (S_prev u~_r + D v~_r, rows n < bits, as one product with the
     * transposed states), then the query side and the key side of the block */
    transpose(s->ST, bp, Sp, bits, W1, Dp);
    transpose(s->DT, bp, s->D, bits, W1, Dp);
    for (int64_t r = 0; r < L; r++) {
      float *dh = s->dhb + r * bp;
      gemv(dh, bp, s->U + r * Dp, s->ST, s->V + r * Dp, s->DT, W1, bp);
      for (int64_t c = 0; c <= r; c++) axpy(dh, s->dS[r * BA_CHUNK + c], s->Hf + c * bp, bp);
      for (int64_t i = r; i < L; i++) axpy(dh, s->dS[i * BA_CHUNK + r], s->Hf + i * bp, bp);
      memcpy(s->dh + (t0 + r) * s->hs, dh, (size_t)bits * sizeof(float));
    }
    update_state(s->D, s->U, cd, L, bits, Dp, (float)(bits + 1));
  }
}

static float step(float *out, float *S, float *acc, uint64_t code, const float *v, int64_t Dv, int bits) {
  const int64_t W = Dv + 1;
  /* unpadded rows: scalar loops the compiler vectorizes with the ISA at hand; each element
   * takes the same operations as in update_state and combine */
  for (int n = 0; n <= bits; n++) {
    float *row = S + n * W;
    if (n == bits || bit(code, n)) {
      for (int64_t j = 0; j < Dv; j++) row[j] += v[j];
      row[Dv] += 1.0f;
    } else {
      for (int64_t j = 0; j < Dv; j++) row[j] -= v[j];
      row[Dv] -= 1.0f;
    }
  }
  const float cq = (float)(bits + 1), *last = S + (int64_t)bits * W;
  for (int64_t j = 0; j < W; j++) acc[j] = cq * last[j];
  for (int n = 0; n < bits; n++) {
    const float *row = S + n * W;
    if (bit(code, n))
      for (int64_t j = 0; j < W; j++) acc[j] += row[j];
    else
      for (int64_t j = 0; j < W; j++) acc[j] -= row[j];
  }
  float den = acc[Dv];
  for (int64_t j = 0; j < Dv; j++) out[j] = acc[j] / den;
  return den;
}

const sn_ba_ops BA_TABLE = {BA_NAME, weights, fwd, bwd, step};
