/* bench_core.c -- the benchmark binary: harness (timing, table), main, and the core
 * memory-bound ops (elementwise, reductions, strided copy) against memcpy.
 *
 *   build/bench/seqnn_bench [suite]   runs every suite, or only the one named; the rows
 *                                     also go to results.tsv beside the binary */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

/* ---- harness ----------------------------------------------------------------------- */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

static double median(double *t, int n) {
  qsort(t, (size_t)n, sizeof *t, cmp_double);
  return t[n / 2];
}

/* Calls per sample so that one sample lasts at least ~2 ms (timer noise stays < 0.1%). */
static int calls_per_sample(bench_fn run, void *arg) {
  double t0 = now();
  run(arg);
  double once = now() - t0;
  return once >= 2e-3 ? 1 : (int)(2e-3 / (once > 1e-8 ? once : 1e-8)) + 1;
}

static double sample(bench_fn run, void *arg, int calls) {
  double t0 = now();
  for (int i = 0; i < calls; i++) run(arg);
  return (now() - t0) / calls;
}

double bench_time(bench_fn run, void *arg) {
  double t[BENCH_REPS];
  int calls = calls_per_sample(run, arg);
  for (int i = 0; i < BENCH_WARMUP; i++) sample(run, arg, calls);
  for (int i = 0; i < BENCH_REPS; i++) t[i] = sample(run, arg, calls);
  return median(t, BENCH_REPS);
}

double bench_time2(bench_fn run1, void *arg1, bench_fn run2, void *arg2, double *t1, double *t2) {
  double s1[BENCH_REPS], s2[BENCH_REPS], ratio[BENCH_REPS];
  int c1 = calls_per_sample(run1, arg1), c2 = calls_per_sample(run2, arg2);
  for (int i = 0; i < BENCH_WARMUP; i++) sample(run1, arg1, c1), sample(run2, arg2, c2);
  for (int i = 0; i < BENCH_REPS; i++) {
    s1[i] = sample(run1, arg1, c1);
    s2[i] = sample(run2, arg2, c2);
    ratio[i] = s2[i] / s1[i];
  }
  *t1 = median(s1, BENCH_REPS);
  *t2 = median(s2, BENCH_REPS);
  return median(ratio, BENCH_REPS);
}

#define ROW_FMT "%-18s %-22s %-7s %-7s %-9s %-8s %-7s %-6s %s\n"

/* Every row also goes here, tab-separated, for bench_lua.lua to compare with (NULL: not). */
static FILE *tsv;

void bench_row(const char *kernel, const char *shape, double seconds, double flops, double bytes,
               double x_ref, const char *ref) {
  char thr[16], ms[32], gf[32], gb[32], x[32];
  snprintf(thr, sizeof thr, "%d", sn_get_num_threads());
  snprintf(ms, sizeof ms, "%.4g", seconds * 1e3);
  snprintf(gf, sizeof gf, flops > 0 ? "%.1f" : "-", flops / seconds * 1e-9);
  snprintf(gb, sizeof gb, bytes > 0 ? "%.1f" : "-", bytes / seconds * 1e-9);
  snprintf(x, sizeof x, x_ref > 0 ? "%.2f" : "-", x_ref);
  printf(ROW_FMT, kernel, shape, thr, sn_simd_level(), ms, gf, gb, x, ref);
  fflush(stdout);
  if (tsv) fprintf(tsv, "%s\t%s\t%s\t%.6g\n", kernel, shape, ref, seconds * 1e3);
}

void bench_mismatch(const char *kernel, const char *shape, const char *why) {
  printf("%-18s %-22s MISMATCH: %s\n", kernel, shape, why);
  fflush(stdout);
}

bool bench_ok(sn_ctx *ctx, sn_status st, const char *kernel, const char *shape) {
  if (st == SN_OK) return true;
  printf("%-18s %-22s FAILED: %s\n", kernel, shape, ctx->err);
  fflush(stdout);
  return false;
}

void bench_fill(float *p, int64_t n, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 12345u;
  for (int64_t i = 0; i < n; i++) {
    s = s * 1664525u + 1013904223u;
    p[i] = (float)((s >> 8) * (1.0 / 16777216.0) * 2.0 - 1.0);
  }
}

static void cpu_model(char *buf, size_t n) {
  snprintf(buf, n, "unknown");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    char *colon = strchr(line, ':');
    if (strncmp(line, "model name", 10) == 0 && colon) {
      snprintf(buf, n, "%s", colon + 2);
      buf[strcspn(buf, "\n")] = 0;
      break;
    }
  }
  fclose(f);
}

static void header(void) {
  char date[64], cpu[256];
  time_t t = time(NULL);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", localtime(&t));
  cpu_model(cpu, sizeof cpu);
  const char *coretype = getenv("OPENBLAS_CORETYPE");
  /* A last-level cache larger than the 64 MiB tensors makes "memory" rows cache rows. */
  char l3[32] = "?";
  FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
  if (f) {
    if (!fgets(l3, sizeof l3, f)) snprintf(l3, sizeof l3, "?");
    l3[strcspn(l3, "\n")] = 0;
    fclose(f);
  }
  printf("# seqnn bench  %s\n", date);
  printf("# cpu: %s   L3: %s\n", cpu, l3);
  /* Other processes on a small machine stretch multithreaded rows: show how busy it was. */
  double load = -1;
  f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &load) != 1) load = -1;
    fclose(f);
  }
  printf("# threads: %d   simd: %s   load average (1 min) before start: %.2f\n",
         sn_get_num_threads(), sn_simd_level(), load);
  printf("# openblas: %s   core: %s   OPENBLAS_CORETYPE=%s\n", sn_blas_config(), sn_blas_core(),
         coretype ? coretype : "(unset)");
  printf("# ms: median of %d after %d warm-ups; x_ref: speed relative to ref, same run\n",
         BENCH_REPS, BENCH_WARMUP);
  printf(ROW_FMT, "kernel", "shape", "threads", "simd", "ms", "GFLOP/s", "GB/s", "x_ref", "ref");
}

typedef struct {
  float *a, *b, *c;
} sgemm_case;

static void run_sgemm(void *p) {
  sgemm_case *s = p;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1024, 1024, 1024, 1, s->a, 1024, s->b, 1024, 0, s->c, 1024);
}

double bench_sgemm_rate(void) {
  sgemm_case s = {malloc(4 << 22), malloc(4 << 22), malloc(4 << 22)};
  bench_fill(s.a, 1 << 20, 1), bench_fill(s.b, 1 << 20, 2);
  double t = bench_time(run_sgemm, &s), flops = 2.0 * 1024 * 1024 * 1024;
  bench_row("cblas_sgemm", "1024x1024x1024", t, flops, 0, 0, "(reference)");
  free(s.a), free(s.b), free(s.c);
  return flops / t;
}

static const struct {
  const char *name;
  void (*run)(void);
} suites[] = {
    {"matmul", bench_matmul},
    {"memory", bench_memory},
    {"nn", bench_nn},
    {"attention", bench_attention},
    {"scan", bench_scan},
    {"linear_attention", bench_linear_attention},
    {"block_sparse", bench_block_sparse},
    {"sparse_lowp", bench_sparse_lowp},
    {"hash_memory", bench_hash_memory},
    {"product_key", bench_product_key},
    {"binary_attention", bench_binary_attention},
};

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : NULL;
  size_t nsuites = sizeof suites / sizeof suites[0];
  bool found = only == NULL;
  for (size_t i = 0; i < nsuites; i++) found = found || strcmp(suites[i].name, only) == 0;
  if (!found) {
    fprintf(stderr, "seqnn_bench: no suite '%s'; suites:", only);
    for (size_t i = 0; i < nsuites; i++) fprintf(stderr, " %s", suites[i].name);
    fprintf(stderr, "\n");
    return 2;
  }
  /* results.tsv beside the binary: build/bench/results.tsv when run as make bench does. */
  const char *slash = strrchr(argv[0], '/');
  if (slash) {
    char path[4096];
    snprintf(path, sizeof path, "%.*s/results.tsv", (int)(slash - argv[0]), argv[0]);
    tsv = fopen(path, "w");
  }
  header();
  for (size_t i = 0; i < nsuites; i++)
    if (!only || strcmp(suites[i].name, only) == 0) suites[i].run();
  if (tsv) fclose(tsv);
  return 0;
}

/* ---- memory-bound core ops ----------------------------------------------------------- */

#define SIDE 4096
#define N ((int64_t)SIDE * SIDE) /* 16M f32 = 64 MiB per tensor */

#define MEMCPY_BYTES (2.0 * N * sizeof(float)) /* read + written */

static const char *SQ = "4096x4096";

/* Each thread copies its own contiguous share, as the kernels split their work. */
typedef struct {
  float *dst;
  const float *src;
} memcpy_args;

static void run_memcpy(void *p) {
  memcpy_args *m = p;
#pragma omp parallel
  {
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
    int64_t lo = N * id / nt, hi = N * (id + 1) / nt;
    memcpy(m->dst + lo, m->src + lo, (size_t)(hi - lo) * sizeof(float));
  }
}

typedef struct {
  sn_ctx *ctx;
  sn_tensor *out;
  const sn_tensor *a, *b;
  int op;    /* sn_binop, sn_unop or sn_redop */
  int dim;   /* reductions */
  double s;  /* binary_scalar */
} op_args;

static void run_binary(void *p) {
  op_args *o = p;
  sn_binary(o->ctx, o->out, o->a, o->b, (sn_binop)o->op);
}
static void run_binary_scalar(void *p) {
  op_args *o = p;
  sn_binary_scalar(o->ctx, o->out, o->a, o->s, (sn_binop)o->op, false);
}
static void run_unary(void *p) {
  op_args *o = p;
  sn_unary(o->ctx, o->out, o->a, (sn_unop)o->op);
}
static void run_reduce(void *p) {
  op_args *o = p;
  sn_reduce(o->ctx, o->out, o->a, o->dim, (sn_redop)o->op);
}
static void run_copy(void *p) {
  op_args *o = p;
  sn_copy(o->ctx, o->out, o->a);
}

/* Worst |got - want| / (atol + rtol*|want|) over n values; <= 1 passes. With atol = rtol
 * = 0 any difference fails; so does a NaN anywhere. */
static double scaled_err(const float *got, const double *want, int64_t n, double atol, double rtol) {
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs(got[i] - want[i]);
    if (isnan(d)) return INFINITY;
    double e = d == 0 ? 0 : d / (atol + rtol * fabs(want[i])); /* d / 0 = inf */
    if (e > worst) worst = e;
  }
  return worst;
}

static double unary_ref(sn_unop op, double x) {
  switch (op) {
  case SN_EXP: return exp(x);
  case SN_TANH: return tanh(x);
  case SN_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
  case SN_SILU: return x / (1.0 + exp(-x));
  default: return NAN;
  }
}

/* Times and prints the row, or prints MISMATCH when err > 1 (never times a wrong kernel). */
static void timed_row(const char *kernel, const char *shape, double err, bench_fn run,
                      op_args *args, double bytes, memcpy_args *mc) {
  if (!(err <= 1.0)) {
    char why[96];
    snprintf(why, sizeof why, "error %.3g x tolerance against the naive loop", err);
    bench_mismatch(kernel, shape, why);
    return;
  }
  /* Alternating with memcpy: x_ref = (bytes / t) / (memcpy bytes / t_memcpy), per pair. */
  double t, tm, x = bench_time2(run, args, run_memcpy, mc, &t, &tm);
  bench_row(kernel, shape, t, 0, bytes, x * bytes / MEMCPY_BYTES, "memcpy GB/s");
}

static void elementwise(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, const sn_tensor *b,
                        const sn_tensor *row, double *ref, memcpy_args *mc) {
  const float *x = sn_f32(a), *y = sn_f32(b), *r = sn_f32(row);
  const double bytes3 = 3.0 * N * sizeof(float), bytes2 = 2.0 * N * sizeof(float);
  op_args o = {.ctx = ctx, .out = out, .a = a, .b = b, .op = SN_ADD};

  if (bench_ok(ctx, sn_binary(ctx, out, a, b, SN_ADD), "binary add", SQ)) {
    for (int64_t i = 0; i < N; i++) ref[i] = (float)(x[i] + y[i]);
    timed_row("binary add", SQ, scaled_err(sn_f32(out), ref, N, 0, 0), run_binary, &o,
              bytes3, mc);
  }

  o.b = row;
  const char *bshape = "4096x4096 + 4096";
  if (bench_ok(ctx, sn_binary(ctx, out, a, row, SN_ADD), "binary add bcast", bshape)) {
    for (int64_t i = 0; i < N; i++) ref[i] = (float)(x[i] + r[i % SIDE]);
    timed_row("binary add bcast", bshape, scaled_err(sn_f32(out), ref, N, 0, 0), run_binary,
              &o, bytes2, mc);
  }

  o.op = SN_MUL, o.s = 1.5; /* exact in f32: the product must match bit for bit */
  if (bench_ok(ctx, sn_binary_scalar(ctx, out, a, o.s, SN_MUL, false), "binary_scalar mul", SQ)) {
    for (int64_t i = 0; i < N; i++) ref[i] = (float)(x[i] * 1.5f);
    timed_row("binary_scalar mul", SQ, scaled_err(sn_f32(out), ref, N, 0, 0),
              run_binary_scalar, &o, bytes2, mc);
  }

  const sn_unop unops[] = {SN_EXP, SN_TANH, SN_GELU, SN_SILU};
  for (size_t u = 0; u < sizeof unops / sizeof unops[0]; u++) {
    char kernel[32];
    snprintf(kernel, sizeof kernel, "unary %s", sn_unop_name(unops[u]));
    o.op = unops[u];
    if (!bench_ok(ctx, sn_unary(ctx, out, a, unops[u]), kernel, SQ)) continue;
    for (int64_t i = 0; i < N; i++) ref[i] = unary_ref(unops[u], x[i]);
    /* f32 vector math (SLEEF u10, a few ulp once composed) against double */
    timed_row(kernel, SQ, scaled_err(sn_f32(out), ref, N, 1e-7, 4e-6), run_unary, &o, bytes2,
              mc);
  }
}

static void reductions(sn_ctx *ctx, const sn_tensor *a, double *ref, memcpy_args *mc) {
  const float *x = sn_f32(a);
  const double bytes = (double)N * sizeof(float);
  sn_tensor scalar, vec;
  if (!bench_ok(ctx, sn_tensor_empty(ctx, &scalar, SN_F32, 0, NULL), "reduce", SQ)) return;
  if (!bench_ok(ctx, sn_tensor_empty(ctx, &vec, SN_F32, 1, (int64_t[]){SIDE}), "reduce", SQ)) {
    sn_tensor_release(&scalar);
    return;
  }
  const struct {
    const char *kernel, *shape;
    sn_redop op;
    int dim; /* -1 all, else 0-based */
  } cases[] = {
      {"reduce sum", "4096x4096 all", SN_SUM, -1},
      {"reduce sum", "4096x4096 last dim", SN_SUM, 1},
      {"reduce sum", "4096x4096 first dim", SN_SUM, 0},
      {"reduce max", "4096x4096 last dim", SN_RMAX, 1},
      {"reduce logsumexp", "4096x4096 last dim", SN_LOGSUMEXP, 1},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    sn_tensor *out = cases[c].dim < 0 ? &scalar : &vec;
    op_args o = {.ctx = ctx, .out = out, .a = a, .op = cases[c].op, .dim = cases[c].dim};
    if (!bench_ok(ctx, sn_reduce(ctx, out, a, cases[c].dim, cases[c].op), cases[c].kernel,
                  cases[c].shape))
      continue;
    /* Double references; sums are checked relative to the sum of |x| they add up. */
    int64_t nout = cases[c].dim < 0 ? 1 : SIDE;
    double scale[SIDE];
    for (int64_t j = 0; j < nout; j++) ref[j] = cases[c].op == SN_RMAX ? -INFINITY : 0, scale[j] = 0;
    for (int64_t i = 0; i < SIDE; i++)
      for (int64_t k = 0; k < SIDE; k++) {
        double v = x[i * SIDE + k];
        int64_t j = cases[c].dim < 0 ? 0 : cases[c].dim == 1 ? i : k;
        if (cases[c].op == SN_RMAX) ref[j] = v > ref[j] ? v : ref[j];
        else if (cases[c].op == SN_LOGSUMEXP) ref[j] += exp(v);
        else ref[j] += v;
        scale[j] += fabs(v);
      }
    double err = 0;
    for (int64_t j = 0; j < nout; j++) {
      double got = sn_f32(out)[j], want = ref[j], tol = 1e-6 * scale[j];
      if (cases[c].op == SN_RMAX) tol = 0;
      if (cases[c].op == SN_LOGSUMEXP) want = log(want), tol = 1e-6 * fabs(want) + 1e-6;
      double e = fabs(got - want) / (tol > 0 ? tol : 1e-30);
      if (!(e <= err)) err = e;
    }
    timed_row(cases[c].kernel, cases[c].shape, err, run_reduce, &o, bytes, mc);
  }
  sn_tensor_release(&scalar);
  sn_tensor_release(&vec);
}

static void transposed_copy(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, memcpy_args *mc) {
  sn_tensor at;
  const char *shape = "4096x4096 transposed";
  if (!bench_ok(ctx, sn_transpose(ctx, &at, a, 0, 1), "copy", shape)) return;
  op_args o = {.ctx = ctx, .out = out, .a = &at};
  if (bench_ok(ctx, sn_copy(ctx, out, &at), "copy", shape)) {
    const float *x = sn_f32(a), *y = sn_f32(out);
    double err = 0;
    for (int64_t i = 0; i < SIDE && err == 0; i++)
      for (int64_t j = 0; j < SIDE; j++)
        if (y[i * SIDE + j] != x[j * SIDE + i]) err = INFINITY;
    timed_row("copy", shape, err, run_copy, &o, 2.0 * N * sizeof(float), mc);
  }
  sn_tensor_release(&at);
}

void bench_memory(void) {
  sn_ctx ctx;
  sn_ctx_init(&ctx);
  sn_tensor a, b, out, row;
  const int64_t sq[2] = {SIDE, SIDE};
  double *ref = malloc((size_t)N * sizeof(double));
  if (!ref || !bench_ok(&ctx, sn_tensor_empty(&ctx, &a, SN_F32, 2, sq), "memory", SQ) ||
      !bench_ok(&ctx, sn_tensor_empty(&ctx, &b, SN_F32, 2, sq), "memory", SQ) ||
      !bench_ok(&ctx, sn_tensor_empty(&ctx, &out, SN_F32, 2, sq), "memory", SQ) ||
      !bench_ok(&ctx, sn_tensor_empty(&ctx, &row, SN_F32, 1, sq), "memory", SQ)) {
    free(ref);
    return; /* the process ends soon after; the tensors made so far go with it */
  }
  bench_fill(sn_f32(&a), N, 1);
  bench_fill(sn_f32(&b), N, 2);
  bench_fill(sn_f32(&row), SIDE, 3);

  /* memcpy overwrites out between timed calls, always after the kernel's check. */
  memcpy_args m = {sn_f32(&out), sn_f32(&a)};
  bench_row("memcpy", "64 MiB", bench_time(run_memcpy, &m), 0, MEMCPY_BYTES, 0,
            "(reference; read+write bytes)");

  elementwise(&ctx, &out, &a, &b, &row, ref, &m);
  reductions(&ctx, &a, ref, &m);
  transposed_copy(&ctx, &out, &a, &m);

  free(ref);
  sn_tensor *all[] = {&a, &b, &out, &row};
  for (int i = 0; i < 4; i++) sn_tensor_release(all[i]);
  sn_ctx_free(&ctx);
}
