/* bench.h -- the benchmark binary's shared harness (implemented in bench_core.c).
 *
 * A suite is a function that, for each case, first checks the kernel once against a naive
 * loop (bench_mismatch and skip the case if wrong: never time a broken kernel), then times
 * it and its reference in the same run and prints one row with bench_row. To add a suite,
 * write bench/bench_<family>.c with `void bench_<family>(void)`, declare it below and list
 * it in `suites` in bench_core.c. */
#ifndef SN_BENCH_H
#define SN_BENCH_H

#include <stdbool.h>
#include <stdint.h>

#include "seqnn.h"

#define BENCH_WARMUP 2
#define BENCH_REPS 11

/* A timed piece of work: run(arg) once. */
typedef void (*bench_fn)(void *arg);

/* Median seconds of one run(arg) over BENCH_REPS samples after BENCH_WARMUP. Fast calls are
 * repeated within a sample (to at least ~2 ms) and the sample divided by the repeat count. */
double bench_time(bench_fn run, void *arg);
/* Times two pieces of work alternately, sample by sample, so drift of the shared machine
 * hits both alike. The medians go to *t1 and *t2; returns the median over sample pairs of
 * t2/t1 (the speed of run1 relative to run2), steadier than the ratio of the medians. */
double bench_time2(bench_fn run1, void *arg1, bench_fn run2, void *arg2, double *t1, double *t2);

/* One table row. flops or bytes <= 0 print "-"; x_ref is speed relative to the reference
 * (its time over ours; <= 0 prints "-"), named by `ref`. */
void bench_row(const char *kernel, const char *shape, double seconds, double flops, double bytes,
               double x_ref, const char *ref);
/* The row for a case whose check failed: prints MISMATCH and `why` instead of timings. */
void bench_mismatch(const char *kernel, const char *shape, const char *why);
/* Failure of setup (allocation, a kernel status): prints the row with ctx->err; false. */
bool bench_ok(sn_ctx *ctx, sn_status st, const char *kernel, const char *shape);

/* Deterministic values in [-1, 1). */
void bench_fill(float *p, int64_t n, uint32_t seed);
/* Times cblas_sgemm 1024^3, prints its row and returns its FLOP/s: the rate kernel rows of
 * the same run are compared with (x_sgemm). */
double bench_sgemm_rate(void);

/* Suites, in the order they run. */
void bench_matmul(void);
void bench_memory(void);
void bench_nn(void);
void bench_attention(void);
void bench_scan(void);
void bench_linear_attention(void);
void bench_block_sparse(void);
void bench_sparse_lowp(void);
void bench_hash_memory(void);
void bench_product_key(void);
void bench_binary_attention(void);

#endif
