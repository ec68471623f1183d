/* kernels/linear_attention.c -- gated linear attention, chunked (math in seqnn.h).
 *
 * A task takes G adjacent heads of one sequence (heads_per_task) and sweeps their chunks of
 * CH = SN_LINATTN_CHUNK steps, head by head within a chunk, each head's state S (Dk x Dv) in
 * the task's buffers; every output has one writer and a head's arithmetic does not depend on
 * its task, so results are the same bits for any thread count. A chunk's q (scaled), k, v
 * rows are packed with Dk, Dv padded to multiples of 16 (zeros), and every product is the
 * single-threaded mm of simd/attn.h over those buffers; a product that needs B^T gets a
 * transposed copy (K^T, V^T, S^T, dS^T). Meanwhile the next chunk's rows are prefetched.
 * Within a chunk, Gamma is the cumulative log gate (Gamma_r = g_0 + .. + g_r),
 * E_r = exp(Gamma_r), F_r = exp(Gamma_last - Gamma_r), all <= 1:
 *   fwd: O = A V + (Q o E) S,   S <- diag(E_last) S + (K o F)^T V,
 *        A_rc = sum_k Q_rk K_ck exp(Gamma_rk - Gamma_ck) for c <= r (0 above the diagonal).
 *   bwd (chunks last to first, dS = dL/dS leaving the chunk; S entering it from
 *        chunk_states, never by undoing an update): dA = dO V^T (c <= r),
 *        dQ = (dO S^T) o E + [sum_c dA_rc K_c o exp(Gamma_r - Gamma_c)],
 *        dK = (V dS^T) o F + [sum_r dA_rc Q_r o exp(Gamma_r - Gamma_c)],
 *        dV = A^T dO + (K o F) dS,   dS <- diag(E_last) dS + (Q o E)^T dO.
 *   The gate gradient is the reverse cumulative sum over the whole sequence of
 *   q.dq - k.dk (per key dim; summed over Dk per head) plus, at the last step,
 *   sum_v S_T dS_T: every term depends on the gates only through differences of Gamma. It
 *   runs along with the sweep, carried in double, before the terms that cancel in it
 *   exactly are added to dq and dk (add_held).
 * Intra-chunk terms, by gate kind:
 *   none / per head: A = (Q K^T) o M with M_rc = exp(Gamma_r - Gamma_c) (1 without gates),
 *     each exponent a difference of cumulative sums in double; dA is masked alike, then
 *     dQ += dA K and dK += dA^T Q are plain products.
 *   per key dim, when the chunk's decay allows (FACTOR_SPREAD): the same products with
 *     Q o E and K o exp(-Gamma), factors within e^(+-32) whose products keep a dot
 *     product's rounding (Q o E is also the inter-chunk term's, computed once).
 *   per key dim, stronger gates: exp(-Gamma) alone would overflow, so rows go in sub-chunks
 *     of SUB = 16. For sub-chunk I at rows rho.., the pairs with earlier columns are one
 *     product of Q_r o exp(Gamma_r - Gamma_rho) and K_c o exp(Gamma_rho - Gamma_c), both
 *     <= 1 (dK: through the last row of the sub-chunk holding c); the diagonal 16 x 16
 *     blocks go pair by pair, vector over Dk. These factors are running products of the
 *     step decays exp(g), a few ulps a step, never an exp of a difference of large sums.
 * g > 0 is found while the gates are packed; the call then fails naming the first one
 *   (its outputs are left unspecified).
 * step: per (batch, head), S = diag(exp(g)) S + k v^T and o = S^T (s q), vector over Dv. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "kernels/check.h"
#include "seqnn.h"
#include "simd/attn.h"
#include "simd/vec.h"

#define CH SN_LINATTN_CHUNK
#define SUB 16 /* rows of a sub-chunk; also the column multiple of mm (ATTN_W) */
/* Below this many state elements updated per call (B H T Dk Dv) a call runs on the
 * calling thread. */
#define PARALLEL_MIN 262144
/* Larger head dims fail: keeps every padded size and product an int for mm. */
#define MAX_HEAD_DIM (1 << 20)
/* Per-key gates whose decay over a chunk (-Gamma_last in a key dim) is at most this go
 * through E and exp(-Gamma): factors stay within e^(+-32), far from overflow, and the
 * products keep a dot product's rounding. Stronger gates take the sub-chunk path. */
#define FACTOR_SPREAD 32.0
/* Per-head gates are read as max(g, GATE_FLOOR): exp underflows to 0 either way, and the
 * differences of cumulative sums stay finite (a -inf gate, a full reset, would make
 * -inf - -inf = NaN). Per-key gates need no floor: a -inf decay takes the sub-chunk path,
 * whose running products of exp(g) = 0 are exact. NaN passes. */
#define GATE_FLOOR -1000.0f

static const char *FN = "seqnn.F.gated_linear_attention";

typedef enum { GATE_NONE, GATE_HEAD, GATE_KEY } gate_kind;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }
static int64_t pad16(int64_t n) { return (n + SUB - 1) / SUB * SUB; }

/* ---- row helpers over padded lengths (n a multiple of 16) -------------------------------
 * GCC vector types of 16 floats, so each loop compiles to whole vectors on any ISA (this
 * file gets no ISA flags). Macros move them: no vector crosses a function boundary. */
typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi __attribute__((vector_size(64)));
#define LD(p) (*(const vfu *)(p))
#define ST(p, x) (*(vfu *)(p) = (x))
#define SPLAT(a) ((a) - (vf){0})
#define ANY_LANE(m) (memcmp(&(m), &(vi){0}, sizeof(vi)) != 0) /* some lane of the mask m set */

static void vmul(float *y, const float *a, const float *b, int n) {
  for (int j = 0; j < n; j += SUB) ST(y + j, LD(a + j) * LD(b + j));
}
static void vmul_add(float *y, const float *a, const float *b, int n) {
  for (int j = 0; j < n; j += SUB) ST(y + j, LD(y + j) + LD(a + j) * LD(b + j));
}
static void vscale(float *y, const float *x, float s, int n) {
  vf sv = SPLAT(s);
  for (int j = 0; j < n; j += SUB) ST(y + j, LD(x + j) * sv);
}
static void vaxpy(float *y, float s, const float *x, int n) {
  vf sv = SPLAT(s);
  for (int j = 0; j < n; j += SUB) ST(y + j, LD(y + j) + sv * LD(x + j));
}
/* y = y o a + s x: one step of a Horner sum. */
static void vhorner(float *y, const float *a, float s, const float *x, int n) {
  vf sv = SPLAT(s);
  for (int j = 0; j < n; j += SUB) ST(y + j, LD(y + j) * LD(a + j) + sv * LD(x + j));
}
static float vdot(const float *a, const float *b, int n) {
  vf s = {0};
  for (int j = 0; j < n; j += SUB) s += LD(a + j) * LD(b + j);
  float r = 0;
  for (int l = 0; l < SUB; l++) r += s[l];
  return r;
}
static void vfill(float *y, float a, int n) {
  for (int j = 0; j < n; j++) y[j] = a;
}

typedef float v4 __attribute__((vector_size(16)));
typedef float v4u __attribute__((vector_size(16), aligned(4)));
typedef int v4i __attribute__((vector_size(16)));

/* dst[j][i] = src[i][j] (rows ldd and lds floats apart) for i < rows_pad (a multiple of 4)
 * and j < cols_pad, zero for i >= rows or j >= cols: 4 x 4 blocks through shuffles. */
static void transpose(float *dst, int64_t ldd, const float *src, int64_t lds, int rows, int rows_pad, int cols,
                      int cols_pad) {
  int c4 = cols / 4 * 4;
  for (int i0 = 0; i0 < rows_pad; i0 += 4) {
    int j = 0;
    if (i0 + 4 <= rows)
      for (; j < c4; j += 4) {
        const float *s0 = src + i0 * lds + j;
        v4 a = *(const v4u *)s0, b = *(const v4u *)(s0 + lds), c = *(const v4u *)(s0 + 2 * lds), d = *(const v4u *)(s0 + 3 * lds);
        v4 ab0 = __builtin_shuffle(a, b, (v4i){0, 4, 1, 5}), ab1 = __builtin_shuffle(a, b, (v4i){2, 6, 3, 7});
        v4 cd0 = __builtin_shuffle(c, d, (v4i){0, 4, 1, 5}), cd1 = __builtin_shuffle(c, d, (v4i){2, 6, 3, 7});
        *(v4u *)(dst + j * ldd + i0) = __builtin_shuffle(ab0, cd0, (v4i){0, 1, 4, 5});
        *(v4u *)(dst + (j + 1) * ldd + i0) = __builtin_shuffle(ab0, cd0, (v4i){2, 3, 6, 7});
        *(v4u *)(dst + (j + 2) * ldd + i0) = __builtin_shuffle(ab1, cd1, (v4i){0, 1, 4, 5});
        *(v4u *)(dst + (j + 3) * ldd + i0) = __builtin_shuffle(ab1, cd1, (v4i){2, 3, 6, 7});
      }
    for (; j < cols_pad; j++)
      for (int i = 0; i < 4; i++) dst[j * ldd + i0 + i] = i0 + i < rows && j < cols ? src[(i0 + i) * lds + j] : 0;
  }
}

/* ---- prefetch ------------------------------------------------------------------------------
 * While a chunk computes, the next one's rows (strided rows far apart, which the hardware
 * prefetcher does not follow) are fetched into L2 a few lines at a time, between row blocks
 * of the products (see mm_rows): a burst of prefetches only stalls on the line fill buffers
 * instead of the copies that follow (measured: no gain; spread, the copies take half as long). */
typedef struct {
  const float *p;
  int64_t rs, n; /* rows rs floats apart, n floats each */
  int rows;
  bool write;
} pf_rows;

typedef struct {
  pf_rows a[12];
  int n;
  int k, r;     /* cursor: array, row */
  int64_t j;    /* and float within the row */
  int step;     /* lines per step */
} pf_plan;

static void pf_add(pf_plan *pl, const float *p, int64_t rs, int64_t n, int rows, bool write) {
  if (p && rows > 0 && n > 0) pl->a[pl->n++] = (pf_rows){p, rs, n, rows, write};
}

/* Spreads the plan's lines over about `steps` calls of pf_step. */
static void pf_start(pf_plan *pl, int64_t steps) {
  int64_t lines = 0;
  for (int k = 0; k < pl->n; k++) lines += pl->a[k].rows * ((pl->a[k].n + SUB - 1) / SUB + 1);
  pl->k = pl->r = 0, pl->j = 0;
  pl->step = (int)min64(32, 2 + lines / (steps > 0 ? steps : 1));
}

/* The next few lines of the plan: each row's lines from its start, and its last float's
 * (a row not 64-byte aligned reaches one line further). */
static void pf_step(pf_plan *pl) {
  for (int i = 0; i < pl->step && pl->k < pl->n; i++) {
    const pf_rows *a = &pl->a[pl->k];
    const float *x = a->p + pl->r * a->rs + (pl->j < a->n ? pl->j : a->n - 1);
    if (a->write) __builtin_prefetch(x, 1, 2);
    else __builtin_prefetch(x, 0, 2);
    pl->j += SUB;
    if (pl->j < a->n || (pl->j < a->n + SUB - 1 && ((uintptr_t)(a->p + pl->r * a->rs) & 63))) continue;
    pl->j = 0;
    if (++pl->r == a->rows) pl->r = 0, pl->k++;
  }
}

/* ---- problem and validation -------------------------------------------------------------- */

/* A view with unit stride on the last dim: element (i, j, l, m) at p + i s0 + j s1 + l s2 + m
 * (3 dims: (i, j, l) at p + i s0 + j s1 + l s2). */
typedef struct {
  const float *p;
  int64_t s0, s1, s2;
} view;

static view view_of(const sn_tensor *t) {
  if (!t) return (view){NULL, 0, 0, 0};
  return (view){sn_f32(t), t->stride[0], t->stride[1], t->stride[2]};
}

static const float *row(view v, int64_t i, int64_t j, int64_t l) { return v.p + i * v.s0 + j * v.s1 + l * v.s2; }

typedef struct {
  int64_t B, T, H, Dk, Dv, chunks;
  int Kp, Vp; /* Dk, Dv padded to multiples of 16 */
  int64_t G;  /* heads per task (see heads_per_task) */
  gate_kind gate;
  view q, k, v, g, h0; /* h0: (B, H, Dk, Dv) */
  float scale;
} problem;

/* The first i < n with x[i] > 0 (NaN is not), or -1; sixteen at a time. */
static int64_t first_positive(const float *x, int64_t n) {
  int64_t j = 0;
  for (; j + SUB <= n; j += SUB) {
    vi pos = LD(x + j) > (vf){0};
    if (ANY_LANE(pos)) break;
  }
  for (; j < n; j++)
    if (x[j] > 0) return j;
  return -1;
}

/* The failure for g's element at row-major index flat, which is > 0. */
static sn_status positive_gate(sn_ctx *ctx, const sn_tensor *g, int64_t flat) {
  int64_t at[4], off = 0;
  for (int d = g->ndim - 1; d >= 0; d--) at[d] = flat % g->size[d], flat /= g->size[d], off += at[d] * g->stride[d];
  double x = sn_f32(g)[off];
  if (g->ndim == 3)
    return sn_fail(ctx, SN_EINVAL, "%s: g must be <= 0 (a log forget gate), got g[%lld, %lld, %lld] = %g", FN,
                   (long long)at[0], (long long)at[1], (long long)at[2], x);
  return sn_fail(ctx, SN_EINVAL, "%s: g must be <= 0 (a log forget gate), got g[%lld, %lld, %lld, %lld] = %g", FN,
                 (long long)at[0], (long long)at[1], (long long)at[2], (long long)at[3], x);
}

/* g: (B, T, H) or (B, T, H, Dk) for the given (B, T, H, Dk); with scan, every value <= 0
 * (NaN passes). The sequence kernels check the values as they read them (pack_gates). */
static sn_status need_gates(sn_ctx *ctx, const sn_tensor *g, const int64_t *bthk, const char *t_name, bool scan) {
  char a[160], b[160], layout[48];
  snprintf(layout, sizeof layout, "(B, %s, H) or (B, %s, H, Dk)", t_name, t_name);
  if (g->dtype == SN_F32 && g->ndim != 3 && g->ndim != 4)
    return sn_fail(ctx, SN_EINVAL, "%s: g must be %s = %s or %s, got %s", FN, layout, check_dims(a, sizeof a, 3, bthk),
                   check_dims(b, sizeof b, 4, bthk), sn_shape_str(g, (char[160]){0}, 160));
  snprintf(layout, sizeof layout, g->ndim == 3 ? "(B, %s, H)" : "(B, %s, H, Dk)", t_name);
  sn_status st = check_in(ctx, FN, "g", g, layout, g->ndim, bthk);
  if (st != SN_OK || !scan) return st;
  int64_t n = g->size[g->ndim - 1], rows = n ? sn_numel(g) / n : 0;
  for (int64_t r = 0; r < rows; r++) {
    int64_t off = 0, i = r;
    for (int d = g->ndim - 2; d >= 0; d--) off += i % g->size[d] * g->stride[d], i /= g->size[d];
    int64_t m = first_positive(sn_f32(g) + off, n);
    if (m >= 0) return positive_gate(ctx, g, r * n + m);
  }
  return SN_OK;
}

static sn_status need_head_dims(sn_ctx *ctx, const sn_tensor *q, const sn_tensor *v) {
  char a[160], b[160];
  int64_t Dk = q->size[3], Dv = v->size[3];
  if (Dk < 1 || Dv < 1 || Dk > MAX_HEAD_DIM || Dv > MAX_HEAD_DIM)
    return sn_fail(ctx, SN_EINVAL, "%s: head dims Dk and Dv must be in [1, %d], got Dk = %lld, Dv = %lld (q: %s, v: %s)",
                   FN, MAX_HEAD_DIM, (long long)Dk, (long long)Dv, sn_shape_str(q, a, sizeof a),
                   sn_shape_str(v, b, sizeof b));
  return SN_OK;
}

static sn_status need_scale(sn_ctx *ctx, const sn_linattn_opts *opts) {
  if (!opts) return sn_fail(ctx, SN_EINVAL, "%s: opts must not be NULL", FN);
  if (!isfinite(opts->scale)) return sn_fail(ctx, SN_EINVAL, "%s: scale must be finite, got %g", FN, (double)opts->scale);
  return SN_OK;
}

/* q, k (B,T,H,Dk), v (B,T,H,Dv), g and opts of the sequence kernels; fills P. */
static sn_status check_inputs(sn_ctx *ctx, problem *P, const sn_tensor *q, const sn_tensor *k, const sn_tensor *v,
                              const sn_tensor *g, const sn_linattn_opts *opts) {
  sn_status st = check_in(ctx, FN, "q", q, "(B, T, H, Dk)", 4, (int64_t[]){-1, -1, -1, -1});
  if (st == SN_OK) st = check_in(ctx, FN, "k", k, "(B, T, H, Dk) like q", 4, q->size);
  if (st == SN_OK) st = check_in(ctx, FN, "v", v, "(B, T, H, Dv)", 4, (int64_t[]){q->size[0], q->size[1], q->size[2], -1});
  if (st == SN_OK) st = need_head_dims(ctx, q, v);
  if (st == SN_OK && g) st = need_gates(ctx, g, q->size, "T", false);
  if (st == SN_OK) st = need_scale(ctx, opts);
  if (st != SN_OK) return st;
  int64_t B = q->size[0], H = q->size[2], Dk = q->size[3], Dv = v->size[3];
  st = check_opt(ctx, FN, "initial_state", opts->initial_state, "(B, H, Dk, Dv)", 4, (int64_t[]){B, H, Dk, Dv});
  if (st != SN_OK) return st;
  *P = (problem){.B = B, .T = q->size[1], .H = H, .Dk = Dk, .Dv = Dv, .chunks = (q->size[1] + CH - 1) / CH,
                 .Kp = (int)pad16(Dk), .Vp = (int)pad16(Dv), .gate = !g ? GATE_NONE : g->ndim == 3 ? GATE_HEAD : GATE_KEY,
                 .q = view_of(q), .k = view_of(k), .v = view_of(v), .g = view_of(g),
                 .h0 = view_of(opts->initial_state), .scale = opts->scale};
  return SN_OK;
}

/* ---- per-thread buffers -------------------------------------------------------------------- */

typedef struct {
  float *Qs, *K, *V, *dO;     /* the chunk's rows: CH x Kp (q scaled), CH x Kp, CH x Vp, CH x Vp */
  float *Kt, *Vt;             /* K^T (also K~^T of a sub-chunk) Kp x CH, V^T Vp x CH */
  float *A, *dA;              /* CH x CH */
  float *O, *dQ, *dK;         /* O (fwd) or dV (bwd) CH x Vp; dQ, dK CH x Kp */
  float *S, *St, *dS, *dSt;   /* Kp x Vp and transposes */
  float *E, *F, *al;          /* exp(Gamma), exp(Gamma_last - Gamma), exp(g): CH x Kp (per head: CH) */
  float *Pk;                  /* per-key gates, factored: exp(-Gamma) */
  bool factored;              /* this chunk's per-key gates go through E and Pk (FACTOR_SPREAD) */
  int64_t bad;                /* smallest flat index of a g > 0 seen, or -1 */
  float *X, *Y;               /* CH x Kp scratch: Q o E / K o F, the sub-chunk factors */
  float *Phi, *tmp;           /* SUB x Kp */
  float *elast, *vec, *mrow;  /* Kp, Kp, CH */
  float *diag, *held;         /* CH: dA_rr; Kp: the final state's share of the last dk (see add_held) */
  double *gam, *carry;        /* Gamma: CH per head, the running sum's Kp per key dim; dg's running sum: Kp */
  /* S (fwd), dS, dSt, carry (bwd) point at the current head's (use_head); these at the first */
  float *S0, *dS0, *dSt0;
  double *carry0;
  const sn_attn_ops *ops;
  pf_plan pf; /* the next chunk's rows, fetched between row blocks of the products */
} bufs;

/* Carves the buffers from p (NULL: only counts); returns the floats used, a multiple of 16
 * so that every buffer and the next thread's block start 64-byte aligned. What lasts from
 * chunk to chunk is per head of the task (G of each): S in fwd; dS, dS^T and carry in bwd. */
static int64_t carve(bufs *w, float *p, const problem *P, bool bwd) {
  int64_t CK = (int64_t)CH * P->Kp, CV = (int64_t)CH * P->Vp, KV = (int64_t)P->Kp * P->Vp, CC = CH * CH;
  int64_t at = 0;
#define TAKE(field, n)                           \
  do {                                           \
    if (p) w->field = p + at;                    \
    at += pad16(n);                              \
  } while (0)
  TAKE(Qs, CK); TAKE(K, CK); TAKE(V, CV); TAKE(Kt, CK); TAKE(A, CC); TAKE(O, CV); TAKE(S, bwd ? KV : P->G * KV);
  TAKE(E, CK); TAKE(F, CK); TAKE(al, CK); TAKE(Pk, CK); TAKE(X, CK); TAKE(Y, CK); TAKE(Phi, SUB * P->Kp); TAKE(tmp, SUB * P->Kp);
  TAKE(elast, P->Kp); TAKE(vec, P->Kp); TAKE(mrow, CH); TAKE(diag, CH); TAKE(held, P->Kp);
  if (bwd) {
    TAKE(dO, CV); TAKE(Vt, CV); TAKE(dA, CC); TAKE(dQ, CK); TAKE(dK, CK); TAKE(St, KV);
    TAKE(dS, P->G * KV); TAKE(dSt, P->G * KV);
  }
  int64_t dbl = at;
  int64_t GN = CH > P->Kp ? CH : P->Kp;
  at += pad16(2 * (GN + P->G * P->Kp));
  if (p) {
    w->gam = (double *)(void *)(p + dbl), w->carry = w->gam + GN;
    w->S0 = w->S, w->dS0 = w->dS, w->dSt0 = w->dSt, w->carry0 = w->carry;
  }
#undef TAKE
  return at;
}

/* nt blocks of per floats; NULL (and ctx->err) when the workspace cannot grow. */
static float *scratch(sn_ctx *ctx, int nt, int64_t per) {
  return sn_ctx_workspace(ctx, (size_t)nt * (size_t)per * sizeof(float));
}

/* ---- packing ----------------------------------------------------------------------------- */

/* dst[r][0..ld) = s * row (b, t0 + r, h) of v, zero padded, for r < L. */
static void pack_rows(float *dst, int ld, view v, int64_t b, int64_t t0, int64_t h, int L, int64_t n, float s) {
  for (int r = 0; r < L; r++) {
    const float *src = row(v, b, t0 + r, h);
    float *d = dst + (int64_t)r * ld;
    memcpy(d, src, (size_t)n * sizeof(float));
    memset(d + n, 0, (size_t)(ld - n) * sizeof(float));
  }
  if (s != 1.0f) sn_vec->binary_scalar(SN_MUL, dst, dst, s, (int64_t)L * ld, false);
}

/* S (Kp x Vp) = state (Dk rows of Dv floats, rs apart), zero padded; NULL src: zeros. */
static void load_state(float *S, const problem *P, const float *src, int64_t rs) {
  memset(S, 0, (size_t)P->Kp * (size_t)P->Vp * sizeof(float));
  if (src)
    for (int64_t k = 0; k < P->Dk; k++) memcpy(S + k * P->Vp, src + k * rs, (size_t)P->Dv * sizeof(float));
}

static void store_state(float *dst, const problem *P, const float *S) {
  for (int64_t k = 0; k < P->Dk; k++) memcpy(dst + k * P->Dv, S + k * P->Vp, (size_t)P->Dv * sizeof(float));
}

/* ---- gates --------------------------------------------------------------------------------- */

/* The chunk's gates (n a row) into dst (L x ld, zero padded), per head at or above
 * GATE_FLOOR. Checked on the way: w->bad becomes the smallest flat index of a g > 0 seen.
 * The check is one sn_vec max over the chunk (vector compares here compile to scalar
 * code without ISA flags); rows are scanned only when it is not <= 0 (a g > 0, or NaN). */
static void pack_gates(float *dst, int ld, const problem *P, bufs *w, int64_t b, int64_t t0, int64_t h, int L,
                       int64_t n) {
  for (int r = 0; r < L; r++) {
    const float *src = row(P->g, b, t0 + r, h);
    float *d = dst + (int64_t)r * ld;
    memcpy(d, src, (size_t)n * sizeof(float));
    memset(d + n, 0, (size_t)(ld - n) * sizeof(float));
    if (P->gate == GATE_HEAD && d[0] < GATE_FLOOR) d[0] = GATE_FLOOR;
  }
  if (sn_vec->max(dst, (int64_t)L * ld) <= 0) return;
  for (int r = 0; r < L; r++) {
    const float *src = row(P->g, b, t0 + r, h);
    int64_t j = first_positive(src, n);
    if (j < 0) continue;
    int64_t at = ((b * P->T + t0 + r) * P->H + h) * n + j;
    if (w->bad < 0 || at < w->bad) w->bad = at;
  }
}

/* The chunk's decay factors E, F, elast. Per head: Gamma in gam. Per key dim: when the
 * chunk's decay allows (w->factored), E and Pk = exp(-Gamma) from Gamma summed in double;
 * else al = exp(g) and E, F as running products of al (the sub-chunk path). Nothing
 * without gates. */
static void gate_factors(const problem *P, bufs *w, int64_t b, int64_t h, int64_t t0, int L) {
  int Kp = P->Kp;
  if (P->gate == GATE_HEAD) {
    pack_gates(w->mrow, 1, P, w, b, t0, h, L, 1);
    double s = 0;
    for (int r = 0; r < L; r++) w->gam[r] = s += w->mrow[r];
    for (int r = 0; r < L; r++) w->E[r] = (float)w->gam[r], w->F[r] = (float)(s - w->gam[r]);
    sn_vec->unary(SN_EXP, w->E, w->E, L);
    sn_vec->unary(SN_EXP, w->F, w->F, L);
    vfill(w->elast, w->E[L - 1], Kp);
  } else if (P->gate == GATE_KEY) {
    pack_gates(w->al, Kp, P, w, b, t0, h, L, P->Dk); /* padding: g = 0 */
    double *sum = w->gam; /* Gamma's running sum, in double; E = (float)Gamma for now */
    memset(sum, 0, (size_t)Kp * sizeof(double));
    sn_vec->acc_scan(sum, w->E, Kp, w->al, Kp, L, Kp);
    w->factored = true;
    for (int j = 0; j < Kp; j++) w->factored = w->factored && -sum[j] <= FACTOR_SPREAD; /* NaN: false */
    if (w->factored) { /* E = exp(Gamma), Pk = exp(-Gamma), F = Pk E_last */
      int64_t n = (int64_t)L * Kp;
      sn_vec->binary_scalar(SN_MUL, w->Pk, w->E, -1.0f, n, false); /* (float)-Gamma, exactly */
      sn_vec->unary(SN_EXP, w->E, w->E, n);
      sn_vec->unary(SN_EXP, w->Pk, w->Pk, n);
      for (int r = 0; r < L; r++) vmul(w->F + r * Kp, w->Pk + r * Kp, w->E + (L - 1) * Kp, Kp);
    } else {
      sn_vec->unary(SN_EXP, w->al, w->al, (int64_t)L * Kp);
      memcpy(w->E, w->al, (size_t)Kp * sizeof(float));
      for (int r = 1; r < L; r++) vmul(w->E + r * Kp, w->E + (r - 1) * Kp, w->al + r * Kp, Kp);
      vfill(w->F + (L - 1) * Kp, 1.0f, Kp);
      for (int r = L - 2; r >= 0; r--) vmul(w->F + r * Kp, w->F + (r + 1) * Kp, w->al + (r + 1) * Kp, Kp);
    }
    memcpy(w->elast, w->E + (L - 1) * Kp, (size_t)Kp * sizeof(float));
  }
}

/* dst rows = src rows o f (E or F) for r < L; returns src itself without gates. */
static const float *gated_rows(const problem *P, float *dst, const float *src, const float *f, int L) {
  int Kp = P->Kp;
  if (P->gate == GATE_NONE) return src;
  if (P->gate == GATE_KEY) sn_vec->binary(SN_MUL, dst, src, f, (int64_t)L * Kp);
  else
    for (int r = 0; r < L; r++) vscale(dst + r * Kp, src + r * Kp, f[r], Kp);
  return dst;
}

/* x rows o= f in place. */
static void gate_rows(const problem *P, float *x, const float *f, int L) { gated_rows(P, x, x, f, L); }

/* M (Kp x Vp) rows k o= elast[k]: the state's decay over the chunk. */
static void decay_state(const problem *P, const bufs *w, float *M) {
  if (P->gate == GATE_NONE) return;
  for (int64_t k = 0; k < P->Dk; k++) vscale(M + k * P->Vp, M + k * P->Vp, w->elast[k], P->Vp);
}

/* ---- products ----------------------------------------------------------------------------- */

/* About how many blocks of mm_rows a chunk of one head takes, fwd and bwd. */
#define FWD_STEPS (4 * CH / 4)
#define BWD_STEPS (9 * CH / 4)

/* ops->mm by blocks of rows of C, with a prefetch step after each: 4 rows (one register
 * block of mm) for at least 64 columns, else 8 (NARROW_ROWS of attn_tile.h). */
static void mm_rows(bufs *w, float *C, int64_t ldc, const float *A, int64_t ars, int64_t aks, const float *B, int64_t ldb,
                    int M, int N, int K, float alpha, bool acc) {
  int rows = N >= 4 * SUB ? 4 : 8;
  for (int i = 0; i < M; i += rows) {
    w->ops->mm(C + i * ldc, ldc, A + i * ars, ars, aks, B, ldb, imin(rows, M - i), N, K, alpha, acc);
    pf_step(&w->pf);
  }
}

/* ---- intra-chunk terms --------------------------------------------------------------------- */

/* The intra-chunk block as plain products, by sub-chunk rows (columns only up to the
 * diagonal block): A = (Qx Kx^T) o M, zero above the diagonal, with M_rc = exp(Gamma_r -
 * Gamma_c) per head (1 without gates). Per key dim, factored, Qx = Q o E and Kx = K o Pk
 * carry the decays themselves. w->Kt holds Kx^T. bwd: dA (already dO V^T) masked alike and
 * without its diagonal (see add_held), then dQ += (dA Kx) o E, dK += (dA^T Qx) o Pk. */
static void gemm_intra(const problem *P, bufs *w, int L, bool bwd, const float *Qx, const float *Kx) {
  int Kp = P->Kp, Dk = (int)P->Dk;
  bool f = P->gate == GATE_KEY;
  for (int r0 = 0; r0 < L; r0 += SUB) {
    int n = imin(SUB, L - r0), N = r0 + SUB;
    mm_rows(w, w->A + r0 * CH, CH, Qx + r0 * Kp, Kp, 1, w->Kt, CH, n, N, Dk, 1.0f, false);
    for (int r = r0; r < r0 + n; r++) {
      float *a = w->A + r * CH, *da = bwd ? w->dA + r * CH : NULL;
      if (P->gate == GATE_HEAD) {
        for (int c = 0; c <= r; c++) w->mrow[c] = (float)(w->gam[r] - w->gam[c]);
        sn_vec->unary(SN_EXP, w->mrow, w->mrow, r + 1);
        for (int c = 0; c <= r; c++) a[c] *= w->mrow[c];
        if (da)
          for (int c = 0; c <= r; c++) da[c] *= w->mrow[c];
      }
      for (int c = r + 1; c < N; c++) a[c] = 0;
      if (da) {
        for (int c = r + 1; c < N; c++) da[c] = 0;
        w->diag[r] = da[r], da[r] = 0;
      }
    }
    if (!bwd) continue;
    if (!f) {
      mm_rows(w, w->dQ + r0 * Kp, Kp, w->dA + r0 * CH, CH, 1, Kx, Kp, n, Kp, r0 + n, 1.0f, true);
      continue;
    }
    mm_rows(w, w->tmp, Kp, w->dA + r0 * CH, CH, 1, Kx, Kp, n, Kp, r0 + n, 1.0f, false);
    for (int i = 0; i < n; i++) vmul_add(w->dQ + (r0 + i) * Kp, w->tmp + i * Kp, w->E + (r0 + i) * Kp, Kp);
  }
  if (!bwd) return;
  for (int r0 = 0; r0 < L; r0 += SUB) {
    int n = imin(SUB, L - r0);
    float *dst = f ? w->tmp : w->dK + r0 * Kp;
    mm_rows(w, dst, Kp, w->dA + r0 * CH + r0, 1, CH, Qx + r0 * Kp, Kp, n, Kp, L - r0, 1.0f, !f);
    if (f)
      for (int i = 0; i < n; i++) vmul_add(w->dK + (r0 + i) * Kp, w->tmp + i * Kp, w->Pk + (r0 + i) * Kp, Kp);
  }
}

static void key_intra(const problem *P, bufs *w, int L, bool bwd);

/* The intra-chunk terms by gate kind (see gemm_intra and key_intra). */
static void intra(const problem *P, bufs *w, int L, bool bwd) {
  if (P->gate != GATE_KEY) {
    gemm_intra(P, w, L, bwd, w->Qs, w->K);
  } else if (w->factored) {
    int Kp = P->Kp;
    sn_vec->binary(SN_MUL, w->X, w->Qs, w->E, (int64_t)L * Kp);
    sn_vec->binary(SN_MUL, w->Y, w->K, w->Pk, (int64_t)L * Kp);
    transpose(w->Kt, CH, w->Y, Kp, L, (int)pad16(L), Kp, Kp);
    gemm_intra(P, w, L, bwd, w->X, w->Y);
  } else {
    if (bwd)
      for (int r = 0; r < L; r++) w->diag[r] = w->dA[r * CH + r];
    key_intra(P, w, L, bwd);
  }
}

/* The diagonal block of a sub-chunk with per-key gates, pair by pair: for each column c the
 * key decays row by row (w = K_c o exp(Gamma_r - Gamma_c)), giving A_rc = Q_r . w and, in
 * bwd, dQ_r += dA_rc w; dK_c += sum_r dA_rc Q_r o exp(Gamma_r - Gamma_c) as a Horner sum
 * from the last row. dQ and dK leave out r = c (see add_held). Pointers are at the
 * block's first row (and column for A, dA). */
static void key_diag(int Kp, int n, float *A, const float *dA, float *dQ, float *dK, const float *Q, const float *K,
                     const float *al, float *vec) {
  for (int c = 0; c < n; c++) {
    memcpy(vec, K + c * Kp, (size_t)Kp * sizeof(float));
    for (int r = c; r < n; r++) {
      if (r > c) vmul(vec, vec, al + r * Kp, Kp);
      A[r * CH + c] = vdot(Q + r * Kp, vec, Kp);
      if (dQ && r > c) vaxpy(dQ + r * Kp, dA[r * CH + c], vec, Kp);
    }
    for (int r = 0; r < c; r++) A[r * CH + c] = 0;
  }
  for (int c = n; c < SUB; c++)
    for (int r = 0; r < n; r++) A[r * CH + c] = 0;
  if (!dK) return;
  for (int c = 0; c + 1 < n; c++) {
    vscale(vec, Q + (n - 1) * Kp, dA[(n - 1) * CH + c], Kp);
    for (int r = n - 2; r > c; r--) vhorner(vec, al + (r + 1) * Kp, dA[r * CH + c], Q + r * Kp, Kp);
    vmul_add(dK + c * Kp, vec, al + (c + 1) * Kp, Kp);
  }
}

/* Per-key gates, sub-chunk by sub-chunk: the pairs with earlier columns as one product
 * through the sub-chunk's first row (see the top), then the diagonal block. bwd also adds
 * the intra-chunk terms of dQ and dK (dA holds dO V^T); dK's pairs with later rows go
 * through the last row of the sub-chunk. X, Y, Kt, Phi, tmp and vec are scratch. */
static void key_intra(const problem *P, bufs *w, int L, bool bwd) {
  int Kp = P->Kp, Dk = (int)P->Dk;
  size_t row_bytes = (size_t)Kp * sizeof(float);
  const float *al = w->al;
  for (int r0 = 0; r0 < L; r0 += SUB) {
    int n = imin(SUB, L - r0);
    if (r0 > 0) {
      /* Phi_i = exp(Gamma_{r0+i} - Gamma_r0), X_i = Q_{r0+i} o Phi_i;
       * Y_c = K_c o exp(Gamma_r0 - Gamma_c) for c < r0, transposed into Kt. */
      vfill(w->Phi, 1.0f, Kp);
      for (int i = 1; i < n; i++) vmul(w->Phi + i * Kp, w->Phi + (i - 1) * Kp, al + (r0 + i) * Kp, Kp);
      for (int i = 0; i < n; i++) vmul(w->X + i * Kp, w->Qs + (r0 + i) * Kp, w->Phi + i * Kp, Kp);
      memcpy(w->vec, al + r0 * Kp, row_bytes);
      for (int c = r0 - 1; c >= 0; c--) {
        vmul(w->Y + c * Kp, w->K + c * Kp, w->vec, Kp);
        if (c > 0) vmul(w->vec, w->vec, al + c * Kp, Kp);
      }
      transpose(w->Kt, CH, w->Y, Kp, r0, r0, Kp, Kp);
      mm_rows(w, w->A + r0 * CH, CH, w->X, Kp, 1, w->Kt, CH, n, r0, Dk, 1.0f, false);
      if (bwd) {
        mm_rows(w, w->tmp, Kp, w->dA + r0 * CH, CH, 1, w->Y, Kp, n, Kp, r0, 1.0f, false);
        for (int i = 0; i < n; i++) vmul_add(w->dQ + (r0 + i) * Kp, w->tmp + i * Kp, w->Phi + i * Kp, Kp);
      }
    }
    key_diag(Kp, n, w->A + r0 * CH + r0, bwd ? w->dA + r0 * CH + r0 : NULL, bwd ? w->dQ + r0 * Kp : NULL,
             bwd ? w->dK + r0 * Kp : NULL, w->Qs + r0 * Kp, w->K + r0 * Kp, al + r0 * Kp, w->vec);
    int last = r0 + SUB - 1, m = L - 1 - last;
    if (!bwd || m <= 0) continue;
    /* X_i = Q_r o exp(Gamma_r - Gamma_last) for the rows r = last + 1 + i after the
     * sub-chunk; dK_{r0+i} += (dA^T X)_i o exp(Gamma_last - Gamma_{r0+i}). */
    memcpy(w->vec, al + (last + 1) * Kp, row_bytes);
    for (int i = 0; i < m; i++) {
      if (i > 0) vmul(w->vec, w->vec, al + (last + 1 + i) * Kp, Kp);
      vmul(w->X + i * Kp, w->Qs + (last + 1 + i) * Kp, w->vec, Kp);
    }
    mm_rows(w, w->tmp, Kp, w->dA + (last + 1) * CH + r0, 1, CH, w->X, Kp, SUB, Kp, m, 1.0f, false);
    vfill(w->vec, 1.0f, Kp);
    for (int i = SUB - 1; i >= 0; i--) {
      vmul_add(w->dK + (r0 + i) * Kp, w->tmp + i * Kp, w->vec, Kp);
      if (i > 0) vmul(w->vec, w->vec, al + (r0 + i) * Kp, Kp);
    }
  }
}

/* ---- forward ------------------------------------------------------------------------------- */

static void pack_qkv(const problem *P, bufs *w, int64_t b, int64_t h, int64_t t0, int L) {
  pack_rows(w->Qs, P->Kp, P->q, b, t0, h, L, P->Dk, P->scale);
  pack_rows(w->K, P->Kp, P->k, b, t0, h, L, P->Dk, 1.0f);
  pack_rows(w->V, P->Vp, P->v, b, t0, h, L, P->Dv, 1.0f);
  if (P->gate != GATE_KEY) transpose(w->Kt, CH, w->K, P->Kp, L, (int)pad16(L), P->Kp, P->Kp);
}

static int chunk_rows(const problem *P, int64_t ch) { return (int)min64(CH, P->T - ch * CH); }

/* Heads per task: the most adjacent heads (a divisor of H) that still leave a task per
 * thread. A task takes its heads chunk by chunk, so it reads each token's rows of all of
 * them in one run (one head's rows alone are short runs far apart, which the hardware
 * prefetchers serve poorly: at T = 16384, 1.5x slower). A head's arithmetic does not depend
 * on its task, so neither do the results. */
static int64_t heads_per_task(const problem *P, int nt) {
  for (int64_t G = min64(P->H, (1 << 22) / ((int64_t)P->Kp * P->Vp)); G > 1; G--) /* states of at most 16 MB */
    if (P->H % G == 0 && P->B * (P->H / G) >= nt) return G;
  return 1;
}

/* Points w's per-head buffers at head i of its task: S in fwd, dS, dS^T and carry in bwd. */
static void use_head(bufs *w, const problem *P, int64_t i, bool bwd) {
  int64_t KV = (int64_t)P->Kp * P->Vp;
  if (!bwd) w->S = w->S0 + i * KV;
  else w->dS = w->dS0 + i * KV, w->dSt = w->dSt0 + i * KV, w->carry = w->carry0 + i * P->Kp;
}

/* The rows of chunk ch of heads h0 .. h0+G-1 that a task reads (q, k, v, g), and of out
 * (B,T,H,Dw), which it writes, when out is set; none for a chunk that does not exist. */
static pf_plan chunk_plan(const problem *P, int64_t b, int64_t h0, int64_t ch, float *out, int64_t Dw) {
  pf_plan pl = {.n = 0};
  if (ch < 0 || ch >= P->chunks) return pl;
  int64_t t0 = ch * CH, G = P->G;
  int L = chunk_rows(P, ch);
  if (P->gate != GATE_NONE)
    pf_add(&pl, row(P->g, b, t0, h0), P->g.s1, (G - 1) * P->g.s2 + (P->gate == GATE_KEY ? P->Dk : 1), L, false);
  pf_add(&pl, row(P->q, b, t0, h0), P->q.s1, (G - 1) * P->q.s2 + P->Dk, L, false);
  pf_add(&pl, row(P->k, b, t0, h0), P->k.s1, (G - 1) * P->k.s2 + P->Dk, L, false);
  pf_add(&pl, row(P->v, b, t0, h0), P->v.s1, (G - 1) * P->v.s2 + P->Dv, L, false);
  if (out) pf_add(&pl, out + ((b * P->T + t0) * P->H + h0) * Dw, P->H * Dw, G * Dw, L, true);
  return pl;
}

/* One chunk of L rows at t0: O from the intra-chunk block and the state entering it, then
 * the state leaving it. */
static void fwd_chunk(const problem *P, bufs *w, int64_t b, int64_t h, int64_t t0, int L, float *o) {
  int Kp = P->Kp, Vp = P->Vp, Dk = (int)P->Dk;
  pack_qkv(P, w, b, h, t0, L);
  gate_factors(P, w, b, h, t0, L);
  intra(P, w, L, false);
  for (int r0 = 0; r0 < L; r0 += SUB) {
    int n = imin(SUB, L - r0);
    mm_rows(w, w->O + r0 * Vp, Vp, w->A + r0 * CH, CH, 1, w->V, Vp, n, Vp, r0 + n, 1.0f, false);
  }
  const float *Qb = P->gate == GATE_KEY && w->factored ? w->X : gated_rows(P, w->X, w->Qs, w->E, L); /* factored: intra's */
  mm_rows(w, w->O, Vp, Qb, Kp, 1, w->S, Vp, L, Vp, Dk, 1.0f, true);
  const float *Kb = gated_rows(P, w->Y, w->K, w->F, L);
  decay_state(P, w, w->S);
  mm_rows(w, w->S, Vp, Kb, 1, Kp, w->V, Vp, Dk, Vp, L, 1.0f, true);
  for (int r = 0; r < L; r++)
    memcpy(o + ((b * P->T + t0 + r) * P->H + h) * P->Dv, w->O + r * Vp, (size_t)P->Dv * sizeof(float));
}

/* Heads h0 .. h0+G-1 of sequence b. */
static void fwd_task(const problem *P, bufs *w, int64_t b, int64_t h0, float *o, float *fin, float *cs) {
  int64_t DkDv = P->Dk * P->Dv, G = P->G;
  for (int64_t i = 0; i < G; i++) {
    use_head(w, P, i, false);
    load_state(w->S, P, P->h0.p ? row(P->h0, b, h0 + i, 0) : NULL, P->h0.s2);
  }
  for (int64_t ch = 0; ch < P->chunks; ch++) {
    w->pf = chunk_plan(P, b, h0, ch + 1, o, P->Dv);
    pf_start(&w->pf, G * FWD_STEPS);
    for (int64_t i = 0; i < G; i++) {
      int64_t h = h0 + i;
      use_head(w, P, i, false);
      if (cs) store_state(cs + ((b * P->H + h) * P->chunks + ch) * DkDv, P, w->S);
      fwd_chunk(P, w, b, h, ch * CH, chunk_rows(P, ch), o);
    }
  }
  for (int64_t i = 0; fin && i < G; i++) {
    use_head(w, P, i, false);
    store_state(fin + (b * P->H + h0 + i) * DkDv, P, w->S);
  }
}

/* Thread only when there are several tasks and enough work for it to pay. */
static bool worth_threads(const problem *P, int64_t tasks) {
  return tasks > 1 && (double)P->B * P->H * (P->T ? P->T : 1) * P->Dk * P->Dv >= PARALLEL_MIN;
}

sn_status sn_gated_linear_attention_fwd(sn_ctx *ctx, sn_tensor *o, sn_tensor *final_state, sn_tensor *chunk_states,
                                        const sn_tensor *q, const sn_tensor *k, const sn_tensor *v,
                                        const sn_tensor *g, const sn_linattn_opts *opts) {
  problem P;
  sn_status st = check_inputs(ctx, &P, q, k, v, g, opts);
  if (st != SN_OK) return st;
  if (!o) return sn_fail(ctx, SN_EINVAL, "%s: o must not be NULL", FN);
  int64_t bhkv[] = {P.B, P.H, P.Dk, P.Dv};
  st = check_out(ctx, FN, "o", o, true, 4, (int64_t[]){P.B, P.T, P.H, P.Dv});
  if (st == SN_OK) st = check_out(ctx, FN, "final_state", final_state, true, 4, bhkv);
  if (st == SN_OK)
    st = check_out(ctx, FN, "chunk_states", chunk_states, true, 5, (int64_t[]){P.B, P.H, P.chunks, P.Dk, P.Dv});
  if (st != SN_OK) return st;
  int nt = omp_get_max_threads();
  P.G = heads_per_task(&P, nt);
  int64_t per = carve(NULL, NULL, &P, false), tasks = P.H / P.G, items = P.B * tasks;
  float *ws = scratch(ctx, nt, per);
  if (!ws) return SN_ENOMEM;
  const sn_attn_ops *ops = sn_attn_current();
  float *po = sn_f32(o), *pf = final_state ? sn_f32(final_state) : NULL, *pc = chunk_states ? sn_f32(chunk_states) : NULL;
  int64_t bad = -1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (worth_threads(&P, items))
  for (int64_t it = 0; it < items; it++) {
    bufs w = {.bad = -1, .ops = ops};
    carve(&w, ws + omp_get_thread_num() * per, &P, false);
    fwd_task(&P, &w, it / tasks, it % tasks * P.G, po, pf, pc);
    if (w.bad >= 0)
#pragma omp critical(sn_linattn_bad)
      bad = bad < 0 || w.bad < bad ? w.bad : bad;
  }
  return bad < 0 ? SN_OK : positive_gate(ctx, g, bad);
}

/* ---- backward ------------------------------------------------------------------------------ */

typedef struct {
  const problem *P;
  const sn_attn_ops *ops;
  view dout, dfinal; /* dfinal: (B, H, Dk, Dv) */
  const float *cs;
  float *dq, *dk, *dv, *dg, *dh0;
} bwd_args;

/* carry[k] += sum_v S[k][v] dS[k][v]: the final state's term of dL/dGamma at the last step
 * (per head: all into carry[0]). */
static void final_gate_term(const problem *P, bufs *w) {
  for (int64_t k = 0; k < P->Dk; k++) {
    double s = 0;
    for (int64_t j = 0; j < P->Dv; j++) s += (double)w->S[k * P->Vp + j] * w->dS[k * P->Vp + j];
    w->carry[P->gate == GATE_KEY ? k : 0] += s;
  }
}

/* dg for the chunk's rows, last to first: the running sum from the end of the sequence of
 * q.dq - k.dk, per key dim or summed over Dk per head, in double. X, Y are scratch. */
static void gate_grads(const bwd_args *a, bufs *w, int64_t b, int64_t h, int64_t t0, int L) {
  const problem *P = a->P;
  int Kp = P->Kp;
  int64_t n = (int64_t)L * Kp;
  sn_vec->binary(SN_MUL, w->X, w->Qs, w->dQ, n);
  sn_vec->binary(SN_MUL, w->Y, w->K, w->dK, n);
  sn_vec->binary(SN_SUB, w->X, w->X, w->Y, n);
  int64_t last = (b * P->T + t0 + L - 1) * P->H + h;
  if (P->gate == GATE_KEY) {
    sn_vec->acc_scan(w->carry, a->dg + last * P->Dk, -P->H * P->Dk, w->X + (L - 1) * Kp, -Kp, L, P->Dk);
    return;
  }
  for (int r = L - 1; r >= 0; r--) a->dg[last - (L - 1 - r) * P->H] = (float)(w->carry[0] += sn_vec->sum(w->X + r * Kp, Kp));
}

/* The terms that do not depend on the gates, held out of dQ and dK until dg is taken: the
 * pairs (r, r), dQ_r += dA_rr K_r and dK_r += dA_rr Q_r, and when last, the final state's
 * own k_{T-1} v_{T-1}^T, dK_{L-1} += held (left out of S_T in its gate term too). In dg they
 * would cancel exactly, but only after rounding: with strong gates they dominate dq and dk,
 * and their rounding errors would swamp the small dg. */
static void add_held(const problem *P, bufs *w, int L, bool last) {
  for (int r = 0; r < L; r++) {
    vaxpy(w->dQ + r * P->Kp, w->diag[r], w->K + r * P->Kp, P->Kp);
    vaxpy(w->dK + r * P->Kp, w->diag[r], w->Qs + r * P->Kp, P->Kp);
  }
  if (last) vaxpy(w->dK + (L - 1) * P->Kp, 1.0f, w->held, P->Kp);
}

/* Chunk ch (L rows) with dS, dS^T the gradient of the state leaving it; leaves them for the
 * state entering it. w->O holds dV. */
static void bwd_chunk(const bwd_args *a, bufs *w, int64_t b, int64_t h, int64_t ch, int L) {
  const problem *P = a->P;
  int Kp = P->Kp, Vp = P->Vp, Dk = (int)P->Dk, Dv = (int)P->Dv;
  int64_t t0 = ch * CH;
  const float *cs = a->cs + ((b * P->H + h) * P->chunks + ch) * P->Dk * P->Dv;
  transpose(w->St, Kp, cs, Dv, Dk, Kp, Dv, Vp);
  pack_qkv(P, w, b, h, t0, L);
  pack_rows(w->dO, Vp, a->dout, b, t0, h, L, P->Dv, 1.0f);
  transpose(w->Vt, CH, w->V, Vp, L, (int)pad16(L), Vp, Vp);
  gate_factors(P, w, b, h, t0, L);

  /* Through the states: dQ = (dO S^T) o E, dK = (V dS^T) o F, dV = (K o F) dS. */
  bool last = ch == P->chunks - 1 && a->dfinal.p; /* holds out the final state's pair (add_held) */
  mm_rows(w, w->dQ, Kp, w->dO, Vp, 1, w->St, Kp, L, Kp, Dv, 1.0f, false);
  gate_rows(P, w->dQ, w->E, L);
  mm_rows(w, w->dK, Kp, w->V, Vp, 1, w->dSt, Kp, L - last, Kp, Dv, 1.0f, false);
  gate_rows(P, w->dK, w->F, L - last);
  const float *Kb = gated_rows(P, w->Y, w->K, w->F, L);
  mm_rows(w, w->O, Vp, Kb, Kp, 1, w->dS, Vp, L, Vp, Dk, 1.0f, false);
  if (last) {
    mm_rows(w, w->held, Kp, w->V + (L - 1) * Vp, Vp, 1, w->dSt, Kp, 1, Kp, Dv, 1.0f, false);
    memset(w->dK + (L - 1) * Kp, 0, (size_t)Kp * sizeof(float));
  }
  if (last && a->dg) { /* S becomes the final state but for the last step's k v^T */
    load_state(w->S, P, cs, P->Dv);
    decay_state(P, w, w->S);
    mm_rows(w, w->S, Vp, Kb, 1, Kp, w->V, Vp, Dk, Vp, L - 1, 1.0f, true);
    final_gate_term(P, w);
  }
  decay_state(P, w, w->dS);
  mm_rows(w, w->dS, Vp, gated_rows(P, w->X, w->Qs, w->E, L), 1, Kp, w->dO, Vp, Dk, Vp, L, 1.0f, true);
  transpose(w->dSt, Kp, w->dS, Vp, Kp, Kp, Vp, Vp);

  /* Within the chunk: dA = dO V^T, then A, dQ, dK by gate kind, dV += A^T dO. */
  for (int r0 = 0; r0 < L; r0 += SUB)
    mm_rows(w, w->dA + r0 * CH, CH, w->dO + r0 * Vp, Vp, 1, w->Vt, CH, imin(SUB, L - r0), r0 + SUB, Dv, 1.0f, false);
  intra(P, w, L, true);
  for (int r0 = 0; r0 < L; r0 += SUB)
    mm_rows(w, w->O + r0 * Vp, Vp, w->A + r0 * CH + r0, 1, CH, w->dO + r0 * Vp, Vp, imin(SUB, L - r0), Vp, L - r0, 1.0f,
            true);

  if (a->dg) gate_grads(a, w, b, h, t0, L);
  add_held(P, w, L, last);
  sn_vec->binary_scalar(SN_MUL, w->dQ, w->dQ, P->scale, (int64_t)L * Kp, false); /* Q was packed scaled */
  for (int r = 0; r < L; r++) {
    int64_t at = (b * P->T + t0 + r) * P->H + h;
    memcpy(a->dq + at * P->Dk, w->dQ + r * Kp, (size_t)Dk * sizeof(float));
    memcpy(a->dk + at * P->Dk, w->dK + r * Kp, (size_t)Dk * sizeof(float));
    memcpy(a->dv + at * P->Dv, w->O + r * Vp, (size_t)Dv * sizeof(float));
  }
}

/* Heads h0 .. h0+G-1 of sequence b, chunks last to first. */
static void bwd_task(const bwd_args *a, bufs *w, int64_t b, int64_t h0) {
  const problem *P = a->P;
  int64_t G = P->G, DkDv = P->Dk * P->Dv;
  for (int64_t i = 0; i < G; i++) {
    use_head(w, P, i, true);
    load_state(w->dS, P, a->dfinal.p ? row(a->dfinal, b, h0 + i, 0) : NULL, a->dfinal.s2);
    transpose(w->dSt, P->Kp, w->dS, P->Vp, P->Kp, P->Kp, P->Vp, P->Vp);
    memset(w->carry, 0, (size_t)P->Kp * sizeof(double));
  }
  for (int64_t ch = P->chunks - 1; ch >= 0; ch--) {
    /* the previous chunk's rows: inputs, grad_output, entering states; dq, dk, dv, dg */
    pf_plan *next = &w->pf;
    *next = chunk_plan(P, b, h0, ch - 1, a->dq, P->Dk);
    if (ch > 0) {
      int64_t t0 = (ch - 1) * CH, at = (b * P->T + t0) * P->H + h0, n = P->gate == GATE_KEY ? P->Dk : 1;
      int L = chunk_rows(P, ch - 1);
      pf_add(next, row(a->dout, b, t0, h0), a->dout.s1, (G - 1) * a->dout.s2 + P->Dv, L, false);
      pf_add(next, a->cs + ((b * P->H + h0) * P->chunks + ch - 1) * DkDv, P->chunks * DkDv, DkDv, (int)G, false);
      pf_add(next, a->dk + at * P->Dk, P->H * P->Dk, G * P->Dk, L, true);
      pf_add(next, a->dv + at * P->Dv, P->H * P->Dv, G * P->Dv, L, true);
      if (a->dg) pf_add(next, a->dg + at * n, P->H * n, G * n, L, true);
    }
    pf_start(next, G * BWD_STEPS);
    for (int64_t i = 0; i < G; i++) {
      use_head(w, P, i, true);
      bwd_chunk(a, w, b, h0 + i, ch, chunk_rows(P, ch));
    }
  }
  for (int64_t i = 0; a->dh0 && i < G; i++) {
    use_head(w, P, i, true);
    store_state(a->dh0 + (b * P->H + h0 + i) * DkDv, P, w->dS);
  }
}

sn_status sn_gated_linear_attention_bwd(sn_ctx *ctx, sn_tensor *dq, sn_tensor *dk, sn_tensor *dv, sn_tensor *dg,
                                        sn_tensor *dh0, const sn_tensor *dout, const sn_tensor *dfinal,
                                        const sn_tensor *chunk_states, const sn_tensor *q, const sn_tensor *k,
                                        const sn_tensor *v, const sn_tensor *g, const sn_linattn_opts *opts) {
  problem P;
  sn_status st = check_inputs(ctx, &P, q, k, v, g, opts);
  if (st != SN_OK) return st;
  if (dg && !g) return sn_fail(ctx, SN_EINVAL, "%s: dg was asked for but g is NULL", FN);
  if (dh0 && !opts->initial_state)
    return sn_fail(ctx, SN_EINVAL, "%s: dh0 was asked for but opts->initial_state is NULL", FN);
  if (!chunk_states) return sn_fail(ctx, SN_EINVAL, "%s: chunk_states (saved by fwd) must not be NULL", FN);
  if (!dq || !dk || !dv) return sn_fail(ctx, SN_EINVAL, "%s: dq, dk and dv must not be NULL", FN);
  int64_t bhkv[] = {P.B, P.H, P.Dk, P.Dv};
  st = check_in(ctx, FN, "grad_output", dout, "(B, T, H, Dv) like v", 4, v->size);
  if (st == SN_OK) st = check_opt(ctx, FN, "grad_final_state", dfinal, "(B, H, Dk, Dv)", 4, bhkv);
  if (st == SN_OK)
    st = check_out(ctx, FN, "chunk_states", chunk_states, true, 5, (int64_t[]){P.B, P.H, P.chunks, P.Dk, P.Dv});
  if (st == SN_OK) st = check_out(ctx, FN, "dq", dq, true, 4, q->size);
  if (st == SN_OK) st = check_out(ctx, FN, "dk", dk, true, 4, q->size);
  if (st == SN_OK) st = check_out(ctx, FN, "dv", dv, true, 4, v->size);
  if (st == SN_OK && dg) st = check_out(ctx, FN, "dg", dg, true, g->ndim, g->size);
  if (st == SN_OK) st = check_out(ctx, FN, "dh0", dh0, true, 4, bhkv);
  if (st != SN_OK) return st;
  int nt = omp_get_max_threads();
  P.G = heads_per_task(&P, nt);
  int64_t per = carve(NULL, NULL, &P, true), tasks = P.H / P.G, items = P.B * tasks;
  float *ws = scratch(ctx, nt, per);
  if (!ws) return SN_ENOMEM;
  bwd_args args = {.P = &P, .ops = sn_attn_current(), .dout = view_of(dout), .dfinal = view_of(dfinal),
                   .cs = sn_f32(chunk_states), .dq = sn_f32(dq), .dk = sn_f32(dk), .dv = sn_f32(dv),
                   .dg = dg ? sn_f32(dg) : NULL, .dh0 = dh0 ? sn_f32(dh0) : NULL};
  int64_t bad = -1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (worth_threads(&P, items))
  for (int64_t it = 0; it < items; it++) {
    bufs w = {.bad = -1, .ops = args.ops};
    carve(&w, ws + omp_get_thread_num() * per, &P, true);
    bwd_task(&args, &w, it / tasks, it % tasks * P.G);
    if (w.bad >= 0)
#pragma omp critical(sn_linattn_bad)
      bad = bad < 0 || w.bad < bad ? w.bad : bad;
  }
  return bad < 0 ? SN_OK : positive_gate(ctx, g, bad);
}

/* ---- decode step --------------------------------------------------------------------------- */

/* s = a s + kk v, o += qq s over n floats: one key row of the state. */
static void step_row(float *s, float *o, float a, float kk, const float *v, float qq, int64_t n) {
  vf av = SPLAT(a), kv = SPLAT(kk), qv = SPLAT(qq);
  int64_t j = 0;
  for (; j + SUB <= n; j += SUB) {
    vf x = av * LD(s + j) + kv * LD(v + j);
    ST(s + j, x);
    ST(o + j, LD(o + j) + qv * x);
  }
  for (; j < n; j++) {
    s[j] = a * s[j] + kk * v[j];
    o[j] += qq * s[j];
  }
}

sn_status sn_gated_linear_attention_step(sn_ctx *ctx, sn_tensor *o, sn_tensor *state, const sn_tensor *q,
                                         const sn_tensor *k, const sn_tensor *v, const sn_tensor *g,
                                         const sn_linattn_opts *opts) {
  sn_status st = check_in(ctx, FN, "q", q, "(B, 1, H, Dk)", 4, (int64_t[]){-1, 1, -1, -1});
  if (st == SN_OK) st = check_in(ctx, FN, "k", k, "(B, 1, H, Dk) like q", 4, q->size);
  if (st == SN_OK) st = check_in(ctx, FN, "v", v, "(B, 1, H, Dv)", 4, (int64_t[]){q->size[0], 1, q->size[2], -1});
  if (st == SN_OK) st = need_head_dims(ctx, q, v);
  if (st == SN_OK && g) st = need_gates(ctx, g, q->size, "1", true);
  if (st == SN_OK) st = need_scale(ctx, opts);
  if (st != SN_OK) return st;
  if (!state || !o) return sn_fail(ctx, SN_EINVAL, "%s: state and o must not be NULL", FN);
  int64_t B = q->size[0], H = q->size[2], Dk = q->size[3], Dv = v->size[3];
  st = check_out(ctx, FN, "state", state, true, 4, (int64_t[]){B, H, Dk, Dv});
  if (st == SN_OK) st = check_out(ctx, FN, "o", o, true, 4, v->size);
  if (st != SN_OK) return st;
  int nt = omp_get_max_threads();
  int64_t per = pad16(Dk);
  float *ws = scratch(ctx, nt, per);
  if (!ws) return SN_ENOMEM;
  view vq = view_of(q), vk = view_of(k), vv = view_of(v), vg = view_of(g);
  float *ps = sn_f32(state), *po = sn_f32(o), s = opts->scale;
#pragma omp parallel for schedule(static) num_threads(nt) if (B * H > 1 && (double)B * H * Dk * Dv >= PARALLEL_MIN)
  for (int64_t it = 0; it < B * H; it++) {
    int64_t b = it / H, h = it % H;
    float *decay = ws + omp_get_thread_num() * per, *S = ps + it * Dk * Dv, *out = po + it * Dv;
    const float *qr = row(vq, b, 0, h), *kr = row(vk, b, 0, h), *vr = row(vv, b, 0, h);
    if (!g) vfill(decay, 1.0f, (int)Dk);
    else if (g->ndim == 3) {
      sn_vec->unary(SN_EXP, decay, row(vg, b, 0, h), 1);
      vfill(decay, decay[0], (int)Dk);
    } else {
      sn_vec->unary(SN_EXP, decay, row(vg, b, 0, h), Dk);
    }
    memset(out, 0, (size_t)Dv * sizeof(float));
    for (int64_t j = 0; j < Dk; j++) step_row(S + j * Dv, out, decay[j], kr[j], vr, s * qr[j], Dv);
  }
  return SN_OK;
}
