/* kernels/hash_memory.c -- MemoryFormer's memory layer: a linear map replaced by K hashed
 * lookup tables (math in seqnn.h).
 *
 * hash: per token, z = x's row; per chunk the code bits, the L1 norm and the product of
 *   sigmoid(2|z_i|): at 8 bits by hash8, 16 chunks at a time, as 1 / prod (1 + e^-2|z_i|);
 *   else as prod (1 - u), u = sigmoid(-2|z|) by the vector sigmoid of simd/vec.h. Threaded
 *   over tokens.
 * gather (fwd): the weighted sum of K rows of d_out floats per token is memory-bound when
 *   done token by token (a token reads K * d_out * 4 bytes, 512 KiB at 1024 -> 1024). So
 *   tasks own a column block of HM_CB floats (the accumulators of one token stay in
 *   registers) and walk the tables in blocks of TB tables whose column slice, TB * 2^bits *
 *   HM_CB * 4 bytes, fits in L2 (FWD_L2_BYTES), streaming every token through each block: a table
 *   row is read from memory once per block and then from L2 for the ~N / 2^bits tokens that
 *   share its code. The block's slice is first copied into a contiguous panel (rows HM_CB
 *   floats apart; in place they are d_out floats apart, which at 4 KiB maps them onto a few
 *   cache sets: 5x slower), and the sums go to a panel of y (up to MAX_TOKENS tokens) that
 *   collects the blocks in order; the last block writes y instead. A packed copy of the tables
 *   (sn_hash_linear_pack, f32 or bf16) is laid out as those panels already: no copy, and
 *   the next panel is prefetched while the current one is summed. A bf16 copy has blocks of
 *   HM_CB16 = 32 columns: a row's slice is one cache line, and a token's partial sums half
 *   of what they are at 64. Hashing also writes the
 *   codes as panel row numbers and the scores, token by token within each table block
 *   (hm_task.off, .ps), so that gather reads them as one stream.
 * dot (bwd, dp[n,k] = <row, dy[n]>): the same traversal, with a thread per range of tokens
 *   so that dp's sums over column blocks need no reduction between threads.
 * scatter (bwd, dtables): tasks own (table block, column block) pairs, so no two threads
 *   write the same row (no atomics); each zeroes its slice of dtables in L2 and adds every
 *   token's p dy into it in token order.
 * Every output element is summed in one fixed order whatever the number of threads, so
 * results have the same bits for any thread count. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "kernels/check.h"
#include "simd/hash_memory.h"
#include "simd/vec.h"

#define L2_BYTES (1 << 20) /* half of the 2 MiB L2 per core of the machines we tune on */
/* The forward's panel gets half that: it shares L2 with the panel of y (up to 1 MiB), the
 * codes' stream and the next packed panel being fetched. (Measured: 15-20% faster packed,
 * bf16 or f32, than at L2_BYTES; the same unpacked.) */
#define FWD_L2_BYTES (L2_BYTES / 2)
/* A bf16 panel half that (16 tables of 32 columns at 8 bits): measured 6% faster than 8
 * tables (more passes over the y panel) and 10% faster than 32. */
#define FWD16_L2_BYTES (L2_BYTES / 4)
#define PAR_MIN 32768      /* below this much work a call runs on the calling thread */
#define MAX_TOKENS 4096    /* per forward task: its panel of y, 1 MiB, stays in L2 */

static const char *FN = "seqnn.F.hash_linear";

_Static_assert(HM_CB == SN_HASH_PANEL && HM_CB16 == SN_HASH_PANEL_BF16, "the public panel widths are the kernel's");

static const sn_hash_memory_ops *hm_ops(void) {
  const char *n = sn_vec->name;
  return strcmp(n, "avx512") == 0 ? &sn_hash_memory_avx512
         : strcmp(n, "avx2") == 0 ? &sn_hash_memory_avx2
                                  : &sn_hash_memory_scalar;
}

/* ---- validation ------------------------------------------------------------------------ */

typedef struct {
  int64_t N, din, K, R, dout;
  int bits;
} dims;

/* x (..., d_in) and tables (K*2^bits, d_out) contiguous f32, bias (d_out) or NULL. */
static sn_status check_args(sn_ctx *ctx, dims *d, const sn_tensor *x, const sn_tensor *tables,
                            const sn_tensor *bias, int bits, sn_hash_score score) {
  char a[160], b[160];
  if (bits < 1 || bits > SN_HASH_MAX_BITS)
    return sn_fail(ctx, SN_EINVAL, "%s: bits must be in 1..%d, got %d", FN, SN_HASH_MAX_BITS, bits);
  if (score != SN_HASH_SCORE_CODE && score != SN_HASH_SCORE_PAPER)
    return sn_fail(ctx, SN_EINVAL, "%s: unknown score %d", FN, (int)score);
  if (!x || x->dtype != SN_F32 || x->ndim < 1 || !sn_is_contiguous(x))
    return sn_fail(ctx, SN_EINVAL, "%s: x must be a contiguous f32 tensor of at least one dim, got %s", FN,
                   x ? sn_shape_str(x, a, sizeof a) : "NULL");
  if (!tables || tables->dtype != SN_F32 || tables->ndim != 2 || !sn_is_contiguous(tables))
    return sn_fail(ctx, SN_EINVAL, "%s: tables must be a contiguous 2-dim f32 tensor, got %s", FN,
                   tables ? sn_shape_str(tables, a, sizeof a) : "NULL");
  int64_t din = x->size[x->ndim - 1];
  if (din % bits != 0)
    return sn_fail(ctx, SN_EINVAL, "%s: x has %lld features, not a multiple of bits %d (x: %s)", FN, (long long)din,
                   bits, sn_shape_str(x, a, sizeof a));
  int64_t K = din / bits, R = (int64_t)1 << bits;
  if (K > INT64_MAX / R || tables->size[0] != K * R)
    return sn_fail(ctx, SN_EINVAL, "%s: tables must have K * 2^bits = %lld * %lld rows, got %s", FN, (long long)K,
                   (long long)R, sn_shape_str(tables, a, sizeof a));
  int64_t dout = tables->size[1];
  if (bias && (bias->dtype != SN_F32 || bias->ndim != 1 || bias->size[0] != dout || !sn_is_contiguous(bias)))
    return sn_fail(ctx, SN_EINVAL, "%s: bias must be a contiguous f32 vector of d_out = %lld elements (bias: %s, "
                   "tables: %s)", FN, (long long)dout, sn_shape_str(bias, a, sizeof a),
                   sn_shape_str(tables, b, sizeof b));
  int64_t N = 1; /* the leading dims' product: numel / d_in but for d_in = 0 */
  for (int i = 0; i + 1 < x->ndim; i++) {
    if (x->size[i] > 0 && N > INT64_MAX / x->size[i])
      return sn_fail(ctx, SN_EINVAL, "%s: x's leading dims overflow (x: %s)", FN, sn_shape_str(x, a, sizeof a));
    N *= x->size[i];
  }
  *d = (dims){N, din, K, R, dout, bits};
  return SN_OK;
}

/* A contiguous tensor of dtype dt with N rows of `cols` (any leading shape). */
static sn_status check_rows(sn_ctx *ctx, const char *name, const sn_tensor *t, sn_dtype dt, int64_t N,
                            int64_t cols) {
  char a[160];
  if (t->dtype == dt && t->ndim >= 1 && sn_is_contiguous(t) && t->size[t->ndim - 1] == cols &&
      (cols ? sn_numel(t) / cols : sn_numel(t) == 0 ? N : -1) == N)
    return SN_OK;
  return sn_fail(ctx, SN_EINVAL, "%s: %s must be a contiguous %s tensor of %lld rows of %lld, got %s %s%s", FN, name,
                 sn_dtype_name(dt), (long long)N, (long long)cols, sn_dtype_name(t->dtype),
                 sn_shape_str(t, a, sizeof a), sn_is_contiguous(t) ? "" : " (not contiguous)");
}

/* ---- hashing: codes and scores ---------------------------------------------------------- */

/* Per-thread scratch of hash_row: 2 * d_in floats, rounded to whole cache lines. */
static int64_t row_scratch(int64_t din) { return (2 * din + 15) / 16 * 16; }

/* Codes and scores of one token; u receives sigmoid(-2|z|) of its d_in features (tmp is
 * scratch). When dz is given, also dz = dp * dscore/dz for the token's dp row:
 *   dP/dz_i = 2 sgn(z_i) P sigmoid(-2|z_i|)  (P = prod_j sigmoid(2|z_j|), sgn(0) = +1)
 *   code:  d(S P)/dz_i = sgn(z_i) P (1 + 2 S sigmoid(-2|z_i|)),  S = sum_j |z_j|
 * sigmoid(-2|z|) is computed directly rather than as 1 - sigmoid(2|z|), which cancels. */
static void hash_row(const dims *d, sn_hash_score score, const float *z, int64_t *h, float *p, const float *dp,
                     float *dz, float *u, float *tmp) {
  const int64_t din = d->din;
  const int bits = d->bits;
  if (bits == 8 && h && p && !dz) { /* the forward's common case, in vectors */
    hm_ops()->hash8(z, d->K, score == SN_HASH_SCORE_PAPER, h, p);
    return;
  }
  sn_vec->unary(SN_ABS, tmp, z, din);
  sn_vec->binary_scalar(SN_MUL, tmp, tmp, -2.0f, din, false);
  sn_vec->unary(SN_SIGMOID, u, tmp, din);
  for (int64_t k = 0; k < d->K; k++) {
    const float *zk = z + k * bits, *uk = u + k * bits;
    int64_t code = 0;
    float prod = 1.0f, S = 0.0f;
    for (int i = 0; i < bits; i++) {
      code |= (int64_t)(zk[i] >= 0.0f) << i;
      prod *= 1.0f - uk[i];
      S += fabsf(zk[i]);
    }
    if (h) h[k] = code;
    if (p) p[k] = score == SN_HASH_SCORE_CODE ? S * prod : prod;
    if (dz) {
      float g = dp[k] * prod, *dk = dz + k * bits;
      for (int i = 0; i < bits; i++) {
        float sg = zk[i] >= 0.0f ? 1.0f : zk[i] < 0.0f ? -1.0f : zk[i]; /* NaN stays NaN */
        dk[i] = score == SN_HASH_SCORE_CODE ? sg * g * (1.0f + 2.0f * S * uk[i]) : 2.0f * sg * g * uk[i];
      }
    }
  }
}

/* Tables per block: their column slice, row_bytes a row, fits `bytes` (at least one). */
static int64_t table_block(const dims *d, int64_t bytes, int64_t row_bytes) {
  int64_t tb = bytes / (d->R * row_bytes);
  return tb < 1 ? 1 : tb;
}

/* Floats of one thread's panel (see simd/hash_memory.h). */
static int64_t panel_floats(const dims *d) { return table_block(d, L2_BYTES, HM_CB * 4) * d->R * HM_CB; }

/* panel <- columns [c0, c0 + nc) of table rows [k0 R, k1 R). The rows are d_out floats
 * apart, each in its own page at large d_out, which the hardware prefetchers do not follow:
 * fetch a few rows ahead. */
static void pack_panel(float *panel, const float *tab, int64_t k0, int64_t k1, const dims *d, int64_t c0,
                       int64_t nc) {
  const int64_t r0 = k0 * d->R, r1 = k1 * d->R, dout = d->dout;
  for (int64_t r = r0; r < r1; r++) {
    if (r + 8 < r1)
      for (int64_t c = 0; c < nc; c += 16) __builtin_prefetch(tab + (r + 8) * dout + c0 + c);
    memcpy(panel + (r - r0) * HM_CB, tab + r * dout + c0, (size_t)nc * sizeof(float));
  }
}

static void unpack_panel(float *tab, const float *panel, int64_t k0, int64_t k1, const dims *d, int64_t c0,
                         int64_t nc) {
  const int64_t r0 = k0 * d->R, r1 = k1 * d->R, dout = d->dout;
  for (int64_t r = r0; r < r1; r++) memcpy(tab + r * dout + c0, panel + (r - r0) * HM_CB, (size_t)nc * sizeof(float));
}

/* ---- forward --------------------------------------------------------------------------- */

/* A packed copy of the tables: (ceil(d_out / HM_CB), K * R, HM_CB) contiguous f32, or
 * (ceil(d_out / HM_CB16), K * R, HM_CB16 / 4) i64 of bf16 pairs. Sets *bf16. */
static sn_status check_packed(sn_ctx *ctx, const sn_tensor *packed, const dims *d, bool *bf16) {
  char a[160];
  int64_t ncb = (d->dout + HM_CB - 1) / HM_CB, ncb16 = (d->dout + HM_CB16 - 1) / HM_CB16;
  *bf16 = packed->dtype == SN_I64;
  if ((packed->dtype == SN_F32 || packed->dtype == SN_I64) && packed->ndim == 3 && sn_is_contiguous(packed) &&
      packed->size[0] == (*bf16 ? ncb16 : ncb) && packed->size[1] == d->K * d->R &&
      packed->size[2] == (*bf16 ? HM_CB16 / 4 : HM_CB))
    return SN_OK;
  return sn_fail(ctx, SN_EINVAL, "%s: packed must be a contiguous f32 tensor of shape %lldx%lldx%d or i64 of "
                 "%lldx%lldx%d (bf16), the tables packed by sn_hash_linear_pack; got %s %s", FN, (long long)ncb,
                 (long long)(d->K * d->R), HM_CB, (long long)ncb16, (long long)(d->K * d->R), HM_CB16 / 4,
                 sn_dtype_name(packed->dtype), sn_shape_str(packed, a, sizeof a));
}

/* f32 -> bf16, rounded to nearest even; NaN stays a (quiet) NaN. */
static uint32_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

/* The f32 whose high half is h and low half lo. */
static float join16(uint32_t h, uint32_t lo) {
  uint32_t u = h << 16 | lo;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* The high half h of a bf16 word whose low half is lo, for the value f: gather sums the
 * whole word as an f32 (no mask to clear lo: one vector operation fewer per 16 columns),
 * so h is f rounded on the grid that lo offsets, to the nearest of the neighbours of f's
 * own high half: within half a bf16 step, as close as rounding to bf16. NaN stays NaN; an
 * infinity (with lo nonzero) reads as NaN. */
static uint32_t to_bf16_high(float f, uint32_t lo) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  uint32_t best = u >> 16;
  if (!isfinite(f)) return (u & 0x7fffffffu) > 0x7f800000u ? best | 0x40u : best;
  double err = fabs((double)join16(best, lo) - f);
  for (int step = -1; step <= 1; step += 2) {
    uint32_t h = (best + (uint32_t)step) & 0xffffu;
    float g = join16(h, lo);
    if (isfinite(g) && fabs((double)g - f) < err) best = h, err = fabs((double)g - f);
  }
  return best;
}

sn_status sn_hash_linear_pack(sn_ctx *ctx, sn_tensor *packed, const sn_tensor *tables) {
  char a[160];
  if (!tables || tables->dtype != SN_F32 || tables->ndim != 2 || !sn_is_contiguous(tables))
    return sn_fail(ctx, SN_EINVAL, "%s: tables must be a contiguous 2-dim f32 tensor, got %s", FN,
                   tables ? sn_shape_str(tables, a, sizeof a) : "NULL");
  /* rows stand for K * R: only the panel shape matters here */
  dims d = {.K = tables->size[0], .R = 1, .dout = tables->size[1]};
  bool bf16;
  sn_status st = check_packed(ctx, packed, &d, &bf16);
  if (st != SN_OK) return st;
  const int64_t rows = d.K, dout = d.dout, ncb = packed->size[0];
  const float *tab = sn_f32(tables);
#pragma omp parallel for schedule(static) if (rows * dout > PAR_MIN)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t cb = 0; cb < ncb; cb++) {
      int64_t width = bf16 ? HM_CB16 : HM_CB, c0 = cb * width, nc = dout - c0 < width ? dout - c0 : width;
      const float *src = tab + r * dout + c0;
      if (bf16) {
        /* word w: columns w and w + 16 (simd/hash_memory.h) */
        uint32_t *dst = (uint32_t *)sn_data(packed) + (cb * rows + r) * (HM_CB16 / 2);
        for (int w = 0; w < HM_CB16 / 2; w++) {
          uint32_t lo = w < nc ? to_bf16(src[w]) : 0;
          dst[w] = lo | (w + 16 < nc ? to_bf16_high(src[w + 16], lo) : 0) << 16;
        }
      } else {
        float *dst = sn_f32(packed) + (cb * rows + r) * HM_CB;
        memcpy(dst, src, (size_t)nc * sizeof(float));
        memset(dst + nc, 0, (size_t)(HM_CB - nc) * sizeof(float));
      }
    }
  return SN_OK;
}

/* Fetches [p, p + bytes) towards L2, in order. */
static void touch(const char *p, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i, 0, 2);
}

sn_status sn_hash_linear_fwd(sn_ctx *ctx, sn_tensor *y, sn_tensor *codes, sn_tensor *p, const sn_tensor *x,
                             const sn_tensor *tables, const sn_tensor *packed, const sn_tensor *bias, int bits,
                             sn_hash_score score) {
  dims d;
  sn_status st = check_args(ctx, &d, x, tables, bias, bits, score);
  bool bf16 = false;
  if (st == SN_OK && packed) st = check_packed(ctx, packed, &d, &bf16);
  if (st == SN_OK) st = check_rows(ctx, "y", y, SN_F32, d.N, d.dout);
  if (st == SN_OK && codes) st = check_rows(ctx, "codes", codes, SN_I64, d.N, d.K);
  if (st == SN_OK && p) st = check_rows(ctx, "p", p, SN_F32, d.N, d.K);
  if (st != SN_OK) return st;
  const int64_t N = d.N, K = d.K, dout = d.dout;
  if (N == 0 || dout == 0) return SN_OK;
  const int nt = omp_get_max_threads();
  /* Per thread: a token's codes and scores (K words each; unless the caller keeps them for
   * backward, they are read only to be regrouped below), hash_row's scratch, a panel and
   * a panel of y; then the codes and scores regrouped by table block (hm_task.off, .ps). */
  const int64_t rowk = (3 * K + 15) / 16 * 16, per = rowk + row_scratch(d.din);
  const int64_t pf = panel_floats(&d);
  const int64_t yf = MAX_TOKENS * HM_CB;
  float *scratch = sn_ctx_workspace(ctx, (size_t)((per + pf + yf) * nt + 2 * N * K + 32) * sizeof(float));
  if (!scratch) return SN_ENOMEM;
  float *panels = scratch + per * nt;
  uint32_t *offs = (uint32_t *)(void *)(panels + ((pf + yf) * nt + 15) / 16 * 16);
  float *pss = (float *)(void *)(offs + (N * K + 15) / 16 * 16);
  const float *px = sn_f32(x);
  const sn_hash_memory_ops *ops = hm_ops();
  /* bf16 copies in blocks of HM_CB16 columns, the rest of HM_CB */
  const int64_t width = bf16 ? HM_CB16 : HM_CB, ncb = (dout + width - 1) / width;
  const int64_t tb = bf16 ? table_block(&d, FWD16_L2_BYTES, HM_CB16 * 2) : table_block(&d, FWD_L2_BYTES, HM_CB * 4);
#pragma omp parallel for schedule(static) num_threads(nt) if (N * d.din > PAR_MIN)
  for (int64_t n = 0; n < N; n++) {
    float *mine = scratch + per * omp_get_thread_num(), *u = mine + rowk;
    int64_t *hn = codes ? sn_i64(codes) + n * K : (int64_t *)(void *)mine;
    float *pn = p ? sn_f32(p) + n * K : mine + 2 * K;
    hash_row(&d, score, px + n * d.din, hn, pn, NULL, NULL, u, u + d.din);
    for (int64_t k0 = 0; k0 < K; k0 += tb) {
      int64_t kw = k0 + tb < K ? tb : K - k0, at = k0 * N + n * kw;
      for (int64_t k = 0; k < kw; k++) offs[at + k] = (uint32_t)(k * d.R + hn[k0 + k]), pss[at + k] = pn[k0 + k];
    }
  }
  /* Column blocks, split further into token ranges when there are too few to share. */
  int64_t nrange = ncb >= 2 * nt ? 1 : (2 * nt + ncb - 1) / ncb;
  if (nrange < (N + MAX_TOKENS - 1) / MAX_TOKENS) nrange = (N + MAX_TOKENS - 1) / MAX_TOKENS;
  if (nrange > N) nrange = N;
  const float *tab = sn_f32(tables), *pb = bias ? sn_f32(bias) : NULL;
  const char *pk = packed ? (const char *)sn_data(packed) : NULL;
  /* bytes of one packed row of a column block, and of the whole copy */
  const int64_t pk_row = bf16 ? HM_CB16 * 2 : HM_CB * 4, pk_bytes = ncb * K * d.R * pk_row;
  float *py = sn_f32(y);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (N * K * dout > PAR_MIN)
  for (int64_t i = 0; i < ncb * nrange; i++) {
    int64_t cb = i / nrange, r = i % nrange, c0 = cb * width;
    float *panel = panels + (pf + yf) * omp_get_thread_num(), *ypanel = panel + pf;
    hm_task t = {.n0 = N * r / nrange, .n1 = N * (r + 1) / nrange, .c0 = c0,
                 .nc = dout - c0 < width ? dout - c0 : width, .K = K, .R = d.R, .dout = dout, .tab = panel, .bias = pb, .out = ypanel, .first = true};
    for (int64_t k0 = 0; k0 < K || t.first; k0 += tb) {
      t.k0 = k0, t.k1 = k0 + tb < K ? k0 + tb : K, t.off = offs + k0 * N, t.ps = pss + k0 * N;
      t.y = t.k1 >= K ? py : NULL;
      if (pk) {
        /* The packed panels of a column block follow each other: while this one is summed,
         * the next is fetched (the first, before). */
        const char *cur = pk + (cb * K + k0) * d.R * pk_row;
        int64_t len = (t.k1 - k0) * d.R * pk_row, rest = pk + pk_bytes - (cur + len);
        if (k0 == 0) touch(cur, len);
        t.tab = (const float *)(const void *)cur, t.tab16 = (const uint32_t *)(const void *)cur;
        t.next = cur + len, t.next_bytes = rest < len ? rest : len;
      } else {
        pack_panel(panel, tab, t.k0, t.k1, &d, c0, t.nc);
      }
      if (bf16) ops->gather_bf16(&t);
      else ops->gather(&t);
      t.first = false;
    }
  }
  return SN_OK;
}

/* ---- backward -------------------------------------------------------------------------- */

/* Every code must index its table: a corrupt saved tensor must not make bwd read or write
 * out of bounds. */
static sn_status check_codes(sn_ctx *ctx, const int64_t *h, int64_t n, int64_t R) {
  for (int64_t i = 0; i < n; i++)
    if (h[i] < 0 || h[i] >= R)
      return sn_fail(ctx, SN_EINVAL, "%s: codes[%lld] = %lld is out of range 0..%lld", FN, (long long)i,
                     (long long)h[i], (long long)(R - 1));
  return SN_OK;
}

sn_status sn_hash_linear_bwd(sn_ctx *ctx, sn_tensor *dx, sn_tensor *dtables, sn_tensor *dbias, const sn_tensor *dy,
                             const sn_tensor *codes, const sn_tensor *p, const sn_tensor *x, const sn_tensor *tables,
                             int bits, sn_hash_score score) {
  dims d;
  sn_status st = check_args(ctx, &d, x, tables, NULL, bits, score);
  if (st == SN_OK) st = check_rows(ctx, "grad_output", dy, SN_F32, d.N, d.dout);
  if (st == SN_OK) st = check_rows(ctx, "codes", codes, SN_I64, d.N, d.K);
  if (st == SN_OK) st = check_rows(ctx, "p", p, SN_F32, d.N, d.K);
  if (st == SN_OK && dx) st = check_rows(ctx, "dx", dx, SN_F32, d.N, d.din);
  if (st == SN_OK && dtables) st = check_out(ctx, FN, "dtables", dtables, false, 2, tables->size);
  if (st == SN_OK && dbias) st = check_out(ctx, FN, "dbias", dbias, false, 1, &d.dout);
  if (st == SN_OK) st = check_codes(ctx, sn_i64(codes), d.N * d.K, d.R);
  if (st != SN_OK) return st;
  const int64_t N = d.N, K = d.K, R = d.R, dout = d.dout, din = d.din;
  const int nt = omp_get_max_threads();
  const sn_hash_memory_ops *ops = hm_ops();
  const int64_t ncb = (dout + HM_CB - 1) / HM_CB, tb = table_block(&d, L2_BYTES, HM_CB * 4);
  const int64_t *ph = sn_i64(codes);
  const float *pp = sn_f32(p), *pdy = sn_f32(dy), *tab = sn_f32(tables);
  if (dbias) {
    float *pdb = sn_f32(dbias);
#pragma omp parallel for schedule(static) num_threads(nt) if (N * dout > PAR_MIN)
    for (int64_t cb = 0; cb < ncb; cb++) {
      int64_t c0 = cb * HM_CB, nc = dout - c0 < HM_CB ? dout - c0 : HM_CB;
      double acc[HM_CB] = {0};
      for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < nc; c++) acc[c] += pdy[n * dout + c0 + c];
      for (int64_t c = 0; c < nc; c++) pdb[c0 + c] = (float)acc[c];
    }
  }
  /* dp (N, K) for dx, then per thread the hash scratch and a panel */
  const int64_t per = row_scratch(din), pf = panel_floats(&d), ndp = dx ? (N * K + 15) / 16 * 16 : 0;
  float *dp = sn_ctx_workspace(ctx, (size_t)(ndp + (per + pf) * nt + 16) * sizeof(float));
  if (!dp) return SN_ENOMEM;
  float *scratch = dp + ndp, *panels = scratch + per * nt;
  if (dtables) {
    float *pdt = sn_f32(dtables);
    const int64_t nkb = (K + tb - 1) / tb;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (N * K * dout > PAR_MIN)
    for (int64_t i = 0; i < nkb * ncb; i++) {
      int64_t kb = i / ncb, c0 = i % ncb * HM_CB, k0 = kb * tb, k1 = k0 + tb < K ? k0 + tb : K;
      int64_t nc = dout - c0 < HM_CB ? dout - c0 : HM_CB;
      float *panel = panels + pf * omp_get_thread_num();
      memset(panel, 0, (size_t)((k1 - k0) * R * HM_CB) * sizeof(float));
      hm_task t = {.n0 = 0, .n1 = N, .k0 = k0, .k1 = k1, .c0 = c0, .nc = nc, .K = K, .R = R, .dout = dout,
                   .h = ph, .p = pp, .dy = pdy, .out = panel};
      ops->scatter(&t);
      unpack_panel(pdt, panel, k0, k1, &d, c0, nc);
    }
  }
  if (!dx || N == 0 || din == 0) return SN_OK;
  float *pdx = sn_f32(dx);
  const float *px = sn_f32(x);
  /* One contiguous token range per thread, each reading every table slice once; dp[n,k]
   * sums column blocks in order, table blocks in order: the same for any split. */
#pragma omp parallel num_threads(nt) if (N * K * dout > PAR_MIN)
  {
    int64_t nth = omp_get_num_threads(), me = omp_get_thread_num();
    int64_t n0 = N * me / nth, n1 = N * (me + 1) / nth;
    memset(dp + n0 * K, 0, (size_t)((n1 - n0) * K) * sizeof(float));
    float *panel = panels + pf * me;
    for (int64_t cb = 0; cb < ncb && n1 > n0; cb++)
      for (int64_t k0 = 0; k0 < K; k0 += tb) {
        int64_t c0 = cb * HM_CB;
        hm_task t = {.n0 = n0, .n1 = n1, .k0 = k0, .k1 = k0 + tb < K ? k0 + tb : K, .c0 = c0,
                     .nc = dout - c0 < HM_CB ? dout - c0 : HM_CB, .K = K, .R = R, .dout = dout, .h = ph,
                     .tab = panel, .dy = pdy, .out = dp};
        pack_panel(panel, tab, t.k0, t.k1, &d, c0, t.nc);
        ops->dot(&t);
      }
    float *u = scratch + per * me;
    for (int64_t n = n0; n < n1; n++)
      hash_row(&d, score, px + n * din, NULL, NULL, dp + n * K, pdx + n * din, u, u + din);
  }
  return SN_OK;
}
