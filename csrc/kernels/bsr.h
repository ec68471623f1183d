/* kernels/bsr.h -- internal: the BSR index check shared by the block-sparse kernels
 * (block_sparse.c, sparse_int8.c). Format in seqnn.h. */
#ifndef SN_KERNELS_BSR_H
#define SN_KERNELS_BSR_H

#include "seqnn.h"

/* The shape of a BSR weight, read from its tensors. */
typedef struct bsr_shape {
  int64_t M, ro, ri, nnzb, Mb; /* Mb = M / ro block-rows */
} bsr_shape;

/* Checks values f32 (nnzb, ro, ri) contiguous, browptr i64 (Mb + 1) and bcol i64 (nnzb)
 * contiguous, browptr[0] = 0, non-decreasing, browptr[Mb] = nnzb, every bcol in
 * [0, K / ri) and strictly ascending within its block-row, K % ri == 0. `fn` names the
 * caller in the message. O(Mb + nnzb). */
sn_status bsr_check(sn_ctx *ctx, const char *fn, const sn_tensor *values, const sn_tensor *browptr,
                    const sn_tensor *bcol, int64_t K, bsr_shape *out);

#endif
