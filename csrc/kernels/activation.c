/* kernels/activation.c -- gx = gy * f'(x) for gelu, silu, softplus, tanh and sigmoid (math
 * in seqnn.h). The element range is cut into fixed chunks shared among threads; a chunk is
 * walked in stack tiles: the transcendental (sigmoid) of a tile goes through sn_vec, then
 * a plain loop combines it with gy; GELU's derivative is one fused sn_vec entry. */
#include <math.h>
#include <stdio.h>

#include "kernels/nn.h"
#include "simd/vec.h"

#define TILE 256
#define CHUNK 65536

static void tile_bwd(sn_unop op, float *gx, const float *gy, const float *in, int64_t n) {
  float s[TILE];
  switch (op) {
  case SN_TANH:
#pragma omp simd
    for (int64_t i = 0; i < n; i++) gx[i] = gy[i] * (1.0f - in[i] * in[i]);
    break;
  case SN_SIGMOID:
#pragma omp simd
    for (int64_t i = 0; i < n; i++) gx[i] = gy[i] * (in[i] * (1.0f - in[i]));
    break;
  case SN_SOFTPLUS:
    sn_vec->unary(SN_SIGMOID, s, in, n);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) gx[i] = gy[i] * s[i];
    break;
  case SN_SILU:
    sn_vec->unary(SN_SIGMOID, s, in, n);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) gx[i] = gy[i] * (s[i] * (1.0f + in[i] * (1.0f - s[i])));
    break;
  case SN_GELU: sn_vec->gelu_grad(gx, gy, in, n); break;
  default: break; /* rejected by sn_activation_bwd */
  }
}

sn_status sn_activation_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *gy, const sn_tensor *in,
                            sn_unop op) {
  if (op != SN_GELU && op != SN_SILU && op != SN_SOFTPLUS && op != SN_TANH && op != SN_SIGMOID)
    return sn_fail(ctx, SN_EINVAL, "seqnn.activation_bwd: no fused backward for %s", sn_unop_name(op));
  char fn[48];
  snprintf(fn, sizeof fn, "seqnn.F.%s", sn_unop_name(op));
  int64_t n = sn_numel(in);
  sn_status st = nn_need(ctx, fn, op == SN_TANH || op == SN_SIGMOID ? "y" : "x", in, SN_F32, n);
  if (st == SN_OK) st = nn_need(ctx, fn, "grad_output", gy, SN_F32, n);
  if (st == SN_OK) st = nn_need(ctx, fn, "grad_input", gx, SN_F32, n);
  if (st != SN_OK) return st;
  const float *pgy = sn_f32(gy), *pin = sn_f32(in);
  float *pgx = sn_f32(gx);
  int64_t chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; c++) {
    int64_t hi = c == chunks - 1 ? n : (c + 1) * CHUNK;
    for (int64_t i = c * CHUNK; i < hi; i += TILE) {
      int64_t m = hi - i < TILE ? hi - i : TILE;
      tile_bwd(op, pgx + i, pgy + i, pin + i, m);
    }
  }
  return SN_OK;
}
