/* kernels/sparse_int8.c -- int8 inference on a BSR weight (API in seqnn.h, layout in
 * simd/sparse_int8.h): quantization into the 4x1-tile layout, the product, and the
 * portable inner loops.
 *
 * Quantization (round to nearest even; q8(v, inv) = clamp(round(v * inv), -127, 127)):
 *   weights: per output row, scale = max|w| / 127 and inv = 127 / max|w| over its stored
 *            values; a row with max|w| < I8_TINY (or none stored) has scale 0 and q = 0.
 *            Non-finite weights are rejected.
 *   x:       per token, the same with its K inputs (sx, inv); a token with an inf or NaN
 *            input gets sx = NaN (its outputs are NaN), all q = 0.
 *   y[n, m] = (float)acc * (sx[n] * scale[m]) + bias[m], acc = sum_k q_w q_x exactly in int32
 *            (|acc| <= K 127 255 < 2^31 for K <= I8_K_MAX).
 * Block shapes: any (ro, ri). Rows go in quads of 4 whatever ro is: a quad's columns are
 * the union of its rows' stored inputs (ro % 4 == 0: its block-row's), missing weights and
 * rows past M (M % 4 != 0) are zero padding. With ro % 4 != 0 the quads merge block-rows,
 * so padding grows with how much the rows' patterns differ.
 * Product: a task per panel quantizes its tokens and packs them transposed, I8_PANEL u8 per
 * input (simd/sparse_int8.h); then tasks (panel, block of I8_QB quads) run the ISA's panel
 * loop into a small buffer and copy it to whole rows of y; N <= I8_DECODE_MAX runs the
 * decode loop per quad on x's quantized rows. Every output has one writer, integer sums and
 * the shared epilogue (sn_i8_store, or the VNNI table's vector copy of it), so the bits
 * depend neither on the thread count nor on the table (VNNI or portable).
 * VNNI runs when the CPU has it and sn_vec is "avx512" (SEQNN_SIMD=avx2 or scalar selects
 * the portable loops; tests use that switch). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/bsr.h"
#include "kernels/check.h"
#include "kernels/nn.h"
#include "simd/sparse_int8.h"
#include "simd/vec.h"

#define I8_TINY 0x1p-100f /* below: the row quantizes to zero (127 / max stays finite) */
#define I8_QB 8           /* quads per task */
#define I8_PACK_BYTES (16 << 20)

static const char *FN_NEW = "seqnn.sparse.bsr_i8_new", *FN_MM = "seqnn.sparse.bsr_i8_matmul";

static const sn_i8_ops *i8_ops(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni") && strcmp(sn_vec->name, "avx512") == 0 ? &sn_i8_vnni : &sn_i8_portable;
}

/* ---- quantization ------------------------------------------------------------------------ */

/* clamp(round-to-nearest-even(v * inv), -127, 127); v * inv finite. Adding and subtracting
 * 1.5 * 2^23 rounds any |r| < 2^22 to an integer in the current (nearest-even) mode, without
 * a libm call. */
static inline int q8(float v, float inv) {
  float r = v * inv;
  r = (r + 12582912.0f) - 12582912.0f;
  r = r > 127.0f ? 127.0f : r; /* written as float min/max so that loops vectorize */
  r = r < -127.0f ? -127.0f : r;
  return (int)r;
}

/* scale and inv of a row whose largest |value| is maxabs. */
static void scale_of(float maxabs, float *scale, float *inv) {
  if (maxabs < I8_TINY) *scale = *inv = 0.0f;
  else *scale = maxabs / 127.0f, *inv = 127.0f / maxabs;
}

/* ---- building the layout ----------------------------------------------------------------- */

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* The distinct inputs stored by quad q's rows into list (stamp[col] == tag marks them),
 * ascending; returns how many. */
static int64_t quad_columns(int64_t q, int64_t tag, const bsr_shape *sh, const int64_t *bp, const int64_t *bc,
                            int64_t *stamp, int32_t *list) {
  int64_t n = 0, prev = -1;
  bool sorted = true;
  for (int64_t m = 4 * q; m < 4 * q + 4 && m < sh->M; m++) {
    int64_t br = m / sh->ro;
    if (br == prev) continue;
    prev = br;
    for (int64_t b = bp[br]; b < bp[br + 1]; b++)
      for (int64_t c = 0; c < sh->ri; c++) {
        int64_t col = bc[b] * sh->ri + c;
        if (stamp[col] == tag) continue;
        stamp[col] = tag;
        sorted = sorted && (n == 0 || list[n - 1] < col);
        list[n++] = (int32_t)col;
      }
  }
  if (!sorted) qsort(list, (size_t)n, sizeof *list, cmp_i32);
  return n;
}

sn_status sn_bsr_i8_new(sn_ctx *ctx, sn_bsr_i8 **out, const sn_tensor *values, const sn_tensor *browptr,
                        const sn_tensor *bcol, int64_t K) {
  if (!out) return sn_fail(ctx, SN_EINVAL, "%s: out must not be NULL", FN_NEW);
  *out = NULL;
  bsr_shape sh;
  sn_status st = bsr_check(ctx, FN_NEW, values, browptr, bcol, K, &sh);
  if (st != SN_OK) return st;
  if (K > I8_K_MAX)
    return sn_fail(ctx, SN_EINVAL, "%s: K = %lld inputs is more than the int8 kernel's %d (int32 sums)", FN_NEW,
                   (long long)K, I8_K_MAX);
  const int64_t M = sh.M, ro = sh.ro, ri = sh.ri, Mq = (M + 3) / 4;
  const float *pv = sn_f32(values);
  const int64_t *bp = sn_i64(browptr), *bc = sn_i64(bcol);
  for (int64_t i = 0; i < sh.nnzb * ro * ri; i++)
    if (!isfinite(pv[i]))
      return sn_fail(ctx, SN_EINVAL, "%s: values must be finite to quantize, block %lld row %lld col %lld is %g",
                     FN_NEW, (long long)(i / (ro * ri)), (long long)(i / ri % ro), (long long)(i % ri),
                     (double)pv[i]);

  /* Temporaries: stamps and positions per input, a column list, inv per row. */
  int64_t *stamp = malloc(sizeof(int64_t) * (size_t)(K + 1));
  int32_t *list = malloc(sizeof(int32_t) * (size_t)(K + 1)), *pos = malloc(sizeof(int32_t) * (size_t)(K + 1));
  float *inv = malloc(sizeof(float) * (size_t)(4 * Mq + 1));
  int64_t *qptr = malloc(sizeof(int64_t) * (size_t)(Mq + 1));
  struct sn_bsr_i8 *w = calloc(1, sizeof *w);
  void *block = NULL;
  if (!stamp || !list || !pos || !inv || !qptr || !w) goto oom;
  for (int64_t k = 0; k < K; k++) stamp[k] = -1;
  qptr[0] = 0;
  for (int64_t q = 0; q < Mq; q++)
    qptr[q + 1] = qptr[q] + (quad_columns(q, q, &sh, bp, bc, stamp, list) + 3) / 4;
  const int64_t nt = qptr[Mq];
  /* One 64-byte aligned block: cols, w, comp, scale (each a multiple of 16 bytes). */
  size_t bytes = (size_t)(16 * nt + 16 * nt + 16 * Mq + 16 * Mq);
  block = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
  if (!block) goto oom;
  memset(block, 0, bytes);
  *w = (struct sn_bsr_i8){.M = M, .K = K, .nnzb = sh.nnzb, .ro = ro, .ri = ri, .Mq = Mq, .ntiles = nt,
                          .bytes = (int64_t)(bytes + sizeof *w + sizeof(int64_t) * (size_t)(Mq + 1)), .qptr = qptr};
  char *base = block;
  w->cols = block;
  w->w = (void *)(base + 16 * nt);
  w->comp = (void *)(base + 32 * nt);
  w->scale = (void *)(base + 32 * nt + 16 * Mq);

  for (int64_t m = 0; m < 4 * Mq; m++) {
    float mx = 0.0f;
    if (m < M) {
      int64_t br = m / ro, r = m % ro;
      for (int64_t b = bp[br]; b < bp[br + 1]; b++)
        for (int64_t c = 0; c < ri; c++) mx = fmaxf(mx, fabsf(pv[(b * ro + r) * ri + c]));
    }
    scale_of(mx, &w->scale[m], &inv[m]);
  }
  for (int64_t k = 0; k < K; k++) stamp[k] = -1;
  for (int64_t q = 0; q < Mq; q++) {
    int64_t n = quad_columns(q, q, &sh, bp, bc, stamp, list), t0 = qptr[q];
    for (int64_t i = 0; i < n; i++) pos[list[i]] = (int32_t)i;
    for (int64_t i = 0; i < 4 * (qptr[q + 1] - t0); i++) w->cols[4 * t0 + i] = list[i < n ? i : n - 1];
    for (int64_t r = 0; r < 4 && 4 * q + r < M; r++) {
      int64_t m = 4 * q + r, br = m / ro, lr = m % ro;
      for (int64_t b = bp[br]; b < bp[br + 1]; b++)
        for (int64_t c = 0; c < ri; c++) {
          int64_t p = pos[bc[b] * ri + c];
          int v = q8(pv[(b * ro + lr) * ri + c], inv[m]);
          w->w[16 * (t0 + p / 4) + 4 * r + p % 4] = (int8_t)v;
          w->comp[m] += v;
        }
    }
  }
  free(stamp), free(list), free(pos), free(inv);
  *out = w;
  return SN_OK;
oom:
  free(stamp), free(list), free(pos), free(inv), free(qptr), free(w), free(block);
  return sn_fail(ctx, SN_ENOMEM, "%s: out of memory building the int8 weight (M = %lld, K = %lld, nnzb = %lld)",
                 FN_NEW, (long long)sh.M, (long long)K, (long long)sh.nnzb);
}

void sn_bsr_i8_free(sn_bsr_i8 *w) {
  if (!w) return;
  free(w->cols); /* the block */
  free(w->qptr);
  free(w);
}

int64_t sn_bsr_i8_bytes(const sn_bsr_i8 *w) { return w ? w->bytes : 0; }

/* ---- portable inner loops ------------------------------------------------------------------ */

static void panel_portable(const struct sn_bsr_i8 *w, int64_t q, const uint8_t *xt, const i8_out *o) {
  int32_t acc[4][I8_PANEL] = {{0}}, out[4 * I8_PANEL];
  for (int64_t t = w->qptr[q]; t < w->qptr[q + 1]; t++)
    for (int j = 0; j < 4; j++) {
      const uint8_t *row = xt + (int64_t)w->cols[4 * t + j] * I8_PANEL;
      for (int r = 0; r < 4; r++) {
        int32_t wv = w->w[16 * t + 4 * r + j];
        if (!wv) continue;
        for (int p = 0; p < I8_PANEL; p++) acc[r][p] += wv * ((int32_t)row[p] - 128);
      }
    }
  for (int r = 0; r < 4; r++)
    for (int t = 0; t < I8_PANEL; t++) out[r * I8_PANEL + t] = acc[r][i8_pos(t)];
  sn_i8_store(o, w, q, &out[0], I8_PANEL);
}

static void decode_portable(int32_t *out, const struct sn_bsr_i8 *w, int64_t q, const uint8_t *xu, int64_t xs,
                            int n) {
  for (int i = 0; i < n; i++) {
    const uint8_t *x = xu + i * xs;
    int32_t acc[4] = {0};
    for (int64_t t = w->qptr[q]; t < w->qptr[q + 1]; t++)
      for (int j = 0; j < 4; j++) {
        int32_t xv = (int32_t)x[w->cols[4 * t + j]] - 128;
        for (int r = 0; r < 4; r++) acc[r] += w->w[16 * t + 4 * r + j] * xv;
      }
    for (int r = 0; r < 4; r++) out[r * n + i] = acc[r];
  }
}

static void quant_portable(uint8_t *dst, const float *x, int64_t n, float inv) {
  for (int64_t i = 0; i < n; i++) dst[i] = (uint8_t)(q8(x[i], inv) + 128);
}

/* Quantize along x's rows, 64 inputs at a time, then transpose into the panel. */
static void pack_portable(uint8_t *xt, const float *x, int64_t xs, int cnt, int64_t K, const float *inv,
                          const unsigned char *bad) {
  uint8_t tmp[I8_PANEL][64];
  int pos[I8_PANEL];
  for (int t = 0; t < I8_PANEL; t++) pos[t] = i8_pos(t);
  for (int64_t k0 = 0; k0 < K; k0 += 64) {
    const int64_t k1 = k0 + 64 < K ? k0 + 64 : K;
    for (int t = 0; t < I8_PANEL; t++) {
      if (t >= cnt || bad[t]) memset(tmp[t], 128, 64);
      else quant_portable(tmp[t], x + t * xs + k0, k1 - k0, inv[t]);
    }
    for (int64_t k = k0; k < k1; k++)
      for (int t = 0; t < I8_PANEL; t++) xt[k * I8_PANEL + pos[t]] = tmp[t][k - k0];
  }
}

/* 16 lanes of max and finiteness, a loop the compiler vectorizes, then across the lanes. */
static int absmax_portable(const float *x, int64_t n, float *mx) {
  float m = 0.0f, m16[16] = {0};
  int ok16[16], finite = 1;
  for (int l = 0; l < 16; l++) ok16[l] = 1;
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    for (int l = 0; l < 16; l++) {
      float v = fabsf(x[k + l]);
      ok16[l] &= v <= 3.40282347e38f;
      m16[l] = v > m16[l] ? v : m16[l];
    }
  for (; k < n; k++) {
    float v = fabsf(x[k]);
    ok16[0] &= v <= 3.40282347e38f;
    m16[0] = v > m16[0] ? v : m16[0];
  }
  for (int l = 0; l < 16; l++) {
    finite &= ok16[l];
    m = m16[l] > m ? m16[l] : m;
  }
  *mx = m;
  return finite;
}

const sn_i8_ops sn_i8_portable = {"portable", panel_portable, quant_portable, absmax_portable, pack_portable,
                                  decode_portable};

/* ---- product ------------------------------------------------------------------------------- */

void sn_i8_store(const i8_out *o, const struct sn_bsr_i8 *w, int64_t q, const int32_t *acc, int64_t ld) {
  for (int64_t i = 0; i < o->cnt; i++) {
    float *yr = o->y + i * o->ldy - o->m0;
    for (int64_t r = 0; r < 4 && 4 * q + r < o->M; r++) {
      int64_t m = 4 * q + r;
      float v = (float)acc[r * ld + i] * (o->sx[i] * w->scale[m]);
      yr[m] = o->bias ? v + o->bias[m] : v;
    }
  }
}

/* A token's scale: sx = max|x| / 127 and inv = 127 / max|x| (0 below I8_TINY); *bad when an
 * input is inf or NaN (then sx = NaN, inv = 0). */
static void token_scale(const sn_i8_ops *ops, const float *xr, int64_t K, float *sx, float *inv, unsigned char *bad) {
  float mx;
  *bad = !ops->absmax(xr, K, &mx);
  if (!*bad) scale_of(mx, sx, inv);
  else *sx = NAN, *inv = 0.0f;
}

sn_status sn_bsr_i8_matmul(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, const sn_bsr_i8 *w, const sn_tensor *bias) {
  char a[160];
  if (!w) return sn_fail(ctx, SN_EINVAL, "%s: w must not be NULL", FN_MM);
  const int64_t M = w->M, K = w->K;
  sn_status st = check_in(ctx, FN_MM, "x", x, "(N, K)", 2, NULL);
  if (st == SN_OK && x->size[1] != K)
    st = sn_fail(ctx, SN_EINVAL,
                 "%s: x has %lld features but the weight has K = %lld inputs (x: %s, weight: %lldx%lld)", FN_MM,
                 (long long)x->size[1], (long long)K, sn_shape_str(x, a, sizeof a), (long long)M, (long long)K);
  if (st == SN_OK) st = check_opt(ctx, FN_MM, "bias", bias, "(M)", 1, &M);
  if (st == SN_OK) st = check_out(ctx, FN_MM, "y", y, false, 2, (int64_t[]){x->size[0], M});
  if (st != SN_OK) return st;
  const int64_t N = x->size[0], xs = x->stride[0], Mq = w->Mq;
  if (N == 0 || M == 0) return SN_OK;
  const float *px = sn_f32(x), *pb = bias ? sn_f32(bias) : NULL;
  float *py = sn_f32(y);
  const sn_i8_ops *ops = i8_ops();
  const bool decode = N <= I8_DECODE_MAX;
  const int64_t npanels = (N + I8_PANEL - 1) / I8_PANEL, panel_bytes = K * I8_PANEL, Np = npanels * I8_PANEL;
  int64_t batch = I8_PACK_BYTES / (panel_bytes > 0 ? panel_bytes : 1);
  batch = batch < 1 ? 1 : batch > npanels ? npanels : batch;
  /* Per token (padded to whole panels): sx, inv, and whether an input is inf or NaN. */
  const size_t scale_bytes = ((size_t)Np * (2 * sizeof(float) + 1) + 63) / 64 * 64;
  const size_t xbytes = decode ? (size_t)(N * K) : (size_t)(batch * panel_bytes);
  uint8_t *ws = sn_ctx_workspace(ctx, scale_bytes + xbytes + 64);
  if (!ws) return SN_ENOMEM;
  float *sx = (void *)ws, *inv = sx + Np;
  unsigned char *bad = ws + 2 * sizeof(float) * (size_t)Np;
  uint8_t *xq = ws + scale_bytes;
  const bool par = N * (w->ntiles * 16 + K) > NN_PARALLEL_MIN;

  if (decode) {
    for (int64_t n = 0; n < N; n++) {
      token_scale(ops, px + n * xs, K, &sx[n], &inv[n], &bad[n]);
      if (bad[n]) memset(xq + n * K, 128, (size_t)K);
      else ops->quant(xq + n * K, px + n * xs, K, inv[n]);
    }
    const i8_out o = {.y = py, .ldy = M, .m0 = 0, .M = M, .cnt = N, .sx = sx, .bias = pb};
#pragma omp parallel for schedule(static) if (par)
    for (int64_t q0 = 0; q0 < Mq; q0 += 4 * I8_QB)
      for (int64_t q = q0; q < q0 + 4 * I8_QB && q < Mq; q++) {
        int32_t acc[4 * I8_DECODE_MAX];
        ops->decode(acc, w, q, xq, K, (int)N);
        sn_i8_store(&o, w, q, acc, N);
      }
    return SN_OK;
  }

  /* One parallel region, with a barrier after the packing and after the products of each
   * batch of panels: fewer places where a thread the OS delays holds the others up. */
  const int64_t nqb = (Mq + I8_QB - 1) / I8_QB;
#pragma omp parallel if (par)
  for (int64_t p0 = 0; p0 < npanels; p0 += batch) {
    const int64_t np = npanels - p0 < batch ? npanels - p0 : batch;
    /* Pack a panel: its tokens' scales, then row k holds q_x + 128 of its tokens at i8_pos,
     * 128 (0) past N or for a token with an inf or NaN input. */
#pragma omp for schedule(static)
    for (int64_t p = 0; p < np; p++) {
      const int64_t n0 = (p0 + p) * I8_PANEL;
      const int cnt = N - n0 < I8_PANEL ? (int)(N - n0) : I8_PANEL;
      for (int t = 0; t < I8_PANEL; t++) {
        if (t < cnt) token_scale(ops, px + (n0 + t) * xs, K, &sx[n0 + t], &inv[n0 + t], &bad[n0 + t]);
        else sx[n0 + t] = inv[n0 + t] = 0.0f, bad[n0 + t] = 0;
      }
      ops->pack(xq + p * panel_bytes, px + n0 * xs, xs, cnt, K, inv + n0, bad + n0);
    }
#pragma omp for schedule(static)
    for (int64_t task = 0; task < np * nqb; task++) {
      int64_t p = task / nqb, q0 = task % nqb * I8_QB, n0 = (p0 + p) * I8_PANEL;
      int64_t cnt = N - n0 < I8_PANEL ? N - n0 : I8_PANEL, m0 = 4 * q0, m1 = m0 + 4 * I8_QB < M ? m0 + 4 * I8_QB : M;
      /* The task's outputs go to a (tokens, 4 I8_QB) buffer first, then to y as whole rows
       * of 4 I8_QB floats: one quad's results are 16 bytes in each of 64 rows of y. */
      float buf[I8_PANEL * 4 * I8_QB] __attribute__((aligned(64)));
      const i8_out o = {.y = buf, .ldy = 4 * I8_QB, .m0 = m0, .M = M, .cnt = cnt, .sx = sx + n0, .bias = pb};
      for (int64_t q = q0; q < q0 + I8_QB && q < Mq; q++) ops->panel(w, q, xq + p * panel_bytes, &o);
      /* A constant size lets the compiler inline the copy (no libc call per 128-byte row). */
      if (m1 - m0 == 4 * I8_QB)
        for (int64_t i = 0; i < cnt; i++)
          memcpy(py + (n0 + i) * M + m0, buf + i * 4 * I8_QB, sizeof(float) * 4 * I8_QB);
      else
        for (int64_t i = 0; i < cnt; i++)
          memcpy(py + (n0 + i) * M + m0, buf + i * 4 * I8_QB, (size_t)(m1 - m0) * sizeof(float));
    }
  }
  return SN_OK;
}
