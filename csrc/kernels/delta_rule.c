/* kernels/delta_rule.c -- DeltaNet's delta rule (math in seqnn.h).
 *
 * One task per (b, h) sweeps its chunks of L <= C steps with the state S (Dk x Dv) in its
 * scratch. Per chunk, with Q (scaled), K (L x Dk), V (L x Dv) and beta:
 *   G = K K^T,   Ai = (I + strict_tril(diag(beta) G))^-1,   E = V - K S,   R = diag(beta) E,
 *   Vn = Ai R,   P = tril(Q K^T),   O = Q S + P Vn,   S' = S + K^T Vn.
 * Vn is the WY form's U - W S (W = Ai diag(beta) K, U = Ai diag(beta) V) with one product
 * by Ai instead of two, so W and U are never formed.
 * bwd runs the chunks last to first with dS = dL/dS', reloading S from chunk_states and
 * recomputing the above, then:
 *   dVn = P^T dO + K dS',  dP = tril(dO Vn^T),  dR = Ai^T dVn,  dM = -strict_tril(dR Vn^T)
 *   (dM: the gradient of M = strict_tril(diag(beta) G); from dAi = dVn R^T, -Ai^T dAi Ai^T
 *   = -dR Vn^T), dG = diag(beta) dM, dX = -diag(beta) dR (X = K S), and
 *   dQ = dO S^T + dP K,   dK = dP^T Q + Vn dS'^T + dX S^T + (dG + dG^T) K,   dV = diag(beta) dR,
 *   dbeta = rowsum(dR o E) + rowsum(dM o G),   dS = dS' + Q^T dO + K^T dX.
 * Every product is the attention table's mm (simd/attn.h) on packed, zero-padded tiles:
 * head dims padded to Dkp, Dvp (multiples of 16), operands needed as B^T (K^T, Vn^T, S^T,
 * dS'^T) transposed once per chunk. The triangular C x C factors are computed and used in
 * 16-row blocks, only as far as the diagonal. While a chunk computes, the rows of the next
 * one (strided inputs, outputs, its saved state) are prefetched between its products.
 * Each (b, h) has one writer for all its outputs: the same bits for any thread count.
 * step: kv = S^T k, S += k (beta (v - kv))^T, o = S^T (s q), per (b, h) on the state in
 *   place. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kernels/check.h"
#include "seqnn.h"
#include "simd/attn.h"

#define C SN_LINATTN_CHUNK
#define BLK ATTN_W /* rows per block of the triangular factors */
/* Below this many state elements times steps a call runs on the calling thread. */
#define PARALLEL_MIN 65536.0
/* Head dims above this are rejected: keeps every scratch size and mm dimension in range. */
#define MAX_HEAD_DIM 65536

static const char *FN = "seqnn.F.delta_rule";

static int64_t pad16(int64_t n) { return (n + BLK - 1) / BLK * BLK; }
static int min_int(int a, int b) { return a < b ? a : b; }

/* A tensor of 3 or 4 dims with unit stride on the last: element (i, j, k, l) at
 * p + i s0 + j s1 + k s2 + l (3 dims: (i, j, k) at p + i s0 + j s1 + k). */
typedef struct {
  const float *p;
  int64_t s0, s1, s2;
} view;

static view view_of(const sn_tensor *t) {
  if (!t) return (view){NULL, 0, 0, 0};
  return (view){sn_f32(t), t->stride[0], t->stride[1], t->ndim == 4 ? t->stride[2] : 1};
}

static const float *at(view v, int64_t i, int64_t j, int64_t k) { return v.p + i * v.s0 + j * v.s1 + k * v.s2; }

typedef struct {
  int64_t B, T, H, Dk, Dv, Dkp, Dvp, chunks;
  view q, k, v, beta, h0;
  float scale;
} problem;

/* ---- validation ------------------------------------------------------------------------ */

/* q, k (B,T,H,Dk), v (B,T,H,Dv), beta (B,T,H) and opts (T = 1 for the step); fills P. */
static sn_status check_inputs(sn_ctx *ctx, problem *P, const sn_tensor *q, const sn_tensor *k, const sn_tensor *v,
                              const sn_tensor *beta, const sn_linattn_opts *opts, bool step) {
  char a[160];
  int64_t T = step ? 1 : -1;
  sn_status st = check_in(ctx, FN, "q", q, step ? "(B, 1, H, Dk)" : "(B, T, H, Dk)", 4, (int64_t[]){-1, T, -1, -1});
  if (st != SN_OK) return st;
  int64_t B = q->size[0], H = q->size[2], Dk = q->size[3];
  T = q->size[1];
  st = check_in(ctx, FN, "k", k, step ? "(B, 1, H, Dk) like q" : "(B, T, H, Dk) like q", 4, q->size);
  if (st == SN_OK) st = check_in(ctx, FN, "v", v, step ? "(B, 1, H, Dv)" : "(B, T, H, Dv)", 4, (int64_t[]){B, T, H, -1});
  if (st == SN_OK) st = check_in(ctx, FN, "beta", beta, step ? "(B, 1, H)" : "(B, T, H)", 3, (int64_t[]){B, T, H});
  if (st != SN_OK) return st;
  int64_t Dv = v->size[3];
  if (Dk < 1 || Dv < 1 || Dk > MAX_HEAD_DIM || Dv > MAX_HEAD_DIM)
    return sn_fail(ctx, SN_EINVAL, "%s: head dims Dk = %lld and Dv = %lld must be in [1, %d] (q: %s, v: %s)", FN,
                   (long long)Dk, (long long)Dv, MAX_HEAD_DIM, sn_shape_str(q, a, sizeof a),
                   sn_shape_str(v, (char[160]){0}, 160));
  if (!opts) return sn_fail(ctx, SN_EINVAL, "%s: opts must not be NULL", FN);
  if (!isfinite(opts->scale)) return sn_fail(ctx, SN_EINVAL, "%s: scale must be finite, got %g", FN, opts->scale);
  if (!step) st = check_opt(ctx, FN, "initial_state", opts->initial_state, "(B, H, Dk, Dv)", 4, (int64_t[]){B, H, Dk, Dv});
  if (st != SN_OK) return st;
  *P = (problem){.B = B, .T = T, .H = H, .Dk = Dk, .Dv = Dv, .Dkp = pad16(Dk), .Dvp = pad16(Dv),
                 .chunks = (T + C - 1) / C, .q = view_of(q), .k = view_of(k), .v = view_of(v),
                 .beta = view_of(beta), .h0 = step ? (view){NULL, 0, 0, 0} : view_of(opts->initial_state),
                 .scale = opts->scale};
  return SN_OK;
}

/* Threads for `items` tasks doing `work` state-element steps in all. */
static int threads_for(int64_t items, double work) {
  int nt = omp_get_max_threads();
  if (work < PARALLEL_MIN || items < 2) return 1;
  return items < nt ? (int)items : nt;
}

/* ---- chunk buffers --------------------------------------------------------------------- */

/* A thread's packed chunk (row-major, zero padded) and its products. Sizes in floats:
 *   S, dS: Dkp x Dvp;  ST, dST: Dvp x Dkp;  Q, K, dQ, dK: C x Dkp;  KT: Dkp x C;
 *   E, R, Vn, O (dO in bwd), dVn, dR: C x Dvp;  VnT: Dvp x C;  G, Ai, P, dP, dM: C x C;
 *   tmp: BLK x C;  beta: C. */
typedef struct {
  float *S, *Q, *K, *KT, *E, *R, *Vn, *O, *G, *Ai, *P, *tmp, *beta;
  float *dS, *ST, *dST, *dVn, *dR, *VnT, *dP, *dM, *dQ, *dK;
} bufs;
#define FWD_BUFS 13 /* S .. beta: the forward uses only these */

/* Places the buffers at w when x is non-NULL (bwd: all of them, else the forward's) and
 * returns the floats they take, a multiple of 16 (so each starts 64-byte aligned). */
static int64_t carve(const problem *P, bufs *x, float *w, bool bwd) {
  bufs none = {0};
  bufs *b = x ? x : &none;
  int64_t Dkp = P->Dkp, Dvp = P->Dvp, n = 0;
  struct {
    float **at;
    int64_t n;
  } part[] = {{&b->S, Dkp * Dvp}, {&b->Q, C * Dkp},    {&b->K, C * Dkp},    {&b->KT, Dkp * C},   {&b->E, C * Dvp},
              {&b->R, C * Dvp},   {&b->Vn, C * Dvp},   {&b->O, C * Dvp},    {&b->G, C * C},      {&b->Ai, C * C},
              {&b->P, C * C},     {&b->tmp, BLK * C},  {&b->beta, C},       {&b->dS, Dkp * Dvp}, {&b->ST, Dvp * Dkp},
              {&b->dST, Dvp * Dkp}, {&b->dVn, C * Dvp}, {&b->dR, C * Dvp},  {&b->VnT, Dvp * C},  {&b->dP, C * C},
              {&b->dM, C * C},    {&b->dQ, C * Dkp},   {&b->dK, C * Dkp}};
  int nparts = bwd ? (int)(sizeof part / sizeof part[0]) : FWD_BUFS;
  for (int i = 0; i < nparts; i++) {
    if (x) *part[i].at = w + n;
    n += part[i].n;
  }
  return n;
}

/* S (Dkp x Dvp) = the Dk x Dv state at src (rows rs floats apart; NULL: zeros), padded. */
static void load_state(const problem *P, float *S, const float *src, int64_t rs) {
  int64_t Dv = P->Dv, Dvp = P->Dvp, d0 = src ? P->Dk : 0;
  for (int64_t d = 0; d < d0; d++) {
    memcpy(S + d * Dvp, src + d * rs, (size_t)Dv * sizeof(float));
    memset(S + d * Dvp + Dv, 0, (size_t)(Dvp - Dv) * sizeof(float));
  }
  memset(S + d0 * Dvp, 0, (size_t)((P->Dkp - d0) * Dvp) * sizeof(float));
}

static void store_state(const problem *P, float *dst, const float *S) {
  for (int64_t d = 0; d < P->Dk; d++) memcpy(dst + d * P->Dv, S + d * P->Dvp, (size_t)P->Dv * sizeof(float));
}

/* dst[r][0..np) = a * (the n floats of row t0 + r of (b, ., h) in v), zero padded, r < L. */
static void pack_rows(const sn_attn_ops *ops, float *dst, int64_t np, view v, int64_t b, int64_t t0, int64_t h, int L,
                      int64_t n, float a) {
  for (int r = 0; r < L; r++) {
    float *out = dst + r * np;
    memcpy(out, at(v, b, t0 + r, h), (size_t)n * sizeof(float));
    memset(out + n, 0, (size_t)(np - n) * sizeof(float));
    if (a != 1.0f) ops->scale(out, a, (int)np);
  }
}

/* GCC vectors, compiled without ISA flags (SSE on x86-64): four floats, unaligned, for the
 * 4 x 4 blocks of transpose; 16, 64-byte aligned, for a row of a diagonal 16-block of Ai. */
typedef float v4 __attribute__((vector_size(16), aligned(4)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef float vf __attribute__((vector_size(BLK * sizeof(float))));
/* A lane permutation of the concatenation of a and b, in clang's and GCC's spellings. */
#ifdef __clang__
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (v4i){__VA_ARGS__})
#endif

/* dst (n x mp, rows ldd apart) = the transpose of src's m x n block (rows lds apart), zero
 * in columns [m, mp) (mp a multiple of 4). */
static void transpose(float *dst, int64_t ldd, const float *src, int64_t lds, int m, int64_t n, int mp) {
  for (int i0 = 0; i0 < mp; i0 += 4)
    for (int64_t j0 = 0; j0 < n; j0 += 4) {
      if (i0 + 4 <= m && j0 + 4 <= n) {
        const float *s0 = src + i0 * lds + j0;
        v4 a0 = *(const v4 *)s0, a1 = *(const v4 *)(s0 + lds), a2 = *(const v4 *)(s0 + 2 * lds);
        v4 a3 = *(const v4 *)(s0 + 3 * lds);
        v4 t0 = SHUFFLE(a0, a1, 0, 4, 1, 5), t1 = SHUFFLE(a0, a1, 2, 6, 3, 7);
        v4 t2 = SHUFFLE(a2, a3, 0, 4, 1, 5), t3 = SHUFFLE(a2, a3, 2, 6, 3, 7);
        float *d0 = dst + j0 * ldd + i0;
        *(v4 *)d0 = SHUFFLE(t0, t2, 0, 1, 4, 5);
        *(v4 *)(d0 + ldd) = SHUFFLE(t0, t2, 2, 3, 6, 7);
        *(v4 *)(d0 + 2 * ldd) = SHUFFLE(t1, t3, 0, 1, 4, 5);
        *(v4 *)(d0 + 3 * ldd) = SHUFFLE(t1, t3, 2, 3, 6, 7);
        continue;
      }
      for (int64_t j = j0; j < j0 + 4 && j < n; j++)
        for (int i = i0; i < i0 + 4; i++) dst[j * ldd + i] = i < m ? src[i * lds + j] : 0;
    }
}

/* ---- prefetching the next chunk -------------------------------------------------------- */

/* The rows a task touches in its next chunk, asked for a share at a time between the
 * products of the current one: the strided rows otherwise miss one after another while
 * they are packed, and each output row's stores wait for its lines. */
#define AHEAD_MAX 10
#define PREP_STEPS 4                 /* ahead_next calls in chunk_prepare */
#define FWD_STEPS (PREP_STEPS + 3)   /* ... in a forward chunk */
#define BWD_STEPS (PREP_STEPS + 10)  /* ... in a backward chunk */
typedef struct {
  const char *first[AHEAD_MAX];
  int64_t rs[AHEAD_MAX], bytes[AHEAD_MAX]; /* row stride and bytes per row */
  int rows[AHEAD_MAX];
  bool write[AHEAD_MAX];
  int n, parts, done;
} ahead;

/* rows rows of n floats, rs floats apart, from first. */
static void ahead_add(ahead *a, const float *first, int64_t rs, int rows, int64_t n, bool write) {
  int i = a->n++;
  a->first[i] = (const char *)first, a->rs[i] = rs * (int64_t)sizeof(float);
  a->bytes[i] = n * (int64_t)sizeof(float), a->rows[i] = rows, a->write[i] = write;
}

/* The next of a->parts shares of every list's rows. */
static void ahead_next(ahead *a) {
  if (a->done >= a->parts) return;
  for (int i = 0; i < a->n; i++) {
    int r0 = a->rows[i] * a->done / a->parts, r1 = a->rows[i] * (a->done + 1) / a->parts;
    for (int r = r0; r < r1; r++) {
      const char *p = a->first[i] + r * a->rs[i], *end = p + a->bytes[i];
      for (const char *l = (const char *)((uintptr_t)p & ~(uintptr_t)63); l < end; l += 64) {
        if (a->write[i]) __builtin_prefetch(l, 1, 3);
        else __builtin_prefetch(l, 0, 3);
      }
    }
  }
  a->done++;
}

/* The input rows q, k, v, beta of chunk rows t0 .. t0+L-1 of (b, h), to read. */
static void ahead_inputs(ahead *a, const problem *P, int64_t b, int64_t h, int64_t t0, int L) {
  ahead_add(a, at(P->q, b, t0, h), P->q.s1, L, P->Dk, false);
  ahead_add(a, at(P->k, b, t0, h), P->k.s1, L, P->Dk, false);
  ahead_add(a, at(P->v, b, t0, h), P->v.s1, L, P->Dv, false);
  ahead_add(a, at(P->beta, b, t0, h), P->beta.s1, L, 1, false);
}

/* ---- triangular products (C x C factors, rows C apart) --------------------------------- */

/* X Y^T on and below the diagonal 16-blocks: row block [i0, i0+16) gets columns
 * [0, i0+16), from X (L x K, rows ldx apart) and YT = Y^T (K x C). */
static void mm_lower(const sn_attn_ops *ops, float *out, const float *X, int64_t ldx, const float *YT, int L, int K,
                     float alpha) {
  for (int i0 = 0; i0 < L; i0 += BLK)
    ops->mm(out + i0 * C, C, X + i0 * ldx, ldx, 1, YT, C, min_int(BLK, L - i0), i0 + BLK, K, alpha, false);
}

/* Zeroes the entries above the diagonal (strict: and on it) in the diagonal 16-blocks. */
static void mask_upper(float *M, int L, bool strict) {
  for (int r = 0; r < L; r++) {
    int from = strict ? r : r + 1, to = r / BLK * BLK + BLK;
    memset(M + r * C + from, 0, (size_t)(to - from) * sizeof(float));
  }
}

/* out (L x N, rows ldo apart) (+)= alpha X Y, X lower triangular (L x L), Y rows ldy apart. */
static void mm_tril(const sn_attn_ops *ops, float *out, int64_t ldo, const float *X, const float *Y, int64_t ldy,
                    int L, int N, float alpha, bool acc) {
  for (int i0 = 0; i0 < L; i0 += BLK)
    ops->mm(out + i0 * ldo, ldo, X + i0 * C, C, 1, Y, ldy, min_int(BLK, L - i0), N, min_int(i0 + BLK, L), alpha, acc);
}

/* out (+)= alpha X^T Y, X lower triangular: row r sums over Y's rows c >= r. */
static void mm_tril_t(const sn_attn_ops *ops, float *out, int64_t ldo, const float *X, const float *Y, int64_t ldy,
                      int L, int N, float alpha, bool acc) {
  for (int i0 = 0; i0 < L; i0 += BLK)
    ops->mm(out + i0 * ldo, ldo, X + i0 * C + i0, 1, C, Y + i0 * ldy, ldy, min_int(BLK, L - i0), N, L - i0, alpha,
            acc);
}

/* Ai = (I + strict_tril(diag(beta) G))^-1, unit lower triangular, zero above the diagonal.
 * Each diagonal 16-block is inverted by substitution; block row i then follows from the
 * rows above it: Ai[i, <i] = -Ai[i, i] diag(beta_i) G[i, <i] Ai[<i, <i]. */
static void invert(const sn_attn_ops *ops, bufs *x, int L) {
  float *Ai = x->Ai, *tmp = x->tmp;
  const float *G = x->G, *beta = x->beta;
  memset(Ai, 0, (size_t)(L * C) * sizeof(float));
  for (int i0 = 0; i0 < L; i0 += BLK) {
    int m = min_int(BLK, L - i0);
    for (int r = 0; r < m; r++) {
      /* four partial sums: a chain of dependent vector updates would wait on each other */
      vf acc[4] = {{0}};
      const float *g = G + (i0 + r) * C + i0;
      for (int c = 0; c < r; c++) acc[c & 3] += g[c] * *(const vf *)(Ai + (i0 + c) * C + i0);
      vf row = -beta[i0 + r] * ((acc[0] + acc[1]) + (acc[2] + acc[3]));
      row[r] = 1;
      *(vf *)(Ai + (i0 + r) * C + i0) = row;
    }
    if (i0 == 0) continue;
    ops->mm(tmp, C, G + i0 * C, C, 1, Ai, C, m, i0, i0, 1, false);
    for (int r = 0; r < m; r++) ops->scale(tmp + r * C, beta[i0 + r], i0);
    ops->mm(Ai + i0 * C, C, Ai + i0 * C + i0, C, 1, tmp, C, m, i0, m, -1, false);
  }
}

/* ---- the chunk, forward ---------------------------------------------------------------- */

/* Packs chunk rows t0 .. t0+L-1 of (b, h) and computes G, Ai, E, R, Vn and P from S. */
static void chunk_prepare(const problem *P, const sn_attn_ops *ops, bufs *x, int64_t b, int64_t h, int64_t t0,
                          int L, ahead *pf) {
  int64_t Dk = P->Dk, Dv = P->Dv, Dkp = P->Dkp, Dvp = P->Dvp;
  int Lp = (int)pad16(L);
  pack_rows(ops, x->Q, Dkp, P->q, b, t0, h, L, Dk, P->scale);
  pack_rows(ops, x->K, Dkp, P->k, b, t0, h, L, Dk, 1);
  pack_rows(ops, x->E, Dvp, P->v, b, t0, h, L, Dv, 1);
  transpose(x->KT, C, x->K, Dkp, L, Dk, Lp);
  for (int r = 0; r < L; r++) x->beta[r] = *at(P->beta, b, t0 + r, h);
  mm_lower(ops, x->G, x->K, Dkp, x->KT, L, (int)Dk, 1);
  ahead_next(pf);
  invert(ops, x, L);
  ops->mm(x->E, Dvp, x->K, Dkp, 1, x->S, Dvp, L, (int)Dvp, (int)Dk, -1, true);
  ahead_next(pf);
  for (int r = 0; r < L; r++) {
    memcpy(x->R + r * Dvp, x->E + r * Dvp, (size_t)Dvp * sizeof(float));
    ops->scale(x->R + r * Dvp, x->beta[r], (int)Dvp);
  }
  mm_tril(ops, x->Vn, Dvp, x->Ai, x->R, Dvp, L, (int)Dvp, 1, false);
  ahead_next(pf);
  mm_lower(ops, x->P, x->Q, Dkp, x->KT, L, (int)Dk, 1);
  mask_upper(x->P, L, false);
  ahead_next(pf);
}

static void fwd_task(const problem *P, const sn_attn_ops *ops, float *w, int64_t b, int64_t h, float *out,
                     float *final_state, float *chunk_states) {
  int64_t Dk = P->Dk, Dv = P->Dv, Dkp = P->Dkp, Dvp = P->Dvp, H = P->H;
  bufs x;
  carve(P, &x, w, false);
  load_state(P, x.S, P->h0.p ? at(P->h0, b, h, 0) : NULL, P->h0.s2);
  for (int64_t ch = 0; ch < P->chunks; ch++) {
    int64_t t0 = ch * C;
    int L = (int)(P->T - t0 < C ? P->T - t0 : C);
    int Lnext = (int)(P->T - t0 - L < C ? P->T - t0 - L : C);
    ahead pf = {.parts = FWD_STEPS};
    if (Lnext > 0) {
      ahead_inputs(&pf, P, b, h, t0 + L, Lnext);
      ahead_add(&pf, out + ((b * P->T + t0 + L) * H + h) * Dv, H * Dv, Lnext, Dv, true);
    }
    if (chunk_states) store_state(P, chunk_states + ((b * H + h) * P->chunks + ch) * Dk * Dv, x.S);
    chunk_prepare(P, ops, &x, b, h, t0, L, &pf);
    ops->mm(x.O, Dvp, x.Q, Dkp, 1, x.S, Dvp, L, (int)Dvp, (int)Dk, 1, false);
    ahead_next(&pf);
    mm_tril(ops, x.O, Dvp, x.P, x.Vn, Dvp, L, (int)Dvp, 1, true);
    ahead_next(&pf);
    for (int r = 0; r < L; r++)
      memcpy(out + ((b * P->T + t0 + r) * H + h) * Dv, x.O + r * Dvp, (size_t)Dv * sizeof(float));
    ops->mm(x.S, Dvp, x.K, 1, Dkp, x.Vn, Dvp, (int)Dk, (int)Dvp, L, 1, true);
    ahead_next(&pf);
  }
  if (final_state) store_state(P, final_state + (b * H + h) * Dk * Dv, x.S);
}

sn_status sn_delta_rule_fwd(sn_ctx *ctx, sn_tensor *o, sn_tensor *final_state, sn_tensor *chunk_states,
                            const sn_tensor *q, const sn_tensor *k, const sn_tensor *v, const sn_tensor *beta,
                            const sn_linattn_opts *opts) {
  problem P;
  sn_status st = check_inputs(ctx, &P, q, k, v, beta, opts, false);
  if (st != SN_OK) return st;
  int64_t B = P.B, T = P.T, H = P.H, Dk = P.Dk, Dv = P.Dv;
  st = check_out(ctx, FN, "o", o, false, 4, (int64_t[]){B, T, H, Dv});
  if (st == SN_OK) st = check_out(ctx, FN, "final_state", final_state, true, 4, (int64_t[]){B, H, Dk, Dv});
  if (st == SN_OK) st = check_out(ctx, FN, "chunk_states", chunk_states, true, 5, (int64_t[]){B, H, P.chunks, Dk, Dv});
  if (st != SN_OK) return st;
  int64_t items = B * H;
  if (items == 0) return SN_OK;
  int nt = threads_for(items, (double)items * (double)T * (double)Dk * (double)Dv);
  int64_t per = carve(&P, NULL, NULL, false);
  float *w = sn_ctx_workspace(ctx, (size_t)nt * (size_t)per * sizeof(float));
  if (!w) return SN_ENOMEM;
  const sn_attn_ops *ops = sn_attn_current();
  float *po = sn_f32(o), *pf = final_state ? sn_f32(final_state) : NULL;
  float *pc = chunk_states ? sn_f32(chunk_states) : NULL;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t it = 0; it < items; it++)
    fwd_task(&P, ops, w + omp_get_thread_num() * per, it / H, it % H, po, pf, pc);
  return SN_OK;
}

/* ---- the chunk, backward --------------------------------------------------------------- */

typedef struct {
  const problem *P;
  const sn_attn_ops *ops;
  view dout, dfinal;
  const float *chunk_states;
  float *dq, *dk, *dv, *dbeta, *dh0;
} bwd_args;

/* Chunk rows t0 .. t0+L-1 of (b, h): the gradients of its rows and dS from dS' to the
 * gradient of the state entering it; x->S holds that state. */
static void chunk_bwd(const bwd_args *a, bufs *x, int64_t b, int64_t h, int64_t t0, int L, ahead *pf) {
  const problem *P = a->P;
  const sn_attn_ops *ops = a->ops;
  int64_t Dk = P->Dk, Dv = P->Dv, Dkp = P->Dkp, Dvp = P->Dvp, H = P->H;
  int Lp = (int)pad16(L), dk = (int)Dk, dv = (int)Dv, dkp = (int)Dkp, dvp = (int)Dvp;
  float *dO = x->O;
  chunk_prepare(P, ops, x, b, h, t0, L, pf);
  pack_rows(ops, dO, Dvp, a->dout, b, t0, h, L, Dv, 1);
  transpose(x->ST, Dkp, x->S, Dvp, dkp, Dv, dkp);
  transpose(x->dST, Dkp, x->dS, Dvp, dkp, Dv, dkp);
  transpose(x->VnT, C, x->Vn, Dvp, L, Dv, Lp);
  /* dVn = P^T dO + K dS';  dP = tril(dO Vn^T) */
  mm_tril_t(ops, x->dVn, Dvp, x->P, dO, Dvp, L, dvp, 1, false);
  ops->mm(x->dVn, Dvp, x->K, Dkp, 1, x->dS, Dvp, L, dvp, dk, 1, true);
  ahead_next(pf);
  mm_lower(ops, x->dP, dO, Dvp, x->VnT, L, dv, 1);
  mask_upper(x->dP, L, false);
  ahead_next(pf);
  /* q was scaled: dq = scale (dO S^T + dP K) */
  ops->mm(x->dQ, Dkp, dO, Dvp, 1, x->ST, Dkp, L, dkp, dv, P->scale, false);
  ahead_next(pf);
  mm_tril(ops, x->dQ, Dkp, x->dP, x->K, Dkp, L, dkp, P->scale, true);
  ahead_next(pf);
  mm_tril_t(ops, x->dK, Dkp, x->dP, x->Q, Dkp, L, dkp, 1, false);
  ops->mm(x->dK, Dkp, x->Vn, Dvp, 1, x->dST, Dkp, L, dkp, dv, 1, true);
  ahead_next(pf);
  /* dR = Ai^T dVn;  dM = -strict_tril(dR Vn^T) */
  mm_tril_t(ops, x->dR, Dvp, x->Ai, x->dVn, Dvp, L, dvp, 1, false);
  mm_lower(ops, x->dM, x->dR, Dvp, x->VnT, L, dv, -1);
  mask_upper(x->dM, L, true);
  ahead_next(pf);
  for (int r = 0; r < L; r++) {
    int64_t row = (b * P->T + t0 + r) * H + h;
    float br = x->beta[r], *dr = x->dR + r * Dvp, *dm = x->dM + r * C, *dvr = a->dv + row * Dv;
    a->dbeta[row] = ops->dot(dr, x->E + r * Dvp, dv) + ops->dot(dm, x->G + r * C, r);
    for (int64_t j = 0; j < Dv; j++) dvr[j] = br * dr[j];
    ops->scale(dr, -br, dvp);                /* dR becomes dX */
    ops->scale(dm, br, r / BLK * BLK + BLK); /* dM becomes dG */
  }
  /* dK += dX S^T + (dG + dG^T) K */
  ops->mm(x->dK, Dkp, x->dR, Dvp, 1, x->ST, Dkp, L, dkp, dv, 1, true);
  ahead_next(pf);
  mm_tril(ops, x->dK, Dkp, x->dM, x->K, Dkp, L, dkp, 1, true);
  mm_tril_t(ops, x->dK, Dkp, x->dM, x->K, Dkp, L, dkp, 1, true);
  ahead_next(pf);
  /* dS = dS' + Q^T dO + K^T dX */
  ops->mm(x->dS, Dvp, x->Q, 1, Dkp, dO, Dvp, dk, dvp, L, 1, true);
  ahead_next(pf);
  ops->mm(x->dS, Dvp, x->K, 1, Dkp, x->dR, Dvp, dk, dvp, L, 1, true);
  ahead_next(pf);
  for (int r = 0; r < L; r++) {
    int64_t row = (b * P->T + t0 + r) * H + h;
    memcpy(a->dq + row * Dk, x->dQ + r * Dkp, (size_t)Dk * sizeof(float));
    memcpy(a->dk + row * Dk, x->dK + r * Dkp, (size_t)Dk * sizeof(float));
  }
}

static void bwd_task(const bwd_args *a, float *w, int64_t b, int64_t h) {
  const problem *P = a->P;
  int64_t Dk = P->Dk, Dv = P->Dv;
  bufs x;
  carve(P, &x, w, true);
  load_state(P, x.dS, a->dfinal.p ? at(a->dfinal, b, h, 0) : NULL, a->dfinal.s2);
  for (int64_t ch = P->chunks - 1; ch >= 0; ch--) {
    int64_t t0 = ch * C, tp = t0 - C, H = P->H;
    const float *S = a->chunk_states + ((b * H + h) * P->chunks + ch) * Dk * Dv;
    ahead pf = {.parts = BWD_STEPS};
    if (ch > 0) { /* the chunk swept next, C rows before this one */
      ahead_inputs(&pf, P, b, h, tp, C);
      ahead_add(&pf, at(a->dout, b, tp, h), a->dout.s1, C, Dv, false);
      ahead_add(&pf, S - Dk * Dv, Dv, (int)Dk, Dv, false);
      ahead_add(&pf, a->dq + ((b * P->T + tp) * H + h) * Dk, H * Dk, C, Dk, true);
      ahead_add(&pf, a->dk + ((b * P->T + tp) * H + h) * Dk, H * Dk, C, Dk, true);
      ahead_add(&pf, a->dv + ((b * P->T + tp) * H + h) * Dv, H * Dv, C, Dv, true);
      ahead_add(&pf, a->dbeta + (b * P->T + tp) * H + h, H, C, 1, true);
    }
    load_state(P, x.S, S, Dv);
    chunk_bwd(a, &x, b, h, t0, (int)(P->T - t0 < C ? P->T - t0 : C), &pf);
  }
  if (a->dh0) store_state(P, a->dh0 + (b * P->H + h) * Dk * Dv, x.dS);
}

sn_status sn_delta_rule_bwd(sn_ctx *ctx, sn_tensor *dq, sn_tensor *dk, sn_tensor *dv, sn_tensor *dbeta,
                            sn_tensor *dh0, const sn_tensor *dout, const sn_tensor *dfinal,
                            const sn_tensor *chunk_states, const sn_tensor *q, const sn_tensor *k,
                            const sn_tensor *v, const sn_tensor *beta, const sn_linattn_opts *opts) {
  problem P;
  sn_status st = check_inputs(ctx, &P, q, k, v, beta, opts, false);
  if (st != SN_OK) return st;
  int64_t B = P.B, T = P.T, H = P.H, Dk = P.Dk, Dv = P.Dv;
  int64_t btv[] = {B, T, H, Dv}, hkv[] = {B, H, Dk, Dv};
  if (dh0 && !opts->initial_state)
    return sn_fail(ctx, SN_EINVAL, "%s: dh0 was asked for but opts->initial_state is NULL", FN);
  st = check_in(ctx, FN, "grad_output", dout, "(B, T, H, Dv)", 4, btv);
  if (st == SN_OK) st = check_opt(ctx, FN, "grad_final_state", dfinal, "(B, H, Dk, Dv)", 4, hkv);
  if (st == SN_OK) st = check_out(ctx, FN, "chunk_states", chunk_states, false, 5, (int64_t[]){B, H, P.chunks, Dk, Dv});
  if (st == SN_OK) st = check_out(ctx, FN, "dq", dq, false, 4, q->size);
  if (st == SN_OK) st = check_out(ctx, FN, "dk", dk, false, 4, q->size);
  if (st == SN_OK) st = check_out(ctx, FN, "dv", dv, false, 4, btv);
  if (st == SN_OK) st = check_out(ctx, FN, "dbeta", dbeta, false, 3, (int64_t[]){B, T, H});
  if (st == SN_OK) st = check_out(ctx, FN, "dh0", dh0, true, 4, hkv);
  if (st != SN_OK) return st;
  int64_t items = B * H;
  if (items == 0) return SN_OK;
  int nt = threads_for(items, (double)items * (double)T * (double)Dk * (double)Dv);
  int64_t per = carve(&P, NULL, NULL, true);
  float *w = sn_ctx_workspace(ctx, (size_t)nt * (size_t)per * sizeof(float));
  if (!w) return SN_ENOMEM;
  bwd_args args = {.P = &P, .ops = sn_attn_current(), .dout = view_of(dout), .dfinal = view_of(dfinal),
                   .chunk_states = sn_f32(chunk_states), .dq = sn_f32(dq), .dk = sn_f32(dk), .dv = sn_f32(dv),
                   .dbeta = sn_f32(dbeta), .dh0 = dh0 ? sn_f32(dh0) : NULL};
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t it = 0; it < items; it++) bwd_task(&args, w + omp_get_thread_num() * per, it / H, it % H);
  return SN_OK;
}

/* ---- decode step ----------------------------------------------------------------------- */

sn_status sn_delta_rule_step(sn_ctx *ctx, sn_tensor *o, sn_tensor *state, const sn_tensor *q, const sn_tensor *k,
                             const sn_tensor *v, const sn_tensor *beta, const sn_linattn_opts *opts) {
  problem P;
  sn_status st = check_inputs(ctx, &P, q, k, v, beta, opts, true);
  if (st != SN_OK) return st;
  int64_t B = P.B, H = P.H, Dk = P.Dk, Dv = P.Dv;
  st = check_out(ctx, FN, "state", state, false, 4, (int64_t[]){B, H, Dk, Dv});
  if (st == SN_OK) st = check_out(ctx, FN, "o", o, false, 4, (int64_t[]){B, 1, H, Dv});
  if (st != SN_OK) return st;
  int64_t items = B * H;
  if (items == 0) return SN_OK;
  int nt = threads_for(items, (double)items * (double)Dk * (double)Dv);
  float *w = sn_ctx_workspace(ctx, (size_t)nt * (size_t)P.Dvp * sizeof(float));
  if (!w) return SN_ENOMEM;
  const sn_attn_ops *ops = sn_attn_current();
  float *po = sn_f32(o), *ps = sn_f32(state);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t it = 0; it < items; it++) {
    int64_t b = it / H, h = it % H;
    const float *qt = at(P.q, b, 0, h), *kt = at(P.k, b, 0, h), *vt = at(P.v, b, 0, h);
    float bt = *at(P.beta, b, 0, h), *S = ps + it * Dk * Dv, *out = po + it * Dv;
    float *u = w + omp_get_thread_num() * P.Dvp; /* S^T k, then beta (v - S^T k) */
    memset(u, 0, (size_t)Dv * sizeof(float));
    for (int64_t d = 0; d < Dk; d++) ops->axpy(u, kt[d], S + d * Dv, (int)Dv);
    for (int64_t j = 0; j < Dv; j++) u[j] = bt * (vt[j] - u[j]);
    memset(out, 0, (size_t)Dv * sizeof(float));
    for (int64_t d = 0; d < Dk; d++) {
      ops->axpy(S + d * Dv, kt[d], u, (int)Dv);
      ops->axpy(out, P.scale * qt[d], S + d * Dv, (int)Dv);
    }
  }
  return SN_OK;
}
