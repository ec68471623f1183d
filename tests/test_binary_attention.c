/* test_binary_attention.c -- EcoFormer's causal binary-code attention (kernels/binary_attention.c)
 * against a naive O(T^2) reference in double whose features h may be any reals (so that
 * finite differences give the gradient the kernel reports for the +-1 features), on odd
 * sizes: T not a multiple of the 64-token chunk, odd Dv, bits 1, 7, 16, 33, 64. */
#include <omp.h>
#include <stdint.h>

#include "simd/binary_attention.h"
#include "simdutil.h"
#include "testutil.h"

TU_SUITE(binary_attention);

typedef struct shape {
  int64_t B, T, H, Dv;
  int bits;
} shape;

/* out_i = q~_i^T S_i [:Dv] / q~_i^T S_i [Dv], S_i = S0 + sum_{j<=i} [h_j;1][v_j;1]^T, q~ = [h; c],
 * straight from the definition (the weights h_i.h_j + c are formed pair by pair). fin: the
 * final state (B,H,bits+1,Dv+1). */
static void ref_fwd(double *out, double *den, double *fin, const double *h, const double *v, const double *S0,
                    shape s) {
  int nb = s.bits;
  int64_t W = s.Dv + 1, sn = (nb + 1) * W;
  double c = nb + 1;
  for (int64_t b = 0; b < s.B; b++)
    for (int64_t hd = 0; hd < s.H; hd++) {
      const double *s0 = S0 ? S0 + (b * s.H + hd) * sn : NULL;
      for (int64_t i = 0; i < s.T; i++) {
        const double *hi = h + ((b * s.T + i) * s.H + hd) * nb;
        double num[256] = {0}, dn = 0;
        if (s0) {
          for (int64_t j = 0; j < W; j++) {
            double a = c * s0[nb * W + j];
            for (int n = 0; n < nb; n++) a += hi[n] * s0[n * W + j];
            if (j < s.Dv) num[j] = a;
            else dn = a;
          }
        }
        for (int64_t j = 0; j <= i; j++) {
          const double *hj = h + ((b * s.T + j) * s.H + hd) * nb, *vj = v + ((b * s.T + j) * s.H + hd) * s.Dv;
          double w = c;
          for (int n = 0; n < nb; n++) w += hi[n] * hj[n];
          for (int64_t d = 0; d < s.Dv; d++) num[d] += w * vj[d];
          dn += w;
        }
        for (int64_t d = 0; d < s.Dv; d++) out[((b * s.T + i) * s.H + hd) * s.Dv + d] = num[d] / dn;
        if (den) den[(b * s.T + i) * s.H + hd] = dn;
      }
      if (fin) {
        double *f = fin + (b * s.H + hd) * sn;
        for (int64_t k = 0; k < sn; k++) f[k] = s0 ? s0[k] : 0;
        for (int64_t j = 0; j < s.T; j++) {
          const double *hj = h + ((b * s.T + j) * s.H + hd) * nb, *vj = v + ((b * s.T + j) * s.H + hd) * s.Dv;
          for (int n = 0; n <= nb; n++) {
            double hn = n < nb ? hj[n] : 1;
            for (int64_t d = 0; d < s.Dv; d++) f[n * W + d] += hn * vj[d];
            f[n * W + s.Dv] += hn;
          }
        }
      }
    }
}

static uint64_t lcg(uint64_t *x) {
  *x = *x * 6364136223846793005ull + 1442695040888963407ull;
  return *x >> 11 ^ *x << 29;
}

/* Random codes below 2^bits, and their +-1 features in double. */
static sn_tensor make_codes(shape s, uint64_t seed, double **h) {
  sn_tensor c = tu_empty(&ctx, SN_I64, 3, (int64_t[]){s.B, s.T, s.H});
  int64_t n = sn_numel(&c);
  *h = malloc(sizeof(double) * (size_t)(n * s.bits + 1));
  uint64_t mask = s.bits == 64 ? ~0ull : (1ull << s.bits) - 1, x = seed;
  for (int64_t i = 0; i < n; i++) {
    uint64_t code = lcg(&x) & mask;
    sn_i64(&c)[i] = (int64_t)code;
    for (int k = 0; k < s.bits; k++) (*h)[i * s.bits + k] = (code >> k & 1) ? 1.0 : -1.0;
  }
  return c;
}

static const shape shapes[] = {
    {1, 1, 1, 1, 1}, {2, 67, 3, 5, 7}, {1, 130, 2, 17, 16}, {2, 65, 1, 3, 33}, {1, 150, 2, 9, 64}, {1, 64, 1, 16, 16},
};

/* Runs fwd (with or without an initial state) and compares out, den, final state. */
static void check_fwd(shape s, bool with_s0) {
  double *h;
  sn_tensor codes = make_codes(s, (uint64_t)(s.T * 31 + s.bits), &h);
  sn_tensor v = tu_make(&ctx, 4, (int64_t[]){s.B, s.T, s.H, s.Dv}, 3, 1.0, 0.0);
  int64_t st[] = {s.B, s.H, s.bits + 1, s.Dv + 1};
  sn_tensor s0 = tu_make(&ctx, 4, st, 5, 2.0, 0.0);
  /* a state some tokens could have left: count and its row positive enough to keep den > 0 */
  for (int64_t i = 0; i < sn_numel(&s0); i += s.Dv + 1) sn_f32(&s0)[i + s.Dv] = (i / (s.Dv + 1)) % (s.bits + 1) == s.bits ? 20.0f : 0.5f;
  sn_tensor out = tu_empty(&ctx, SN_F32, 4, v.size), den = tu_empty(&ctx, SN_F32, 3, codes.size);
  sn_tensor fin = tu_empty(&ctx, SN_F32, 4, st);
  cr_assert_eq(sn_binary_attention_fwd(&ctx, &out, &den, &fin, &codes, &v, with_s0 ? &s0 : NULL, s.bits), SN_OK, "%s",
               ctx.err);
  double *vd = tu_to_double(&v), *s0d = tu_to_double(&s0);
  double *ro = malloc(sizeof(double) * (size_t)(sn_numel(&out) + 1)), *rd = malloc(sizeof(double) * (size_t)(sn_numel(&den) + 1));
  double *rf = malloc(sizeof(double) * (size_t)sn_numel(&fin));
  ref_fwd(ro, rd, rf, h, vd, with_s0 ? s0d : NULL, s);
  cr_expect_leq(tu_max_scaled_err(&out, ro, 1e-5, 1e-4), 1.0, "out, B%lld T%lld H%lld Dv%lld bits %d s0 %d",
                (long long)s.B, (long long)s.T, (long long)s.H, (long long)s.Dv, s.bits, with_s0);
  cr_expect_leq(tu_max_scaled_err(&den, rd, 1e-5, 1e-5), 1.0, "den, bits %d", s.bits);
  cr_expect_leq(tu_max_scaled_err(&fin, rf, 1e-4, 1e-5), 1.0, "final state, bits %d", s.bits);
  free(h), free(vd), free(s0d), free(ro), free(rd), free(rf);
  sn_tensor *all[] = {&codes, &v, &s0, &out, &den, &fin};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(binary_attention, forward_matches_reference) {
  for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
    check_fwd(shapes[i], false);
    check_fwd(shapes[i], true);
  }
}

Test(binary_attention, long_sequence_matches_reference) {
  check_fwd((shape){1, 2051, 1, 8, 16}, false);
}

/* L = sum out*G + sum fin*GF; the kernel's dv, dh, dS0 against central differences of L on
 * the reference in double (h moved off +-1: the reference takes real features). */
static double loss(const double *h, const double *v, const double *s0, const double *G, const double *GF, shape s,
                   int64_t nout, int64_t nfin) {
  double *o = malloc(sizeof(double) * (size_t)nout), *f = malloc(sizeof(double) * (size_t)nfin);
  ref_fwd(o, NULL, f, h, v, s0, s);
  double L = 0;
  for (int64_t i = 0; i < nout; i++) L += o[i] * G[i];
  for (int64_t i = 0; i < nfin; i++) L += f[i] * GF[i];
  free(o), free(f);
  return L;
}

static double fd(double *x, const double *h, const double *v, const double *s0, const double *G, const double *GF,
                 shape s, int64_t nout, int64_t nfin) {
  const double e = 1e-6, keep = *x;
  *x = keep + e;
  double lp = loss(h, v, s0, G, GF, s, nout, nfin);
  *x = keep - e;
  double lm = loss(h, v, s0, G, GF, s, nout, nfin);
  *x = keep;
  return (lp - lm) / (2 * e);
}

static void check_bwd(shape s) {
  double *h;
  sn_tensor codes = make_codes(s, (uint64_t)(s.T * 7 + s.bits), &h);
  int64_t vsz[] = {s.B, s.T, s.H, s.Dv}, st[] = {s.B, s.H, s.bits + 1, s.Dv + 1},
          hsz[] = {s.B, s.T, s.H, s.bits};
  sn_tensor v = tu_make(&ctx, 4, vsz, 11, 1.0, 0.0), g = tu_make(&ctx, 4, vsz, 12, 1.0, 0.0);
  sn_tensor gf = tu_make(&ctx, 4, st, 13, 0.1, 0.0), s0 = tu_make(&ctx, 4, st, 14, 1.0, 0.0);
  for (int64_t i = 0; i < sn_numel(&s0); i += s.Dv + 1) sn_f32(&s0)[i + s.Dv] = (i / (s.Dv + 1)) % (s.bits + 1) == s.bits ? 10.0f : 0.5f;
  sn_tensor out = tu_empty(&ctx, SN_F32, 4, vsz), den = tu_empty(&ctx, SN_F32, 3, codes.size);
  cr_assert_eq(sn_binary_attention_fwd(&ctx, &out, &den, NULL, &codes, &v, &s0, s.bits), SN_OK, "%s", ctx.err);
  sn_tensor dv = tu_empty(&ctx, SN_F32, 4, vsz), dh = tu_empty(&ctx, SN_F32, 4, hsz), ds0 = tu_empty(&ctx, SN_F32, 4, st);
  cr_assert_eq(sn_binary_attention_bwd(&ctx, &dv, &dh, &ds0, &out, &den, &g, &gf, &codes, &v, &s0, NULL, s.bits), SN_OK,
               "%s", ctx.err);
  double *vd = tu_to_double(&v), *Gd = tu_to_double(&g), *GFd = tu_to_double(&gf), *s0d = tu_to_double(&s0);
  int64_t nout = sn_numel(&out), nfin = sn_numel(&gf), nh = sn_numel(&dh);
  double *rv = malloc(sizeof(double) * (size_t)nout), *rh = malloc(sizeof(double) * (size_t)nh),
         *rs = malloc(sizeof(double) * (size_t)nfin);
  for (int64_t i = 0; i < nout; i++) rv[i] = fd(vd + i, h, vd, s0d, Gd, GFd, s, nout, nfin);
  for (int64_t i = 0; i < nh; i++) rh[i] = fd(h + i, h, vd, s0d, Gd, GFd, s, nout, nfin);
  for (int64_t i = 0; i < nfin; i++) rs[i] = fd(s0d + i, h, vd, s0d, Gd, GFd, s, nout, nfin);
  cr_expect_leq(tu_max_scaled_err(&dv, rv, 1e-4, 1e-3), 1.0, "dv, T%lld bits %d", (long long)s.T, s.bits);
  cr_expect_leq(tu_max_scaled_err(&dh, rh, 1e-4, 1e-3), 1.0, "dh, T%lld bits %d", (long long)s.T, s.bits);
  cr_expect_leq(tu_max_scaled_err(&ds0, rs, 1e-4, 1e-3), 1.0, "dinitial, T%lld bits %d", (long long)s.T, s.bits);

  /* with y: the straight-through mask 1[|y| < 1] on dh, y of the codes' signs */
  sn_tensor y = tu_empty(&ctx, SN_F32, 4, hsz), dh2 = tu_empty(&ctx, SN_F32, 4, hsz);
  for (int64_t i = 0; i < nh; i++) sn_f32(&y)[i] = (float)(h[i] * (i % 3 == 0 ? 1.5 : 0.25));
  cr_assert_eq(sn_binary_attention_bwd(&ctx, &dv, &dh2, NULL, &out, &den, &g, NULL, &codes, &v, &s0, &y, s.bits), SN_OK,
               "%s", ctx.err);
  sn_tensor codes2 = tu_empty(&ctx, SN_I64, 3, codes.size);
  cr_assert_eq(sn_binary_attention_pack(&ctx, &codes2, &y), SN_OK, "%s", ctx.err);
  cr_expect_eq(memcmp(sn_data(&codes2), sn_data(&codes), sizeof(int64_t) * (size_t)sn_numel(&codes)), 0, "pack");
  sn_tensor dh3 = tu_empty(&ctx, SN_F32, 4, hsz);
  cr_assert_eq(sn_binary_attention_bwd(&ctx, &dv, &dh3, NULL, &out, &den, &g, NULL, &codes, &v, &s0, NULL, s.bits), SN_OK);
  for (int64_t i = 0; i < nh; i++)
    cr_expect_eq(sn_f32(&dh2)[i], i % 3 == 0 ? 0.0f : sn_f32(&dh3)[i], "ste at %lld", (long long)i);
  free(h), free(vd), free(Gd), free(GFd), free(s0d), free(rv), free(rh), free(rs);
  sn_tensor *all[] = {&codes, &v, &g, &gf, &s0, &out, &den, &dv, &dh, &ds0, &y, &dh2, &codes2, &dh3};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
}

Test(binary_attention, backward_matches_finite_differences) {
  static const shape bs[] = {{1, 1, 1, 1, 1}, {1, 70, 2, 5, 7}, {2, 9, 1, 3, 16}, {1, 5, 1, 2, 33}, {1, 66, 1, 3, 64}};
  for (size_t i = 0; i < sizeof bs / sizeof *bs; i++) check_bwd(bs[i]);
}

/* fwd and bwd on one input, into fresh tensors (released by the caller). */
static void run_all(sn_tensor *o, sn_tensor *dv, sn_tensor *dh, sn_tensor *ds0, const sn_tensor *codes,
                    const sn_tensor *v, const sn_tensor *g, shape s) {
  int64_t st[] = {s.B, s.H, s.bits + 1, s.Dv + 1}, hsz[] = {s.B, s.T, s.H, s.bits};
  *o = tu_empty(&ctx, SN_F32, 4, v->size);
  sn_tensor den = tu_empty(&ctx, SN_F32, 3, codes->size);
  cr_assert_eq(sn_binary_attention_fwd(&ctx, o, &den, NULL, codes, v, NULL, s.bits), SN_OK, "%s", ctx.err);
  *dv = tu_empty(&ctx, SN_F32, 4, v->size), *dh = tu_empty(&ctx, SN_F32, 4, hsz), *ds0 = tu_empty(&ctx, SN_F32, 4, st);
  cr_assert_eq(sn_binary_attention_bwd(&ctx, dv, dh, ds0, o, &den, g, NULL, codes, v, NULL, NULL, s.bits), SN_OK, "%s",
               ctx.err);
  sn_tensor_release(&den);
}

static bool same_bits(const sn_tensor *a, const sn_tensor *b) {
  return memcmp(sn_data(a), sn_data(b), sizeof(float) * (size_t)sn_numel(a)) == 0;
}

Test(binary_attention, every_simd_level_and_thread_count_gives_the_same_bits) {
  shape s = {2, 133, 3, 19, 33};
  double *h;
  sn_tensor codes = make_codes(s, 99, &h);
  int64_t vsz[] = {s.B, s.T, s.H, s.Dv};
  sn_tensor v = tu_make(&ctx, 4, vsz, 21, 1.0, 0.0), g = tu_make(&ctx, 4, vsz, 22, 1.0, 0.0);
  sn_tensor r[4], x[4];
  omp_set_num_threads(1);
  use_level(0);
  cr_assert_str_eq(sn_binary_attention_impl(), "scalar");
  run_all(&r[0], &r[1], &r[2], &r[3], &codes, &v, &g, s);
  int nl = level_count();
  for (int l = 0; l < nl; l++)
    for (int nt = 1; nt <= 3; nt++) {
      use_level(l);
      omp_set_num_threads(nt);
      run_all(&x[0], &x[1], &x[2], &x[3], &codes, &v, &g, s);
      for (int k = 0; k < 4; k++) {
        cr_expect(same_bits(&x[k], &r[k]), "output %d at %s (%s table), %d threads", k, levels[l],
                  sn_binary_attention_impl(), nt);
        sn_tensor_release(&x[k]);
      }
    }
  restore_level();
  for (int k = 0; k < 4; k++) sn_tensor_release(&r[k]);
  sn_tensor_release(&codes), sn_tensor_release(&v), sn_tensor_release(&g);
  free(h);
}

Test(binary_attention, popcount_table_matches_portable) {
  if (!__builtin_cpu_supports("avx512vpopcntdq") || !__builtin_cpu_supports("avx512f")) cr_skip_test("no VPOPCNTDQ");
  uint64_t x = 5, codes[77];
  for (int bits = 1; bits <= 64; bits++) {
    uint64_t mask = bits == 64 ? ~0ull : (1ull << bits) - 1;
    for (int i = 0; i < 77; i++) codes[i] = lcg(&x) & mask;
    for (int n = 0; n <= 77; n += 11) {
      float a[80] = {0}, b[80] = {0};
      sn_ba_avx512.weights(a, codes, n, codes[n % 77], bits);
      sn_ba_scalar.weights(b, codes, n, codes[n % 77], bits);
      cr_expect(memcmp(a, b, sizeof a) == 0, "bits %d n %d", bits, n);
      for (int i = 0; i < n; i++)
        cr_expect_eq(b[i], (float)(2 * bits + 1 - 2 * __builtin_popcountll(codes[i] ^ codes[n % 77])));
    }
  }
}

Test(binary_attention, step_reproduces_the_forward) {
  static const shape ss[] = {{2, 70, 3, 7, 16}, {1, 5, 2, 1, 1}, {1, 66, 1, 33, 64}};
  for (size_t k = 0; k < sizeof ss / sizeof *ss; k++) {
    shape s = ss[k];
    double *h;
    sn_tensor codes = make_codes(s, 4 + k, &h);
    int64_t vsz[] = {s.B, s.T, s.H, s.Dv}, st[] = {s.B, s.H, s.bits + 1, s.Dv + 1};
    sn_tensor v = tu_make(&ctx, 4, vsz, 31, 1.0, 0.0);
    sn_tensor out = tu_empty(&ctx, SN_F32, 4, vsz), fin = tu_empty(&ctx, SN_F32, 4, st);
    cr_assert_eq(sn_binary_attention_fwd(&ctx, &out, NULL, &fin, &codes, &v, NULL, s.bits), SN_OK, "%s", ctx.err);
    sn_tensor state = tu_empty(&ctx, SN_F32, 4, st);
    memset(sn_data(&state), 0, sizeof(float) * (size_t)sn_numel(&state));
    sn_tensor c1 = tu_empty(&ctx, SN_I64, 3, (int64_t[]){s.B, 1, s.H});
    sn_tensor v1 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){s.B, 1, s.H, s.Dv}), o1 = tu_empty(&ctx, SN_F32, 4, v1.size);
    double worst = 0;
    for (int64_t t = 0; t < s.T; t++) {
      for (int64_t b = 0; b < s.B; b++)
        for (int64_t hd = 0; hd < s.H; hd++) {
          sn_i64(&c1)[b * s.H + hd] = sn_i64(&codes)[(b * s.T + t) * s.H + hd];
          memcpy(sn_f32(&v1) + (b * s.H + hd) * s.Dv, sn_f32(&v) + ((b * s.T + t) * s.H + hd) * s.Dv,
                 sizeof(float) * (size_t)s.Dv);
        }
      cr_assert_eq(sn_binary_attention_step(&ctx, &o1, &state, &c1, &v1, s.bits), SN_OK, "%s", ctx.err);
      for (int64_t b = 0; b < s.B; b++)
        for (int64_t i = 0; i < s.H * s.Dv; i++) {
          double a = sn_f32(&o1)[b * s.H * s.Dv + i], r = sn_f32(&out)[(b * s.T + t) * s.H * s.Dv + i];
          double e = fabs(a - r) / (1e-6 + 1e-5 * fabs(r));
          worst = e > worst ? e : worst;
        }
    }
    cr_expect_leq(worst, 1.0, "step vs fwd, bits %d", s.bits);
    cr_expect(same_bits(&state, &fin), "the step's state has the forward's bits, bits %d", s.bits);
    sn_tensor *all[] = {&codes, &v, &out, &fin, &state, &c1, &v1, &o1};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
    free(h);
  }
}

Test(binary_attention, rejects_bad_arguments) {
  shape s = {2, 5, 3, 4, 7};
  double *h;
  sn_tensor codes = make_codes(s, 1, &h);
  sn_tensor v = tu_make(&ctx, 4, (int64_t[]){2, 5, 3, 4}, 1, 1.0, 0.0);
  sn_tensor v3 = tu_make(&ctx, 4, (int64_t[]){2, 5, 2, 4}, 1, 1.0, 0.0);
  sn_tensor out = tu_empty(&ctx, SN_F32, 4, v.size);
  cr_expect_eq(sn_binary_attention_fwd(&ctx, &out, NULL, NULL, &codes, &v, NULL, 0), SN_EINVAL);
  cr_expect(strstr(ctx.err, "bits must be in 1..64, got 0"), "%s", ctx.err);
  cr_expect_eq(sn_binary_attention_fwd(&ctx, &out, NULL, NULL, &codes, &v, NULL, 65), SN_EINVAL);
  cr_expect_eq(sn_binary_attention_fwd(&ctx, &out, NULL, NULL, &codes, &v3, NULL, 7), SN_EINVAL);
  cr_expect(strstr(ctx.err, "v must be (B, T, H, Dv) = 2x5x3x?, got 2x5x2x4"), "%s", ctx.err);
  cr_expect_eq(sn_binary_attention_fwd(&ctx, &out, NULL, NULL, &codes, &codes, NULL, 7), SN_EINVAL);
  cr_expect(strstr(ctx.err, "v must be f32, got i64"), "%s", ctx.err);
  sn_i64(&codes)[7] = 1 << 7;
  cr_expect_eq(sn_binary_attention_fwd(&ctx, &out, NULL, NULL, &codes, &v, NULL, 7), SN_EINVAL);
  cr_expect(strstr(ctx.err, "code 128 at (b=0, t=2, h=1) has bits at or above bits = 7"), "%s", ctx.err);
  sn_i64(&codes)[7] = -1; /* all 64 bits: fine for bits = 64 */
  cr_expect_eq(sn_binary_attention_fwd(&ctx, &out, NULL, NULL, &codes, &v, NULL, 64), SN_OK, "%s", ctx.err);
  sn_tensor bad_state = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 3, 7, 5});
  sn_i64(&codes)[7] = 3;
  cr_expect_eq(sn_binary_attention_fwd(&ctx, &out, NULL, NULL, &codes, &v, &bad_state, 7), SN_EINVAL);
  cr_expect(strstr(ctx.err, "initial_state must be an f32 tensor (B, H, bits+1, Dv+1) = 2x3x8x5, got f32 2x3x7x5"), "%s",
            ctx.err);
  sn_tensor c1 = tu_empty(&ctx, SN_I64, 3, (int64_t[]){2, 1, 3});
  memset(sn_data(&c1), 0, 6 * sizeof(int64_t));
  sn_tensor o1 = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 1, 3, 4});
  cr_expect_eq(sn_binary_attention_step(&ctx, &o1, &bad_state, &c1, &v, 7), SN_EINVAL); /* v has T = 5 */
  cr_expect(strstr(ctx.err, "binary_attention_step: v must be (B, T, H, Dv) = 2x1x3x?, got 2x5x3x4"), "%s", ctx.err);
  sn_tensor ybig = tu_empty(&ctx, SN_F32, 4, (int64_t[]){2, 5, 3, 65});
  cr_expect_eq(sn_binary_attention_pack(&ctx, &codes, &ybig), SN_EINVAL);
  cr_expect(strstr(ctx.err, "1..64 bits"), "%s", ctx.err);
  sn_tensor *all[] = {&codes, &v, &v3, &out, &bad_state, &c1, &o1, &ybig};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) sn_tensor_release(all[i]);
  free(h);
}
