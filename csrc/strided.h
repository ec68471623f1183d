/* strided.h -- internal: walks two same-shaped tensors (strides may differ, 0 for
 * broadcast) as a list of tasks, each a run of up to SN_RUN elements along the innermost
 * collapsed dim. Dims that are contiguous in both tensors are merged first, so a pair of
 * contiguous tensors is one long run cut into tasks that threads can share. */
#ifndef SN_STRIDED_H
#define SN_STRIDED_H

#include "seqnn.h"

#define SN_RUN 16384

typedef struct {
  int ndim;                  /* outer dims after merging (innermost excluded) */
  int64_t size[SN_MAX_DIMS]; /* outer sizes */
  int64_t stride[2][SN_MAX_DIMS];
  int64_t inner;            /* length of the innermost run */
  int64_t inner_stride[2];  /* its strides */
  int64_t rows;             /* product of outer sizes */
  int64_t blocks_per_row;   /* ceil(inner / SN_RUN), at least 1 */
  int64_t tasks;            /* rows * blocks_per_row (0 when empty) */
} sn_strided2;

static inline void sn_strided2_init(sn_strided2 *it, const sn_tensor *a, const sn_tensor *b) {
  int64_t size[SN_MAX_DIMS], sa[SN_MAX_DIMS], sb[SN_MAX_DIMS];
  int nd = 0;
  int64_t numel = 1;
  for (int d = 0; d < a->ndim; d++) {
    numel *= a->size[d];
    if (a->size[d] == 1) continue; /* size-1 dims contribute nothing */
    if (nd > 0 && sa[nd - 1] == a->stride[d] * a->size[d] && sb[nd - 1] == b->stride[d] * a->size[d]) {
      size[nd - 1] *= a->size[d]; /* merge with the previous (outer) dim */
      sa[nd - 1] = a->stride[d];
      sb[nd - 1] = b->stride[d];
      continue;
    }
    size[nd] = a->size[d], sa[nd] = a->stride[d], sb[nd] = b->stride[d];
    nd++;
  }
  if (nd == 0) size[0] = 1, sa[0] = 1, sb[0] = 1, nd = 1;
  it->ndim = nd - 1;
  it->rows = 1;
  for (int d = 0; d < nd - 1; d++) {
    it->size[d] = size[d];
    it->stride[0][d] = sa[d];
    it->stride[1][d] = sb[d];
    it->rows *= size[d];
  }
  it->inner = size[nd - 1];
  it->inner_stride[0] = sa[nd - 1];
  it->inner_stride[1] = sb[nd - 1];
  it->blocks_per_row = it->inner > SN_RUN ? (it->inner + SN_RUN - 1) / SN_RUN : 1;
  it->tasks = numel == 0 ? 0 : it->rows * it->blocks_per_row;
}

/* Element offsets of task `task`'s first element in a and b, and the task's run length. */
static inline int64_t sn_strided2_task(const sn_strided2 *it, int64_t task, int64_t *oa, int64_t *ob) {
  int64_t row = task / it->blocks_per_row, blk = task % it->blocks_per_row;
  int64_t a = 0, b = 0;
  for (int d = it->ndim - 1; d >= 0; d--) {
    int64_t i = row % it->size[d];
    row /= it->size[d];
    a += i * it->stride[0][d];
    b += i * it->stride[1][d];
  }
  int64_t start = blk * SN_RUN;
  *oa = a + start * it->inner_stride[0];
  *ob = b + start * it->inner_stride[1];
  int64_t left = it->inner - start;
  return left < SN_RUN ? left : SN_RUN;
}

#endif
