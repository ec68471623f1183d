/* simd/hash_memory.h -- internal: the inner loops of kernels/hash_memory.c (MemoryFormer's
 * memory layer), one table per instruction set. hash_memory_tile.h holds the code once,
 * written with GCC vector types of one register; hash_memory_{scalar,avx2,avx512}.c compile
 * it with their ISA flags, and hash_memory.c picks the table matching sn_vec (so SEQNN_SIMD
 * lowers it like every other kernel).
 *
 * A task covers tokens [n0, n1), tables [k0, k1) and columns [c0, c0 + nc) with nc <=
 * HM_CB: the accumulators of one token's column block stay in registers while it walks the
 * block's tables. The tables' columns are not read in place but from a slice (a panel):
 * row (k - k0) R + code of the panel, HM_CB floats apart, holds columns c0 .. c0 + nc - 1 of
 * table k's row `code`. (In place, rows d_out floats apart -- 4 KiB at d_out = 1024 -- map
 * a block's few lines per row to a few sets of L1 and L2, which thrashed: 20x slower.)
 * For the same reason gather sums into a panel of y's columns, not into y's rows. */
#ifndef SN_SIMD_HASH_MEMORY_H
#define SN_SIMD_HASH_MEMORY_H

#include <stdbool.h>
#include <stdint.h>

/* Columns per block: 4 AVX-512 registers of accumulators (8 with AVX2), and a row slice of
 * 256 bytes, so that a block of tables x 2^bits rows of it fits L2 (see hash_memory.c). */
#define HM_CB 64 /* = SN_HASH_PANEL */
/* Columns per block of a bf16 copy: its row slice is one cache line (16 words), the unit L2
 * hands to L1, and the y panel half as wide; reading a row costs one line per 32 columns,
 * as the 64-column block's did, while a token's partial sums cost half as many (and the
 * table block, as many bytes, twice the tables). */
#define HM_CB16 32 /* = SN_HASH_PANEL_BF16 */

typedef struct hm_task {
  int64_t n0, n1, k0, k1, c0, nc;
  int64_t K, R, dout;   /* tables, rows per table (2^bits), row length of tables, y and dy */
  const int64_t *h;     /* (N, K) codes, each in [0, R) */
  const float *p;       /* (N, K) scores */
  const float *tab;     /* gather, dot: the panel of tables [k0, k1), columns [c0, c0 + nc) */
  const float *bias;    /* gather with first: (dout) or NULL for zeros */
  const float *dy;      /* dot, scatter: (N, dout) */
  float *out;           /* gather: a panel of y, row n - n0 at out + (n - n0) HM_CB (HM_CB16 for bf16);
                         * dot: dp (N, K); scatter: the panel of dtables */
  float *y;             /* gather: NULL, or (the last table block) y (N, dout), written
                         * instead of the panel: no copy of the panel afterwards */
  bool first;           /* gather: start from the bias, not from y's partial sums */
  const uint32_t *tab16; /* gather_bf16: the panel in bf16 pairs, HM_CB16 / 2 words a row (see below) */
  const char *next;     /* gather: NULL, or memory to fetch towards L2 while summing ... */
  int64_t next_bytes;   /* ... (the next panel of a packed copy), spread over the tokens */
  /* gather, gather_bf16 (instead of h and p): token n's codes as panel rows,
   * off[n kw + k - k0] = (k - k0) R + h[n,k], and its scores ps[n kw + k - k0] = p[n,k],
   * kw = k1 - k0 (contiguous per token: a stream the hardware prefetches, where h and p's
   * rows are K entries apart) */
  const uint32_t *off;
  const float *ps;
} hm_task;

typedef struct sn_hash_memory_ops {
  const char *name;
  /* With T[k, r, c] = table k's row r, column c (read from or added to the panel):
   * Y[n, c] = (first ? bias[c] : Y[n, c]) + sum_{k0 <= k < k1} p[n,k] T[k, h[n,k], c]
   * (Y: the panel of y),
   * tables added in order k0, k0+1, ... */
  void (*gather)(const hm_task *t);
  /* gather from bf16 panels of HM_CB16 columns: word w of a row holds column w in its low
   * half and w + 16 in its high half, so that one vector of words gives two vectors of
   * floats that are whole column runs: column w is the low half shifted up (a bf16), column
   * w + 16 the whole word read as an f32 -- a value with 16 more bits than bf16, whose high
   * half sn_hash_linear_pack rounds around the low half's bits, as close as a bf16 and
   * without the mask that would clear them. All HM_CB16 columns are summed (the panel is
   * zero past d_out); first starts from zeros, and the bias is added on writing y (sums,
   * then bias). */
  void (*gather_bf16)(const hm_task *t);
  /* bits = 8: chunk k (features 8k .. 8k + 7 of z) gets its code h[k] and score p[k] (the
   * paper's form when paper), VW chunks at a time: hash_row's values in hash_memory.c,
   * with the product of sigmoids taken as one reciprocal (equal within ~1e-7). */
  void (*hash8)(const float *z, int64_t K, bool paper, int64_t *h, float *p);
  /* dp[n, k] += sum_c T[k, h[n,k], c] dy[n, c] over the task's columns. */
  void (*dot)(const hm_task *t);
  /* T[k, h[n,k], c] += p[n,k] dy[n, c], tokens in order n0, n0+1, ... */
  void (*scatter)(const hm_task *t);
} sn_hash_memory_ops;

extern const sn_hash_memory_ops sn_hash_memory_scalar, sn_hash_memory_avx2, sn_hash_memory_avx512;

#endif
