/* simd/sparse_int8.h -- internal: the int8 BSR weight of kernels/sparse_int8.c and its two
 * inner-loop tables: AVX-512 VNNI (sparse_int8_vnni.c, vpdpbusd) and portable C
 * (sparse_int8.c). Both give the same int32 sums, so the results have the same bits.
 *
 * Layout (Intel's "4x1" int8 pattern, KERNELS.md 5.1): output rows go in quads (4q .. 4q+3,
 * rows past M are zero padding). A quad's columns are the union of the inputs its rows
 * store, ascending, in tiles of 4 (the last tile repeats its last column with zero
 * weights): tile t has columns cols[4t .. 4t+3] and weights w[16t + 4r + j] for row r,
 * column j, so row r's 4 weights are one 32-bit word, broadcast against 4 u8 inputs per
 * token. Weights are symmetric s8, w = q * scale[row]; activations are u8 = q + 128, so
 * sum w * u8 - 128 * comp[row] (comp = the row's sum of q) is the exact sum w * q. */
#ifndef SN_SIMD_SPARSE_INT8_H
#define SN_SIMD_SPARSE_INT8_H

#include <stdint.h>

#include "seqnn.h"

#define I8_PANEL 64      /* tokens per packed panel: 4 zmm of u8 x 4 rows of int32 sums */
#define I8_DECODE_MAX 4  /* up to this many tokens, no panel (decode) */
#define I8_K_MAX 65536   /* sums of K products |w * u8| <= 127 * 255 stay inside int32 */

struct sn_bsr_i8 {
  int64_t M, K, nnzb, ro, ri; /* of the BSR weight it was made from */
  int64_t Mq, ntiles, bytes;  /* quads, 4x4 tiles, total bytes */
  int64_t *qptr;              /* (Mq + 1): quad q has tiles [qptr[q], qptr[q+1]) */
  int32_t *cols;              /* (ntiles, 4) */
  int8_t *w;                  /* (ntiles, 4 rows, 4 cols) */
  int32_t *comp;              /* (Mq * 4): sum of the row's q */
  float *scale;               /* (Mq * 4): the row's scale, 0 for padding rows */
};

/* Position of token t (< I8_PANEL) in a packed panel row. The VNNI kernel interleaves 4 rows
 * with byte then word unpacks, which work within 128-bit lanes: position 16L + 4i + j lands
 * in lane 4L + j of vector i. Token 16i + 4L + j is stored there, so vector i holds tokens
 * 16i .. 16i+15 in order. */
static inline int i8_pos(int t) { return 16 * ((t % 16) / 4) + 4 * (t / 16) + t % 4; }

/* Where a quad's results go: y[i * ldy + m - m0] for output m < M and the tokens i < cnt
 * (<= I8_PANEL) of a panel or decode batch, token i's scale sx[i] (NaN for a token with an
 * inf or NaN input). */
typedef struct i8_out {
  float *y;
  int64_t ldy, m0, M, cnt;
  const float *sx;   /* (I8_PANEL) for a panel, zeros past cnt */
  const float *bias; /* (M) or NULL */
} i8_out;

/* The epilogue, in sparse_int8.c: for quad q's rows m = 4q + r < M and tokens i < cnt,
 *   y = (float)acc[r * ld + i] * (sx[i] * scale[m])  (+ bias[m])
 * as separate float operations (no FMA), so that the VNNI table's vector epilogue, which
 * runs the same operations, gives the same bits. */
void sn_i8_store(const i8_out *o, const struct sn_bsr_i8 *w, int64_t q, const int32_t *acc, int64_t ld);

typedef struct sn_i8_ops {
  const char *name;
  /* The sums over quad q's tiles of w * q_x for rows r < 4 and the panel's tokens, stored
   * through the epilogue into o; xt: K rows of I8_PANEL u8 (q_x + 128), token t at
   * i8_pos(t). */
  void (*panel)(const struct sn_bsr_i8 *w, int64_t q, const uint8_t *xt, const i8_out *o);
  /* dst[i] = q8(x[i], inv) + 128 for i < n (x finite; q8 in sparse_int8.c). */
  void (*quant)(uint8_t *dst, const float *x, int64_t n, float inv);
  /* max |x[i]| over i < n into *mx; returns whether every x[i] is finite (*mx is then exact). */
  int (*absmax)(const float *x, int64_t n, float *mx);
  /* A panel's K rows into xt: row k holds q8(x[t, k], inv[t]) + 128 of token t at i8_pos(t),
   * 128 for t >= cnt or bad[t]; token t's inputs at x + t * xs. */
  void (*pack)(uint8_t *xt, const float *x, int64_t xs, int cnt, int64_t K, const float *inv,
               const unsigned char *bad);
  /* out[r * n + i] = the same for n <= I8_DECODE_MAX tokens, token i's u8 row at xu + i * xs. */
  void (*decode)(int32_t *out, const struct sn_bsr_i8 *w, int64_t q, const uint8_t *xu, int64_t xs, int n);
} sn_i8_ops;

extern const sn_i8_ops sn_i8_vnni, sn_i8_portable;

#endif
