/* test_elementwise.c -- sn_unary, sn_binary and sn_binary_scalar against double-precision
 * loops, on every SIMD level this CPU has, over odd sizes, views, broadcasting corners,
 * in-place calls, NaN/inf and bad input. */
#include <stdlib.h>
#include <string.h>

#include "simd/vec.h"
#include "simdutil.h"
#include "testutil.h"

TU_SUITE(elementwise);

static const int64_t sizes[] = {1, 7, 15, 17, 33, 1000003}; /* around 8- and 16-lane tails */


/* ---- references --------------------------------------------------------------------- */

static double ref_unop(sn_unop op, double x) {
  switch (op) {
  case SN_EXP: return exp(x);
  case SN_LOG: return log(x);
  case SN_TANH: return tanh(x);
  case SN_SIGMOID: return 1.0 / (1.0 + exp(-x));
  case SN_SILU: return x * (1.0 / (1.0 + exp(-x)));
  case SN_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
  case SN_SOFTPLUS: return (x > 0 ? x : 0) + log1p(exp(-fabs(x)));
  case SN_SQRT: return sqrt(x);
  case SN_RSQRT: return 1.0 / sqrt(x);
  case SN_ABS: return fabs(x);
  case SN_NEG: return -x;
  default: return NAN;
  }
}

static double ref_binop(sn_binop op, double a, double b) {
  switch (op) {
  case SN_ADD: return a + b;
  case SN_SUB: return a - b;
  case SN_MUL: return a * b;
  case SN_DIV: return a / b;
  case SN_POW: return pow(a, b);
  case SN_MAX: return isnan(a) || isnan(b) ? NAN : a > b ? a : b;
  case SN_MIN: return isnan(a) || isnan(b) ? NAN : a < b ? a : b;
  default: return NAN;
  }
}

/* f32 results: the double result rounded to float, so overflow to inf is expected. */
static double as_f32(double v) { return (double)(float)v; }

/* Tolerances: exact IEEE ops round once; SLEEF u10 and libm are within ~1-3 ulp. */
static double rtol_unop(sn_unop op) { return op == SN_ABS || op == SN_NEG || op == SN_SQRT ? 1e-7 : 2e-6; }
static double rtol_binop(sn_binop op) { return op == SN_POW ? 2e-6 : 1e-7; }

/* Maps values in [-1, 1) into each op's interesting domain. */
static float domain_unop(sn_unop op, float v) {
  if (op == SN_LOG || op == SN_SQRT || op == SN_RSQRT) return fabsf(v) * 8 + 1e-3f;
  return v * 12; /* covers exp/tanh/sigmoid saturation and softplus' both branches */
}

static sn_tensor filled(int ndim, const int64_t *size, uint32_t seed) {
  sn_tensor t = tu_empty(&ctx, SN_F32, ndim, size);
  tu_fill_f32(&t, seed);
  return t;
}

/* Element `linear` of out's shape (nd, size) read from t under broadcasting. */
static double bget(const sn_tensor *t, int nd, const int64_t *size, int64_t linear) {
  int64_t off = 0;
  for (int d = nd - 1; d >= 0; d--) {
    int64_t i = linear % size[d];
    linear /= size[d];
    int dt = d - (nd - t->ndim);
    if (dt >= 0 && t->size[dt] != 1) off += i * t->stride[dt];
  }
  const char *base = (const char *)t->storage->data + (t->offset + off) * (int64_t)sn_dtype_size(t->dtype);
  return t->dtype == SN_F32 ? (double)*(const float *)base : (double)*(const int64_t *)base;
}

/* Checks out == a op b elementwise (broadcast), reading all three through their strides. */
static void expect_binary(const sn_tensor *out, const sn_tensor *a, const sn_tensor *b, sn_binop op,
                          const char *what) {
  int64_t n = sn_numel(out);
  double *ref = malloc((size_t)(n > 0 ? n : 1) * sizeof *ref);
  for (int64_t i = 0; i < n; i++)
    ref[i] = as_f32(ref_binop(op, bget(a, out->ndim, out->size, i), bget(b, out->ndim, out->size, i)));
  cr_expect_leq(tu_max_scaled_err(out, ref, 1e-30, rtol_binop(op)), 1.0, "%s: %s (simd %s)", what,
                sn_binop_name(op), sn_simd_level());
  free(ref);
}

/* ---- unary ---------------------------------------------------------------------------- */

Test(elementwise, unary_matches_reference_on_every_level_and_size) {
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
      int64_t n = sizes[s];
      sn_tensor a = filled(1, &n, (uint32_t)s), out = tu_empty(&ctx, SN_F32, 1, &n);
      double *ref = malloc((size_t)n * sizeof *ref);
      for (int op = 0; op < SN_UNOP_COUNT; op++) {
        float *pa = sn_f32(&a);
        tu_fill_f32(&a, (uint32_t)(s * 31 + (size_t)op));
        for (int64_t i = 0; i < n; i++) pa[i] = domain_unop(op, pa[i]);
        for (int64_t i = 0; i < n; i++) ref[i] = as_f32(ref_unop(op, pa[i]));
        cr_assert_eq(sn_unary(&ctx, &out, &a, op), SN_OK, "%s", ctx.err);
        cr_expect_leq(tu_max_scaled_err(&out, ref, 1e-6, rtol_unop(op)), 1.0, "%s n=%lld (simd %s)",
                      sn_unop_name(op), (long long)n, sn_simd_level());
        cr_assert_eq(sn_unary(&ctx, &a, &a, op), SN_OK, "in place: %s", ctx.err);
        cr_expect_leq(tu_max_scaled_err(&a, ref, 1e-6, rtol_unop(op)), 1.0, "in place %s n=%lld (simd %s)",
                      sn_unop_name(op), (long long)n, sn_simd_level());
      }
      free(ref);
      sn_tensor_release(&a);
      sn_tensor_release(&out);
    }
  }
  restore_level();
}

/* Every special value at every lane position of a 33-element run (so in the tails too). */
Test(elementwise, unary_nan_inf_and_extremes) {
  const float specials[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e30f, -1e30f, 88.8f, -88.8f,
                            100.0f, -100.0f, 1e-40f, -1e-40f, 20.5f, -20.5f};
  int64_t n = 33;
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    sn_tensor a = tu_empty(&ctx, SN_F32, 1, &n), out = tu_empty(&ctx, SN_F32, 1, &n);
    double ref[33];
    for (size_t k = 0; k < sizeof specials / sizeof *specials; k++)
      for (int op = 0; op < SN_UNOP_COUNT; op++) {
        tu_fill_f32(&a, (uint32_t)k);
        float *pa = sn_f32(&a);
        for (int64_t i = (int64_t)k % 3; i < n; i += 3) pa[i] = specials[k];
        for (int64_t i = 0; i < n; i++) ref[i] = as_f32(ref_unop(op, pa[i]));
        cr_assert_eq(sn_unary(&ctx, &out, &a, op), SN_OK);
        cr_expect_leq(tu_max_scaled_err(&out, ref, 1e-6, rtol_unop(op)), 1.0, "%s(%g) (simd %s)",
                      sn_unop_name(op), (double)specials[k], sn_simd_level());
      }
    sn_tensor_release(&a);
    sn_tensor_release(&out);
  }
  restore_level();
}

/* tanh and GELU against erfc-based double references over every magnitude, relative to
 * the result (the tolerances above hide errors of small results behind atol): |x| from
 * 1e-30 to 20 on a log grid, both signs, plus a dense grid over [-16, 16]. The vector
 * tables' own polynomials measure <= 1.5e-7 (tanh) and 4.6e-7 (GELU, negative tail);
 * atol 1e-43 only forgives subnormal results. */
Test(elementwise, tanh_and_gelu_relative_accuracy_everywhere) {
  int64_t n = 2 * 6000 + 64001;
  sn_tensor a = tu_empty(&ctx, SN_F32, 1, &n), out = tu_empty(&ctx, SN_F32, 1, &n);
  float *pa = sn_f32(&a);
  for (int64_t i = 0; i < 6000; i++) {
    pa[2 * i] = (float)pow(10.0, -30.0 + 31.30103 * (double)i / 5999.0);
    pa[2 * i + 1] = -pa[2 * i];
  }
  for (int64_t i = 0; i < 64001; i++) pa[12000 + i] = -16.0f + 32.0f * (float)i / 64000.0f;
  double *ref = malloc((size_t)n * sizeof *ref);
  const sn_unop ops[] = {SN_TANH, SN_GELU};
  const double rtol[] = {3e-7, 6e-7};
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (int k = 0; k < 2; k++) {
      for (int64_t i = 0; i < n; i++) {
        double x = pa[i];
        ref[i] = as_f32(ops[k] == SN_TANH ? tanh(x) : 0.5 * x * erfc(-x / sqrt(2.0)));
      }
      cr_assert_eq(sn_unary(&ctx, &out, &a, ops[k]), SN_OK, "%s", ctx.err);
      cr_expect_leq(tu_max_scaled_err(&out, ref, 1e-43, rtol[k]), 1.0, "%s (simd %s)", sn_unop_name(ops[k]),
                    sn_simd_level());
    }
  }
  restore_level();
  free(ref);
  sn_tensor_release(&a);
  sn_tensor_release(&out);
}

Test(elementwise, unary_on_transposed_and_narrowed_views) {
  int64_t size[] = {9, 37};
  sn_tensor base = filled(2, size, 3), t, v;
  cr_assert_eq(sn_transpose(&ctx, &t, &base, 0, 1), SN_OK);
  cr_assert_eq(sn_narrow(&ctx, &v, &t, 0, 2, 33), SN_OK); /* 33x9, strides (1, 37) */
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (int op = 0; op < SN_UNOP_COUNT; op++) {
      if (op == SN_LOG || op == SN_SQRT || op == SN_RSQRT) continue; /* domain: covered above */
      sn_tensor out = tu_empty(&ctx, SN_F32, 2, v.size);
      double ref[33 * 9];
      for (int64_t i = 0; i < 33 * 9; i++) ref[i] = as_f32(ref_unop(op, tu_get(&v, i)));
      cr_assert_eq(sn_unary(&ctx, &out, &v, op), SN_OK, "%s", ctx.err);
      cr_expect_leq(tu_max_scaled_err(&out, ref, 1e-6, rtol_unop(op)), 1.0, "%s (simd %s)", sn_unop_name(op),
                    sn_simd_level());
      sn_tensor_release(&out);
    }
  }
  restore_level();
  sn_tensor_release(&v);
  sn_tensor_release(&t);
  sn_tensor_release(&base);
}

/* ---- binary ----------------------------------------------------------------------------- */

/* Positive bases and moderate exponents keep pow away from NaN and overflow. */
static void pow_domain(sn_tensor *a, sn_tensor *b) {
  float *pa = sn_f32(a), *pb = sn_f32(b);
  for (int64_t i = 0; i < sn_numel(a); i++) pa[i] = fabsf(pa[i]) * 4 + 0.01f;
  for (int64_t i = 0; i < sn_numel(b); i++) pb[i] *= 6;
}

Test(elementwise, binary_and_scalar_match_reference_on_every_level_and_size) {
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
      int64_t n = sizes[s];
      for (int op = 0; op < SN_BINOP_COUNT; op++) {
        sn_tensor a = filled(1, &n, (uint32_t)s + 1), b = filled(1, &n, (uint32_t)s + 100);
        sn_tensor out = tu_empty(&ctx, SN_F32, 1, &n);
        if (op == SN_POW) pow_domain(&a, &b);
        cr_assert_eq(sn_binary(&ctx, &out, &a, &b, op), SN_OK, "%s", ctx.err);
        expect_binary(&out, &a, &b, op, "contiguous");

        /* a op s and s op a, through a 0-dim tensor as the reference's operand */
        sn_tensor s0 = tu_empty(&ctx, SN_F32, 0, NULL);
        double sv = op == SN_POW ? 1.75 : -0.375;
        sn_f32(&s0)[0] = (float)sv;
        cr_assert_eq(sn_binary_scalar(&ctx, &out, &a, sv, op, false), SN_OK, "%s", ctx.err);
        expect_binary(&out, &a, &s0, op, "a op scalar");
        cr_assert_eq(sn_binary_scalar(&ctx, &out, &a, sv, op, true), SN_OK, "%s", ctx.err);
        expect_binary(&out, &s0, &a, op, "scalar op a");
        sn_tensor_release(&s0);
        sn_tensor_release(&a);
        sn_tensor_release(&b);
        sn_tensor_release(&out);
      }
    }
  }
  restore_level();
}

Test(elementwise, max_min_propagate_nan_from_either_side_in_every_lane) {
  int64_t n = 35;
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (int64_t at = 0; at < n; at++) {
      sn_tensor a = filled(1, &n, 1), b = filled(1, &n, 2), out = tu_empty(&ctx, SN_F32, 1, &n);
      sn_f32(&a)[at] = NAN;
      sn_f32(&b)[(at + 5) % n] = NAN;
      sn_f32(&a)[(at + 9) % n] = INFINITY;
      sn_f32(&b)[(at + 11) % n] = -INFINITY;
      for (int op = SN_MAX; op <= SN_MIN; op++) {
        cr_assert_eq(sn_binary(&ctx, &out, &a, &b, op), SN_OK);
        cr_expect(isnan(sn_f32(&out)[at]) && isnan(sn_f32(&out)[(at + 5) % n]), "%s lane %lld (simd %s)",
                  sn_binop_name(op), (long long)at, sn_simd_level());
        expect_binary(&out, &a, &b, op, "nan lanes");
        /* the scalar forms, NaN as the scalar and NaN in the tensor */
        cr_assert_eq(sn_binary_scalar(&ctx, &out, &a, NAN, op, false), SN_OK);
        cr_expect(isnan(sn_f32(&out)[(at + 1) % n]), "%s(a, nan)", sn_binop_name(op));
        cr_assert_eq(sn_binary_scalar(&ctx, &out, &a, 0.5, op, true), SN_OK);
        cr_expect(isnan(sn_f32(&out)[at]), "%s(0.5, nan)", sn_binop_name(op));
      }
      sn_tensor_release(&a);
      sn_tensor_release(&b);
      sn_tensor_release(&out);
    }
  }
  restore_level();
}

Test(elementwise, binary_special_value_pairs) {
  const float sp[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1.0f, -1.0f, 2.5f, -2.5f, 1e30f, 1e-40f};
  const int64_t k = sizeof sp / sizeof *sp, n = k * k;
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    sn_tensor a = tu_empty(&ctx, SN_F32, 1, &n), b = tu_empty(&ctx, SN_F32, 1, &n);
    sn_tensor out = tu_empty(&ctx, SN_F32, 1, &n);
    for (int64_t i = 0; i < n; i++) sn_f32(&a)[i] = sp[i / k], sn_f32(&b)[i] = sp[i % k];
    for (int op = 0; op < SN_BINOP_COUNT; op++) {
      cr_assert_eq(sn_binary(&ctx, &out, &a, &b, op), SN_OK);
      expect_binary(&out, &a, &b, op, "special pairs");
    }
    sn_tensor_release(&a);
    sn_tensor_release(&b);
    sn_tensor_release(&out);
  }
  restore_level();
}

/* ---- broadcasting, views, in place ----------------------------------------------------- */

typedef struct {
  int na, nb, no;
  int64_t a[3], b[3], o[3];
} bcase;

static const bcase bcases[] = {
    {2, 2, 2, {3, 1}, {1, 4}, {3, 4}},
    {0, 1, 1, {0}, {5}, {5}},             /* 0-dim with (5,) */
    {1, 0, 1, {5}, {0}, {5}},
    {0, 0, 0, {0}, {0}, {0}},             /* 0-dim with 0-dim */
    {3, 2, 3, {2, 1, 3}, {4, 1}, {2, 4, 3}},
    {2, 1, 2, {17, 33}, {33}, {17, 33}},  /* a row vector over odd rows */
    {2, 2, 2, {17, 1}, {17, 33}, {17, 33}}, /* a column: stride 0 inside each row */
    {2, 2, 2, {0, 3}, {1, 3}, {0, 3}},    /* empty */
    {3, 3, 3, {2, 0, 1}, {1, 1, 4}, {2, 0, 4}},
};

Test(elementwise, broadcasting_corners) {
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (size_t c = 0; c < sizeof bcases / sizeof *bcases; c++) {
      const bcase *bc = &bcases[c];
      for (int op = 0; op < SN_BINOP_COUNT; op++) {
        sn_tensor a = filled(bc->na, bc->a, 5), b = filled(bc->nb, bc->b, 6);
        sn_tensor out = tu_empty(&ctx, SN_F32, bc->no, bc->o);
        if (op == SN_POW) pow_domain(&a, &b);
        cr_assert_eq(sn_binary(&ctx, &out, &a, &b, op), SN_OK, "%s", ctx.err);
        expect_binary(&out, &a, &b, op, "broadcast");
        sn_tensor_release(&a);
        sn_tensor_release(&b);
        sn_tensor_release(&out);
      }
    }
  }
  restore_level();
}

Test(elementwise, expanded_transposed_and_strided_operands_and_out) {
  int64_t row[] = {1, 37}, big[] = {37, 41}, shape[] = {29, 37};
  sn_tensor r = filled(2, row, 7), m = filled(2, big, 8), ob = tu_empty(&ctx, SN_F32, 2, big);
  sn_tensor ex, mt, mv, ot, ov;
  cr_assert_eq(sn_expand(&ctx, &ex, &r, 2, shape), SN_OK);        /* stride 0 over rows */
  cr_assert_eq(sn_transpose(&ctx, &mt, &m, 0, 1), SN_OK);          /* 41x37, strides (1, 41) */
  cr_assert_eq(sn_narrow(&ctx, &mv, &mt, 0, 3, 29), SN_OK);
  cr_assert_eq(sn_transpose(&ctx, &ot, &ob, 0, 1), SN_OK);         /* out non-contiguous too */
  cr_assert_eq(sn_narrow(&ctx, &ov, &ot, 0, 5, 29), SN_OK);
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (int op = 0; op < SN_BINOP_COUNT; op++) {
      if (op == SN_POW) continue; /* negative bases: covered by the special pairs */
      cr_assert_eq(sn_binary(&ctx, &ov, &ex, &mv, op), SN_OK, "%s", ctx.err);
      expect_binary(&ov, &ex, &mv, op, "expanded + transposed view into a strided out");
      cr_assert_eq(sn_binary(&ctx, &ov, &mv, &ex, op), SN_OK, "%s", ctx.err);
      expect_binary(&ov, &mv, &ex, op, "transposed view + expanded");
      cr_assert_eq(sn_binary(&ctx, &ov, &ex, &ex, op), SN_OK, "%s", ctx.err);
      expect_binary(&ov, &ex, &ex, op, "both stride 0");
    }
  }
  restore_level();
  sn_tensor *all[] = {&r, &m, &ob, &ex, &mt, &mv, &ot, &ov};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(elementwise, in_place_on_a_and_on_b) {
  int64_t shape[] = {13, 33}, col[] = {13, 1};
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (int op = 0; op < SN_BINOP_COUNT; op++) {
      if (op == SN_POW) continue;
      sn_tensor a = filled(2, shape, 9), b = filled(2, col, 10), a0 = filled(2, shape, 9);
      cr_assert_eq(sn_binary(&ctx, &a, &a, &b, op), SN_OK, "%s", ctx.err);
      expect_binary(&a, &a0, &b, op, "out is a");
      tu_fill_f32(&a, 9);
      sn_tensor c = filled(2, col, 10);
      cr_assert_eq(sn_binary(&ctx, &a, &c, &a, op), SN_OK, "%s", ctx.err);
      expect_binary(&a, &c, &a0, op, "out is b");
      sn_tensor_release(&a);
      sn_tensor_release(&b);
      sn_tensor_release(&c);
      sn_tensor_release(&a0);
    }
  }
  restore_level();
}

/* ---- i64 ---------------------------------------------------------------------------------- */

Test(elementwise, i64_ops_wrap_around_instead_of_overflowing) {
  int64_t n = 5;
  sn_tensor a = tu_empty(&ctx, SN_I64, 1, &n), b = tu_empty(&ctx, SN_I64, 1, &n);
  sn_tensor out = tu_empty(&ctx, SN_I64, 1, &n);
  const int64_t av[] = {INT64_MAX, INT64_MIN, -7, 3, 0}, bv[] = {1, 1, 2, -4, INT64_MIN};
  memcpy(sn_i64(&a), av, sizeof av);
  memcpy(sn_i64(&b), bv, sizeof bv);
  const int64_t add[] = {INT64_MIN, INT64_MIN + 1, -5, -1, INT64_MIN};
  const int64_t sub[] = {INT64_MAX - 1, INT64_MAX, -9, 7, INT64_MIN};
  const int64_t mul[] = {INT64_MAX, INT64_MIN, -14, -12, 0};
  const int64_t max[] = {INT64_MAX, 1, 2, 3, 0}, min[] = {1, INT64_MIN, -7, -4, INT64_MIN};
  const int64_t *want[] = {add, sub, mul, NULL, NULL, max, min};
  for (int op = 0; op < SN_BINOP_COUNT; op++) {
    if (!want[op]) continue;
    cr_assert_eq(sn_binary(&ctx, &out, &a, &b, op), SN_OK, "%s", ctx.err);
    for (int i = 0; i < n; i++)
      cr_expect_eq(sn_i64(&out)[i], want[op][i], "%s [%d]: %lld", sn_binop_name(op), i,
                   (long long)sn_i64(&out)[i]);
  }
  cr_assert_eq(sn_unary(&ctx, &out, &a, SN_ABS), SN_OK);
  const int64_t abs[] = {INT64_MAX, INT64_MIN, 7, 3, 0};
  for (int i = 0; i < n; i++) cr_expect_eq(sn_i64(&out)[i], abs[i], "abs [%d]", i);
  cr_assert_eq(sn_unary(&ctx, &a, &a, SN_NEG), SN_OK);
  const int64_t neg[] = {-INT64_MAX, INT64_MIN, 7, -3, 0};
  for (int i = 0; i < n; i++) cr_expect_eq(sn_i64(&a)[i], neg[i], "neg in place [%d]", i);
  cr_assert_eq(sn_binary_scalar(&ctx, &out, &b, 10, SN_SUB, true), SN_OK, "%s", ctx.err);
  const int64_t rsub[] = {9, 9, 8, 14, (int64_t)(10u - (uint64_t)INT64_MIN)};
  for (int i = 0; i < n; i++) cr_expect_eq(sn_i64(&out)[i], rsub[i], "10 - b [%d]", i);
  cr_assert_eq(sn_binary_scalar(&ctx, &out, &b, -3, SN_MAX, false), SN_OK, "%s", ctx.err);
  const int64_t smax[] = {1, 1, 2, -3, -3};
  for (int i = 0; i < n; i++) cr_expect_eq(sn_i64(&out)[i], smax[i], "max(b, -3) [%d]", i);
  sn_tensor_release(&a);
  sn_tensor_release(&b);
  sn_tensor_release(&out);
}

Test(elementwise, i64_rejects_float_only_ops_and_fractional_scalars) {
  int64_t n = 3;
  sn_tensor a = tu_empty(&ctx, SN_I64, 1, &n), out = tu_empty(&ctx, SN_I64, 1, &n);
  cr_expect_eq(sn_binary(&ctx, &out, &a, &a, SN_DIV), SN_EINVAL);
  cr_expect(strstr(ctx.err, "div") && strstr(ctx.err, "i64"), "%s", ctx.err);
  cr_expect_eq(sn_binary_scalar(&ctx, &out, &a, 2, SN_POW, false), SN_EINVAL);
  cr_expect(strstr(ctx.err, "pow") && strstr(ctx.err, "i64"), "%s", ctx.err);
  cr_expect_eq(sn_unary(&ctx, &out, &a, SN_EXP), SN_EINVAL);
  cr_expect(strstr(ctx.err, "exp") && strstr(ctx.err, "i64"), "%s", ctx.err);
  cr_expect_eq(sn_binary_scalar(&ctx, &out, &a, 0.5, SN_ADD, false), SN_EINVAL);
  cr_expect(strstr(ctx.err, "0.5") != NULL, "%s", ctx.err);
  cr_expect_eq(sn_binary_scalar(&ctx, &out, &a, 9.3e18, SN_ADD, false), SN_EINVAL, "beyond int64");
  cr_expect_eq(sn_binary_scalar(&ctx, &out, &a, NAN, SN_ADD, false), SN_EINVAL);
  sn_tensor_release(&a);
  sn_tensor_release(&out);
}

/* ---- bad input ----------------------------------------------------------------------------- */

Test(elementwise, rejects_dtype_mismatch) {
  int64_t n = 4;
  sn_tensor f = tu_empty(&ctx, SN_F32, 1, &n), i = tu_empty(&ctx, SN_I64, 1, &n);
  sn_tensor out = tu_empty(&ctx, SN_F32, 1, &n);
  cr_expect_eq(sn_binary(&ctx, &out, &f, &i, SN_ADD), SN_EINVAL);
  cr_expect(strstr(ctx.err, "seqnn.add") && strstr(ctx.err, "f32") && strstr(ctx.err, "i64"), "%s", ctx.err);
  cr_expect_eq(sn_binary(&ctx, &i, &f, &f, SN_MUL), SN_EINVAL, "out i64, inputs f32");
  cr_expect_eq(sn_unary(&ctx, &i, &f, SN_NEG), SN_EINVAL);
  cr_expect_eq(sn_binary_scalar(&ctx, &out, &i, 1, SN_ADD, false), SN_EINVAL);
  sn_tensor_release(&f);
  sn_tensor_release(&i);
  sn_tensor_release(&out);
}

Test(elementwise, rejects_wrong_out_shape_naming_every_shape) {
  int64_t sa[] = {3, 1}, sb[] = {1, 4}, so[] = {3, 3}, s4[] = {4};
  sn_tensor a = filled(2, sa, 1), b = filled(2, sb, 2), out = tu_empty(&ctx, SN_F32, 2, so);
  cr_expect_eq(sn_binary(&ctx, &out, &a, &b, SN_SUB), SN_EINVAL);
  cr_expect(strstr(ctx.err, "seqnn.sub") && strstr(ctx.err, "out has shape 3x3") && strstr(ctx.err, "3x1") &&
                strstr(ctx.err, "1x4") && strstr(ctx.err, "3x4"),
            "message was: %s", ctx.err);
  cr_expect_eq(sn_unary(&ctx, &out, &a, SN_EXP), SN_EINVAL);
  cr_expect(strstr(ctx.err, "3x3") && strstr(ctx.err, "3x1"), "message was: %s", ctx.err);
  cr_expect_eq(sn_binary_scalar(&ctx, &out, &b, 1, SN_ADD, false), SN_EINVAL);
  cr_expect(strstr(ctx.err, "3x3") && strstr(ctx.err, "1x4"), "message was: %s", ctx.err);

  sn_tensor c = filled(1, s4, 3), d = filled(2, so, 4);
  cr_expect_eq(sn_binary(&ctx, &d, &c, &d, SN_ADD), SN_EINVAL, "(4) and (3,3) do not broadcast");
  cr_expect(strstr(ctx.err, "4") && strstr(ctx.err, "3x3"), "message was: %s", ctx.err);

  sn_tensor ex;
  int64_t row[] = {1, 3};
  sn_tensor r = tu_empty(&ctx, SN_F32, 2, row);
  cr_assert_eq(sn_expand(&ctx, &ex, &r, 2, so), SN_OK);
  cr_expect_eq(sn_binary(&ctx, &ex, &d, &d, SN_ADD), SN_EINVAL, "an expanded out writes an element 3 times");
  cr_expect(strstr(ctx.err, "broadcast view") != NULL, "message was: %s", ctx.err);
  cr_expect_eq(sn_unary(&ctx, &out, &d, (sn_unop)SN_UNOP_COUNT), SN_EINVAL);
  cr_expect_eq(sn_binary(&ctx, &out, &d, &d, (sn_binop)-1), SN_EINVAL);
  sn_tensor *all[] = {&a, &b, &out, &c, &d, &ex, &r};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(elementwise, names) {
  cr_expect_str_eq(sn_binop_name(SN_POW), "pow");
  cr_expect_str_eq(sn_unop_name(SN_SOFTPLUS), "softplus");
  cr_expect_str_eq(sn_unop_name((sn_unop)99), "?");
  cr_expect(strcmp(sn_simd_level(), "scalar") == 0 || strcmp(sn_simd_level(), "avx2") == 0 ||
            strcmp(sn_simd_level(), "avx512") == 0);
}
