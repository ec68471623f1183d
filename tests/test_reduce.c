/* test_reduce.c -- sn_reduce against double-precision loops: every op over the first,
 * middle, last and all dims, contiguous and strided inputs, every SIMD level, ties, NaN/inf,
 * empty dims, i64, bad input, and bitwise independence from the thread count. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "simd/vec.h"
#include "simdutil.h"
#include "testutil.h"

TU_SUITE(reduce);


/* ---- reference ---------------------------------------------------------------------- */

typedef struct {
  int64_t outer, R, inner;
} split;

static split split_of(const sn_tensor *a, int dim) {
  split s = {1, sn_numel(a), 1};
  if (dim < 0) return s;
  s.R = a->size[dim];
  for (int d = 0; d < a->ndim; d++) {
    if (d < dim) s.outer *= a->size[d];
    if (d > dim) s.inner *= a->size[d];
  }
  return s;
}

/* ref[o*inner + j] = op over r of a[o, r, j] (row-major through a's strides); also the sum
 * of |x| per output, which bounds the rounding error of a float-lane sum. */
static void reduce_naive(double *ref, double *mag, const sn_tensor *a, int dim, sn_redop op) {
  split s = split_of(a, dim);
  for (int64_t o = 0; o < s.outer; o++)
    for (int64_t j = 0; j < s.inner; j++) {
      double sum = 0, m = -INFINITY, best = 0, abs_sum = 0;
      int64_t at = -1;
      bool nan = false;
      for (int64_t r = 0; r < s.R; r++) {
        double v = tu_get(a, (o * s.R + r) * s.inner + j);
        sum += v;
        abs_sum += fabs(v);
        if (isnan(v)) {
          if (!nan) at = r, best = v;
          nan = true;
        } else if (!nan && (at < 0 || (op == SN_ARGMIN || op == SN_RMIN ? v < best : v > best))) {
          at = r, best = v;
        }
        if (v > m) m = v;
      }
      double lse = 0;
      for (int64_t r = 0; r < s.R; r++) lse += exp(tu_get(a, (o * s.R + r) * s.inner + j) - m);
      double res;
      switch (op) {
      case SN_SUM: res = sum; break;
      case SN_MEAN: res = sum / (double)s.R; break;
      case SN_RMAX:
      case SN_RMIN: res = best; break;
      case SN_ARGMAX:
      case SN_ARGMIN: res = (double)at; break;
      default: res = nan ? NAN : isinf(m) ? m : m + log(lse); break;
      }
      ref[o * s.inner + j] = res;
      mag[o * s.inner + j] = op == SN_MEAN ? abs_sum / (double)s.R : abs_sum;
    }
}

/* Runs op on a over dim into a fresh output and compares with the reference. */
static void check_reduce(const sn_tensor *a, int dim, sn_redop op, const char *what) {
  split s = split_of(a, dim);
  int64_t n = s.outer * s.inner;
  sn_tensor out = tu_empty(&ctx, op == SN_ARGMAX || op == SN_ARGMIN ? SN_I64 : a->dtype, 1, &n);
  size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(double);
  double *ref = malloc(bytes), *mag = malloc(bytes);
  reduce_naive(ref, mag, a, dim, op);
  char shape[128];
  sn_shape_str(a, shape, sizeof shape);
  cr_assert_eq(sn_reduce(&ctx, &out, a, dim, op), SN_OK, "%s", ctx.err);
  for (int64_t i = 0; i < n; i++) {
    double got = tu_get(&out, i), want = ref[i];
    bool ok;
    if (isnan(want) || isnan(got)) ok = isnan(want) && isnan(got);
    else if (isinf(want) || isinf(got)) ok = got == want;
    else if (op == SN_SUM || op == SN_MEAN) ok = fabs(got - want) <= 4e-6 * mag[i] + 1e-7 * fabs(want);
    else if (op == SN_LOGSUMEXP) ok = fabs(got - want) <= 2e-6 * (1 + fabs(want));
    else ok = got == (a->dtype == SN_F32 && op != SN_ARGMAX && op != SN_ARGMIN ? (double)(float)want : want);
    if (!ok) {
      cr_expect(ok, "%s: %s of %s over dim %d, output %lld: got %.9g want %.9g (simd %s)", what,
                sn_redop_name(op), shape, dim, (long long)i, got, want, sn_simd_level());
      break;
    }
  }
  free(ref);
  free(mag);
  sn_tensor_release(&out);
}

static sn_tensor filled(int ndim, const int64_t *size, uint32_t seed) {
  sn_tensor t = tu_empty(&ctx, SN_F32, ndim, size);
  tu_fill_f32(&t, seed);
  return t;
}

/* Every op over every dim of a, and over everything. */
static void check_all(const sn_tensor *a, const char *what) {
  for (int op = 0; op < SN_REDOP_COUNT; op++)
    for (int dim = -1; dim < a->ndim; dim++) check_reduce(a, dim, op, what);
}

/* ---- f32 ------------------------------------------------------------------------------- */

Test(reduce, every_op_and_dim_on_odd_shapes_and_every_level) {
  int64_t shapes[][3] = {{5, 7, 9}, {3, 17, 33}, {2, 15, 1}, {1, 1, 1}, {3, 5, 2500}};
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
      sn_tensor a = filled(3, shapes[s], (uint32_t)s);
      check_all(&a, "contiguous");
      sn_tensor_release(&a);
    }
    int64_t n1[] = {1000003}, n0[] = {7};
    sn_tensor a = filled(1, n1, 11), b = filled(1, n0, 12), c = filled(0, NULL, 13);
    check_all(&a, "long run (several blocks, threads)");
    check_all(&b, "one short run");
    check_all(&c, "0-dim");
    sn_tensor_release(&a);
    sn_tensor_release(&b);
    sn_tensor_release(&c);
  }
  restore_level();
}

Test(reduce, long_rows_and_wide_columns) {
  int64_t rows[] = {3, 200003}, cols[] = {70001, 3};
  sn_tensor a = filled(2, rows, 21), b = filled(2, cols, 22);
  for (int op = 0; op < SN_REDOP_COUNT; op++) {
    check_reduce(&a, 1, op, "rows longer than a block");
    check_reduce(&b, 0, op, "long columns");
  }
  sn_tensor_release(&a);
  sn_tensor_release(&b);
}

Test(reduce, strided_views_every_level) {
  int64_t size[] = {6, 11, 37};
  sn_tensor base = filled(3, size, 31), t, n, e, p;
  cr_assert_eq(sn_transpose(&ctx, &t, &base, 0, 2), SN_OK);   /* 37x11x6 */
  cr_assert_eq(sn_narrow(&ctx, &n, &base, 2, 3, 29), SN_OK);  /* rows of 29 with stride 37 */
  int64_t row[] = {1, 1, 37}, big[] = {5, 4, 37};
  sn_tensor r = filled(3, row, 32);
  cr_assert_eq(sn_expand(&ctx, &e, &r, 3, big), SN_OK);        /* stride-0 dims */
  int perm[] = {1, 0, 2};
  cr_assert_eq(sn_permute(&ctx, &p, &base, perm), SN_OK);      /* outer dims out of order */
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    check_all(&t, "transposed");
    check_all(&n, "narrowed");
    check_all(&e, "expanded");
    check_all(&p, "permuted");
  }
  restore_level();
  sn_tensor *all[] = {&base, &t, &n, &e, &p, &r};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(reduce, argmax_argmin_take_the_first_of_ties) {
  int64_t size[] = {5, 40};
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    sn_tensor a = tu_empty(&ctx, SN_F32, 2, size);
    float *p = sn_f32(&a);
    for (int64_t i = 0; i < 200; i++) p[i] = (float)(i % 3); /* 0 1 2 0 1 2 ... */
    check_all(&a, "ties");
    for (int64_t i = 0; i < 200; i++) p[i] = 1.5f;
    check_all(&a, "all equal");
    int64_t one = 1, five = 5, forty = 40;
    sn_tensor o1 = tu_empty(&ctx, SN_I64, 1, &one), o5 = tu_empty(&ctx, SN_I64, 1, &five);
    sn_tensor o40 = tu_empty(&ctx, SN_I64, 1, &forty);
    cr_assert_eq(sn_reduce(&ctx, &o1, &a, -1, SN_ARGMAX), SN_OK);
    cr_expect_eq(sn_i64(&o1)[0], 0);
    cr_assert_eq(sn_reduce(&ctx, &o40, &a, 0, SN_ARGMIN), SN_OK);
    for (int j = 0; j < 40; j++) cr_expect_eq(sn_i64(&o40)[j], 0);
    p[77] = 3.0f, p[79] = 3.0f, p[3 * 40 + 37] = 3.0f;
    cr_assert_eq(sn_reduce(&ctx, &o5, &a, 1, SN_ARGMAX), SN_OK);
    cr_expect(sn_i64(&o5)[1] == 37 && sn_i64(&o5)[3] == 37 && sn_i64(&o5)[0] == 0, "got %lld %lld",
              (long long)sn_i64(&o5)[1], (long long)sn_i64(&o5)[3]);
    cr_assert_eq(sn_reduce(&ctx, &o40, &a, 0, SN_ARGMAX), SN_OK);
    cr_expect(sn_i64(&o40)[37] == 1 && sn_i64(&o40)[39] == 1, "got %lld", (long long)sn_i64(&o40)[37]);
    sn_tensor *all[] = {&a, &o1, &o5, &o40};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
  }
  restore_level();
}

/* NaN and inf at many positions (in the vector body, the tail, either of two blocks). */
Test(reduce, nan_and_inf) {
  int64_t size[] = {7, 35}, big[] = {70001};
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    for (int64_t at = 0; at < 35; at += 3) {
      sn_tensor a = filled(2, size, 41);
      float *p = sn_f32(&a);
      p[at] = NAN;                   /* row 0 */
      p[35 + at] = INFINITY;         /* row 1: +inf */
      p[70 + at] = -INFINITY;        /* row 2: one -inf */
      for (int j = 0; j < 35; j++) p[105 + j] = -INFINITY; /* row 3: all -inf */
      p[140 + at] = NAN, p[140 + (at + 7) % 35] = NAN;     /* row 4: two NaNs */
      p[175 + at] = INFINITY, p[175 + (at + 1) % 35] = -INFINITY;
      check_all(&a, "nan/inf");
      sn_tensor_release(&a);
    }
    sn_tensor b = filled(1, big, 42);
    sn_f32(&b)[69000] = NAN;
    sn_f32(&b)[100] = INFINITY;
    check_all(&b, "nan in the second block");
    sn_tensor_release(&b);
  }
  restore_level();
}

/* Logsumexp reads a run once, rescaling its sum whenever an element passes the reference
 * by SN_LSE_SLACK: rows whose max grows all along, jumps at the end, or follows a run of
 * -inf; and masked rows, -inf or -1e30 after the first element. */
Test(reduce, logsumexp_with_a_growing_max) {
  int64_t size[] = {6, 5003}, big[] = {150001};
  for (int lv = 0; lv < level_count(); lv++) {
    use_level(lv);
    sn_tensor a = filled(2, size, 71), b = filled(1, big, 72);
    float *p = sn_f32(&a);
    for (int64_t j = 0; j < 5003; j++) {
      p[j] = 0.05f * (float)j;                         /* ends near 250: e^x overflows f32 */
      p[5003 + j] = j == 5002 ? 90.0f : p[5003 + j];    /* the max in the last element */
      p[2 * 5003 + j] = j < 3000 ? -INFINITY : p[2 * 5003 + j];
      p[3 * 5003 + j] = -0.05f * (float)j;             /* the max first */
      p[4 * 5003 + j] = j % 3 == 1 ? -INFINITY : p[4 * 5003 + j];
      p[5 * 5003 + j] = j % 3 == 1 ? -1e30f : p[5 * 5003 + j];
    }
    for (int64_t j = 0; j < big[0]; j++) sn_f32(&b)[j] += 1e-3f * (float)j; /* across blocks */
    check_reduce(&a, 1, SN_LOGSUMEXP, "growing max");
    check_reduce(&b, 0, SN_LOGSUMEXP, "growing max over blocks");
    sn_tensor_release(&a);
    sn_tensor_release(&b);
  }
  restore_level();
}

/* ---- empty dims, i64, bad input --------------------------------------------------------- */

Test(reduce, empty_dims) {
  int64_t size[] = {0, 3}, three = 3, zero = 0, one = 1;
  sn_tensor a = tu_empty(&ctx, SN_F32, 2, size), o3 = tu_empty(&ctx, SN_F32, 1, &three);
  sn_tensor o0 = tu_empty(&ctx, SN_F32, 1, &zero), o1 = tu_empty(&ctx, SN_F32, 0, NULL);
  sn_tensor i0 = tu_empty(&ctx, SN_I64, 1, &zero), i1 = tu_empty(&ctx, SN_I64, 1, &one);
  cr_assert_eq(sn_reduce(&ctx, &o3, &a, 0, SN_SUM), SN_OK, "%s", ctx.err);
  for (int j = 0; j < 3; j++) cr_expect_eq(sn_f32(&o3)[j], 0.0f);
  cr_assert_eq(sn_reduce(&ctx, &o3, &a, 0, SN_MEAN), SN_OK);
  for (int j = 0; j < 3; j++) cr_expect(isnan(sn_f32(&o3)[j]));
  cr_assert_eq(sn_reduce(&ctx, &o3, &a, 0, SN_LOGSUMEXP), SN_OK);
  for (int j = 0; j < 3; j++) cr_expect(isinf(sn_f32(&o3)[j]) && sn_f32(&o3)[j] < 0);
  cr_assert_eq(sn_reduce(&ctx, &o1, &a, -1, SN_SUM), SN_OK);
  cr_expect_eq(sn_f32(&o1)[0], 0.0f);
  for (int op = SN_RMAX; op <= SN_ARGMIN; op++) {
    sn_tensor *out = op >= SN_ARGMAX ? &i1 : &o1;
    cr_expect_eq(sn_reduce(&ctx, out, &a, -1, op), SN_EINVAL, "%s of nothing", sn_redop_name(op));
    cr_expect(strstr(ctx.err, "empty") && strstr(ctx.err, "0x3"), "%s", ctx.err);
  }
  cr_expect_eq(sn_reduce(&ctx, &o3, &a, 0, SN_RMAX), SN_EINVAL);
  cr_expect_eq(sn_reduce(&ctx, &o0, &a, 1, SN_RMAX), SN_OK, "reducing a non-empty dim into nothing");
  cr_expect_eq(sn_reduce(&ctx, &i0, &a, 1, SN_ARGMAX), SN_OK);
  sn_tensor *all[] = {&a, &o3, &o0, &o1, &i0, &i1};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(reduce, i64_sum_max_min_arg) {
  int64_t size[] = {4, 5, 3};
  sn_tensor a = tu_empty(&ctx, SN_I64, 3, size), t;
  for (int64_t i = 0; i < 60; i++) sn_i64(&a)[i] = (i * 7919) % 23 - 11;
  for (int op = 0; op < SN_REDOP_COUNT; op++) {
    if (op == SN_MEAN || op == SN_LOGSUMEXP) continue;
    for (int dim = -1; dim < 3; dim++) check_reduce(&a, dim, op, "i64");
  }
  cr_assert_eq(sn_transpose(&ctx, &t, &a, 0, 2), SN_OK);
  for (int op = 0; op < SN_REDOP_COUNT; op++) {
    if (op == SN_MEAN || op == SN_LOGSUMEXP) continue;
    for (int dim = -1; dim < 3; dim++) check_reduce(&t, dim, op, "i64 transposed");
  }
  int64_t two = 2, one = 1;
  sn_tensor w = tu_empty(&ctx, SN_I64, 1, &two), s = tu_empty(&ctx, SN_I64, 1, &one);
  sn_i64(&w)[0] = INT64_MAX, sn_i64(&w)[1] = 2;
  cr_assert_eq(sn_reduce(&ctx, &s, &w, 0, SN_SUM), SN_OK);
  cr_expect_eq(sn_i64(&s)[0], INT64_MIN + 1, "sums wrap around");
  sn_tensor f = tu_empty(&ctx, SN_F32, 1, &one);
  cr_expect_eq(sn_reduce(&ctx, &f, &w, 0, SN_MEAN), SN_EINVAL);
  cr_expect(strstr(ctx.err, "seqnn.mean") && strstr(ctx.err, "i64"), "%s", ctx.err);
  sn_tensor *all[] = {&a, &t, &w, &s, &f};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(reduce, rejects_bad_out_and_dim) {
  int64_t size[] = {4, 6}, four = 4, five = 5;
  sn_tensor a = filled(2, size, 51), o4 = tu_empty(&ctx, SN_F32, 1, &four);
  sn_tensor o5 = tu_empty(&ctx, SN_F32, 1, &five), i4 = tu_empty(&ctx, SN_I64, 1, &four);
  cr_expect_eq(sn_reduce(&ctx, &o5, &a, 1, SN_SUM), SN_EINVAL);
  cr_expect(strstr(ctx.err, "seqnn.sum") && strstr(ctx.err, "4x6") && strstr(ctx.err, "5"), "%s", ctx.err);
  cr_expect_eq(sn_reduce(&ctx, &o4, &a, 1, SN_ARGMAX), SN_EINVAL, "argmax writes i64");
  cr_expect(strstr(ctx.err, "i64") != NULL, "%s", ctx.err);
  cr_expect_eq(sn_reduce(&ctx, &i4, &a, 1, SN_SUM), SN_EINVAL, "sum of f32 writes f32");
  cr_expect_eq(sn_reduce(&ctx, &o4, &a, 2, SN_SUM), SN_EINVAL);
  cr_expect(strstr(ctx.err, "out of range") && strstr(ctx.err, "4x6"), "%s", ctx.err);
  int64_t wide[] = {4, 2};
  sn_tensor o42 = tu_empty(&ctx, SN_F32, 2, wide), ot;
  cr_assert_eq(sn_transpose(&ctx, &ot, &o42, 0, 1), SN_OK);
  int64_t s3[] = {4, 3, 2};
  sn_tensor b = filled(3, s3, 52);
  cr_expect_eq(sn_reduce(&ctx, &ot, &b, 1, SN_SUM), SN_EINVAL, "out must be contiguous");
  cr_expect_eq(sn_reduce(&ctx, &o4, &a, 1, (sn_redop)SN_REDOP_COUNT), SN_EINVAL);
  cr_expect_str_eq(sn_redop_name(SN_LOGSUMEXP), "logsumexp");
  sn_tensor *all[] = {&a, &o4, &o5, &i4, &o42, &ot, &b};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

/* ---- threads ----------------------------------------------------------------------------- */

Test(reduce, results_do_not_depend_on_the_thread_count) {
  int64_t n = 4000037, rows[] = {3, 1333345}, cols[] = {4001, 1000};
  sn_tensor a = filled(1, &n, 61), b = filled(2, rows, 62), c = filled(2, cols, 63);
  struct {
    sn_tensor *t;
    int dim;
  } cases[] = {{&a, -1}, {&b, 1}, {&c, 0}, {&c, 1}};
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++)
    for (int op = 0; op < SN_REDOP_COUNT; op++) {
      split s = split_of(cases[k].t, cases[k].dim);
      int64_t m = s.outer * s.inner;
      sn_dtype dt = op == SN_ARGMAX || op == SN_ARGMIN ? SN_I64 : SN_F32;
      sn_tensor r1 = tu_empty(&ctx, dt, 1, &m), r2 = tu_empty(&ctx, dt, 1, &m);
      sn_tensor r3 = tu_empty(&ctx, dt, 1, &m);
      omp_set_num_threads(1);
      cr_assert_eq(sn_reduce(&ctx, &r1, cases[k].t, cases[k].dim, op), SN_OK);
      omp_set_num_threads(2);
      cr_assert_eq(sn_reduce(&ctx, &r2, cases[k].t, cases[k].dim, op), SN_OK);
      omp_set_num_threads(3);
      cr_assert_eq(sn_reduce(&ctx, &r3, cases[k].t, cases[k].dim, op), SN_OK);
      size_t bytes = (size_t)m * sn_dtype_size(dt);
      cr_expect(!memcmp(sn_data(&r1), sn_data(&r2), bytes) && !memcmp(sn_data(&r1), sn_data(&r3), bytes),
                "%s case %zu: 1, 2 and 3 threads differ", sn_redop_name(op), k);
      sn_tensor_release(&r1);
      sn_tensor_release(&r2);
      sn_tensor_release(&r3);
    }
  sn_tensor_release(&a);
  sn_tensor_release(&b);
  sn_tensor_release(&c);
}

/* ---- the running sum under the linear-attention gates --------------------------------------- */

Test(reduce, acc_scan_forward_and_reverse_every_level) {
  enum { ROWS = 7, N = 37, XS = 40, YS = 45 };
  float x[ROWS * XS], y[ROWS * YS];
  for (int i = 0; i < ROWS * XS; i++) x[i] = (float)((i * 37 % 101) - 50) / 7.0f;
  for (int l = 0, nl = level_count(); l < nl; l++) {
    use_level(l);
    for (int reverse = 0; reverse < 2; reverse++) {
      double acc[N], ref[N];
      for (int j = 0; j < N; j++) acc[j] = ref[j] = j * 0.25;
      memset(y, 0x7f, sizeof y); /* untouched entries stay huge */
      int64_t xs = reverse ? -XS : XS, ys = reverse ? -YS : YS;
      const float *x0 = reverse ? x + (ROWS - 1) * XS : x;
      float *y0 = reverse ? y + (ROWS - 1) * YS : y;
      sn_vec->acc_scan(acc, y0, ys, x0, xs, ROWS, N);
      for (int r = 0; r < ROWS; r++)
        for (int j = 0; j < N; j++) {
          ref[j] += x0[r * xs + j];
          cr_expect_eq(y0[r * ys + j], (float)ref[j], "%s reverse %d row %d lane %d", levels[l], reverse, r, j);
        }
      for (int j = 0; j < N; j++) cr_expect_eq(acc[j], ref[j], "%s: acc[%d]", levels[l], j);
      for (int r = 0; r < ROWS; r++) cr_expect_gt(y[r * YS + N], 1e30f, "%s: lane N of row %d written", levels[l], r);
    }
  }
  restore_level();
}
