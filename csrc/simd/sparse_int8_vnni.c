/* simd/sparse_int8_vnni.c -- the int8 BSR inner loops with AVX-512 VNNI (simd/sparse_int8.h).
 *
 * panel: tokens are the lanes. Per 4x4 tile, the 4 panel rows of its columns (64 tokens
 * each) are interleaved into 4 vectors of 16 tokens x 4 u8 (8 byte/word unpacks), each row's
 * 4 weights are broadcast once, and 16 vpdpbusd add 4 products per lane into the 16
 * accumulators (4 rows x 64 tokens), which stay in registers over the quad's tiles; the
 * epilogue rescales them in registers and writes each token's 4 outputs as one store.
 * decode: per tile and token, the 4 u8 inputs of the tile's columns make one word, broadcast
 * against the tile's 16 weights: one vpdpbusd on 4 lanes gives the 4 rows.
 * quant: the activations' quantization, 16 at a time (the scalar loop ran at a third of the
 * speed of the whole product at 95% sparsity).
 * pack, absmax: a panel's quantization fused with its transpose, and the tokens' max |x|;
 * together with the accumulators kept in place (dpbusd) they were most of the int8 kernel's
 * fixed cost over the f32 one at 90-95% sparsity. */
#include <immintrin.h>
#include <string.h>

#include "simd/sparse_int8.h"

/* Rows v0..v3 (16 tokens each, tokens 16i ..) of quad q as 16 stores of 4 floats, one per
 * token: a 4x4 transpose within each 128-bit lane. */
static inline void store_rows(const i8_out *o, int64_t q, int i, __m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  __m512d lo01 = _mm512_castps_pd(_mm512_unpacklo_ps(v0, v1)), hi01 = _mm512_castps_pd(_mm512_unpackhi_ps(v0, v1));
  __m512d lo23 = _mm512_castps_pd(_mm512_unpacklo_ps(v2, v3)), hi23 = _mm512_castps_pd(_mm512_unpackhi_ps(v2, v3));
  __m512 t[4] = {_mm512_castpd_ps(_mm512_unpacklo_pd(lo01, lo23)), _mm512_castpd_ps(_mm512_unpackhi_pd(lo01, lo23)),
                 _mm512_castpd_ps(_mm512_unpacklo_pd(hi01, hi23)), _mm512_castpd_ps(_mm512_unpackhi_pd(hi01, hi23))};
  float *y = o->y + 16 * i * o->ldy + 4 * q - o->m0;
  const int64_t M = o->ldy;
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) {
    _mm_storeu_ps(y + (0 + j) * M, _mm512_extractf32x4_ps(t[j], 0));
    _mm_storeu_ps(y + (4 + j) * M, _mm512_extractf32x4_ps(t[j], 1));
    _mm_storeu_ps(y + (8 + j) * M, _mm512_extractf32x4_ps(t[j], 2));
    _mm_storeu_ps(y + (12 + j) * M, _mm512_extractf32x4_ps(t[j], 3));
  }
}

/* acc + the u8 x s8 dot products of a and b, updating acc in place: through the intrinsic
 * GCC 12 copied the 16 accumulators to other registers and back and spilled two, about 95
 * instructions per tile instead of 50. */
static inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

static void panel(const struct sn_bsr_i8 *w, int64_t q, const uint8_t *xt, const i8_out *o) {
  /* Unrolled so that the 16 accumulators live in registers (GCC -O2 kept them in memory). */
  /* Starting from -128 comp (the zero point's share) instead of subtracting it after: the
   * int32 sums are the same. */
  __m512i acc[4][4];
#pragma GCC unroll 4
  for (int r = 0; r < 4; r++) {
    const __m512i zp = _mm512_set1_epi32(-128 * w->comp[4 * q + r]);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) acc[r][i] = zp;
  }
  for (int64_t t = w->qptr[q]; t < w->qptr[q + 1]; t++) {
    const int32_t *c = w->cols + 4 * t;
    __m512i a0 = _mm512_loadu_si512(xt + (int64_t)c[0] * I8_PANEL);
    __m512i a1 = _mm512_loadu_si512(xt + (int64_t)c[1] * I8_PANEL);
    __m512i a2 = _mm512_loadu_si512(xt + (int64_t)c[2] * I8_PANEL);
    __m512i a3 = _mm512_loadu_si512(xt + (int64_t)c[3] * I8_PANEL);
    __m512i lo01 = _mm512_unpacklo_epi8(a0, a1), hi01 = _mm512_unpackhi_epi8(a0, a1);
    __m512i lo23 = _mm512_unpacklo_epi8(a2, a3), hi23 = _mm512_unpackhi_epi8(a2, a3);
    __m512i v[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                    _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
      int32_t word;
      memcpy(&word, w->w + 16 * t + 4 * r, 4);
      __m512i b = _mm512_set1_epi32(word);
#pragma GCC unroll 4
      for (int i = 0; i < 4; i++) acc[r][i] = dpbusd(acc[r][i], v[i], b);
    }
  }
  if (o->cnt < I8_PANEL || 4 * q + 4 > o->M) {
    int32_t out[4 * I8_PANEL];
    for (int r = 0; r < 4; r++)
      for (int i = 0; i < 4; i++) _mm512_storeu_si512(out + r * I8_PANEL + 16 * i, acc[r][i]);
    sn_i8_store(o, w, q, out, I8_PANEL);
    return;
  }
  /* The epilogue of sn_i8_store, 16 tokens at a time: same operations, same bits. */
  for (int i = 0; i < 4; i++) {
    __m512 sx = _mm512_loadu_ps(o->sx + 16 * i), v[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
      int64_t m = 4 * q + r;
      v[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][i]), _mm512_mul_ps(sx, _mm512_set1_ps(w->scale[m])));
      if (o->bias) v[r] = _mm512_add_ps(v[r], _mm512_set1_ps(o->bias[m]));
    }
    store_rows(o, q, i, v[0], v[1], v[2], v[3]);
  }
}

static void decode(int32_t *out, const struct sn_bsr_i8 *w, int64_t q, const uint8_t *xu, int64_t xs, int n) {
  __m128i acc[I8_DECODE_MAX];
  for (int i = 0; i < n; i++) acc[i] = _mm_setzero_si128();
  for (int64_t t = w->qptr[q]; t < w->qptr[q + 1]; t++) {
    const int32_t *c = w->cols + 4 * t;
    __m128i wt = _mm_loadu_si128((const __m128i *)(w->w + 16 * t));
    for (int i = 0; i < n; i++) {
      const uint8_t *x = xu + i * xs;
      uint32_t word = (uint32_t)x[c[0]] | (uint32_t)x[c[1]] << 8 | (uint32_t)x[c[2]] << 16 | (uint32_t)x[c[3]] << 24;
      acc[i] = _mm_dpbusd_epi32(acc[i], _mm_set1_epi32((int)word), wt);
    }
  }
  for (int i = 0; i < n; i++) {
    int32_t s[4];
    _mm_storeu_si128((__m128i *)s, acc[i]);
    for (int r = 0; r < 4; r++) out[r * n + i] = s[r] - 128 * w->comp[4 * q + r];
  }
}

/* q8 of sparse_int8.c 16 lanes at a time: the same float operations, so the same bytes. */
static void quant(uint8_t *dst, const float *x, int64_t n, float inv) {
  const __m512 vi = _mm512_set1_ps(inv), magic = _mm512_set1_ps(12582912.0f);
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 r = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vi);
    r = _mm512_sub_ps(_mm512_add_ps(r, magic), magic);
    r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
    __m512i q = _mm512_add_epi32(_mm512_cvttps_epi32(r), _mm512_set1_epi32(128));
    _mm_mask_storeu_epi8(dst + i, m, _mm512_cvtepi32_epi8(q));
  }
}

/* 16 inputs of one token (lanes past m read as 0): quant's operations, so the same bytes. */
static inline __m128i quant16(const float *x, __mmask16 m, float inv) {
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  __m512 r = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x), _mm512_set1_ps(inv));
  r = _mm512_sub_ps(_mm512_add_ps(r, magic), magic);
  r = _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
  return _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvttps_epi32(r), _mm512_set1_epi32(128)));
}

/* The packing without a byte-by-byte scatter (the portable loop's transpose cost more than
 * all the products at 95% sparsity): per 16 inputs, row r of 128-bit lane b holds the
 * 16 quantized inputs of token 16 (r / 4) + 4 b + r % 4, whose panel position is 16 b + r;
 * a 16x16 byte transpose within the lanes (4 rounds of unpacks) then gives input k's whole
 * panel row in one vector. */
static void pack(uint8_t *xt, const float *x, int64_t xs, int cnt, int64_t K, const float *inv,
                 const unsigned char *bad) {
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    const int kn = K - k0 < 16 ? (int)(K - k0) : 16;
    const __mmask16 m = (__mmask16)((1u << kn) - 1);
    __m512i a[16], b[16];
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++) {
      __m128i q[4];
#pragma GCC unroll 4
      for (int l = 0; l < 4; l++) {
        int t = 16 * (r / 4) + 4 * l + r % 4;
        q[l] = t < cnt && !bad[t] ? quant16(x + t * xs + k0, m, inv[t]) : _mm_set1_epi8((char)128);
      }
      a[r] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(q[0]), q[1], 1)),
                                _mm256_inserti128_si256(_mm256_castsi128_si256(q[2]), q[3], 1), 1);
    }
    /* Round 1 pairs rows into 16-bit words (b[p]: columns 0-7, b[8 + p]: 8-15), round 2 into
     * 32-bit (a[4h + s]: columns 4h .. 4h + 3), round 3 into 64-bit (b[2e + u]: columns 2e,
     * 2e + 1), round 4 gives column c in a[c]. */
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++)
      b[p] = _mm512_unpacklo_epi8(a[2 * p], a[2 * p + 1]), b[8 + p] = _mm512_unpackhi_epi8(a[2 * p], a[2 * p + 1]);
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
      for (int s = 0; s < 4; s++) {
        const __m512i u = b[8 * h + 2 * s], v = b[8 * h + 2 * s + 1];
        a[4 * (2 * h) + s] = _mm512_unpacklo_epi16(u, v), a[4 * (2 * h + 1) + s] = _mm512_unpackhi_epi16(u, v);
      }
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++)
#pragma GCC unroll 2
      for (int u = 0; u < 2; u++) {
        const __m512i c = a[4 * g + 2 * u], d = a[4 * g + 2 * u + 1];
        b[2 * (2 * g) + u] = _mm512_unpacklo_epi32(c, d), b[2 * (2 * g + 1) + u] = _mm512_unpackhi_epi32(c, d);
      }
#pragma GCC unroll 8
    for (int e = 0; e < 8; e++)
      a[2 * e] = _mm512_unpacklo_epi64(b[2 * e], b[2 * e + 1]), a[2 * e + 1] = _mm512_unpackhi_epi64(b[2 * e], b[2 * e + 1]);
    for (int c = 0; c < kn; c++) _mm512_storeu_si512(xt + (k0 + c) * I8_PANEL, a[c]);
  }
}

/* The portable loop kept its 16 lanes in memory (a store per 4 inputs, a third of the
 * packing's time); max is exact, so both give the same value. */
static int absmax(const float *x, int64_t n, float *mx) {
  const __m512 big = _mm512_set1_ps(3.40282347e38f);
  __m512 m = _mm512_setzero_ps();
  __mmask16 ok = 0xffff;
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i));
    ok &= _mm512_cmp_ps_mask(v, big, _CMP_LE_OQ);
    m = _mm512_max_ps(m, v);
  }
  *mx = _mm512_reduce_max_ps(m);
  return ok == 0xffff;
}

const sn_i8_ops sn_i8_vnni = {"avx512vnni", panel, quant, absmax, pack, decode};
