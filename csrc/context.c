/* context.c -- sn_ctx: error messages, scratch workspace, threads and build configuration. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seqnn.h"

void sn_ctx_init(sn_ctx *ctx) {
  memset(ctx, 0, sizeof *ctx);
  ctx->seed = 0x5eedULL;
}

void sn_ctx_free(sn_ctx *ctx) {
  free(ctx->workspace);
  ctx->workspace = NULL;
  ctx->workspace_bytes = 0;
}

sn_status sn_fail(sn_ctx *ctx, sn_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
  va_end(ap);
  return st;
}

void *sn_ctx_workspace(sn_ctx *ctx, size_t bytes) {
  if (bytes <= ctx->workspace_bytes) return ctx->workspace;
  /* Grow geometrically so a sequence of slightly larger requests does not realloc each time. */
  size_t want = bytes < 2 * ctx->workspace_bytes ? 2 * ctx->workspace_bytes : bytes;
  want = (want + SN_ALIGN - 1) / SN_ALIGN * SN_ALIGN;
  void *p = NULL;
  if (posix_memalign(&p, SN_ALIGN, want) != 0) {
    sn_fail(ctx, SN_ENOMEM, "seqnn: out of memory: workspace of %zu bytes", want);
    return NULL;
  }
  free(ctx->workspace);
  ctx->workspace = p;
  ctx->workspace_bytes = want;
  return p;
}

/* Our loops use OpenMP and GEMMs go to OpenBLAS, never from inside a parallel region, so
 * both pools get the same count and only one of them is busy at a time. */
void sn_set_num_threads(int n) {
  if (n < 1) n = 1;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int sn_get_num_threads(void) { return omp_get_max_threads(); }

const char *sn_blas_config(void) { return openblas_get_config(); }

const char *sn_blas_core(void) { return openblas_get_corename(); }
