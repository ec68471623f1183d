/* kernels/selective_scan.c -- Mamba's selective scan, S6 (math in seqnn.h).
 *
 * Channels are the vector lanes: a tile is SCAN_W consecutive channels of one sequence and
 * its N states are N vectors, so the recurrence runs 16 channels at a time and never
 * vectorizes over n (N = 16 leaves nothing to vectorize). A task is a (sequence, slice of
 * SLICE_TILES tiles) and goes through time in chunks of SN_SCAN_CHUNK steps. The inner
 * loops (the ISA tables of simd/scan.h) read a whole tile's rows from the caller's tensors
 * and write its results there (by streaming stores: a plain store reads each line in
 * before overwriting it); a tile past the last channel goes through a copy padded with
 * zeros. While the slice's tiles compute, the loops fetch the slice's rows of the next
 * chunk into L2 a few lines per step, so memory keeps pace with the exps instead of
 * delivering rows one after another when a tile first reads them.
 * fwd: a task runs its chunks in order, saving the state entering each one when
 *   chunk_states is asked for.
 * bwd: a task runs the chunks last to first; for each tile it reloads the chunk's entering
 *   state, recomputes the chunk's decays and states and sweeps back with dL/dh carried from
 *   chunk to chunk. dBm and dCm sum over channels: over the slice's tiles in one buffer
 *   (and partly over lanes, see scan_chunk.acc), then into a (T, N) partial per (sequence,
 *   slice); after all tasks the partials are added slice by slice, and dA, dDskip,
 *   ddelta_bias (per-sequence partials) sequence by sequence. Slices depend only on D, so
 *   every sum runs in one order whatever the thread count. The partials take
 *   2 B ceil(D / 256) T N floats of the workspace.
 * step: one fwd chunk of one step per (sequence, tile), the state read and written in
 *   place. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "kernels/check.h"
#include "seqnn.h"
#include "simd/scan.h"
#include "simd/vec.h"

#define W SCAN_W
#define CH SN_SCAN_CHUNK
/* Tiles per slice: 16 measured 8% faster than 8 (half the per-slice sums over the lanes and
 * slices) and no slower than 24; D = 1536 still makes 6 slices per sequence to thread. */
#define SLICE_TILES 16
#define LOG2E 1.4426950408889634
/* Below this many state updates a call runs on the calling thread. */
#define PARALLEL_MIN 32768

static const char *FN = "seqnn.F.selective_scan";

const sn_scan_ops *sn_scan_ops_now(void) {
  const char *n = sn_vec->name;
  return strcmp(n, "avx512") == 0 ? &sn_scan_avx512 : strcmp(n, "avx2") == 0 ? &sn_scan_avx2 : &sn_scan_scalar;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* A tensor of 2 or 3 dims with unit stride on the last: element (i, j, k) at
 * p + i s0 + j s1 + k (2 dims: (i, k) at p + i s0 + k). */
typedef struct {
  const float *p;
  int64_t s0, s1;
} view;

static view view_of(const sn_tensor *t) {
  if (!t) return (view){NULL, 0, 0};
  return (view){sn_f32(t), t->stride[0], t->ndim == 3 ? t->stride[1] : 0};
}

typedef struct {
  int64_t B, T, D, N, tiles, chunks;
  view u, delta, z, Bm, Cm, h0; /* h0: (B, D, N) */
  const float *A, *Dskip, *bias;
  int64_t As; /* A's row stride */
  bool softplus;
} problem;

/* ---- validation ------------------------------------------------------------------------ */

/* The per-channel and per-state inputs shared by the sequence kernels and the step: A
 * (D, N) and opts; fills P's D-, N- and opts-derived fields. */
static sn_status check_params(sn_ctx *ctx, problem *P, const sn_tensor *A, const sn_scan_opts *opts) {
  char a[160];
  if (!opts) return sn_fail(ctx, SN_EINVAL, "%s: opts must not be NULL", FN);
  sn_status st = check_in(ctx, FN, "A", A, "(D, N)", 2, (int64_t[]){P->D, -1});
  if (st != SN_OK) return st;
  if (A->size[1] < 1) return sn_fail(ctx, SN_EINVAL, "%s: A must have N >= 1 states, got %s", FN, sn_shape_str(A, a, sizeof a));
  st = check_opt(ctx, FN, "Dskip", opts->Dskip, "(D)", 1, &P->D);
  if (st == SN_OK) st = check_opt(ctx, FN, "delta_bias", opts->delta_bias, "(D)", 1, &P->D);
  if (st != SN_OK) return st;
  P->N = A->size[1];
  P->tiles = (P->D + W - 1) / W;
  P->A = sn_f32(A), P->As = A->stride[0];
  P->Dskip = opts->Dskip ? sn_f32(opts->Dskip) : NULL;
  P->bias = opts->delta_bias ? sn_f32(opts->delta_bias) : NULL;
  P->softplus = opts->delta_softplus;
  return SN_OK;
}

/* u, delta (B,T,D), A (D,N), Bm, Cm (B,T,N) and opts of the sequence kernels. */
static sn_status check_inputs(sn_ctx *ctx, problem *P, const sn_tensor *u, const sn_tensor *delta, const sn_tensor *A,
                              const sn_tensor *Bm, const sn_tensor *Cm, const sn_scan_opts *opts) {
  sn_status st = check_in(ctx, FN, "u", u, "(batch, T, D)", 3, (int64_t[]){-1, -1, -1});
  if (st != SN_OK) return st;
  *P = (problem){.B = u->size[0], .T = u->size[1], .D = u->size[2]};
  st = check_in(ctx, FN, "delta", delta, "(batch, T, D) like u", 3, u->size);
  if (st == SN_OK) st = check_params(ctx, P, A, opts);
  if (st != SN_OK) return st;
  int64_t btn[] = {P->B, P->T, P->N}, bdn[] = {P->B, P->D, P->N};
  st = check_in(ctx, FN, "B", Bm, "(batch, T, N)", 3, btn);
  if (st == SN_OK) st = check_in(ctx, FN, "C", Cm, "(batch, T, N)", 3, btn);
  if (st == SN_OK) st = check_opt(ctx, FN, "z", opts->z, "(batch, T, D) like u", 3, u->size);
  if (st == SN_OK) st = check_opt(ctx, FN, "initial_state", opts->initial_state, "(batch, D, N)", 3, bdn);
  if (st != SN_OK) return st;
  P->chunks = (P->T + CH - 1) / CH;
  P->u = view_of(u), P->delta = view_of(delta), P->z = view_of(opts->z);
  P->Bm = view_of(Bm), P->Cm = view_of(Cm), P->h0 = view_of(opts->initial_state);
  return SN_OK;
}

/* Workspace: nt per-thread blocks of `per` floats, then `shared` floats at the returned
 * pointer + nt * per. per is a multiple of 16, so every block starts 64-byte aligned. */
static float *scratch(sn_ctx *ctx, int nt, int64_t per, int64_t shared) {
  return sn_ctx_workspace(ctx, ((size_t)nt * (size_t)per + (size_t)shared) * sizeof(float));
}

/* ---- tiles and slices ------------------------------------------------------------------ */

/* A tile's per-state constants in a thread's block. */
typedef struct {
  float *A, *A2, *Dskip, *bias; /* [N][W], [N][W], [W], [W] */
} consts;

static int64_t consts_floats(const problem *P) { return 2 * P->N * W + 2 * W; }

static consts consts_at(const problem *P, float *p) {
  return (consts){p, p + P->N * W, p + 2 * P->N * W, p + 2 * P->N * W + W};
}

/* Channels d0 .. d0+dn-1 of A (transposed to lanes), Dskip and delta_bias; zeros past dn. */
static void load_consts(const problem *P, consts k, int64_t d0, int dn) {
  for (int64_t n = 0; n < P->N; n++)
    for (int l = 0; l < W; l++) {
      float a = l < dn ? P->A[(d0 + l) * P->As + n] : 0;
      k.A[n * W + l] = a;
      k.A2[n * W + l] = (float)(a * LOG2E);
    }
  for (int l = 0; l < W; l++) {
    k.Dskip[l] = P->Dskip && l < dn ? P->Dskip[d0 + l] : 0;
    k.bias[l] = P->bias && l < dn ? P->bias[d0 + l] : 0;
  }
}

/* A slice: tiles tile0 .. tile0+ntl-1 of a sequence, channels d0 .. d0+n-1. Its tiles share
 * the prefetching of their next chunk's rows (n contiguous floats each) and the buffer of
 * the dBm, dCm sums over their channels. */
typedef struct {
  int64_t tile0, d0;
  int ntl, n;
} slice;

static slice slice_of(const problem *P, int64_t s) {
  int64_t tile0 = s * SLICE_TILES;
  return (slice){tile0, tile0 * W, (int)min64(SLICE_TILES, P->tiles - tile0), (int)min64(SLICE_TILES * W, P->D - tile0 * W)};
}

/* Channels of tile i of the slice. */
static int tile_channels(const slice *sl, int i) { return (int)min64(W, sl->n - i * W); }

/* A tile's L rows of an input at src (rows rs floats apart; dn channels): src itself for a
 * whole tile, else a copy in buf ([L][W], zeros past dn). Sets *stride to the rows'. */
static const float *tile_in(const float *src, int64_t rs, int L, int dn, float *buf, int64_t *stride) {
  if (dn == W) {
    *stride = rs;
    return src;
  }
  for (int t = 0; t < L; t++) {
    memcpy(buf + t * W, src + t * rs, (size_t)dn * sizeof(float));
    memset(buf + t * W + dn, 0, (size_t)(W - dn) * sizeof(float));
  }
  *stride = W;
  return buf;
}

/* Rows t < L of a tile's result k (see scan_chunk.res), dn channels, to dst (rows rs floats
 * apart). */
static void tile_out(float *dst, int64_t rs, const float *res, int k, int L, int dn) {
  for (int t = 0; t < L; t++) memcpy(dst + t * rs, res + ((int64_t)k * CH + t) * W, (size_t)dn * sizeof(float));
}

/* After ops->fwd or ops->bwd left n results at c->res for a tile of dn channels: a whole
 * tile's go out while the next tile computes (and c->res turns to the other of `two`), a
 * partial tile's now. done_results sends the last tile's. */
static void send_results(scan_chunk *c, float *const *dst, int n, int64_t rs, int dn, float *const two[2]) {
  if (dn < W) {
    for (int k = 0; k < n; k++) tile_out(dst[k], rs, c->res, k, c->L, dn);
    c->held_n = 0;
    return;
  }
  c->held = c->res, c->held_n = n, c->held_L = c->L, c->held_rs = rs, c->held_stream = rs % W == 0;
  for (int k = 0; k < n; k++) {
    c->held_dst[k] = dst[k];
    c->held_stream = c->held_stream && (uintptr_t)dst[k] % 64 == 0;
  }
  c->res = c->res == two[0] ? two[1] : two[0];
}

static void done_results(scan_chunk *c) {
  for (int k = 0; k < c->held_n; k++) tile_out(c->held_dst[k], c->held_rs, c->held, k, c->held_L, W);
  c->held_n = 0;
}

/* bc (see scan_chunk) from the L rows of Bm and Cm at bm, cm, rows bs, cs floats apart. */
static void pack_bc(float *bc, const float *bm, int64_t bs, const float *cm, int64_t cs, int L, int64_t N) {
  for (int64_t p = 0; p < (N + 1) / 2; p++) {
    bool pair = 2 * p + 1 < N;
    for (int t = 0; t < L; t++) {
      float *d = bc + (p * CH + t) * 4;
      const float *b = bm + t * bs + 2 * p, *c = cm + t * cs + 2 * p;
      d[0] = b[0], d[1] = pair ? b[1] : 0, d[2] = c[0], d[3] = pair ? c[1] : 0;
    }
  }
}

/* c's prefetch list: tile i's share (of parts) of the L rows, n floats each, of the arrays
 * at ptr[0 .. narr) (NULL: none; rows rs[k] floats apart). */
static void share_rows(scan_chunk *c, const float *const *ptr, const int64_t *rs, int narr, int L, int n, int i,
                       int parts) {
  int64_t r0 = (int64_t)i * L / parts, r1 = (int64_t)(i + 1) * L / parts;
  c->npf = 0;
  for (int k = 0; k < narr; k++)
    if (ptr[k]) {
      c->pf_rs[c->npf] = rs[k];
      c->pf[c->npf++] = ptr[k] + r0 * rs[k];
    }
  c->pf_rows = (int)(r1 - r0), c->pf_floats = n;
}

/* Row t0 of (b, ., d0) in v. */
static const float *row(view v, int64_t b, int64_t t0, int64_t d0) { return v.p + b * v.s0 + t0 * v.s1 + d0; }

/* ---- forward --------------------------------------------------------------------------- */

/* Per thread: each tile's constants and state, then a partial tile's u, delta, z (SCAN_SKEW
 * apart, see simd/scan.h), two result buffers, work, Bm and Cm. */
static int64_t fwd_floats(const problem *P) {
  return SLICE_TILES * (consts_floats(P) + P->N * W) + 3 * (CH * W + SCAN_SKEW) + 2 * (SCAN_RES_FLOATS + SCAN_SKEW) +
         SCAN_WORK_FLOATS + SCAN_BC_FLOATS(P->N);
}

static void fwd_task(const problem *P, const sn_scan_ops *ops, float *w, int64_t b, int64_t s, float *out,
                     float *final_state, float *chunk_states) {
  int64_t D = P->D, N = P->N, per_tile = consts_floats(P) + N * W;
  slice sl = slice_of(P, s);
  int64_t span = CH * W + SCAN_SKEW;
  float *pu = w + SLICE_TILES * per_tile, *pd = pu + span, *pz = pd + span;
  float *res[2] = {pz + span, pz + span + SCAN_RES_FLOATS + SCAN_SKEW};
  float *work = res[1] + SCAN_RES_FLOATS + SCAN_SKEW, *bc = work + SCAN_WORK_FLOATS;
  for (int i = 0; i < sl.ntl; i++) {
    float *h = w + i * per_tile + consts_floats(P);
    int dn = tile_channels(&sl, i);
    load_consts(P, consts_at(P, w + i * per_tile), sl.d0 + i * W, dn);
    if (P->h0.p) ops->load_state(h, row(P->h0, b, sl.d0 + i * W, 0), P->h0.s1, (int)N, dn);
    else memset(h, 0, (size_t)(N * W) * sizeof(float));
  }
  scan_chunk c = {.N = (int)N, .bc = bc, .softplus = P->softplus, .work = work, .res = res[0]};
  for (int64_t ch = 0; ch < P->chunks; ch++) {
    int64_t t0 = ch * CH;
    c.L = (int)min64(CH, P->T - t0);
    pack_bc(bc, row(P->Bm, b, t0, 0), P->Bm.s1, row(P->Cm, b, t0, 0), P->Cm.s1, c.L, N);
    int64_t tn = ch + 1 < P->chunks ? t0 + CH : t0; /* the next chunk (none: 0 rows) */
    const float *next[] = {row(P->u, b, tn, sl.d0), row(P->delta, b, tn, sl.d0),
                           P->z.p ? row(P->z, b, tn, sl.d0) : NULL};
    int64_t next_rs[] = {P->u.s1, P->delta.s1, P->z.s1};
    for (int i = 0; i < sl.ntl; i++) {
      int64_t d0 = sl.d0 + i * W;
      int dn = tile_channels(&sl, i);
      share_rows(&c, next, next_rs, 3, tn > t0 ? (int)min64(CH, P->T - tn) : 0, sl.n, i, sl.ntl);
      consts k = consts_at(P, w + i * per_tile);
      c.A = k.A, c.A2 = k.A2, c.Dskip = k.Dskip, c.bias = k.bias, c.h = w + i * per_tile + consts_floats(P);
      c.u = tile_in(row(P->u, b, t0, d0), P->u.s1, c.L, dn, pu, &c.us);
      c.delta = tile_in(row(P->delta, b, t0, d0), P->delta.s1, c.L, dn, pd, &c.ds);
      c.z = P->z.p ? tile_in(row(P->z, b, t0, d0), P->z.s1, c.L, dn, pz, &c.zs) : NULL;
      if (chunk_states) /* read only by the backward, from memory: streamed */
        ops->store_state(chunk_states + ((b * P->chunks + ch) * D + d0) * N, c.h, (int)N, dn, true);
      ops->fwd(&c);
      float *dst = out + (b * P->T + t0) * D + d0;
      send_results(&c, &dst, 1, D, dn, res);
    }
  }
  done_results(&c);
  _mm_sfence(); /* the streamed chunk states, before another thread reads them */
  if (final_state)
    for (int i = 0; i < sl.ntl; i++)
      ops->store_state(final_state + (b * D + sl.d0 + i * W) * N, w + i * per_tile + consts_floats(P), (int)N,
                       tile_channels(&sl, i), false);
}

sn_status sn_selective_scan_fwd(sn_ctx *ctx, sn_tensor *out, sn_tensor *final_state, sn_tensor *chunk_states,
                                const sn_tensor *u, const sn_tensor *delta, const sn_tensor *A, const sn_tensor *Bm,
                                const sn_tensor *Cm, const sn_scan_opts *opts) {
  problem P;
  sn_status st = check_inputs(ctx, &P, u, delta, A, Bm, Cm, opts);
  if (st != SN_OK) return st;
  if (!out) return sn_fail(ctx, SN_EINVAL, "%s: out must not be NULL", FN);
  st = check_out(ctx, FN, "out", out, true, 3, (int64_t[]){P.B, P.T, P.D});
  if (st == SN_OK) st = check_out(ctx, FN, "final_state", final_state, true, 3, (int64_t[]){P.B, P.D, P.N});
  if (st == SN_OK) st = check_out(ctx, FN, "chunk_states", chunk_states, true, 4, (int64_t[]){P.B, P.chunks, P.D, P.N});
  if (st != SN_OK) return st;
  int nt = omp_get_max_threads();
  int64_t per = fwd_floats(&P), slices = (P.tiles + SLICE_TILES - 1) / SLICE_TILES, items = P.B * slices;
  float *w = scratch(ctx, nt, per, 0);
  if (!w) return SN_ENOMEM;
  const sn_scan_ops *ops = sn_scan_ops_now();
  float *po = sn_f32(out), *pf = final_state ? sn_f32(final_state) : NULL;
  float *pc = chunk_states ? sn_f32(chunk_states) : NULL;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (P.B * P.T * P.D * P.N >= PARALLEL_MIN)
  for (int64_t it = 0; it < items; it++)
    fwd_task(&P, ops, w + omp_get_thread_num() * per, it / slices, it % slices, po, pf, pc);
  return SN_OK;
}

/* ---- backward -------------------------------------------------------------------------- */

typedef struct {
  const problem *P;
  const sn_scan_ops *ops;
  view dout, dfinal;
  const float *chunk_states;
  float *du, *ddelta, *dz;
  /* Shared partials, [B][tiles][N][W] / [B][tiles][W] / [B][slices][T][N]: */
  float *g, *dA, *dDskip, *dbias, *dB, *dC;
  int64_t slices;
} bwd_args;

/* Per thread: the slice's constants, one state, a partial tile's u, delta, z, dout
 * (SCAN_SKEW apart, see simd/scan.h), two result buffers, work, the dBm, dCm sums of a
 * chunk, Bm and Cm. */
static int64_t bwd_floats(const problem *P) {
  return SLICE_TILES * consts_floats(P) + P->N * W + 4 * (CH * W + SCAN_SKEW) + 2 * (SCAN_RES_FLOATS + SCAN_SKEW) +
         SCAN_WORK_FLOATS + SCAN_ACC_FLOATS(P->N) + SCAN_BC_FLOATS(P->N);
}

static void bwd_task(const bwd_args *a, float *w, int64_t b, int64_t s) {
  const problem *P = a->P;
  int64_t D = P->D, N = P->N, T = P->T;
  slice sl = slice_of(P, s);
  int64_t span = CH * W + SCAN_SKEW;
  float *h = w + SLICE_TILES * consts_floats(P), *pu = h + N * W, *pd = pu + span, *pz = pd + span;
  float *pdout = pz + span, *res[2] = {pdout + span, pdout + span + SCAN_RES_FLOATS + SCAN_SKEW};
  float *work = res[1] + SCAN_RES_FLOATS + SCAN_SKEW;
  float *acc = work + SCAN_WORK_FLOATS, *bc = acc + SCAN_ACC_FLOATS(N);
  memset(acc, 0, (size_t)SCAN_ACC_FLOATS(N) * sizeof(float));
  for (int i = 0; i < sl.ntl; i++) {
    int64_t d0 = sl.d0 + i * W, bt = b * P->tiles + sl.tile0 + i;
    int dn = tile_channels(&sl, i);
    load_consts(P, consts_at(P, w + i * consts_floats(P)), d0, dn);
    if (a->dfinal.p) a->ops->load_state(a->g + bt * N * W, row(a->dfinal, b, d0, 0), a->dfinal.s1, (int)N, dn);
    else memset(a->g + bt * N * W, 0, (size_t)(N * W) * sizeof(float));
    memset(a->dA + bt * N * W, 0, (size_t)(N * W) * sizeof(float));
    memset(a->dDskip + bt * W, 0, W * sizeof(float));
    memset(a->dbias + bt * W, 0, W * sizeof(float));
  }
  scan_chunk c = {.N = (int)N, .bc = bc, .softplus = P->softplus, .h = h, .acc = acc, .work = work, .res = res[0],
                  .dz = a->dz != NULL};
  for (int64_t ch = P->chunks - 1; ch >= 0; ch--) {
    int64_t t0 = ch * CH;
    c.L = (int)min64(CH, T - t0);
    pack_bc(bc, row(P->Bm, b, t0, 0), P->Bm.s1, row(P->Cm, b, t0, 0), P->Cm.s1, c.L, N);
    int64_t tp = ch > 0 ? t0 - CH : t0, np = ch > 0 ? CH : 0; /* the chunk swept next (none: 0 rows) */
    const float *next[] = {row(P->u, b, tp, sl.d0), row(P->delta, b, tp, sl.d0),
                           P->z.p ? row(P->z, b, tp, sl.d0) : NULL, row(a->dout, b, tp, sl.d0)};
    int64_t next_rs[] = {P->u.s1, P->delta.s1, P->z.s1, a->dout.s1};
    for (int i = 0; i < sl.ntl; i++) {
      int64_t d0 = sl.d0 + i * W, bt = b * P->tiles + sl.tile0 + i, o = (b * T + t0) * D + d0;
      int dn = tile_channels(&sl, i);
      share_rows(&c, next, next_rs, 4, (int)np, sl.n, i, sl.ntl);
      consts k = consts_at(P, w + i * consts_floats(P));
      c.A = k.A, c.A2 = k.A2, c.Dskip = k.Dskip, c.bias = k.bias;
      c.g = a->g + bt * N * W, c.dA = a->dA + bt * N * W, c.dDskip = a->dDskip + bt * W, c.dbias = a->dbias + bt * W;
      c.u = tile_in(row(P->u, b, t0, d0), P->u.s1, c.L, dn, pu, &c.us);
      c.delta = tile_in(row(P->delta, b, t0, d0), P->delta.s1, c.L, dn, pd, &c.ds);
      c.z = P->z.p ? tile_in(row(P->z, b, t0, d0), P->z.s1, c.L, dn, pz, &c.zs) : NULL;
      c.dout = tile_in(row(a->dout, b, t0, d0), a->dout.s1, c.L, dn, pdout, &c.dos);
      const float *states = a->chunk_states + ((b * P->chunks + ch) * D + d0) * N;
      a->ops->load_state(h, states, N, (int)N, dn);
      if (ch > 0) /* the tile's states entering the chunk swept next, which load_state would wait on */
        for (int64_t j = 0; j < dn * N; j += W) __builtin_prefetch(states - D * N + j);
      a->ops->bwd(&c);
      float *dst[] = {a->du + o, a->ddelta + o, a->dz ? a->dz + o : NULL};
      send_results(&c, dst, a->dz ? 3 : 2, D, dn, res);
    }
    int64_t part = ((b * a->slices + s) * T + t0) * N;
    a->ops->take_sums(a->dB + part, a->dC + part, N, acc, c.L, (int)N);
  }
  done_results(&c);
}

sn_status sn_selective_scan_bwd(sn_ctx *ctx, sn_tensor *du, sn_tensor *ddelta, sn_tensor *dA, sn_tensor *dBm,
                                sn_tensor *dCm, sn_tensor *dDskip, sn_tensor *ddelta_bias, sn_tensor *dz,
                                sn_tensor *dh0, const sn_tensor *dout, const sn_tensor *dfinal,
                                const sn_tensor *chunk_states, const sn_tensor *u, const sn_tensor *delta,
                                const sn_tensor *A, const sn_tensor *Bm, const sn_tensor *Cm,
                                const sn_scan_opts *opts) {
  problem P;
  sn_status st = check_inputs(ctx, &P, u, delta, A, Bm, Cm, opts);
  if (st != SN_OK) return st;
  int64_t btd[] = {P.B, P.T, P.D}, btn[] = {P.B, P.T, P.N}, bdn[] = {P.B, P.D, P.N};
  struct {
    const char *name, *input_name;
    const sn_tensor *grad, *input;
  } pairs[] = {{"dDskip", "Dskip", dDskip, opts->Dskip}, {"ddelta_bias", "delta_bias", ddelta_bias, opts->delta_bias},
               {"dz", "z", dz, opts->z}, {"dh0", "initial_state", dh0, opts->initial_state}};
  for (int i = 0; i < 4; i++)
    if (pairs[i].grad && !pairs[i].input)
      return sn_fail(ctx, SN_EINVAL, "%s: %s was asked for but opts->%s is NULL", FN, pairs[i].name,
                     pairs[i].input_name);
  if (!chunk_states) return sn_fail(ctx, SN_EINVAL, "%s: chunk_states (saved by fwd) must not be NULL", FN);
  if (!du || !ddelta || !dA || !dBm || !dCm)
    return sn_fail(ctx, SN_EINVAL, "%s: du, ddelta, dA, dB and dC must not be NULL", FN);
  st = check_in(ctx, FN, "grad_output", dout, "(batch, T, D) like u", 3, btd);
  if (st == SN_OK) st = check_opt(ctx, FN, "grad_final_state", dfinal, "(batch, D, N)", 3, bdn);
  if (st == SN_OK) st = check_out(ctx, FN, "chunk_states", chunk_states, true, 4, (int64_t[]){P.B, P.chunks, P.D, P.N});
  if (st == SN_OK) st = check_out(ctx, FN, "du", du, true, 3, btd);
  if (st == SN_OK) st = check_out(ctx, FN, "ddelta", ddelta, true, 3, btd);
  if (st == SN_OK) st = check_out(ctx, FN, "dA", dA, true, 2, (int64_t[]){P.D, P.N});
  if (st == SN_OK) st = check_out(ctx, FN, "dB", dBm, true, 3, btn);
  if (st == SN_OK) st = check_out(ctx, FN, "dC", dCm, true, 3, btn);
  if (st == SN_OK) st = check_out(ctx, FN, "dDskip", dDskip, true, 1, &P.D);
  if (st == SN_OK) st = check_out(ctx, FN, "ddelta_bias", ddelta_bias, true, 1, &P.D);
  if (st == SN_OK) st = check_out(ctx, FN, "dz", dz, true, 3, btd);
  if (st == SN_OK) st = check_out(ctx, FN, "dh0", dh0, true, 3, bdn);
  if (st != SN_OK) return st;
  int nt = omp_get_max_threads();
  int64_t slices = (P.tiles + SLICE_TILES - 1) / SLICE_TILES, per = bwd_floats(&P);
  int64_t nstate = P.B * P.tiles * P.N * W, nchan = P.B * P.tiles * W, npart = P.B * slices * P.T * P.N;
  float *w = scratch(ctx, nt, per, 2 * nstate + 2 * nchan + 2 * npart);
  if (!w) return SN_ENOMEM;
  float *shared = w + nt * per;
  bwd_args args = {.P = &P, .ops = sn_scan_ops_now(), .dout = view_of(dout), .dfinal = view_of(dfinal),
                   .chunk_states = sn_f32(chunk_states), .du = sn_f32(du), .ddelta = sn_f32(ddelta),
                   .dz = dz ? sn_f32(dz) : NULL, .g = shared, .dA = shared + nstate, .dDskip = shared + 2 * nstate,
                   .dbias = shared + 2 * nstate + nchan, .dB = shared + 2 * nstate + 2 * nchan,
                   .dC = shared + 2 * nstate + 2 * nchan + npart, .slices = slices};
  int64_t B = P.B, T = P.T, D = P.D, N = P.N, tiles = P.tiles;
  float *pdB = sn_f32(dBm), *pdC = sn_f32(dCm), *pdA = sn_f32(dA);
  float *pdD = dDskip ? sn_f32(dDskip) : NULL, *pdb = ddelta_bias ? sn_f32(ddelta_bias) : NULL;
  float *pdh = dh0 ? sn_f32(dh0) : NULL;
#pragma omp parallel num_threads(nt) if (B * T * D * N >= PARALLEL_MIN)
  {
    float *mine = w + omp_get_thread_num() * per;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < B * slices; it++) bwd_task(&args, mine, it / slices, it % slices);
    /* The fixed-order sums: over slices for dB, dC; over sequences for the rest. */
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * T; r++) {
      int64_t b = r / T, t = r % T;
      float *sb = pdB + r * N, *sc = pdC + r * N;
      memset(sb, 0, (size_t)N * sizeof(float));
      memset(sc, 0, (size_t)N * sizeof(float));
      for (int64_t s = 0; s < slices; s++) {
        const float *xb = args.dB + ((b * slices + s) * T + t) * N, *xc = args.dC + ((b * slices + s) * T + t) * N;
        for (int64_t n = 0; n < N; n++) sb[n] += xb[n], sc[n] += xc[n];
      }
    }
#pragma omp for schedule(static)
    for (int64_t d = 0; d < D; d++) {
      int64_t tile = d / W, l = d % W;
      for (int64_t n = 0; n < N; n++) {
        float s = 0;
        for (int64_t b = 0; b < B; b++) s += args.dA[((b * tiles + tile) * N + n) * W + l];
        pdA[d * N + n] = s;
      }
      float sd = 0, sbias = 0;
      for (int64_t b = 0; b < B; b++) sd += args.dDskip[(b * tiles + tile) * W + l], sbias += args.dbias[(b * tiles + tile) * W + l];
      if (pdD) pdD[d] = sd;
      if (pdb) pdb[d] = sbias;
      if (pdh)
        for (int64_t b = 0; b < B; b++)
          for (int64_t n = 0; n < N; n++) pdh[(b * D + d) * N + n] = args.g[((b * tiles + tile) * N + n) * W + l];
    }
  }
  return SN_OK;
}

/* ---- decode step ----------------------------------------------------------------------- */

sn_status sn_selective_scan_step(sn_ctx *ctx, sn_tensor *out, sn_tensor *state, const sn_tensor *u,
                                 const sn_tensor *delta, const sn_tensor *A, const sn_tensor *Bm,
                                 const sn_tensor *Cm, const sn_scan_opts *opts) {
  sn_status st = check_in(ctx, FN, "u", u, "(batch, D)", 2, (int64_t[]){-1, -1});
  if (st != SN_OK) return st;
  problem P = {.B = u->size[0], .T = 1, .D = u->size[1]};
  st = check_in(ctx, FN, "delta", delta, "(batch, D) like u", 2, u->size);
  if (st == SN_OK) st = check_params(ctx, &P, A, opts);
  if (st != SN_OK) return st;
  int64_t bn[] = {P.B, P.N};
  st = check_in(ctx, FN, "B", Bm, "(batch, N)", 2, bn);
  if (st == SN_OK) st = check_in(ctx, FN, "C", Cm, "(batch, N)", 2, bn);
  if (st == SN_OK) st = check_opt(ctx, FN, "z", opts->z, "(batch, D) like u", 2, u->size);
  if (st != SN_OK) return st;
  if (!state || !out) return sn_fail(ctx, SN_EINVAL, "%s: state and out must not be NULL", FN);
  st = check_out(ctx, FN, "state", state, true, 3, (int64_t[]){P.B, P.D, P.N});
  if (st == SN_OK) st = check_out(ctx, FN, "out", out, true, 2, u->size);
  if (st != SN_OK) return st;
  P.u = view_of(u), P.delta = view_of(delta), P.z = view_of(opts->z), P.Bm = view_of(Bm), P.Cm = view_of(Cm);
  int nt = omp_get_max_threads();
  int64_t per = fwd_floats(&P), items = P.B * P.tiles, D = P.D, N = P.N;
  float *w = scratch(ctx, nt, per, 0);
  if (!w) return SN_ENOMEM;
  const sn_scan_ops *ops = sn_scan_ops_now();
  float *po = sn_f32(out), *ps = sn_f32(state);
#pragma omp parallel for schedule(static) num_threads(nt) if (P.B * D * N >= PARALLEL_MIN)
  for (int64_t it = 0; it < items; it++) {
    int64_t b = it / P.tiles, d0 = it % P.tiles * W;
    int dn = (int)min64(W, D - d0);
    float *mine = w + omp_get_thread_num() * per;
    consts k = consts_at(&P, mine);
    float *h = mine + consts_floats(&P), *pu = h + N * W, *pd = pu + CH * W, *pz = pd + CH * W, *o = pz + CH * W;
    load_consts(&P, k, d0, dn);
    ops->load_state(h, ps + (b * D + d0) * N, N, (int)N, dn);
    float *bc = o + SCAN_RES_FLOATS + SCAN_WORK_FLOATS;
    pack_bc(bc, P.Bm.p + b * P.Bm.s0, 0, P.Cm.p + b * P.Cm.s0, 0, 1, N);
    scan_chunk c = {.L = 1, .N = (int)N, .bc = bc, .A = k.A, .A2 = k.A2, .Dskip = k.Dskip, .bias = k.bias,
                    .softplus = P.softplus, .h = h, .res = o, .work = o + SCAN_RES_FLOATS};
    c.u = tile_in(P.u.p + b * P.u.s0 + d0, 0, 1, dn, pu, &c.us);
    c.delta = tile_in(P.delta.p + b * P.delta.s0 + d0, 0, 1, dn, pd, &c.ds);
    c.z = P.z.p ? tile_in(P.z.p + b * P.z.s0 + d0, 0, 1, dn, pz, &c.zs) : NULL;
    ops->fwd(&c);
    ops->store_state(ps + (b * D + d0) * N, h, (int)N, dn, false);
    memcpy(po + b * D + d0, o, (size_t)dn * sizeof(float));
  }
  return SN_OK;
}
