/* kernels/binary_attention.c -- EcoFormer's causal binary-code attention (math in seqnn.h).
 *
 * One task per (batch, head) sweeps the sequence chunk by chunk (simd/binary_attention.h):
 * the intra-chunk similarities come from popcounts of the packed codes, the earlier chunks
 * through the (bits+1) x (Dv+1) prefix state, updated with adds and subtracts only. Every
 * output has one writer and a head's arithmetic does not depend on its task or on the
 * table (portable, AVX2, AVX-512 VPOPCNTDQ), so results have the same bits for any thread
 * count and any SIMD level.
 * bwd recomputes the state entering every chunk (kept in the task's scratch: ceil(T/64)
 * states per task, 1.1 MB at T = 16384, b = 16, Dv = 64), then walks the chunks from the
 * last with the gradient of the state leaving each one.
 * Codes are checked against bits before any sweep (a set bit at or above `bits` fails
 * naming the token), so a popcount never counts a bit the features do not have. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "kernels/check.h"
#include "seqnn.h"
#include "simd/binary_attention.h"
#include "simd/vec.h"

static const char *FN = "seqnn.F.binary_attention", *FN_STEP = "seqnn.F.binary_attention_step";

/* Below this many state elements touched per call (B H T (bits+1) Dv) a call runs on the
 * calling thread. */
#define PARALLEL_MIN 262144
/* Keeps every padded row and chunk offset far inside int64 and the rows in an int. */
#define MAX_DV (1 << 20)

/* The popcount table when the CPU has VPOPCNTDQ and sn_vec is AVX-512; SEQNN_SIMD=avx2 or
 * scalar lowers it with the rest of the library. */
static const sn_ba_ops *ba_ops(void) {
  const char *n = sn_vec->name;
  if (strcmp(n, "avx512") == 0 && __builtin_cpu_supports("avx512vpopcntdq")) return &sn_ba_avx512;
  if (strcmp(n, "scalar") != 0 && __builtin_cpu_supports("popcnt")) return &sn_ba_avx2;
  return &sn_ba_scalar;
}

const char *sn_binary_attention_impl(void) { return ba_ops()->name; }

static int64_t pad(int64_t n) { return (n + BA_PAD - 1) / BA_PAD * BA_PAD; }

typedef struct problem {
  int64_t B, T, H, Dv, Dp, bp;
  int bits;
} problem;

static sn_status check_bits(sn_ctx *ctx, const char *fn, int bits) {
  if (bits < 1 || bits > 64) return sn_fail(ctx, SN_EINVAL, "%s: bits must be in 1..64, got %d", fn, bits);
  return SN_OK;
}

/* codes (B,T,H) contiguous i64 and v (B,T,H,Dv) f32 with a unit-stride last dim; fills P. */
static sn_status check_inputs(sn_ctx *ctx, const char *fn, problem *P, const sn_tensor *codes, const sn_tensor *v,
                              int bits) {
  char a[160], b[160];
  sn_status st = check_bits(ctx, fn, bits);
  if (st != SN_OK) return st;
  if (!codes || !v) return sn_fail(ctx, SN_EINVAL, "%s: %s must not be NULL", fn, codes ? "v" : "codes");
  if (codes->dtype != SN_I64 || codes->ndim != 3 || !sn_is_contiguous(codes))
    return sn_fail(ctx, SN_EINVAL, "%s: codes must be a contiguous i64 tensor (B, T, H), got %s %s", fn,
                   sn_dtype_name(codes->dtype), sn_shape_str(codes, a, sizeof a));
  st = check_in(ctx, fn, "v", v, "(B, T, H, Dv)", 4, (int64_t[]){codes->size[0], codes->size[1], codes->size[2], -1});
  if (st != SN_OK) return st;
  if (v->size[3] < 1 || v->size[3] > MAX_DV)
    return sn_fail(ctx, SN_EINVAL, "%s: v's head dim must be in 1..%d, got %s (codes: %s)", fn, MAX_DV,
                   sn_shape_str(v, a, sizeof a), sn_shape_str(codes, b, sizeof b));
  *P = (problem){.B = v->size[0], .T = v->size[1], .H = v->size[2], .Dv = v->size[3], .bits = bits};
  P->Dp = pad(P->Dv + 1);
  P->bp = pad(bits);
  return SN_OK;
}

/* A state (B, H, bits+1, Dv+1): any strides (read or written once per call). */
static sn_status check_state(sn_ctx *ctx, const char *fn, const char *name, const sn_tensor *s, const problem *P) {
  char a[160], b[160];
  if (!s) return SN_OK;
  int64_t want[] = {P->B, P->H, P->bits + 1, P->Dv + 1};
  bool ok = s->dtype == SN_F32 && s->ndim == 4;
  for (int i = 0; ok && i < 4; i++) ok = s->size[i] == want[i];
  if (!ok)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be an f32 tensor (B, H, bits+1, Dv+1) = %s, got %s %s", fn, name,
                   check_dims(b, sizeof b, 4, want), sn_dtype_name(s->dtype), sn_shape_str(s, a, sizeof a));
  return SN_OK;
}

/* Every code of (B,T,H) below 2^bits; else fails naming the first bad one. */
static sn_status check_codes(sn_ctx *ctx, const char *fn, const sn_tensor *codes, int bits) {
  if (bits == 64) return SN_OK;
  const int64_t *c = sn_i64(codes), n = sn_numel(codes);
  const uint64_t hi = ~(uint64_t)0 << bits;
  int64_t bad = -1;
  for (int64_t i = 0; i < n && bad < 0; i++)
    if ((uint64_t)c[i] & hi) bad = i;
  if (bad < 0) return SN_OK;
  int64_t H = codes->size[2], T = codes->size[1];
  return sn_fail(ctx, SN_EINVAL, "%s: code %lld at (b=%lld, t=%lld, h=%lld) has bits at or above bits = %d", fn,
                 (long long)c[bad], (long long)(bad / H / T), (long long)(bad / H % T), (long long)(bad % H), bits);
}

/* State (b, h) of a strided (B, H, bits+1, Dv+1) tensor into / out of padded rows. */
static void state_in(float *S, const sn_tensor *t, int64_t b, int64_t h, const problem *P) {
  memset(S, 0, (size_t)((P->bits + 1) * P->Dp) * sizeof(float));
  if (!t) return;
  const float *p = sn_f32(t) + b * t->stride[0] + h * t->stride[1];
  for (int n = 0; n <= P->bits; n++)
    for (int64_t j = 0; j <= P->Dv; j++) S[n * P->Dp + j] = p[n * t->stride[2] + j * t->stride[3]];
}

static void state_out(sn_tensor *t, const float *S, int64_t b, int64_t h, const problem *P) {
  float *p = sn_f32(t) + ((b * P->H + h) * (P->bits + 1)) * (P->Dv + 1);
  for (int n = 0; n <= P->bits; n++) memcpy(p + n * (P->Dv + 1), S + n * P->Dp, (size_t)(P->Dv + 1) * sizeof(float));
}

/* Carves one task's scratch (ba_scratch_floats of it) into s's buffers. */
static void carve(ba_seq *s, float *p, const problem *P, bool bwd) {
  int64_t st = (P->bits + 1) * P->Dp;
  s->S = p, p += st;
  s->V = p, p += BA_CHUNK * P->Dp;
  s->U = p, p += BA_CHUNK * P->Dp;
  s->W = p, p += BA_CHUNK * BA_CHUNK;
  s->acc = p, p += P->Dp;
  if (!bwd) return;
  s->D = p, p += st;
  s->Hf = p, p += BA_CHUNK * P->bp;
  s->dhb = p, p += BA_CHUNK * P->bp;
  s->dS = p, p += BA_CHUNK * BA_CHUNK;
  s->VT = p, p += P->Dp * BA_CHUNK;
  s->ST = p, p += P->Dp * P->bp;
  s->DT = p, p += P->Dp * P->bp;
  s->states = p;
}

static bool worth_threads(const problem *P) {
  return P->B * P->H > 1 && (double)P->B * P->H * P->T * (P->bits + 1) * P->Dv >= PARALLEL_MIN;
}

/* Scratch for nt tasks of per floats each (rounded to a cache line). */
static float *scratch(sn_ctx *ctx, int nt, int64_t per) {
  if ((double)nt * (double)per * sizeof(float) > (double)SN_MAX_BYTES) {
    sn_fail(ctx, SN_ENOMEM, "seqnn.F.binary_attention: scratch of %d x %lld floats is too large", nt, (long long)per);
    return NULL;
  }
  return sn_ctx_workspace(ctx, (size_t)nt * (size_t)per * sizeof(float));
}

sn_status sn_binary_attention_pack(sn_ctx *ctx, sn_tensor *codes, const sn_tensor *y) {
  const char *fn = FN;
  char a[160], b[160];
  sn_status st = check_in(ctx, fn, "y", y, "(B, T, H, bits)", 4, NULL);
  if (st != SN_OK) return st;
  int bits = (int)(y->size[3] > 64 ? 65 : y->size[3]);
  if (bits < 1 || bits > 64)
    return sn_fail(ctx, SN_EINVAL, "%s: y must have 1..64 bits in its last dim, got %s", fn,
                   sn_shape_str(y, a, sizeof a));
  if (!codes || codes->dtype != SN_I64 || codes->ndim != 3 || !sn_is_contiguous(codes) ||
      codes->size[0] != y->size[0] || codes->size[1] != y->size[1] || codes->size[2] != y->size[2])
    return sn_fail(ctx, SN_EINVAL, "%s: codes must be a contiguous i64 tensor (B, T, H) = %s, got %s", fn,
                   check_dims(b, sizeof b, 3, y->size), codes ? sn_shape_str(codes, a, sizeof a) : "NULL");
  int64_t B = y->size[0], T = y->size[1], H = y->size[2];
  int64_t *c = sn_i64(codes);
  const float *py = sn_f32(y);
#pragma omp parallel for schedule(static) if (B * T * H * bits >= PARALLEL_MIN)
  for (int64_t i = 0; i < B * T; i++) {
    const float *row = py + (i / T) * y->stride[0] + (i % T) * y->stride[1];
    for (int64_t h = 0; h < H; h++) {
      uint64_t code = 0;
      /* y >= 0 is +1 (sign(0) = +1); NaN compares false and packs as -1 */
      for (int n = 0; n < bits; n++) code |= (uint64_t)(row[h * y->stride[2] + n] >= 0.0f) << n;
      c[i * H + h] = (int64_t)code;
    }
  }
  return SN_OK;
}

sn_status sn_binary_attention_fwd(sn_ctx *ctx, sn_tensor *out, sn_tensor *den, sn_tensor *final_state,
                                  const sn_tensor *codes, const sn_tensor *v, const sn_tensor *initial_state,
                                  int bits) {
  problem P;
  sn_status st = check_inputs(ctx, FN, &P, codes, v, bits);
  if (st == SN_OK) st = check_state(ctx, FN, "initial_state", initial_state, &P);
  if (st == SN_OK) st = check_out(ctx, FN, "out", out, false, 4, (int64_t[]){P.B, P.T, P.H, P.Dv});
  if (st == SN_OK) st = check_out(ctx, FN, "den", den, true, 3, (int64_t[]){P.B, P.T, P.H});
  if (st == SN_OK) st = check_out(ctx, FN, "final_state", final_state, true, 4, (int64_t[]){P.B, P.H, bits + 1, P.Dv + 1});
  if (st == SN_OK) st = check_codes(ctx, FN, codes, bits);
  if (st != SN_OK) return st;
  if (P.B * P.H == 0) return SN_OK;
  int nt = omp_get_max_threads();
  int64_t per = pad(ba_scratch_floats(P.T, bits, P.Dp, P.bp, 0));
  /* den is the forward's by-product; without a den tensor it goes to scratch */
  int64_t den_scratch = den ? 0 : pad(P.T);
  float *ws = scratch(ctx, nt, per + den_scratch);
  if (!ws) return SN_ENOMEM;
  const sn_ba_ops *ops = ba_ops();
  const int64_t *pc = sn_i64(codes);
  const float *pv = sn_f32(v);
  float *po = sn_f32(out), *pd = den ? sn_f32(den) : NULL;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (worth_threads(&P))
  for (int64_t it = 0; it < P.B * P.H; it++) {
    int64_t b = it / P.H, h = it % P.H;
    float *mine = ws + omp_get_thread_num() * (per + den_scratch);
    ba_seq s = {.T = P.T, .Dv = P.Dv, .Dp = P.Dp, .bp = P.bp, .bits = bits,
                .codes = pc + b * P.T * P.H + h, .cs = P.H,
                .v = pv + b * v->stride[0] + h * v->stride[2], .vs = v->stride[1],
                .out = po + (b * P.T * P.H + h) * P.Dv, .os = P.H * P.Dv,
                .den = pd ? pd + b * P.T * P.H + h : mine + per, .ds = pd ? P.H : 1};
    carve(&s, mine, &P, false);
    state_in(s.S, initial_state, b, h, &P);
    ops->fwd(&s);
    if (final_state) state_out(final_state, s.S, b, h, &P);
  }
  return SN_OK;
}

sn_status sn_binary_attention_bwd(sn_ctx *ctx, sn_tensor *dv, sn_tensor *dh, sn_tensor *dinitial,
                                  const sn_tensor *out, const sn_tensor *den, const sn_tensor *dout,
                                  const sn_tensor *dfinal, const sn_tensor *codes, const sn_tensor *v,
                                  const sn_tensor *initial_state, const sn_tensor *y, int bits) {
  problem P;
  sn_status st = check_inputs(ctx, FN, &P, codes, v, bits);
  if (st != SN_OK) return st;
  int64_t bthd[] = {P.B, P.T, P.H, P.Dv}, bth[] = {P.B, P.T, P.H}, bthb[] = {P.B, P.T, P.H, bits};
  st = check_state(ctx, FN, "initial_state", initial_state, &P);
  if (st == SN_OK) st = check_state(ctx, FN, "dfinal", dfinal, &P);
  if (st == SN_OK) st = check_in(ctx, FN, "dout", dout, "(B, T, H, Dv)", 4, bthd);
  if (st == SN_OK) st = check_opt(ctx, FN, "y", y, "(B, T, H, bits)", 4, bthb);
  /* the forward's own outputs, as it made them */
  if (st == SN_OK) st = check_out(ctx, FN, "out", out, false, 4, bthd);
  if (st == SN_OK) st = check_out(ctx, FN, "den", den, false, 3, bth);
  if (st == SN_OK) st = check_out(ctx, FN, "dv", dv, false, 4, bthd);
  if (st == SN_OK) st = check_out(ctx, FN, "dh", dh, false, 4, bthb);
  if (st == SN_OK) st = check_out(ctx, FN, "dinitial", dinitial, true, 4, (int64_t[]){P.B, P.H, bits + 1, P.Dv + 1});
  if (st == SN_OK) st = check_codes(ctx, FN, codes, bits);
  if (st != SN_OK) return st;
  if (P.B * P.H == 0) return SN_OK;
  int nt = omp_get_max_threads();
  int64_t per = pad(ba_scratch_floats(P.T, bits, P.Dp, P.bp, 1));
  float *ws = scratch(ctx, nt, per);
  if (!ws) return SN_ENOMEM;
  const sn_ba_ops *ops = ba_ops();
  const int64_t *pc = sn_i64(codes);
  const float *pv = sn_f32(v), *pg = sn_f32(dout), *po = sn_f32(out), *pd = sn_f32(den);
  float *pdv = sn_f32(dv), *pdh = sn_f32(dh);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (worth_threads(&P))
  for (int64_t it = 0; it < P.B * P.H; it++) {
    int64_t b = it / P.H, h = it % P.H;
    ba_seq s = {.T = P.T, .Dv = P.Dv, .Dp = P.Dp, .bp = P.bp, .bits = bits,
                .codes = pc + b * P.T * P.H + h, .cs = P.H,
                .v = pv + b * v->stride[0] + h * v->stride[2], .vs = v->stride[1],
                .out = (float *)po + (b * P.T * P.H + h) * P.Dv, .os = P.H * P.Dv,
                .den = (float *)pd + b * P.T * P.H + h, .ds = P.H,
                .g = pg + b * dout->stride[0] + h * dout->stride[2], .gs = dout->stride[1],
                .dv = pdv + (b * P.T * P.H + h) * P.Dv,
                .dh = pdh + (b * P.T * P.H + h) * bits, .hs = P.H * bits};
    carve(&s, ws + omp_get_thread_num() * per, &P, true);
    state_in(s.S, initial_state, b, h, &P);
    state_in(s.D, dfinal, b, h, &P);
    ops->bwd(&s);
    if (dinitial) state_out(dinitial, s.D, b, h, &P);
    if (y) {
      /* straight-through: the gradient of sign(y) is taken as 1 inside |y| < 1 */
      const float *py = sn_f32(y) + b * y->stride[0] + h * y->stride[2];
      for (int64_t t = 0; t < P.T; t++)
        for (int n = 0; n < bits; n++)
          if (!(fabsf(py[t * y->stride[1] + n]) < 1.0f)) s.dh[t * s.hs + n] = 0.0f;
    }
  }
  return SN_OK;
}

sn_status sn_binary_attention_step(sn_ctx *ctx, sn_tensor *out, sn_tensor *state, const sn_tensor *codes,
                                   const sn_tensor *v, int bits) {
  problem P;
  sn_status st = check_inputs(ctx, FN_STEP, &P, codes, v, bits);
  char a[160];
  if (st == SN_OK && P.T != 1)
    st = sn_fail(ctx, SN_EINVAL, "%s: one token at a time: v must be (B, 1, H, Dv), got %s", FN_STEP,
                 sn_shape_str(v, a, sizeof a));
  if (st == SN_OK) st = check_out(ctx, FN_STEP, "state", state, false, 4, (int64_t[]){P.B, P.H, bits + 1, P.Dv + 1});
  if (st == SN_OK) st = check_out(ctx, FN_STEP, "out", out, false, 4, (int64_t[]){P.B, 1, P.H, P.Dv});
  if (st == SN_OK) st = check_codes(ctx, FN_STEP, codes, bits);
  if (st != SN_OK) return st;
  if (P.B * P.H == 0) return SN_OK;
  int nt = omp_get_max_threads();
  float *ws = scratch(ctx, nt, P.Dp);
  if (!ws) return SN_ENOMEM;
  const sn_ba_ops *ops = ba_ops();
  float *ps = sn_f32(state), *po = sn_f32(out);
  const float *pv = sn_f32(v);
  const int64_t *pc = sn_i64(codes);
  int64_t n = (bits + 1) * (P.Dv + 1);
#pragma omp parallel for schedule(static) num_threads(nt) if (P.B * P.H > 1 && (double)P.B * P.H * n >= PARALLEL_MIN)
  for (int64_t it = 0; it < P.B * P.H; it++) {
    int64_t b = it / P.H, h = it % P.H;
    ops->step(po + it * P.Dv, ps + it * n, ws + omp_get_thread_num() * P.Dp, (uint64_t)pc[it],
              pv + b * v->stride[0] + h * v->stride[2], P.Dv, bits);
  }
  return SN_OK;
}
