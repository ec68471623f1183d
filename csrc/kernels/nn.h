/* kernels/nn.h -- internal to the nn kernels: the cheap argument check every entry point
 * repeats, and a dot product with row-statistics accuracy. */
#ifndef SN_KERNELS_NN_H
#define SN_KERNELS_NN_H

#include "seqnn.h"

/* Below this many elements a call runs on the calling thread: OpenMP's fork costs more. */
#define NN_PARALLEL_MIN 32768

/* t must be a contiguous dt tensor of n elements; `arg` names it in the message. */
static inline sn_status nn_need(sn_ctx *ctx, const char *fn, const char *arg, const sn_tensor *t,
                                sn_dtype dt, int64_t n) {
  if (t->dtype == dt && sn_numel(t) == n && sn_is_contiguous(t)) return SN_OK;
  char shape[160];
  return sn_fail(ctx, SN_EINVAL, "%s: '%s' must be a contiguous %s tensor of %lld elements, got %s %s%s",
                 fn, arg, sn_dtype_name(dt), (long long)n, sn_dtype_name(t->dtype),
                 sn_shape_str(t, shape, sizeof shape), sn_is_contiguous(t) ? "" : " (not contiguous)");
}

/* sum_i (a[i] - sa) * (b[i] - sb). Sixteen float lanes (a fixed-width inner loop the
 * compiler vectorizes) over blocks of 4096 elements, blocks added in double: the error
 * stays near that of a double sum for rows of any length. */
static inline double nn_dot(const float *a, float sa, const float *b, float sb, int64_t n) {
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 4096) {
    const float *pa = a + i0, *pb = b + i0;
    int64_t m = n - i0 < 4096 ? n - i0 : 4096, i = 0;
    float acc[16] = {0};
    for (; i + 16 <= m; i += 16)
      for (int k = 0; k < 16; k++) acc[k] += (pa[i + k] - sa) * (pb[i + k] - sb);
    for (; i < m; i++) acc[i % 16] += (pa[i] - sa) * (pb[i] - sb);
    double s = 0;
    for (int k = 0; k < 16; k++) s += acc[k];
    total += s;
  }
  return total;
}

#endif
