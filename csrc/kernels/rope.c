/* kernels/rope.c -- rotary position embedding (RoPE), GPT-NeoX / HF-LLaMA "rotate_half"
 * pairing (math in seqnn.h): element i of a head is paired with element i + Dh/2.
 *
 * cos/sin come from a (T, Dh/2) table built once per call in the workspace; the angle
 * p * theta_i is formed in double, so positions in the hundreds of thousands keep f32
 * accuracy. The backward is the same pass with the angle negated. */
#include <math.h>

#include "kernels/nn.h"

static sn_status check(sn_ctx *ctx, const char *out_name, const sn_tensor *out, const char *in_name,
                       const sn_tensor *in, int64_t offset, double base) {
  const char *fn = "seqnn.F.rope";
  char s[160];
  if (in->dtype != SN_F32 || in->ndim != 4)
    return sn_fail(ctx, SN_EINVAL, "%s: '%s' must be an f32 (B,T,H,Dh) tensor, got %s %s", fn, in_name,
                   sn_dtype_name(in->dtype), sn_shape_str(in, s, sizeof s));
  if (in->size[3] % 2 != 0)
    return sn_fail(ctx, SN_EINVAL, "%s: head dim Dh must be even (element i pairs with i + Dh/2), got %lld (%s: %s)",
                   fn, (long long)in->size[3], in_name, sn_shape_str(in, s, sizeof s));
  if (in->size[3] > 1 && in->stride[3] != 1)
    return sn_fail(ctx, SN_EINVAL, "%s: '%s' must have a contiguous last dim (stride %lld)", fn, in_name,
                   (long long)in->stride[3]);
  if (offset < 0) return sn_fail(ctx, SN_EINVAL, "%s: offset must be >= 0, got %lld", fn, (long long)offset);
  if (!(base > 0) || isinf(base)) return sn_fail(ctx, SN_EINVAL, "%s: base must be a finite number > 0, got %g", fn, base);
  if (!sn_same_shape(out, in))
    return sn_fail(ctx, SN_EINVAL, "%s: '%s' must have the shape of '%s' (%s)", fn, out_name, in_name,
                   sn_shape_str(in, s, sizeof s));
  if (out->dtype != SN_F32 || (out->size[3] > 1 && out->stride[3] != 1))
    return sn_fail(ctx, SN_EINVAL, "%s: '%s' must be f32 with a contiguous last dim, got %s %s", fn, out_name,
                   sn_dtype_name(out->dtype), sn_shape_str(out, s, sizeof s));
  return SN_OK;
}

/* out = rotation of in by sign * (offset + t) * theta_i; both strided with a contiguous
 * last dim (a narrow view of a fused QKV projection is read, or its gradient rotated,
 * without a copy). out may be in: each pair is read before it is written. */
static sn_status rotate(sn_ctx *ctx, sn_tensor *out, const sn_tensor *in, int64_t offset, double base, double sign) {
  int64_t B = in->size[0], T = in->size[1], H = in->size[2], Dh = in->size[3], half = Dh / 2;
  if (sn_numel(in) == 0) return SN_OK;
  float *tab = sn_ctx_workspace(ctx, (size_t)(2 * T * half) * sizeof(float) + 1);
  if (!tab) return SN_ENOMEM;
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < half; i++) {
      double angle = sign * (double)(offset + t) * pow(base, -2.0 * (double)i / (double)Dh);
      tab[(t * half + i) * 2] = (float)cos(angle);
      tab[(t * half + i) * 2 + 1] = (float)sin(angle);
    }
  const float *x = sn_f32(in);
  float *y = sn_f32(out);
  const int64_t sb = in->stride[0], st = in->stride[1], sh = in->stride[2];
  const int64_t ob = out->stride[0], ot = out->stride[1], oh = out->stride[2];
#pragma omp parallel for collapse(2) schedule(static) if (B * T * H * Dh > NN_PARALLEL_MIN)
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++) {
      const float *cs = tab + t * half * 2;
      for (int64_t h = 0; h < H; h++) {
        const float *xr = x + b * sb + t * st + h * sh;
        float *yr = y + b * ob + t * ot + h * oh;
        for (int64_t i = 0; i < half; i++) {
          float c = cs[2 * i], s = cs[2 * i + 1], x1 = xr[i], x2 = xr[i + half];
          yr[i] = x1 * c - x2 * s;
          yr[i + half] = x1 * s + x2 * c;
        }
      }
    }
  return SN_OK;
}

sn_status sn_rope_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, int64_t offset, double base) {
  sn_status st = check(ctx, "y", y, "x", x, offset, base);
  return st != SN_OK ? st : rotate(ctx, y, x, offset, base, 1.0);
}

sn_status sn_rope_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *gy, int64_t offset, double base) {
  sn_status st = check(ctx, "grad_input", gx, "grad_output", gy, offset, base);
  return st != SN_OK ? st : rotate(ctx, gx, gy, offset, base, -1.0);
}
