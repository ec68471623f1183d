/* simd/scan.h -- internal: the inner loops of kernels/selective_scan.c, one table per
 * instruction set. scan_tile.h holds the code once, written with GCC vector types as wide
 * as the ISA's registers; scan_{scalar,avx2,avx512}.c compile it with their ISA flags, and
 * selective_scan.c picks the table matching sn_vec (so SEQNN_SIMD lowers both alike).
 *
 * The unit of work is one tile of SCAN_W channels (lanes are channels: one AVX-512 vector,
 * or 2 AVX2 or 4 SSE vectors computed one after the other) over
 * one chunk of L <= SN_SCAN_CHUNK steps. Per-step channel data are rows of SCAN_W floats,
 * row t of each array at its pointer + t * its stride: the caller's tensors themselves for
 * a whole tile, or for a tile past the last channel a copy padded with zeros (which keeps
 * those lanes at zero state and zero gradient). Bm and Cm come by pairs of states
 * (scan_chunk.bc).
 * States and per-state constants are [N][SCAN_W]: state n of the tile's 16 channels is
 * one vector. */
#ifndef SN_SIMD_SCAN_H
#define SN_SIMD_SCAN_H

#include <stdbool.h>
#include <stdint.h>

#include "seqnn.h"

#define SCAN_W 16
/* Floats between consecutive scratch arrays past a multiple of 4 KiB (see bufs_of). */
#define SCAN_SKEW 64
/* Arrays in a scan_chunk's prefetch list. */
#define SCAN_PF 4
/* Floats of scan_chunk.bc for N states. */
#define SCAN_BC_FLOATS(N) (((N) + 1) / 2 * 4 * SN_SCAN_CHUNK)
/* Results per step of a tile (bwd's du, ddelta, dz) and floats of scan_chunk.res. */
#define SCAN_RES 3
#define SCAN_RES_FLOATS (SCAN_RES * SN_SCAN_CHUNK * SCAN_W)
/* Floats of scan_chunk.acc for N states: rows for groups of up to SCAN_ACC_GROUP states. */
#define SCAN_ACC_GROUP 4
#define SCAN_ACC_FLOATS(N) (2 * (((N) + SCAN_ACC_GROUP - 1) / SCAN_ACC_GROUP * SCAN_ACC_GROUP) * SN_SCAN_CHUNK * SCAN_W)
/* Floats of scan_chunk.work that fwd and bwd need, for any N (see bufs_of). */
#define SCAN_WORK_FLOATS (16 * (SN_SCAN_CHUNK * SCAN_W + SCAN_SKEW))

typedef struct scan_chunk {
  int L, N;
  const float *u, *delta, *z; /* rows us, ds, zs floats apart; z NULL: no gate */
  int64_t us, ds, zs;
  /* Bm[t,n] and Cm[t,n], pair p = n / 2 at bc + (p * SN_SCAN_CHUNK + t) * 4 as B[2p], B[2p+1],
   * C[2p], C[2p+1] (zeros past N): a register block's share of them fills a few lines, where
   * rows of N would take a line per step of each (and L1 is full). */
  const float *bc;
  const float *A, *A2;        /* [N][W]: A and A log2(e) */
  const float *Dskip, *bias;  /* [W], zeros when absent */
  bool softplus;
  /* In: the state entering the chunk. fwd leaves the state after it; bwd clobbers it. */
  float *h;
  /* The chunk's results, fwd's out, bwd's du, ddelta and (when dz) dz, row t of result k at
   * res + (k * SN_SCAN_CHUNK + t) * SCAN_W; the caller sends them on. */
  float *res;
  /* The previous tile's results (laid out as res), going out while this tile computes, a
   * line at a time between its steps: rows t < held_L of held_n results to held_dst[k] +
   * t * held_rs, by streaming stores when held_stream (every row 64-byte aligned). Sent
   * in one burst as a tile finished, they held the write-combining buffers that the
   * prefetches of the next rows then waited for. All are out, and ordered, when fwd or bwd
   * returns. */
  const float *held;
  float *held_dst[SCAN_RES];
  int64_t held_rs;
  int held_n, held_L;
  bool held_stream;
  /* bwd only. g (in) is dL/d(state after the chunk) from the steps after it (dfinal for
   * the last chunk); g (out) is dL/d(state entering the chunk). */
  const float *dout; /* rows dos floats apart */
  int64_t dos;
  float *g;
  bool dz; /* dz wanted (needs z) */
  float *dA;               /* [N][W] += sum_t dt g exp(dt A) h[t-1] */
  float *dDskip, *dbias;   /* [W] += sum_t dy u, sum_t ddelta */
  /* SCAN_ACC_FLOATS(N), zero before a chunk's first tile (take_sums leaves it so): the terms
   * of dBm[t,n] (g dt u) and dCm[t,n] (dy h) summed over the tiles of a chunk, and over
   * lanes as far as the table does in registers; take_sums finishes them. */
  float *acc;
  float *work; /* SCAN_WORK_FLOATS of scratch, 64-byte aligned */
  /* Lines to bring into L2 while computing, spread evenly over the chunk (issued in bursts
   * they would hold the line fill buffers the loops' own misses need): pf_rows rows of
   * pf_floats floats of npf arrays, array i's rows at pf[i] + r * pf_rs[i]. The caller's
   * next chunk, which memory would otherwise deliver row by row. */
  const float *pf[SCAN_PF];
  int64_t pf_rs[SCAN_PF];
  int npf, pf_rows, pf_floats;
} scan_chunk;

typedef struct sn_scan_ops {
  const char *name;
  /* out[t] = (sum_n Cm[t,n] h[t,n] + Dskip u[t]) silu(z[t]) for the chunk's steps (to res). */
  void (*fwd)(const scan_chunk *c);
  /* Recomputes the chunk's states from c->h, then sweeps back in time (see scan_chunk). */
  void (*bwd)(const scan_chunk *c);
  /* dB[t][n], dC[t][n] (rows ld floats apart, t < L, n < N) from acc, which is zeroed
   * again. Always in the same order. */
  void (*take_sums)(float *dB, float *dC, int64_t ld, float *acc, int L, int N);
  /* A tile's states between the [N][SCAN_W] of the loops and a (channel, N) layout:
   * h[n][l] = src[l * sd + n] for l < dn (zeros past dn); dst[l * N + n] = h[n][l], with
   * stream by streaming stores where the rows allow (the caller orders them with a fence
   * before they are read). */
  void (*load_state)(float *h, const float *src, int64_t sd, int N, int dn);
  void (*store_state)(float *dst, const float *h, int N, int dn, bool stream);
} sn_scan_ops;

extern const sn_scan_ops sn_scan_scalar, sn_scan_avx2, sn_scan_avx512;
/* The table matching sn_vec (kernels/selective_scan.c). */
const sn_scan_ops *sn_scan_ops_now(void);

#endif
