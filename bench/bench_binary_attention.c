/* bench_binary_attention.c -- kernels/binary_attention.c (EcoFormer's causal binary-code
 * attention) at B = 1, H = 8, Dv = 64, b = 16 bits, T = 512 .. 16384, against
 *   - the naive O(T^2) loop (popcount similarities, one query at a time; T <= 1024, where it
 *     is also the correctness check of the kernel: the rows of larger T are timed only), and
 *   - causal softmax attention (kernels/attention.c, Dh = 64, same B, H) up to T = 8192,
 *     timed alternately with it in the same run: x_ref = attention's time / ours.
 * FLOPs per token and head (additions included: the state work is add-only), C = 64:
 *   fwd  C (Dv+1) + 3 (b+1)(Dv+1) + Dv     (intra-chunk weights x v~, q~^T S, the state
 *                                           update, the division)
 *   bwd  2 C (Dv+1) + 2 C b + 4 b (Dv+1) + 3 (b+1)(Dv+1)   (dv and ds in the chunk, their
 *                                           products with h, the inter-chunk dot products,
 *                                           the recomputed and the backward state updates)
 * attention counts 2 T^2 Dh per head forward (QK^T and PV over the causal half) and 2.5x
 * that backward. "per token x" is the time per token relative to T = 1024, the two cases
 * timed alternately in the same samples (1.00: linear in T). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static sn_ctx ctx;

#define B_ 1
#define H_ 8
#define D_ 64
#define BITS 16
#define C_ 64.0

typedef struct {
  int64_t T;
  bool bwd;
  sn_tensor codes, v, out, den, dout, dv, dh;
  sn_tensor q, k, o, lse, dq, dk, dva; /* attention's (v shared) */
  float *ref;
} ba_case;

static double flops_per_token(bool bwd) {
  double Dv1 = D_ + 1, b = BITS;
  double f = C_ * Dv1 + 3 * (b + 1) * Dv1 + D_;
  if (bwd) f += 2 * C_ * Dv1 + 2 * C_ * b + 4 * b * Dv1 + 3 * (b + 1) * Dv1;
  return f * B_ * H_;
}

static bool make_case(ba_case *c, int64_t T, bool attention) {
  memset(c, 0, sizeof *c);
  c->T = T;
  int64_t btd[] = {B_, T, H_, D_}, bth[] = {B_, T, H_}, bthb[] = {B_, T, H_, BITS}, bht[] = {B_, H_, T};
  if (sn_tensor_empty(&ctx, &c->codes, SN_I64, 3, bth) != SN_OK || sn_tensor_empty(&ctx, &c->den, SN_F32, 3, bth) ||
      sn_tensor_empty(&ctx, &c->dh, SN_F32, 4, bthb))
    return false;
  sn_tensor *four[] = {&c->v, &c->out, &c->dout, &c->dv};
  for (int i = 0; i < 4; i++) {
    if (sn_tensor_empty(&ctx, four[i], SN_F32, 4, btd) != SN_OK) return false;
    bench_fill(sn_f32(four[i]), sn_numel(four[i]), (uint32_t)i + 31);
  }
  uint64_t x = 12345;
  for (int64_t i = 0; i < sn_numel(&c->codes); i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    sn_i64(&c->codes)[i] = (int64_t)((x >> 33) & ((1u << BITS) - 1));
  }
  if (!attention) return true;
  sn_tensor *att[] = {&c->q, &c->k, &c->o, &c->dq, &c->dk, &c->dva};
  for (int i = 0; i < 6; i++) {
    if (sn_tensor_empty(&ctx, att[i], SN_F32, 4, btd) != SN_OK) return false;
    bench_fill(sn_f32(att[i]), sn_numel(att[i]), (uint32_t)i + 41);
  }
  return sn_tensor_empty(&ctx, &c->lse, SN_F32, 3, bht) == SN_OK;
}

static void release_case(ba_case *c) {
  sn_tensor *ts[] = {&c->codes, &c->v, &c->out, &c->den, &c->dout, &c->dv, &c->dh,
                     &c->q, &c->k, &c->o, &c->lse, &c->dq, &c->dk, &c->dva};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sn_tensor_release(ts[i]);
  free(c->ref);
}

static sn_status fwd(ba_case *c) {
  return sn_binary_attention_fwd(&ctx, &c->out, &c->den, NULL, &c->codes, &c->v, NULL, BITS);
}

static void run_case(void *p) {
  ba_case *c = p;
  fwd(c);
  if (c->bwd)
    sn_binary_attention_bwd(&ctx, &c->dv, &c->dh, NULL, &c->out, &c->den, &c->dout, NULL, &c->codes, &c->v, NULL, NULL,
                            BITS);
}

static void run_attention(void *p) {
  ba_case *c = p;
  sn_attention_opts o = {.causal = true, .window = -1, .scale = 0.125f};
  sn_attention_fwd(&ctx, &c->o, &c->lse, &c->q, &c->k, &c->v, &o);
  if (c->bwd) sn_attention_bwd(&ctx, &c->dq, &c->dk, &c->dva, &c->dout, &c->q, &c->k, &c->v, &c->o, &c->lse, &o);
}

/* The definition, one query at a time: weights 2b + 1 - 2 popcount over every earlier key. */
static void run_reference(void *p) {
  ba_case *c = p;
  const int64_t *cd = sn_i64(&c->codes);
  const float *v = sn_f32(&c->v);
  for (int64_t h = 0; h < H_; h++)
    for (int64_t i = 0; i < c->T; i++) {
      float num[D_] = {0}, den = 0;
      for (int64_t j = 0; j <= i; j++) {
        float w = (float)(2 * BITS + 1 - 2 * __builtin_popcountll((uint64_t)(cd[i * H_ + h] ^ cd[j * H_ + h])));
        const float *vj = v + (j * H_ + h) * D_;
        for (int d = 0; d < D_; d++) num[d] += w * vj[d];
        den += w;
      }
      for (int d = 0; d < D_; d++) c->ref[(i * H_ + h) * D_ + d] = num[d] / den;
    }
}

/* The per-token time of c relative to base (T = 1024), both timed alternately sample by
 * sample: the shared machine's drift would otherwise dominate the comparison. */
static double per_token_ratio(ba_case *c, ba_case *base) {
  double t, tb;
  double x = bench_time2(run_case, c, run_case, base, &t, &tb); /* median of t_base / t_c */
  return (double)base->T / (double)c->T / x;
}

/* naive: check against the naive loop and time it alongside (else attention up to T = 8192).
 * base: the T = 1024 case of the same direction for the per-token column, or NULL. */
static void row(int64_t T, bool bwd, bool naive, double sgemm, ba_case *base) {
  ba_case c;
  char shape[64], kernel[48], ref[200], pt[48] = "";
  bool with_ref = naive, with_attn = !naive && T <= 8192;
  snprintf(shape, sizeof shape, "B%d H%d T%lld Dv%d b%d", B_, H_, (long long)T, D_, BITS);
  snprintf(kernel, sizeof kernel, "binary_attn %s", bwd ? "fwd+bwd" : "fwd");
  if (!make_case(&c, T, with_attn)) {
    bench_ok(&ctx, SN_ENOMEM, kernel, shape);
    release_case(&c);
    return;
  }
  c.bwd = bwd;
  double flops = flops_per_token(bwd) * (double)T, t, x = 0;
  if (!bench_ok(&ctx, fwd(&c), kernel, shape)) goto done;

  if (with_ref) {
    c.ref = malloc((size_t)sn_numel(&c.out) * sizeof(float));
    run_reference(&c);
    double worst = 0;
    for (int64_t i = 0; i < sn_numel(&c.out); i++) {
      double e = fabs((double)sn_f32(&c.out)[i] - c.ref[i]) / (1e-5 + 1e-4 * fabs((double)c.ref[i]));
      if (!(e <= worst)) worst = e;
    }
    if (!(worst <= 1)) {
      snprintf(ref, sizeof ref, "out: error %.3g x tolerance against the naive loop", worst);
      bench_mismatch(kernel, shape, ref);
      goto done;
    }
    double tr;
    x = bench_time2(run_case, &c, run_reference, &c, &t, &tr);
    snprintf(ref, sizeof ref, "naive O(T^2) loop; x_sgemm %.3f", flops / t / sgemm);
    bench_row(kernel, shape, t, flops, 0, x, ref);
  } else if (with_attn) {
    double ta;
    x = bench_time2(run_case, &c, run_attention, &c, &t, &ta);
    double af = 2.0 * T * T * D_ * B_ * H_ * (bwd ? 3.5 : 1.0);
    if (base) snprintf(pt, sizeof pt, "; per token x%.2f of T1024", per_token_ratio(&c, base));
    snprintf(ref, sizeof ref, "causal sn_attention (%.1f ms, %.1f GFLOP/s)%s", ta * 1e3, af / ta / 1e9, pt);
    bench_row(kernel, shape, t, flops, 0, x, ref);
  } else {
    t = bench_time(run_case, &c);
    if (base) snprintf(pt, sizeof pt, "per token x%.2f of T1024; ", per_token_ratio(&c, base));
    snprintf(ref, sizeof ref, "%sx_sgemm %.3f", pt, flops / t / sgemm);
    bench_row(kernel, shape, t, flops, 0, 0, ref);
  }
done:
  release_case(&c);
}

void bench_binary_attention(void) {
  sn_ctx_init(&ctx);
  double sgemm = bench_sgemm_rate();
  printf("# binary_attention table: %s\n", sn_binary_attention_impl());
  static const int64_t Ts[] = {512, 1024, 2048, 4096, 8192, 16384};
  row(1024, false, true, sgemm, NULL);
  for (int bwd = 0; bwd <= 1; bwd++) {
    ba_case base;
    if (!make_case(&base, 1024, false)) {
      bench_ok(&ctx, SN_ENOMEM, "binary_attn", "T1024 baseline");
      release_case(&base);
      continue;
    }
    base.bwd = bwd;
    for (size_t i = 0; i < sizeof Ts / sizeof *Ts; i++) row(Ts[i], bwd, false, sgemm, Ts[i] == 1024 ? NULL : &base);
    release_case(&base);
  }
  sn_ctx_free(&ctx);
}
