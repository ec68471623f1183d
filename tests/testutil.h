/* testutil.h -- helpers shared by the Criterion tests: tensors from shapes, fills with
 * deterministic random values, and comparisons against double-precision references. */
#ifndef SN_TESTUTIL_H
#define SN_TESTUTIL_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seqnn.h"

/* A test suite with a fresh context per test (`ctx`), checking at the end of every test
 * that each storage it made was released. */
#define TU_SUITE(name)                                                                          \
  static sn_ctx ctx;                                                                            \
  static void setup(void) { sn_ctx_init(&ctx); }                                                \
  static void teardown(void) {                                                                  \
    cr_expect_eq(ctx.live_bytes, 0, "every storage released (live %lld)", (long long)ctx.live_bytes); \
    sn_ctx_free(&ctx);                                                                          \
  }                                                                                             \
  TestSuite(name, .init = setup, .fini = teardown)

/* A contiguous tensor of the given shape; fails the test on error. */
static inline sn_tensor tu_empty(sn_ctx *ctx, sn_dtype dt, int ndim, const int64_t *size) {
  sn_tensor t;
  sn_status st = sn_tensor_empty(ctx, &t, dt, ndim, size);
  cr_assert_eq(st, SN_OK, "sn_tensor_empty: %s", ctx->err);
  return t;
}

/* Deterministic values in [-1, 1) from a small LCG, independent of the library's RNG. */
static inline void tu_fill_f32(sn_tensor *t, uint32_t seed) {
  float *p = sn_f32(t);
  uint32_t s = seed * 2654435761u + 12345u;
  for (int64_t i = 0; i < sn_numel(t); i++) {
    s = s * 1664525u + 1013904223u;
    p[i] = (float)((s >> 8) * (1.0 / 16777216.0) * 2.0 - 1.0);
  }
}

/* Reads element `linear` (row-major over t's shape) through t's strides. */
static inline double tu_get(const sn_tensor *t, int64_t linear) {
  int64_t off = 0;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t i = linear % t->size[d];
    linear /= t->size[d];
    off += i * t->stride[d];
  }
  const char *base = (const char *)t->storage->data + (t->offset + off) * (int64_t)sn_dtype_size(t->dtype);
  return t->dtype == SN_F32 ? (double)*(const float *)base : (double)*(const int64_t *)base;
}

/* max_i |a_i - ref_i| / (atol + rtol*|ref_i|): <= 1 means within tolerance. */
static inline double tu_max_scaled_err(const sn_tensor *a, const double *ref, double atol, double rtol) {
  double worst = 0;
  for (int64_t i = 0; i < sn_numel(a); i++) {
    double x = tu_get(a, i), r = ref[i];
    double e;
    if (isnan(r) || isnan(x)) e = (isnan(r) && isnan(x)) ? 0 : INFINITY;
    else if (isinf(r) || isinf(x)) e = (x == r) ? 0 : INFINITY;
    else e = fabs(x - r) / (atol + rtol * fabs(r));
    if (e > worst) worst = e;
  }
  return worst;
}

/* tu_empty filled by tu_fill_f32, then scaled and shifted: values in shift +- scale. */
static inline sn_tensor tu_make(sn_ctx *ctx, int nd, const int64_t *size, uint32_t seed, double scale, double shift) {
  sn_tensor t = tu_empty(ctx, SN_F32, nd, size);
  tu_fill_f32(&t, seed);
  for (int64_t i = 0; i < sn_numel(&t); i++) sn_f32(&t)[i] = (float)(sn_f32(&t)[i] * scale + shift);
  return t;
}

/* t's elements (row-major) as a new array of doubles; NULL for a tensor with no storage. */
static inline double *tu_to_double(const sn_tensor *t) {
  if (!t->storage) return NULL;
  double *d = malloc(sizeof(double) * (size_t)(sn_numel(t) ? sn_numel(t) : 1));
  for (int64_t i = 0; i < sn_numel(t); i++) d[i] = tu_get(t, i);
  return d;
}

/* n zeroed doubles (at least one, so the pointer is never NULL). */
static inline double *tu_dalloc(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(double)); }

/* max |a - ref| / max |ref| (the error relative to the result's scale); NaN in a fails every
 * bound. */
static inline double tu_rel_err(const sn_tensor *a, const double *ref) {
  double worst = 0, big = 0;
  for (int64_t i = 0; i < sn_numel(a); i++) {
    double d = fabs(tu_get(a, i) - ref[i]);
    if (!(d <= worst)) worst = d;
    if (fabs(ref[i]) > big) big = fabs(ref[i]);
  }
  return big > 0 ? worst / big : worst;
}

/* Whether two contiguous f32 tensors hold the same bits. */
static inline bool tu_same_bits(const sn_tensor *a, const sn_tensor *b) {
  return sn_numel(a) == sn_numel(b) && memcmp(sn_f32(a), sn_f32(b), (size_t)sn_numel(a) * sizeof(float)) == 0;
}

/* call (on the suite's ctx) must fail with SN_EINVAL and leave exactly msg in ctx.err. */
#define TU_EXPECT_EINVAL_MSG(call, msg)            \
  do {                                             \
    cr_expect_eq((call), SN_EINVAL, "%s", #call); \
    cr_expect_str_eq(ctx.err, (msg));              \
  } while (0)

/* call (on the suite's ctx) must fail with SN_EINVAL and a message that contains want. */
#define TU_EXPECT_EINVAL_HAS(call, want)                                                        \
  do {                                                                                          \
    cr_expect_eq((call), SN_EINVAL, "%s", #call);                                              \
    cr_expect(strstr(ctx.err, (want)) != NULL, "wanted \"%s\", message was: %s", (want), ctx.err); \
  } while (0)

#endif
