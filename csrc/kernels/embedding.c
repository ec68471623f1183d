/* kernels/embedding.c -- embedding lookup and its gradient (math in seqnn.h).
 *
 * Backward without atomics: a counting sort groups the positions of each id (in position
 * order), then each vocabulary row is written by one thread, which adds its gy rows in that
 * order. The sums, and so gweight, are bitwise the same for any thread count. */
#include <string.h>

#include "kernels/nn.h"
#include "simd/vec.h"

/* weight (V, D), ids (n), rows (n, D) as `rows_name`; every id in [0, V). */
static sn_status check(sn_ctx *ctx, const sn_tensor *weight, const sn_tensor *ids,
                       const char *rows_name, const sn_tensor *rows) {
  const char *fn = "seqnn.F.embedding";
  char sw[160], si[160];
  if (weight->ndim != 2)
    return sn_fail(ctx, SN_EINVAL, "%s: weight must be V x D, got %s", fn, sn_shape_str(weight, sw, sizeof sw));
  int64_t V = weight->size[0], D = weight->size[1], n = sn_numel(ids);
  sn_status st = nn_need(ctx, fn, "weight", weight, SN_F32, V * D);
  if (st == SN_OK) st = nn_need(ctx, fn, "ids", ids, SN_I64, n);
  if (st == SN_OK) st = nn_need(ctx, fn, rows_name, rows, SN_F32, n * D);
  if (st != SN_OK) return st;
  const int64_t *id = sn_i64(ids);
  for (int64_t i = 0; i < n; i++)
    if (id[i] < 0 || id[i] >= V)
      return sn_fail(ctx, SN_EINVAL, "%s: id %lld at flat index %lld of ids (%s) is out of range for %lld embeddings (valid: 0..%lld)",
                     fn, (long long)id[i], (long long)i, sn_shape_str(ids, si, sizeof si), (long long)V,
                     (long long)V - 1);
  return SN_OK;
}

sn_status sn_embedding_fwd(sn_ctx *ctx, sn_tensor *out, const sn_tensor *weight, const sn_tensor *ids) {
  sn_status st = check(ctx, weight, ids, "out", out);
  if (st != SN_OK) return st;
  int64_t D = weight->size[1], n = sn_numel(ids);
  const int64_t *id = sn_i64(ids);
  const float *w = sn_f32(weight);
  float *o = sn_f32(out);
#pragma omp parallel for schedule(static) if (n * D > NN_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) memcpy(o + i * D, w + id[i] * D, (size_t)D * sizeof(float));
  return SN_OK;
}

sn_status sn_embedding_bwd(sn_ctx *ctx, sn_tensor *gweight, const sn_tensor *gy, const sn_tensor *ids) {
  sn_status st = check(ctx, gweight, ids, "grad_output", gy);
  if (st != SN_OK) return st;
  int64_t V = gweight->size[0], D = gweight->size[1], n = sn_numel(ids);
  /* start[v] .. start[v+1]: where id v's positions sit in `order`, ascending. */
  int64_t *start = sn_ctx_workspace(ctx, (size_t)(V + 1 + n) * sizeof(int64_t));
  if (!start) return SN_ENOMEM;
  int64_t *order = start + V + 1;
  const int64_t *id = sn_i64(ids);
  memset(start, 0, (size_t)(V + 1) * sizeof(int64_t));
  for (int64_t i = 0; i < n; i++) start[id[i] + 1]++;
  for (int64_t v = 0; v < V; v++) start[v + 1] += start[v];
  for (int64_t i = 0; i < n; i++) order[start[id[i]]++] = i;
  /* The fill pass moved each start[v] to the end of v's run, where v+1's begins. */
  memmove(start + 1, start, (size_t)V * sizeof(int64_t));
  start[0] = 0;
  const float *g = sn_f32(gy);
  float *gw = sn_f32(gweight);
#pragma omp parallel for schedule(static) if (V * D + n * D > NN_PARALLEL_MIN)
  for (int64_t v = 0; v < V; v++) {
    float *row = gw + v * D;
    memset(row, 0, (size_t)D * sizeof(float));
    for (int64_t k = start[v]; k < start[v + 1]; k++) sn_vec->binary(SN_ADD, row, row, g + order[k] * D, D);
  }
  return SN_OK;
}
