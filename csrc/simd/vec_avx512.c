/* simd/vec_avx512.c -- the AVX-512 (F, BW, DQ, VL) table: 16 floats per vector, SLEEF
 * u10 transcendentals except tanh, GELU and the exps of logsumexp, which use the inline
 * polynomials of vec.h (SLEEF's tanh and erf are several times slower than memory);
 * masked loads and stores for tails (masked-off lanes never fault). */
#include <immintrin.h>
#include <math.h>
#include <sleef.h>

#include "simd/vec.h"

#define INLINE static inline __attribute__((always_inline))
#define W 16

INLINE __mmask16 tail_mask(int64_t r) { return (__mmask16)((1u << r) - 1u); }

INLINE __m512 neg16(__m512 x) { return _mm512_xor_ps(x, _mm512_set1_ps(-0.0f)); }

static const float exp_c[] = {SN_EXP_POLY}, tanh_c[] = {SN_TANH_POLY};
static const float gelu_small_c[] = {SN_GELU_POLY_SMALL}, gelu_tail_c[] = {SN_GELU_POLY_TAIL};
#define POLY16(x, c) horner16(x, c, (int)(sizeof c / sizeof *c))

INLINE __m512 horner16(__m512 x, const float *c, int n) {
  __m512 p = _mm512_set1_ps(c[0]);
  for (int i = 1; i < n; i++) p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(c[i]));
  return p;
}

/* e^y = e^r 2^n for y in [-150, 88.7] or NaN (callers clamp where needed): returns e^r
 * and sets *n (integral). ln2 in two parts keeps r = y - n ln2 accurate to f32 rounding
 * for every such y. */
INLINE __m512 exp_parts16(__m512 y, __m512 *n) {
  *n = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(*n, _mm512_set1_ps(0.693145752f), y);
  return POLY16(_mm512_fnmadd_ps(*n, _mm512_set1_ps(1.42860677e-6f), r), exp_c);
}

/* scalef rounds once into the subnormals. */
INLINE __m512 exp16(__m512 y) {
  __m512 n, p = exp_parts16(y, &n);
  return _mm512_scalef_ps(p, n);
}

/* Odd polynomial near 0 (1 - 2/(e^2|x| + 1) would cancel there), else 1 - 2/(e^2|x| + 1)
 * with |x| capped at 9, where tanh is 1 in f32. NaN takes the exp branch and stays NaN. */
INLINE __m512 tanh16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 ax = _mm512_abs_ps(x), s = _mm512_mul_ps(x, x);
  __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(x, s), POLY16(s, tanh_c), x);
  __m512 c = _mm512_min_ps(_mm512_set1_ps(9.0f), ax), e = exp16(_mm512_add_ps(c, c));
  __m512 big = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
  big = _mm512_or_ps(big, _mm512_and_ps(x, _mm512_set1_ps(-0.0f)));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(SN_TANH_SMALL), _CMP_LT_OQ), big, small);
}

/* x Phi(x) as in vec.h. The tail's exp(-u^2/2) takes u^2 = h + l exactly (FMA) and applies
 * e^(-l/2) ~ 1 - l/2: rounding u^2 alone would cost up to ~1e-5 relative at u = 14. u is
 * capped at 16 (q is 0 by then) so that inf gives 1 - q = 1, and -inf gives -inf * 0 = NaN
 * like the formula. */
INLINE __m512 gelu16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 ax = _mm512_abs_ps(x);
  __m512 small = _mm512_mul_ps(x, _mm512_fmadd_ps(x, POLY16(_mm512_mul_ps(x, x), gelu_small_c), _mm512_set1_ps(0.5f)));
  __m512 u = _mm512_min_ps(_mm512_set1_ps(16.0f), ax);
  __m512 h = _mm512_mul_ps(u, u), l = _mm512_fmsub_ps(u, u, h);
  __m512 n, p = exp_parts16(_mm512_mul_ps(h, _mm512_set1_ps(-0.5f)), &n);
  /* 1/d for d in [1, 5]: the 14-bit reciprocal and one Newton step (~28 bits) cost two
   * FMAs instead of a division, which bounded this loop. */
  __m512 d = _mm512_fmadd_ps(u, _mm512_set1_ps(0.25f), one), t = _mm512_rcp14_ps(d);
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));
  __m512 tail = _mm512_mul_ps(t, POLY16(t, gelu_tail_c));
  __m512 m = _mm512_mul_ps(p, _mm512_fnmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), l), tail, tail));
  __m512 q = _mm512_scalef_ps(m, n);
  __m512 phi = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_sub_ps(one, q), q);
  __m512 big = _mm512_mul_ps(x, phi);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, one, _CMP_LT_OQ), big, small);
}

/* GELU'(x) = Phi(x) + x phi(x), with gelu16's two branches for Phi and one exp(-x^2/2)
 * shared by the tail and the density. The density term takes x capped at 16 like u, so
 * that +-inf give 1 and 0 instead of inf * 0. */
INLINE __m512 gelu_grad16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 ax = _mm512_abs_ps(x);
  __m512 u = _mm512_min_ps(_mm512_set1_ps(16.0f), ax);
  __m512 h = _mm512_mul_ps(u, u), l = _mm512_fmsub_ps(u, u, h);
  __m512 n, p = exp_parts16(_mm512_mul_ps(h, _mm512_set1_ps(-0.5f)), &n);
  __m512 e = _mm512_scalef_ps(_mm512_fnmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), l), p, p), n);
  __m512 d = _mm512_fmadd_ps(u, _mm512_set1_ps(0.25f), one), t = _mm512_rcp14_ps(d);
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));
  __m512 q = _mm512_mul_ps(e, _mm512_mul_ps(t, POLY16(t, gelu_tail_c)));
  __m512 big = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_sub_ps(one, q), q);
  __m512 small = _mm512_fmadd_ps(x, POLY16(_mm512_mul_ps(x, x), gelu_small_c), _mm512_set1_ps(0.5f));
  __m512 cdf = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, one, _CMP_LT_OQ), big, small);
  __m512 xc = _mm512_or_ps(u, _mm512_and_ps(x, _mm512_set1_ps(-0.0f)));
  return _mm512_fmadd_ps(_mm512_mul_ps(xc, _mm512_set1_ps(SN_INV_SQRT_2PI)), e, cdf);
}

/* 1/(1 + e^-x) with the inline exp: -x is clamped to [-150, 150], where e^-x is already 0
 * or inf in f32 (min/max with the constant first keep a NaN). */
INLINE __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 y = _mm512_max_ps(_mm512_set1_ps(-150.0f), _mm512_min_ps(_mm512_set1_ps(150.0f), neg16(x)));
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(y)));
}

/* max_ps(a, b) returns b when either is NaN, so only a NaN in a needs putting back:
 * the same as the scalar (a > b || isnan(a)) ? a : b. */
INLINE __m512 max16(__m512 a, __m512 b) {
  return _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
}

INLINE __m512 min16(__m512 a, __m512 b) {
  return _mm512_mask_mov_ps(_mm512_min_ps(a, b), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
}

INLINE __m512 un16(sn_unop op, __m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  switch (op) {
  case SN_EXP: return Sleef_expf16_u10avx512f(x);
  case SN_LOG: return Sleef_logf16_u10avx512f(x);
  case SN_TANH: return tanh16(x);
  case SN_SIGMOID: return sigmoid16(x);
  case SN_SILU: return _mm512_mul_ps(x, sigmoid16(x));
  case SN_GELU: return gelu16(x);
  case SN_SOFTPLUS: {
    /* max_ps(x, 0) is 0 for NaN x; the NaN arrives through log1p. */
    __m512 l = Sleef_log1pf16_u10avx512f(Sleef_expf16_u10avx512f(neg16(_mm512_abs_ps(x))));
    return _mm512_add_ps(_mm512_max_ps(x, _mm512_setzero_ps()), l);
  }
  case SN_SQRT: return _mm512_sqrt_ps(x);
  case SN_RSQRT: return _mm512_div_ps(one, _mm512_sqrt_ps(x));
  case SN_ABS: return _mm512_abs_ps(x);
  case SN_NEG: return neg16(x);
  default: return _mm512_set1_ps(NAN);
  }
}

INLINE __m512 bin16(sn_binop op, __m512 a, __m512 b) {
  switch (op) {
  case SN_ADD: return _mm512_add_ps(a, b);
  case SN_SUB: return _mm512_sub_ps(a, b);
  case SN_MUL: return _mm512_mul_ps(a, b);
  case SN_DIV: return _mm512_div_ps(a, b);
  case SN_POW: return Sleef_powf16_u10avx512f(a, b);
  case SN_MAX: return max16(a, b);
  case SN_MIN: return min16(a, b);
  default: return _mm512_set1_ps(NAN);
  }
}

/* Each op gets its own inlined loop (the switches pass constants), so no loop branches on
 * the op per vector. */
INLINE void unary_loop(sn_unop op, float *y, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) _mm512_storeu_ps(y + i, un16(op, _mm512_loadu_ps(x + i)));
  if (i < n) {
    __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, k, un16(op, _mm512_maskz_loadu_ps(k, x + i)));
  }
}

INLINE void binary_loop(sn_binop op, float *y, const float *a, const float *b, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W)
    _mm512_storeu_ps(y + i, bin16(op, _mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
  if (i < n) {
    __mmask16 k = tail_mask(n - i);
    __m512 r = bin16(op, _mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i));
    _mm512_mask_storeu_ps(y + i, k, r);
  }
}

INLINE __m512 bin16_ordered(sn_binop op, __m512 a, __m512 s, bool first) {
  return first ? bin16(op, s, a) : bin16(op, a, s);
}

INLINE void scalar_loop(sn_binop op, float *y, const float *a, float s, int64_t n, bool first) {
  __m512 sv = _mm512_set1_ps(s);
  int64_t i = 0;
  for (; i + W <= n; i += W)
    _mm512_storeu_ps(y + i, bin16_ordered(op, _mm512_loadu_ps(a + i), sv, first));
  if (i < n) {
    __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, k, bin16_ordered(op, _mm512_maskz_loadu_ps(k, a + i), sv, first));
  }
}

#include "simd/vec_switch.h"

/* The 16 float lanes added into 8 double lanes. */
INLINE __m512d widen(__m512 s) {
  return _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(s)),
                       _mm512_cvtps_pd(_mm512_extractf32x8_ps(s, 1)));
}

/* f(x - m): the identity for plain sums, exp for sumexp (with_exp is a constant). */
INLINE __m512 term16(__m512 v, bool with_exp, __m512 m) {
  return with_exp ? exp16(_mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_sub_ps(v, m))) : v;
}

/* Sums f(x - m) over x[0..n): four float accumulators within each SN_VEC_SUM_BLOCK
 * (enough to hide add latency), blocks added in double. */
INLINE double block_sum(const float *x, int64_t n, bool with_exp, float m) {
  const __m512 mv = _mm512_set1_ps(m);
  __m512d total = _mm512_setzero_pd();
  for (int64_t b = 0; b < n; b += SN_VEC_SUM_BLOCK) {
    const float *p = x + b;
    int64_t len = n - b < SN_VEC_SUM_BLOCK ? n - b : SN_VEC_SUM_BLOCK;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 4 * W <= len; i += 4 * W) {
      s0 = _mm512_add_ps(s0, term16(_mm512_loadu_ps(p + i), with_exp, mv));
      s1 = _mm512_add_ps(s1, term16(_mm512_loadu_ps(p + i + W), with_exp, mv));
      s2 = _mm512_add_ps(s2, term16(_mm512_loadu_ps(p + i + 2 * W), with_exp, mv));
      s3 = _mm512_add_ps(s3, term16(_mm512_loadu_ps(p + i + 3 * W), with_exp, mv));
    }
    for (; i < len; i += W) {
      __mmask16 k = len - i >= W ? (__mmask16)0xFFFF : tail_mask(len - i);
      s0 = _mm512_add_ps(s0, _mm512_maskz_mov_ps(k, term16(_mm512_maskz_loadu_ps(k, p + i), with_exp, mv)));
    }
    total = _mm512_add_pd(total, widen(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3))));
  }
  return _mm512_reduce_add_pd(total);
}

static double sum(const float *x, int64_t n) { return block_sum(x, n, false, 0.0f); }

static double sumexp(const float *x, float m, int64_t n) { return block_sum(x, n, true, m); }

/* lse's running state: the reference, the float sums of this block (four, as in block_sum)
 * and the double sum of the blocks before, all relative to ref. */
typedef struct {
  float ref;
  __m512 mv, lim; /* ref and ref + SN_LSE_SLACK, broadcast */
  __m512 s0, s1, s2, s3;
  __m512d total;
} lse_state;

/* Moves the reference up to the largest lane of bm, rescaling the sums so far. A NaN or
 * inf lane makes it non-finite (or leaves a NaN for the sum), which the caller sees. */
INLINE void lse_raise(lse_state *st, __m512 bm) {
  float nm = _mm512_reduce_max_ps(bm);
  double f = exp((double)st->ref - nm); /* 0 the first time, when ref is -inf */
  __m512 ff = _mm512_set1_ps((float)f);
  st->s0 = _mm512_mul_ps(st->s0, ff), st->s1 = _mm512_mul_ps(st->s1, ff);
  st->s2 = _mm512_mul_ps(st->s2, ff), st->s3 = _mm512_mul_ps(st->s3, ff);
  st->total = _mm512_mul_pd(st->total, _mm512_set1_pd(f));
  st->ref = nm;
  st->mv = _mm512_set1_ps(nm), st->lim = _mm512_set1_ps(nm + SN_LSE_SLACK);
}

/* One read in groups of 4 vectors: a group moves the reference when a lane is above it +
 * SN_LSE_SLACK (after the first group, rarely), then adds its exps as block_sum does. The
 * prefetches keep memory busy while the exps run. */
static void lse(const float *x, int64_t n, float *m, double *s) {
  const __m512 pad = _mm512_set1_ps(-INFINITY);
  lse_state st = {.ref = -INFINITY, .mv = pad, .lim = pad, .total = _mm512_setzero_pd()};
  for (int64_t b = 0; b < n; b += SN_VEC_SUM_BLOCK) {
    const float *p = x + b;
    int64_t len = n - b < SN_VEC_SUM_BLOCK ? n - b : SN_VEC_SUM_BLOCK;
    st.s0 = st.s1 = st.s2 = st.s3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 4 * W <= len; i += 4 * W) {
      for (int64_t q = 0; q < 4 * W; q += 16) /* one prefetch per 64-byte line */
        _mm_prefetch((const char *)(p + i + SN_LSE_PREFETCH + q), _MM_HINT_T0);
      __m512 v0 = _mm512_loadu_ps(p + i), v1 = _mm512_loadu_ps(p + i + W);
      __m512 v2 = _mm512_loadu_ps(p + i + 2 * W), v3 = _mm512_loadu_ps(p + i + 3 * W);
      __m512 bm = _mm512_max_ps(_mm512_max_ps(v0, v1), _mm512_max_ps(v2, v3));
      if (_mm512_cmp_ps_mask(bm, st.lim, _CMP_GT_OQ)) lse_raise(&st, bm);
      st.s0 = _mm512_add_ps(st.s0, term16(v0, true, st.mv));
      st.s1 = _mm512_add_ps(st.s1, term16(v1, true, st.mv));
      st.s2 = _mm512_add_ps(st.s2, term16(v2, true, st.mv));
      st.s3 = _mm512_add_ps(st.s3, term16(v3, true, st.mv));
    }
    for (; i < len; i += W) {
      __mmask16 k = len - i >= W ? (__mmask16)0xFFFF : tail_mask(len - i);
      __m512 v = _mm512_mask_loadu_ps(pad, k, p + i);
      if (_mm512_cmp_ps_mask(v, st.lim, _CMP_GT_OQ)) lse_raise(&st, v);
      st.s0 = _mm512_add_ps(st.s0, _mm512_maskz_mov_ps(k, term16(v, true, st.mv)));
    }
    __m512 t = _mm512_add_ps(_mm512_add_ps(st.s0, st.s1), _mm512_add_ps(st.s2, st.s3));
    st.total = _mm512_add_pd(st.total, widen(t));
  }
  *m = st.ref;
  *s = _mm512_reduce_add_pd(st.total);
}

INLINE __m512 pick16(__m512 a, __m512 b, bool is_max) { return is_max ? max16(a, b) : min16(a, b); }

/* max16/min16 keep a NaN once it is in an accumulator, so a NaN lane at the end means a
 * NaN was seen; the padding of the tail is the identity (-inf / +inf). */
INLINE float extreme(const float *x, int64_t n, bool is_max) {
  const __m512 pad = _mm512_set1_ps(is_max ? -INFINITY : INFINITY);
  __m512 v0 = pad, v1 = pad, v2 = pad, v3 = pad;
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    v0 = pick16(v0, _mm512_loadu_ps(x + i), is_max);
    v1 = pick16(v1, _mm512_loadu_ps(x + i + W), is_max);
    v2 = pick16(v2, _mm512_loadu_ps(x + i + 2 * W), is_max);
    v3 = pick16(v3, _mm512_loadu_ps(x + i + 3 * W), is_max);
  }
  for (; i < n; i += W) {
    __mmask16 k = n - i >= W ? (__mmask16)0xFFFF : tail_mask(n - i);
    v0 = pick16(v0, _mm512_mask_loadu_ps(pad, k, x + i), is_max);
  }
  __m512 r = pick16(pick16(v0, v1, is_max), pick16(v2, v3, is_max), is_max);
  if (_mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q)) return NAN;
  return is_max ? _mm512_reduce_max_ps(r) : _mm512_reduce_min_ps(r);
}

static float max(const float *x, int64_t n) { return extreme(x, n, true); }

static float min(const float *x, int64_t n) { return extreme(x, n, false); }

static int64_t find(const float *x, int64_t n, float v) {
  const bool nan = isnan(v);
  const __m512 vv = _mm512_set1_ps(v);
  for (int64_t i = 0; i < n; i += W) {
    __mmask16 k = n - i >= W ? (__mmask16)0xFFFF : tail_mask(n - i);
    __m512 t = _mm512_maskz_loadu_ps(k, x + i);
    __mmask16 hit = nan ? _mm512_mask_cmp_ps_mask(k, t, t, _CMP_UNORD_Q)
                        : _mm512_mask_cmp_ps_mask(k, t, vv, _CMP_EQ_OQ);
    if (hit) return i + __builtin_ctz(hit);
  }
  return n;
}

static void acc_add(double *acc, const float *x, int64_t rstride, int64_t rows, int64_t n) {
  for (int64_t j = 0; j < n; j += W) {
    __mmask16 k = n - j >= W ? (__mmask16)0xFFFF : tail_mask(n - j);
    __mmask8 k0 = (__mmask8)k, k1 = (__mmask8)(k >> 8);
    __m512d lo = _mm512_maskz_loadu_pd(k0, acc + j), hi = _mm512_maskz_loadu_pd(k1, acc + j + 8);
    for (int64_t r = 0; r < rows; r++) {
      __m512 t = _mm512_maskz_loadu_ps(k, x + r * rstride + j);
      lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(t)));
      hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(t, 1)));
    }
    _mm512_mask_storeu_pd(acc + j, k0, lo);
    _mm512_mask_storeu_pd(acc + j + 8, k1, hi);
  }
}

static void acc_scan(double *acc, float *y, int64_t ystride, const float *x, int64_t xstride, int64_t rows,
                     int64_t n) {
  for (int64_t j = 0; j < n; j += W) {
    __mmask16 k = n - j >= W ? (__mmask16)0xFFFF : tail_mask(n - j);
    __mmask8 k0 = (__mmask8)k, k1 = (__mmask8)(k >> 8);
    __m512d lo = _mm512_maskz_loadu_pd(k0, acc + j), hi = _mm512_maskz_loadu_pd(k1, acc + j + 8);
    for (int64_t r = 0; r < rows; r++) {
      __m512 t = _mm512_maskz_loadu_ps(k, x + r * xstride + j);
      lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(t)));
      hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(t, 1)));
      __m512 out = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
      _mm512_mask_storeu_ps(y + r * ystride + j, k, out);
    }
    _mm512_mask_storeu_pd(acc + j, k0, lo);
    _mm512_mask_storeu_pd(acc + j + 8, k1, hi);
  }
}

static void acc_sumexp(double *acc, const float *x, const float *m, int64_t n) {
  for (int64_t j = 0; j < n; j += W) {
    __mmask16 k = n - j >= W ? (__mmask16)0xFFFF : tail_mask(n - j);
    __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), _mm512_maskz_loadu_ps(k, m + j));
    __m512 e = exp16(_mm512_max_ps(_mm512_set1_ps(-104.0f), d));
    __mmask8 k0 = (__mmask8)k, k1 = (__mmask8)(k >> 8);
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(e)), hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1));
    _mm512_mask_storeu_pd(acc + j, k0, _mm512_add_pd(_mm512_maskz_loadu_pd(k0, acc + j), lo));
    _mm512_mask_storeu_pd(acc + j + 8, k1, _mm512_add_pd(_mm512_maskz_loadu_pd(k1, acc + j + 8), hi));
  }
}

/* A lane updates when x beats best (strict, so ties keep the first row) or when x is the
 * first NaN. */
INLINE void acc_arg(float *best, int64_t *idx, const float *x, int64_t r, int64_t n, bool is_max) {
  const __m512i rv = _mm512_set1_epi64(r);
  for (int64_t j = 0; j < n; j += W) {
    __mmask16 k = n - j >= W ? (__mmask16)0xFFFF : tail_mask(n - j);
    __m512 t = _mm512_maskz_loadu_ps(k, x + j), b = _mm512_maskz_loadu_ps(k, best + j);
    __mmask16 upd = is_max ? _mm512_mask_cmp_ps_mask(k, t, b, _CMP_GT_OQ)
                           : _mm512_mask_cmp_ps_mask(k, t, b, _CMP_LT_OQ);
    upd |= _mm512_mask_cmp_ps_mask(k, t, t, _CMP_UNORD_Q) & ~_mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
    _mm512_mask_storeu_ps(best + j, upd, t);
    _mm512_mask_storeu_epi64(idx + j, (__mmask8)upd, rv);
    _mm512_mask_storeu_epi64(idx + j + 8, (__mmask8)(upd >> 8), rv);
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
    _mm512_storeu_ps(gx + i, _mm512_mul_ps(_mm512_loadu_ps(gy + i), gelu_grad16(_mm512_loadu_ps(x + i))));
  if (i < n) {
    __mmask16 k = tail_mask(n - i);
    __m512 g = gelu_grad16(_mm512_maskz_loadu_ps(k, x + i));
    _mm512_mask_storeu_ps(gx + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, gy + i), g));
  }
}

const sn_vec_ops sn_vec_avx512 = {
    .name = "avx512",
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
