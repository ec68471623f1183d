/* simd/vec_scalar.c -- the portable table: plain loops over libm, for CPUs without AVX2
 * and as the reference the vector tables are tested against. */
#include <math.h>

#include "simd/vec.h"

#define INLINE static inline __attribute__((always_inline))

static const double inv_sqrt2 = 0.70710678118654752440;

/* Each op is a separate inlined loop (the switch below passes a constant), so no loop
 * branches on the op per element. */
INLINE float un1(sn_unop op, float x) {
  switch (op) {
  case SN_EXP: return expf(x);
  case SN_LOG: return logf(x);
  case SN_TANH: return tanhf(x);
  case SN_SIGMOID: return 1.0f / (1.0f + expf(-x)); /* exp overflow gives 0, not NaN */
  case SN_SILU: return x * (1.0f / (1.0f + expf(-x)));
  /* erfc in double: 1 + erf(x/sqrt2) would cancel for negative x */
  case SN_GELU: return (float)(0.5 * x * erfc(-x * inv_sqrt2));
  /* max(x,0) + log1p(exp(-|x|)) never overflows; NaN reaches the result through log1p. */
  case SN_SOFTPLUS: return (x > 0.0f ? x : 0.0f) + log1pf(expf(-fabsf(x)));
  case SN_SQRT: return sqrtf(x);
  case SN_RSQRT: return 1.0f / sqrtf(x);
  case SN_ABS: return fabsf(x);
  case SN_NEG: return -x;
  default: return NAN;
  }
}

/* NaN in either operand wins (fmaxf would drop it). */
INLINE float max1(float a, float b) { return (a > b || isnan(a)) ? a : b; }
INLINE float min1(float a, float b) { return (a < b || isnan(a)) ? a : b; }

INLINE float bin1(sn_binop op, float a, float b) {
  switch (op) {
  case SN_ADD: return a + b;
  case SN_SUB: return a - b;
  case SN_MUL: return a * b;
  case SN_DIV: return a / b;
  case SN_POW: return powf(a, b);
  case SN_MAX: return max1(a, b);
  case SN_MIN: return min1(a, b);
  default: return NAN;
  }
}

INLINE void unary_loop(sn_unop op, float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = un1(op, x[i]);
}

INLINE void binary_loop(sn_binop op, float *y, const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = bin1(op, a[i], b[i]);
}

INLINE void scalar_loop(sn_binop op, float *y, const float *a, float s, int64_t n, bool first) {
  if (first)
    for (int64_t i = 0; i < n; i++) y[i] = bin1(op, s, a[i]);
  else
    for (int64_t i = 0; i < n; i++) y[i] = bin1(op, a[i], s);
}

#include "simd/vec_switch.h"

/* Plain double accumulation: exact enough, and speed is the vector tables' business. */
static double sum(const float *x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += x[i];
  return s;
}

static double sumexp(const float *x, float m, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += expf(x[i] - m);
  return s;
}

static float max(const float *x, int64_t n) {
  float v = x[0];
  for (int64_t i = 1; i < n; i++) v = max1(v, x[i]);
  return v;
}

/* Two reads, the reference being the max itself. */
static void lse(const float *x, int64_t n, float *m, double *s) {
  *m = max(x, n);
  *s = isfinite(*m) ? sumexp(x, *m, n) : 0;
}

static float min(const float *x, int64_t n) {
  float v = x[0];
  for (int64_t i = 1; i < n; i++) v = min1(v, x[i]);
  return v;
}

static int64_t find(const float *x, int64_t n, float v) {
  bool nan = isnan(v);
  for (int64_t i = 0; i < n; i++)
    if (nan ? isnan(x[i]) : x[i] == v) return i;
  return n;
}

static void acc_add(double *acc, const float *x, int64_t rstride, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < n; j++) acc[j] += x[r * rstride + j];
}

static void acc_scan(double *acc, float *y, int64_t ystride, const float *x, int64_t xstride, int64_t rows,
                     int64_t n) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < n; j++) y[r * ystride + j] = (float)(acc[j] += x[r * xstride + j]);
}

static void acc_sumexp(double *acc, const float *x, const float *m, int64_t n) {
  for (int64_t j = 0; j < n; j++) acc[j] += expf(x[j] - m[j]);
}

static void acc_argmax(float *best, int64_t *idx, const float *x, int64_t r, int64_t n) {
  for (int64_t j = 0; j < n; j++)
    if (x[j] > best[j] || (isnan(x[j]) && !isnan(best[j]))) {
      best[j] = x[j];
      idx[j] = r;
    }
}

static void acc_argmin(float *best, int64_t *idx, const float *x, int64_t r, int64_t n) {
  for (int64_t j = 0; j < n; j++)
    if (x[j] < best[j] || (isnan(x[j]) && !isnan(best[j]))) {
      best[j] = x[j];
      idx[j] = r;
    }
}

/* GELU'(x) = Phi(x) + x phi(x) in double; the density term is 0 at +-inf (not inf * 0). */
static void gelu_grad(float *gx, const float *gy, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    double v = x[i], dens = isinf(v) ? 0.0 : v * exp(-0.5 * v * v) * SN_INV_SQRT_2PI;
    gx[i] = (float)(gy[i] * (0.5 * erfc(-v * inv_sqrt2) + dens));
  }
}

const sn_vec_ops sn_vec_scalar = {
    .name = "scalar",
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
