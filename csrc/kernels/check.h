/* kernels/check.h -- internal to the sequence kernels: the argument checks of their entry
 * points, with messages that name the function, the argument and the shapes. */
#ifndef SN_KERNELS_CHECK_H
#define SN_KERNELS_CHECK_H

#include <stdio.h>

#include "seqnn.h"

/* "2x16x32" for the n sizes; a negative size prints as "?". */
static inline char *check_dims(char *buf, size_t len, int n, const int64_t *size) {
  size_t at = 0;
  buf[0] = 0;
  for (int i = 0; i < n && at < len; i++)
    at += (size_t)(size[i] < 0 ? snprintf(buf + at, len - at, "%s?", i ? "x" : "")
                               : snprintf(buf + at, len - at, "%s%lld", i ? "x" : "", (long long)size[i]));
  return buf;
}

/* An input: non-NULL f32 with nd dims of sizes want (negative: any; NULL: all any) and unit
 * stride on the last dim. layout names the dims for the message ("(B, T, H, Dk)"). */
static inline sn_status check_in(sn_ctx *ctx, const char *fn, const char *name, const sn_tensor *t,
                                 const char *layout, int nd, const int64_t *want) {
  char a[160], b[160];
  if (!t) return sn_fail(ctx, SN_EINVAL, "%s: %s must not be NULL", fn, name);
  if (t->dtype != SN_F32)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be f32, got %s (%s)", fn, name, sn_dtype_name(t->dtype),
                   sn_shape_str(t, a, sizeof a));
  bool ok = t->ndim == nd, known = false;
  for (int i = 0; want && i < nd; i++) {
    known = known || want[i] >= 0;
    ok = ok && (want[i] < 0 || t->size[i] == want[i]);
  }
  if (!ok && known)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must be %s = %s, got %s", fn, name, layout, check_dims(b, sizeof b, nd, want),
                   sn_shape_str(t, a, sizeof a));
  if (!ok) return sn_fail(ctx, SN_EINVAL, "%s: %s must be %s, got %s", fn, name, layout, sn_shape_str(t, a, sizeof a));
  if (t->size[nd - 1] > 1 && t->stride[nd - 1] != 1)
    return sn_fail(ctx, SN_EINVAL, "%s: %s must have unit stride on its last dim, got stride %lld (%s)", fn, name,
                   (long long)t->stride[nd - 1], sn_shape_str(t, a, sizeof a));
  return SN_OK;
}

/* An optional input: NULL, or as check_in. */
static inline sn_status check_opt(sn_ctx *ctx, const char *fn, const char *name, const sn_tensor *t,
                                  const char *layout, int nd, const int64_t *want) {
  return t ? check_in(ctx, fn, name, t, layout, nd, want) : SN_OK;
}

/* An output: NULL when optional, else a contiguous f32 tensor of nd dims of sizes want. */
static inline sn_status check_out(sn_ctx *ctx, const char *fn, const char *name, const sn_tensor *t, bool optional,
                                  int nd, const int64_t *want) {
  char a[160], b[160];
  if (!t) return optional ? SN_OK : sn_fail(ctx, SN_EINVAL, "%s: %s must not be NULL", fn, name);
  bool ok = t->dtype == SN_F32 && t->ndim == nd && sn_is_contiguous(t);
  for (int i = 0; ok && i < nd; i++) ok = t->size[i] == want[i];
  if (ok) return SN_OK;
  return sn_fail(ctx, SN_EINVAL, "%s: %s must be a contiguous f32 tensor of shape %s, got %s %s%s", fn, name,
                 check_dims(b, sizeof b, nd, want), sn_dtype_name(t->dtype), sn_shape_str(t, a, sizeof a),
                 t->ndim == nd && !sn_is_contiguous(t) ? " (not contiguous)" : "");
}

#endif
