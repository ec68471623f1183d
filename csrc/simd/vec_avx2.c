/* simd/vec_avx2.c -- the AVX2 + FMA table: 8 floats per vector, SLEEF u10 transcendentals
 * except tanh, GELU and the exps of logsumexp, which use the inline polynomials of vec.h
 * (SLEEF's tanh and erf are several times slower than memory); tails through
 * maskload/maskstore (masked-off lanes read 0 and never fault). */
#include <immintrin.h>
#include <math.h>
#include <sleef.h>

#include "simd/vec.h"

#define INLINE static inline __attribute__((always_inline))
#define W 8

/* tail_mask(r) for 0 < r <= 8: the first r 32-bit lanes set. */
static const int32_t tail_bits[2 * W] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

INLINE __m256i tail_mask(int64_t r) {
  return _mm256_loadu_si256((const __m256i *)(tail_bits + W - (r < W ? r : W)));
}

/* The 64-bit masks for lanes 0-3 and 4-7 of a 32-bit lane mask. */
INLINE __m256i mask_lo64(__m256i k) { return _mm256_cvtepi32_epi64(_mm256_castsi256_si128(k)); }
INLINE __m256i mask_hi64(__m256i k) { return _mm256_cvtepi32_epi64(_mm256_extracti128_si256(k, 1)); }

INLINE __m256 neg8(__m256 x) { return _mm256_xor_ps(x, _mm256_set1_ps(-0.0f)); }
INLINE __m256 abs8(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
INLINE __m256 isnan8(__m256 x) { return _mm256_cmp_ps(x, x, _CMP_UNORD_Q); }

static const float exp_c[] = {SN_EXP_POLY}, tanh_c[] = {SN_TANH_POLY};
static const float gelu_small_c[] = {SN_GELU_POLY_SMALL}, gelu_tail_c[] = {SN_GELU_POLY_TAIL};
#define POLY8(x, c) horner8(x, c, (int)(sizeof c / sizeof *c))

INLINE __m256 horner8(__m256 x, const float *c, int n) {
  __m256 p = _mm256_set1_ps(c[0]);
  for (int i = 1; i < n; i++) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(c[i]));
  return p;
}

/* e^y = e^r 2^n for y in [-150, 88.7] or NaN (callers clamp where needed): returns e^r
 * and sets *n (integral). ln2 in two parts keeps r = y - n ln2 accurate to f32 rounding
 * for every such y. */
INLINE __m256 exp_parts8(__m256 y, __m256 *n) {
  *n = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(*n, _mm256_set1_ps(0.693145752f), y);
  return POLY8(_mm256_fnmadd_ps(*n, _mm256_set1_ps(1.42860677e-6f), r), exp_c);
}

/* p 2^n for integral n in [-252, 254], as two factors 2^(n/2) that stay normal floats:
 * results round into the subnormals twice (at most 1 ulp there). */
INLINE __m256 scale8(__m256 p, __m256 n) {
  __m256i k = _mm256_cvtps_epi32(n), k1 = _mm256_srai_epi32(k, 1), k2 = _mm256_sub_epi32(k, k1);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
  __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}

INLINE __m256 exp8(__m256 y) {
  __m256 n, p = exp_parts8(y, &n);
  return scale8(p, n);
}

/* Odd polynomial near 0 (1 - 2/(e^2|x| + 1) would cancel there), else 1 - 2/(e^2|x| + 1)
 * with |x| capped at 9, where tanh is 1 in f32. NaN takes the exp branch and stays NaN. */
INLINE __m256 tanh8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 ax = abs8(x), s = _mm256_mul_ps(x, x);
  __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(x, s), POLY8(s, tanh_c), x);
  __m256 c = _mm256_min_ps(_mm256_set1_ps(9.0f), ax), e = exp8(_mm256_add_ps(c, c));
  __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
  big = _mm256_or_ps(big, _mm256_and_ps(x, _mm256_set1_ps(-0.0f)));
  return _mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, _mm256_set1_ps(SN_TANH_SMALL), _CMP_LT_OQ));
}

/* x Phi(x) as in vec.h. The tail's exp(-u^2/2) takes u^2 = h + l exactly (FMA) and applies
 * e^(-l/2) ~ 1 - l/2: rounding u^2 alone would cost up to ~1e-5 relative at u = 14. u is
 * capped at 16 (q is 0 by then) so that inf gives 1 - q = 1, and -inf gives -inf * 0 = NaN
 * like the formula. */
INLINE __m256 gelu8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 ax = abs8(x);
  __m256 small = _mm256_mul_ps(x, _mm256_fmadd_ps(x, POLY8(_mm256_mul_ps(x, x), gelu_small_c), _mm256_set1_ps(0.5f)));
  __m256 u = _mm256_min_ps(_mm256_set1_ps(16.0f), ax);
  __m256 h = _mm256_mul_ps(u, u), l = _mm256_fmsub_ps(u, u, h);
  __m256 n, p = exp_parts8(_mm256_mul_ps(h, _mm256_set1_ps(-0.5f)), &n);
  __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(u, _mm256_set1_ps(0.25f), one));
  __m256 tail = _mm256_mul_ps(t, POLY8(t, gelu_tail_c));
  __m256 m = _mm256_mul_ps(p, _mm256_fnmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), l), tail, tail));
  __m256 q = scale8(m, n);
  __m256 phi = _mm256_blendv_ps(_mm256_sub_ps(one, q), q, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  __m256 big = _mm256_mul_ps(x, phi);
  return _mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, one, _CMP_LT_OQ));
}

/* GELU'(x) = Phi(x) + x phi(x), as gelu_grad16 in vec_avx512.c. */
INLINE __m256 gelu_grad8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 ax = abs8(x);
  __m256 u = _mm256_min_ps(_mm256_set1_ps(16.0f), ax);
  __m256 h = _mm256_mul_ps(u, u), l = _mm256_fmsub_ps(u, u, h);
  __m256 n, p = exp_parts8(_mm256_mul_ps(h, _mm256_set1_ps(-0.5f)), &n);
  __m256 e = scale8(_mm256_fnmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), l), p, p), n);
  __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(u, _mm256_set1_ps(0.25f), one));
  __m256 q = _mm256_mul_ps(e, _mm256_mul_ps(t, POLY8(t, gelu_tail_c)));
  __m256 big = _mm256_blendv_ps(_mm256_sub_ps(one, q), q, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  __m256 small = _mm256_fmadd_ps(x, POLY8(_mm256_mul_ps(x, x), gelu_small_c), _mm256_set1_ps(0.5f));
  __m256 cdf = _mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, one, _CMP_LT_OQ));
  __m256 xc = _mm256_or_ps(u, _mm256_and_ps(x, _mm256_set1_ps(-0.0f)));
  return _mm256_fmadd_ps(_mm256_mul_ps(xc, _mm256_set1_ps(SN_INV_SQRT_2PI)), e, cdf);
}

INLINE __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, Sleef_expf8_u10avx2(neg8(x))));
}

/* max_ps(a, b) returns b when either is NaN, so only a NaN in a needs putting back:
 * the same as the scalar (a > b || isnan(a)) ? a : b. */
INLINE __m256 max8(__m256 a, __m256 b) { return _mm256_blendv_ps(_mm256_max_ps(a, b), a, isnan8(a)); }
INLINE __m256 min8(__m256 a, __m256 b) { return _mm256_blendv_ps(_mm256_min_ps(a, b), a, isnan8(a)); }

INLINE __m256 un8(sn_unop op, __m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  switch (op) {
  case SN_EXP: return Sleef_expf8_u10avx2(x);
  case SN_LOG: return Sleef_logf8_u10avx2(x);
  case SN_TANH: return tanh8(x);
  case SN_SIGMOID: return sigmoid8(x);
  case SN_SILU: return _mm256_mul_ps(x, sigmoid8(x));
  case SN_GELU: return gelu8(x);
  case SN_SOFTPLUS: {
    /* max_ps(x, 0) is 0 for NaN x; the NaN arrives through log1p. */
    __m256 l = Sleef_log1pf8_u10avx2(Sleef_expf8_u10avx2(neg8(abs8(x))));
    return _mm256_add_ps(_mm256_max_ps(x, _mm256_setzero_ps()), l);
  }
  case SN_SQRT: return _mm256_sqrt_ps(x);
  case SN_RSQRT: return _mm256_div_ps(one, _mm256_sqrt_ps(x));
  case SN_ABS: return abs8(x);
  case SN_NEG: return neg8(x);
  default: return _mm256_set1_ps(NAN);
  }
}

INLINE __m256 bin8(sn_binop op, __m256 a, __m256 b) {
  switch (op) {
  case SN_ADD: return _mm256_add_ps(a, b);
  case SN_SUB: return _mm256_sub_ps(a, b);
  case SN_MUL: return _mm256_mul_ps(a, b);
  case SN_DIV: return _mm256_div_ps(a, b);
  case SN_POW: return Sleef_powf8_u10avx2(a, b);
  case SN_MAX: return max8(a, b);
  case SN_MIN: return min8(a, b);
  default: return _mm256_set1_ps(NAN);
  }
}

/* Each op gets its own inlined loop (the switches pass constants), so no loop branches on
 * the op per vector. */
INLINE void unary_loop(sn_unop op, float *y, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) _mm256_storeu_ps(y + i, un8(op, _mm256_loadu_ps(x + i)));
  if (i < n) {
    __m256i k = tail_mask(n - i);
    _mm256_maskstore_ps(y + i, k, un8(op, _mm256_maskload_ps(x + i, k)));
  }
}

INLINE void binary_loop(sn_binop op, float *y, const float *a, const float *b, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W)
    _mm256_storeu_ps(y + i, bin8(op, _mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  if (i < n) {
    __m256i k = tail_mask(n - i);
    _mm256_maskstore_ps(y + i, k, bin8(op, _mm256_maskload_ps(a + i, k), _mm256_maskload_ps(b + i, k)));
  }
}

INLINE __m256 bin8_ordered(sn_binop op, __m256 a, __m256 s, bool first) {
  return first ? bin8(op, s, a) : bin8(op, a, s);
}

INLINE void scalar_loop(sn_binop op, float *y, const float *a, float s, int64_t n, bool first) {
  __m256 sv = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + W <= n; i += W)
    _mm256_storeu_ps(y + i, bin8_ordered(op, _mm256_loadu_ps(a + i), sv, first));
  if (i < n) {
    __m256i k = tail_mask(n - i);
    _mm256_maskstore_ps(y + i, k, bin8_ordered(op, _mm256_maskload_ps(a + i, k), sv, first));
  }
}

#include "simd/vec_switch.h"

/* The 8 float lanes added into 4 double lanes. */
INLINE __m256d widen(__m256 s) {
  return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(s)),
                       _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
}

/* f(x - m): the identity for plain sums, exp for sumexp (with_exp is a constant). */
INLINE __m256 term8(__m256 v, bool with_exp, __m256 m) {
  return with_exp ? exp8(_mm256_max_ps(_mm256_set1_ps(-104.0f), _mm256_sub_ps(v, m))) : v;
}

/* Sums f(x - m) over x[0..n): four float accumulators within each SN_VEC_SUM_BLOCK
 * (enough to hide add latency), blocks added in double. */
INLINE double block_sum(const float *x, int64_t n, bool with_exp, float m) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256d total = _mm256_setzero_pd();
  for (int64_t b = 0; b < n; b += SN_VEC_SUM_BLOCK) {
    const float *p = x + b;
    int64_t len = n - b < SN_VEC_SUM_BLOCK ? n - b : SN_VEC_SUM_BLOCK;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 4 * W <= len; i += 4 * W) {
      s0 = _mm256_add_ps(s0, term8(_mm256_loadu_ps(p + i), with_exp, mv));
      s1 = _mm256_add_ps(s1, term8(_mm256_loadu_ps(p + i + W), with_exp, mv));
      s2 = _mm256_add_ps(s2, term8(_mm256_loadu_ps(p + i + 2 * W), with_exp, mv));
      s3 = _mm256_add_ps(s3, term8(_mm256_loadu_ps(p + i + 3 * W), with_exp, mv));
    }
    for (; i < len; i += W) {
      __m256i k = tail_mask(len - i);
      __m256 t = term8(_mm256_maskload_ps(p + i, k), with_exp, mv);
      s0 = _mm256_add_ps(s0, _mm256_and_ps(t, _mm256_castsi256_ps(k)));
    }
    total = _mm256_add_pd(total, widen(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3))));
  }
  __m128d h = _mm_add_pd(_mm256_castpd256_pd128(total), _mm256_extractf128_pd(total, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

static double sum(const float *x, int64_t n) { return block_sum(x, n, false, 0.0f); }

static double sumexp(const float *x, float m, int64_t n) { return block_sum(x, n, true, m); }

/* lse's running state: the reference, the float sums of this block (four, as in block_sum)
 * and the double sum of the blocks before, all relative to ref. */
typedef struct {
  float ref;
  __m256 mv, lim; /* ref and ref + SN_LSE_SLACK, broadcast */
  __m256 s0, s1, s2, s3;
  __m256d total;
} lse_state;

/* Moves the reference up to the largest lane of bm, rescaling the sums so far. A NaN or
 * inf lane makes it non-finite (or leaves a NaN for the sum), which the caller sees. */
INLINE void lse_raise(lse_state *st, __m256 bm) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(bm), _mm256_extractf128_ps(bm, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  float nm = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
  double f = exp((double)st->ref - nm); /* 0 the first time, when ref is -inf */
  __m256 ff = _mm256_set1_ps((float)f);
  st->s0 = _mm256_mul_ps(st->s0, ff), st->s1 = _mm256_mul_ps(st->s1, ff);
  st->s2 = _mm256_mul_ps(st->s2, ff), st->s3 = _mm256_mul_ps(st->s3, ff);
  st->total = _mm256_mul_pd(st->total, _mm256_set1_pd(f));
  st->ref = nm;
  st->mv = _mm256_set1_ps(nm), st->lim = _mm256_set1_ps(nm + SN_LSE_SLACK);
}

/* One read in groups of 4 vectors: a group moves the reference when a lane is above it +
 * SN_LSE_SLACK (after the first group, rarely), then adds its exps as block_sum does. The
 * prefetches keep memory busy while the exps run. */
static void lse(const float *x, int64_t n, float *m, double *s) {
  const __m256 pad = _mm256_set1_ps(-INFINITY);
  lse_state st = {.ref = -INFINITY, .mv = pad, .lim = pad, .total = _mm256_setzero_pd()};
  for (int64_t b = 0; b < n; b += SN_VEC_SUM_BLOCK) {
    const float *p = x + b;
    int64_t len = n - b < SN_VEC_SUM_BLOCK ? n - b : SN_VEC_SUM_BLOCK;
    st.s0 = st.s1 = st.s2 = st.s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 4 * W <= len; i += 4 * W) {
      for (int64_t q = 0; q < 4 * W; q += 16) /* one prefetch per 64-byte line */
        _mm_prefetch((const char *)(p + i + SN_LSE_PREFETCH + q), _MM_HINT_T0);
      __m256 v0 = _mm256_loadu_ps(p + i), v1 = _mm256_loadu_ps(p + i + W);
      __m256 v2 = _mm256_loadu_ps(p + i + 2 * W), v3 = _mm256_loadu_ps(p + i + 3 * W);
      __m256 bm = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
      if (_mm256_movemask_ps(_mm256_cmp_ps(bm, st.lim, _CMP_GT_OQ))) lse_raise(&st, bm);
      st.s0 = _mm256_add_ps(st.s0, term8(v0, true, st.mv));
      st.s1 = _mm256_add_ps(st.s1, term8(v1, true, st.mv));
      st.s2 = _mm256_add_ps(st.s2, term8(v2, true, st.mv));
      st.s3 = _mm256_add_ps(st.s3, term8(v3, true, st.mv));
    }
    for (; i < len; i += W) {
      __m256i k = tail_mask(len - i);
      __m256 v = _mm256_blendv_ps(pad, _mm256_maskload_ps(p + i, k), _mm256_castsi256_ps(k));
      if (_mm256_movemask_ps(_mm256_cmp_ps(v, st.lim, _CMP_GT_OQ))) lse_raise(&st, v);
      st.s0 = _mm256_add_ps(st.s0, _mm256_and_ps(term8(v, true, st.mv), _mm256_castsi256_ps(k)));
    }
    __m256 t = _mm256_add_ps(_mm256_add_ps(st.s0, st.s1), _mm256_add_ps(st.s2, st.s3));
    st.total = _mm256_add_pd(st.total, widen(t));
  }
  __m128d h = _mm_add_pd(_mm256_castpd256_pd128(st.total), _mm256_extractf128_pd(st.total, 1));
  *m = st.ref;
  *s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

INLINE __m256 pick8(__m256 a, __m256 b, bool is_max) { return is_max ? max8(a, b) : min8(a, b); }

/* max8/min8 keep a NaN once it is in an accumulator, so a NaN lane at the end means a
 * NaN was seen; the padding of the tail is the identity (-inf / +inf). */
INLINE float extreme(const float *x, int64_t n, bool is_max) {
  const __m256 pad = _mm256_set1_ps(is_max ? -INFINITY : INFINITY);
  __m256 v0 = pad, v1 = pad, v2 = pad, v3 = pad;
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    v0 = pick8(v0, _mm256_loadu_ps(x + i), is_max);
    v1 = pick8(v1, _mm256_loadu_ps(x + i + W), is_max);
    v2 = pick8(v2, _mm256_loadu_ps(x + i + 2 * W), is_max);
    v3 = pick8(v3, _mm256_loadu_ps(x + i + 3 * W), is_max);
  }
  for (; i < n; i += W) {
    __m256i k = tail_mask(n - i);
    v0 = pick8(v0, _mm256_blendv_ps(pad, _mm256_maskload_ps(x + i, k), _mm256_castsi256_ps(k)), is_max);
  }
  __m256 r = pick8(pick8(v0, v1, is_max), pick8(v2, v3, is_max), is_max);
  if (_mm256_movemask_ps(isnan8(r))) return NAN;
  float lanes[W];
  _mm256_storeu_ps(lanes, r);
  float v = lanes[0];
  for (int i = 1; i < W; i++) v = is_max ? fmaxf(v, lanes[i]) : fminf(v, lanes[i]);
  return v;
}

static float max(const float *x, int64_t n) { return extreme(x, n, true); }

static float min(const float *x, int64_t n) { return extreme(x, n, false); }

static int64_t find(const float *x, int64_t n, float v) {
  const bool nan = isnan(v);
  const __m256 vv = _mm256_set1_ps(v);
  for (int64_t i = 0; i < n; i += W) {
    __m256i k = tail_mask(n - i);
    __m256 t = _mm256_maskload_ps(x + i, k);
    __m256 eq = nan ? isnan8(t) : _mm256_cmp_ps(t, vv, _CMP_EQ_OQ);
    int hit = _mm256_movemask_ps(_mm256_and_ps(eq, _mm256_castsi256_ps(k)));
    if (hit) return i + __builtin_ctz((unsigned)hit);
  }
  return n;
}

/* acc[j] += t[j] in double for the 8 lanes under mask k. */
INLINE void add_wide(double *acc, __m256 t, __m256i k) {
  __m256i k0 = mask_lo64(k), k1 = mask_hi64(k);
  __m256d lo = _mm256_add_pd(_mm256_maskload_pd(acc, k0), _mm256_cvtps_pd(_mm256_castps256_ps128(t)));
  __m256d hi = _mm256_add_pd(_mm256_maskload_pd(acc + 4, k1), _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)));
  _mm256_maskstore_pd(acc, k0, lo);
  _mm256_maskstore_pd(acc + 4, k1, hi);
}

static void acc_add(double *acc, const float *x, int64_t rstride, int64_t rows, int64_t n) {
  for (int64_t j = 0; j < n; j += W) {
    __m256i k = tail_mask(n - j), k0 = mask_lo64(k), k1 = mask_hi64(k);
    __m256d lo = _mm256_maskload_pd(acc + j, k0), hi = _mm256_maskload_pd(acc + j + 4, k1);
    for (int64_t r = 0; r < rows; r++) {
      __m256 t = _mm256_maskload_ps(x + r * rstride + j, k);
      lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(t)));
      hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)));
    }
    _mm256_maskstore_pd(acc + j, k0, lo);
    _mm256_maskstore_pd(acc + j + 4, k1, hi);
  }
}

static void acc_scan(double *acc, float *y, int64_t ystride, const float *x, int64_t xstride, int64_t rows,
                     int64_t n) {
  for (int64_t j = 0; j < n; j += W) {
    __m256i k = tail_mask(n - j), k0 = mask_lo64(k), k1 = mask_hi64(k);
    __m256d lo = _mm256_maskload_pd(acc + j, k0), hi = _mm256_maskload_pd(acc + j + 4, k1);
    for (int64_t r = 0; r < rows; r++) {
      __m256 t = _mm256_maskload_ps(x + r * xstride + j, k);
      lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(t)));
      hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)));
      __m256 out = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
      _mm256_maskstore_ps(y + r * ystride + j, k, out);
    }
    _mm256_maskstore_pd(acc + j, k0, lo);
    _mm256_maskstore_pd(acc + j + 4, k1, hi);
  }
}

static void acc_sumexp(double *acc, const float *x, const float *m, int64_t n) {
  for (int64_t j = 0; j < n; j += W) {
    __m256i k = tail_mask(n - j);
    __m256 d = _mm256_sub_ps(_mm256_maskload_ps(x + j, k), _mm256_maskload_ps(m + j, k));
    add_wide(acc + j, exp8(_mm256_max_ps(_mm256_set1_ps(-104.0f), d)), k);
  }
}

/* A lane updates when x beats best (strict, so ties keep the first row) or when x is the
 * first NaN. */
INLINE void acc_arg(float *best, int64_t *idx, const float *x, int64_t r, int64_t n, bool is_max) {
  const __m256i rv = _mm256_set1_epi64x(r);
  for (int64_t j = 0; j < n; j += W) {
    __m256i k = tail_mask(n - j);
    __m256 t = _mm256_maskload_ps(x + j, k), b = _mm256_maskload_ps(best + j, k);
    __m256 beats = is_max ? _mm256_cmp_ps(t, b, _CMP_GT_OQ) : _mm256_cmp_ps(t, b, _CMP_LT_OQ);
    beats = _mm256_or_ps(beats, _mm256_andnot_ps(isnan8(b), isnan8(t)));
    __m256i upd = _mm256_and_si256(_mm256_castps_si256(beats), k);
    _mm256_maskstore_ps(best + j, upd, t);
    _mm256_maskstore_epi64((long long *)(idx + j), mask_lo64(upd), rv);
    _mm256_maskstore_epi64((long long *)(idx + j + 4), mask_hi64(upd), rv);
  }
}

static void acc_argmax(float *best, int64_t *idx, const float *x, int64_t r, int64_t n) {
  acc_arg(best, idx, x, r, n, true);
}

static void acc_argmin(float *best, int64_t *idx, const float *x, int64_t r, int64_t n) {
  acc_arg(best, idx, x, r, n, false);
}

static void gelu_grad(float *gx, const float *gy, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W)
    _mm256_storeu_ps(gx + i, _mm256_mul_ps(_mm256_loadu_ps(gy + i), gelu_grad8(_mm256_loadu_ps(x + i))));
  if (i < n) {
    __m256i k = tail_mask(n - i);
    __m256 g = gelu_grad8(_mm256_maskload_ps(x + i, k));
    _mm256_maskstore_ps(gx + i, k, _mm256_mul_ps(_mm256_maskload_ps(gy + i, k), g));
  }
}

const sn_vec_ops sn_vec_avx2 = {
    .name = "avx2",
    .unary = unary,
    .gelu_grad = gelu_grad,
    .binary = binary,
    .binary_scalar = binary_scalar,
    .sum = sum,
    .sumexp = sumexp,
    .lse = lse,
    .max = max,
    .min = min,
    .find = find,
    .acc_add = acc_add,
    .acc_scan = acc_scan,
    .acc_sumexp = acc_sumexp,
    .acc_argmax = acc_argmax,
    .acc_argmin = acc_argmin,
};
