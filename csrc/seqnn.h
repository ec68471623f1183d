/* seqnn.h -- public C API of the seqnn core: tensors, views, elementwise math, reductions,
 * matmul, random numbers and threads. No Lua dependency: the binding in csrc/lua/ is one
 * client of this header; tests and benchmarks link it from C alone.
 *
 * Conventions
 *   - Dims are 0-based here (the Lua binding converts). Sizes and strides count elements.
 *   - Every function that can fail takes an sn_ctx first and returns an sn_status; on
 *     failure ctx->err holds a message naming what is wrong. Nothing here aborts or prints.
 *   - Output tensors are allocated by the caller (argument order: ctx, outputs, inputs,
 *     scalars). Kernels check shapes again cheaply and fail with SN_EINVAL.
 *   - View functions fill a caller-provided sn_tensor that shares (and retains) the
 *     source's storage; release every tensor with sn_tensor_release.
 */
#ifndef SEQNN_H
#define SEQNN_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SN_MAX_DIMS 8
#define SN_ALIGN 64
/* Largest tensor in bytes: keeps every byte offset and numel*itemsize inside int64. */
#define SN_MAX_BYTES ((int64_t)1 << 62)

typedef enum { SN_F32 = 0, SN_I64 = 1 } sn_dtype;

typedef enum {
  SN_OK = 0,
  SN_EINVAL, /* bad argument: shape, dtype, dim, range */
  SN_ENOMEM, /* allocation failed or over the memory limit */
  SN_EIO,    /* file or format error */
} sn_status;

/* Per-user state: last error, memory accounting, random generator, scratch memory.
 * One per Lua state; C users zero-initialise one with sn_ctx_init. */
typedef struct sn_ctx {
  char err[1024];
  int64_t live_bytes;  /* bytes held by storages allocated through this ctx */
  int64_t peak_bytes;  /* high-water mark of live_bytes since sn_ctx_init/reset */
  int64_t limit_bytes; /* allocations that would exceed this fail (0 = no limit) */
  uint64_t seed;       /* generator: counter-based, so results do not depend on threads */
  uint64_t rng_offset; /* how many random 64-bit words have been consumed */
  void *workspace;     /* scratch for kernels, grown on demand, 64-byte aligned */
  size_t workspace_bytes;
} sn_ctx;

/* Reference-counted, 64-byte aligned memory. Storages made by sn_tensor_empty hold their
 * data in the same block, right after this header. Wrapped storages (sn_tensor_wrap) point
 * at memory they do not own; `release` (optional) frees it (an munmap, say). */
typedef struct sn_storage {
  int64_t refcount;
  void *data;
  int64_t nbytes;
  sn_ctx *ctx; /* whose live_bytes count this storage; NULL when not counted */
  void (*release)(void *ud, void *data, int64_t nbytes);
  void *release_ud;
  void *block; /* what the allocator returned: freed with the last view */
} sn_storage;

/* A view: shape, strides and offset (in elements) over a storage. */
typedef struct sn_tensor {
  sn_storage *storage; /* NULL once released */
  sn_dtype dtype;
  int ndim; /* 0 .. SN_MAX_DIMS; 0 is a scalar with one element */
  int64_t size[SN_MAX_DIMS];
  int64_t stride[SN_MAX_DIMS];
  int64_t offset;
} sn_tensor;

/* ---- context and errors ---------------------------------------------------------- */
void sn_ctx_init(sn_ctx *ctx);
void sn_ctx_free(sn_ctx *ctx); /* frees the workspace; storages must be released first */
/* Sets ctx->err from a printf-style format and returns `st`. */
sn_status sn_fail(sn_ctx *ctx, sn_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Scratch of at least `bytes`, valid until the next call; NULL (and ctx->err) on failure. */
void *sn_ctx_workspace(sn_ctx *ctx, size_t bytes);

/* ---- storage and tensors --------------------------------------------------------- */
size_t sn_dtype_size(sn_dtype dt);
const char *sn_dtype_name(sn_dtype dt); /* "f32", "i64" */
/* Validates a shape (ndim range, non-negative sizes, numel*itemsize <= SN_MAX_BYTES).
 * `fn` prefixes the message. On success *numel is set. */
sn_status sn_check_shape(sn_ctx *ctx, const char *fn, sn_dtype dt, int ndim, const int64_t *size,
                         int64_t *numel);
/* A new contiguous tensor with uninitialised values. */
sn_status sn_tensor_empty(sn_ctx *ctx, sn_tensor *t, sn_dtype dt, int ndim, const int64_t *size);
/* Wraps memory the caller owns; `release` is called when the last view goes. */
sn_status sn_tensor_wrap(sn_ctx *ctx, sn_tensor *t, void *data, int64_t nbytes, sn_dtype dt,
                         int ndim, const int64_t *size,
                         void (*release)(void *ud, void *data, int64_t nbytes), void *ud);
/* Drops this view's reference (idempotent); frees the storage with its last view. */
void sn_tensor_release(sn_tensor *t);
/* dst becomes another view of src (same shape), retaining the storage. */
void sn_tensor_share(sn_tensor *dst, const sn_tensor *src);

int64_t sn_numel(const sn_tensor *t);
bool sn_is_contiguous(const sn_tensor *t);
/* Pointer to the first element (storage data + offset). */
void *sn_data(const sn_tensor *t);
static inline float *sn_f32(const sn_tensor *t) { return (float *)sn_data(t); }
static inline int64_t *sn_i64(const sn_tensor *t) { return (int64_t *)sn_data(t); }
/* "2x16x4x32" ("scalar" for 0 dims) into buf; returns buf. */
char *sn_shape_str(const sn_tensor *t, char *buf, size_t n);
bool sn_same_shape(const sn_tensor *a, const sn_tensor *b);

/* ---- views (no copies; dst shares src's storage) ---------------------------------- */
/* View with a new shape; fails with SN_EINVAL when the strides do not allow it (use
 * sn_reshape_needs_copy to decide). Sizes may contain one -1 (inferred). */
sn_status sn_view(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int ndim, const int64_t *size);
/* Resolves a -1 in size[] against numel; checks the product. */
sn_status sn_infer_shape(sn_ctx *ctx, const char *fn, const sn_tensor *src, int ndim, int64_t *size);
bool sn_can_view(const sn_tensor *src, int ndim, const int64_t *size);
sn_status sn_transpose(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int d0, int d1);
sn_status sn_permute(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, const int *perm);
sn_status sn_narrow(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int dim, int64_t start,
                    int64_t len);
/* Removes `dim`, keeping index `index` (0-based). */
sn_status sn_select(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int dim, int64_t index);
/* Broadcasts size-1 dims (stride 0); leading dims may be added. */
sn_status sn_expand(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int ndim, const int64_t *size);
sn_status sn_unsqueeze(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int dim);
/* Removes `dim` if it has size 1; dim = -1 removes every size-1 dim. */
sn_status sn_squeeze(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int dim);

/* Broadcast shape of a and b (numpy rules) into ndim/size. */
sn_status sn_broadcast_shape(sn_ctx *ctx, const char *fn, const sn_tensor *a, const sn_tensor *b,
                             int *ndim, int64_t *size);

/* ---- copies and fills ------------------------------------------------------------- */
/* dst[...] = src[...], src broadcast to dst's shape, converting dtype (f32 <-> i64,
 * truncating toward zero). dst and src must not overlap unless they are the same view. */
sn_status sn_copy(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src);
sn_status sn_fill(sn_ctx *ctx, sn_tensor *t, double value);
/* t[i] = start + i*step over the flattened (contiguous) tensor. */
sn_status sn_arange(sn_ctx *ctx, sn_tensor *t, double start, double step);
/* out = src gathered along dim with 0-based i64 indices (index_select); index values are
 * checked against the size of dim. out has src's shape with size[dim] = numel(index). */
sn_status sn_index_select(sn_ctx *ctx, sn_tensor *out, const sn_tensor *src, int dim,
                          const sn_tensor *index);

/* ---- random numbers ---------------------------------------------------------------
 * Counter-based (a 64-bit hash of seed and counter), so a tensor's values depend only on
 * the seed and how many numbers were drawn before it, never on the thread count. */
/* Word i of the stream for seed: SplitMix64's finaliser over a Weyl sequence keyed by the
 * seed. Kernels that draw random numbers (dropout) use it with ctx->seed/rng_offset. */
static inline uint64_t sn_rng_word(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0xD1342543DE82EF95ULL + (i + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
void sn_manual_seed(sn_ctx *ctx, uint64_t seed);
sn_status sn_rand(sn_ctx *ctx, sn_tensor *t, double lo, double hi);      /* uniform [lo, hi) */
sn_status sn_randn(sn_ctx *ctx, sn_tensor *t, double mean, double std);  /* normal */
/* Uniform integers in [lo, hi) into an i64 tensor. */
sn_status sn_randint(sn_ctx *ctx, sn_tensor *t, int64_t lo, int64_t hi);

/* ---- elementwise ------------------------------------------------------------------- */
typedef enum {
  SN_ADD = 0, SN_SUB, SN_MUL, SN_DIV, SN_POW, SN_MAX, SN_MIN,
  SN_BINOP_COUNT
} sn_binop;

typedef enum {
  SN_EXP = 0, SN_LOG, SN_TANH, SN_SIGMOID, SN_SILU, SN_GELU, SN_SOFTPLUS,
  SN_SQRT, SN_RSQRT, SN_ABS, SN_NEG,
  SN_UNOP_COUNT
} sn_unop;

const char *sn_binop_name(sn_binop op);
const char *sn_unop_name(sn_unop op);

/* out = a op b with broadcasting; out has the broadcast shape. dtypes: all f32, or all
 * i64 (SN_DIV and SN_POW need f32). out may be a or b (in place) when it has the full
 * broadcast shape; it must not partially overlap them. */
sn_status sn_binary(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, const sn_tensor *b, sn_binop op);
/* out = a op s, or s op a when scalar_first. Same dtype rules as sn_binary. */
sn_status sn_binary_scalar(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, double s, sn_binop op,
                           bool scalar_first);
/* out = op(a), same shape; f32 (SN_ABS and SN_NEG also take i64). out may be a. */
sn_status sn_unary(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, sn_unop op);

/* ---- reductions ------------------------------------------------------------------- */
typedef enum {
  SN_SUM = 0, SN_MEAN, SN_RMAX, SN_RMIN, SN_ARGMAX, SN_ARGMIN, SN_LOGSUMEXP,
  SN_REDOP_COUNT
} sn_redop;

const char *sn_redop_name(sn_redop op);
/* Reduces a over `dim` (0-based), or over every element when dim < 0.
 * out: contiguous, numel = numel(a) / size(dim) (1 when dim < 0); its shape is the
 * caller's choice (keepdim or not). dtype: i64 for ARGMAX/ARGMIN (0-based index of the
 * first extreme), else a's dtype (i64 input: SUM, RMAX, RMIN, ARG*; MEAN and LOGSUMEXP
 * need f32). Sums accumulate in double. Reducing an empty dim: SUM 0, MEAN NaN,
 * LOGSUMEXP -inf; RMAX/RMIN/ARG* fail with SN_EINVAL. */
sn_status sn_reduce(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, int dim, sn_redop op);

/* ---- matmul ------------------------------------------------------------------------ */
/* out (..., M, N) = a (..., M, K) @ b (..., K, N), f32, ndim >= 2 for all three; batch
 * dims broadcast (out holds the broadcast batch shape). Operands whose last two dims are
 * contiguous or transposed-contiguous go to cblas_sgemm without a copy. out must be
 * contiguous and must not overlap a or b. */
sn_status sn_matmul(sn_ctx *ctx, sn_tensor *out, const sn_tensor *a, const sn_tensor *b);

/* ---- threads and configuration ---------------------------------------------------- */
/* Sets OpenMP's and OpenBLAS's thread counts together (n >= 1). */
void sn_set_num_threads(int n);
int sn_get_num_threads(void);
/* "avx512", "avx2" or "scalar": the SIMD level chosen at load time. */
const char *sn_simd_level(void);
/* OpenBLAS's own configuration string and core name (from openblas_get_config/corename). */
const char *sn_blas_config(void);
const char *sn_blas_core(void);

/* ---- safetensors -------------------------------------------------------------------
 * Checkpoint files in the safetensors format: an 8-byte little-endian header length N,
 * N bytes of UTF-8 JSON {name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
 * "__metadata__": {string: string}}, then the data section (offsets are relative to it),
 * little-endian and row-major.
 *
 * Reading is in two steps. sn_safetensors_parse (a byte buffer) or sn_safetensors_load (a
 * file, memory-mapped) validates the whole header and fills an sn_st_file; then each entry
 * becomes a tensor. A loaded F32/I64 entry whose data is aligned becomes a zero-copy view
 * of the mapping (sn_safetensors_view); the mapping is private (copy-on-write), so writing
 * to such a tensor never changes the file, and it is unmapped with the last view. Other
 * entries are copied, converting F64/F16/BF16 to f32 and I32/I16/I8/U32/U16/U8/BOOL to i64
 * (sn_safetensors_read). Mapped storages are not counted in ctx->live_bytes.
 * Messages from load and save start "seqnn.load: <path>: " / "seqnn.save: <path>: ". */
typedef enum {
  SN_ST_F32 = 0, SN_ST_I64, SN_ST_F64, SN_ST_F16, SN_ST_BF16,
  SN_ST_I32, SN_ST_I16, SN_ST_I8, SN_ST_U32, SN_ST_U16, SN_ST_U8, SN_ST_BOOL,
  SN_ST_DTYPE_COUNT
} sn_st_dtype;

typedef struct {
  char *name; /* non-empty, UTF-8, unique within the file */
  sn_st_dtype dtype;
  int ndim;
  int64_t size[SN_MAX_DIMS];
  int64_t begin, end; /* byte range in the data section; end - begin = numel * itemsize */
} sn_st_entry;

typedef struct sn_st_mapping sn_st_mapping; /* private: the refcounted mmap of a loaded file */

typedef struct {
  sn_st_entry *entries; /* in header order */
  int64_t n;
  char **meta_keys, **meta_vals; /* "__metadata__", in header order */
  int64_t nmeta;
  const uint8_t *data; /* the data section, inside the parsed buffer or the mapping */
  int64_t data_len;
  sn_st_mapping *mapping; /* set by sn_safetensors_load, NULL after sn_safetensors_parse */
} sn_st_file;

/* "F32", "BF16", ... as written in the header. */
const char *sn_safetensors_dtype_name(sn_st_dtype dt);
/* The seqnn dtype an entry loads as: f32 for floating types, i64 for integers and BOOL. */
sn_dtype sn_safetensors_load_dtype(sn_st_dtype dt);
/* Validates a whole file held in buf: header length against len (and at most 100 MiB),
 * UTF-8 JSON object, known dtypes, shapes (<= SN_MAX_DIMS non-negative integers, no
 * overflow), offsets inside the data section and matching the size, no overlapping data,
 * no duplicate or empty names, string metadata. f points into buf, which must outlive it.
 * Fails with SN_EIO (message without a path prefix) or SN_ENOMEM; f is then empty. */
sn_status sn_safetensors_parse(sn_ctx *ctx, sn_st_file *f, const uint8_t *buf, size_t len);
/* Maps `path` (read-only file, private mapping) and parses it. */
sn_status sn_safetensors_load(sn_ctx *ctx, sn_st_file *f, const char *path);
/* Frees the index and drops f's reference to the mapping (views keep theirs). Idempotent. */
void sn_safetensors_close(sn_st_file *f);
/* True when entry i can be a zero-copy view: a loaded file, dtype F32 or I64, and data
 * aligned for it. */
bool sn_safetensors_can_view(const sn_st_file *f, int64_t i);
/* t becomes a view of entry i's bytes in the mapping (requires sn_safetensors_can_view). */
sn_status sn_safetensors_view(sn_ctx *ctx, sn_tensor *t, const sn_st_file *f, int64_t i);
/* Copies entry i into t, converting; t must be contiguous, of entry i's shape and of
 * sn_safetensors_load_dtype(entry dtype). */
sn_status sn_safetensors_read(sn_ctx *ctx, sn_tensor *t, const sn_st_file *f, int64_t i);
/* A view when possible, else a new tensor (counted on ctx) filled by sn_safetensors_read. */
sn_status sn_safetensors_tensor(sn_ctx *ctx, sn_tensor *t, const sn_st_file *f, int64_t i);
/* Writes n tensors and nmeta metadata pairs to `path` atomically: header and data go to
 * "<path>.tmp.<pid>" in the same directory, which is flushed, fsynced and renamed over
 * path, then the directory is fsynced. On failure the temporary file is removed and an
 * existing file at path is untouched. Tensors are written sorted by name (bytewise), so
 * the same tensors give the same file; metadata is sorted by key. The header is padded
 * with spaces to a multiple of 8 bytes; non-contiguous tensors are written in logical
 * (row-major) order. Names must be unique, non-empty, valid UTF-8 and not "__metadata__". */
sn_status sn_safetensors_save(sn_ctx *ctx, const char *path, const char *const *names,
                              const sn_tensor *const *tensors, int64_t n,
                              const char *const *meta_keys, const char *const *meta_vals,
                              int64_t nmeta);

/* ==== nn kernels (csrc/kernels/): fused forward/backward of sn.F, optimizer steps ======
 * Row kernels see a tensor as (rows, C): C is the last dim (features), rows the product
 * of the leading dims. Every tensor argument is contiguous; kernels check dtype, numel and
 * contiguity (SN_EINVAL naming the argument) and never read outside a tensor. Outputs are
 * overwritten, never accumulated into. Results are bitwise independent of the thread
 * count: each output element has one writer, cross-row sums go through fixed row blocks. */

/* The last dim (features) of t, 1 for a scalar. */
static inline int64_t sn_last_dim(const sn_tensor *t) { return t->ndim ? t->size[t->ndim - 1] : 1; }
/* The product of t's leading dims (1 for a scalar or a vector). */
static inline int64_t sn_rows(const sn_tensor *t) {
  int64_t r = 1;
  for (int d = 0; d + 1 < t->ndim; d++) r *= t->size[d];
  return r;
}

/* ---- normalization (kernels/norm.c) -------------------------------------------------
 * layer_norm fwd:  mean[r] = mean_c x,  rstd[r] = 1/sqrt(mean_c (x - mean)^2 + eps)
 *                  y = (x - mean) * rstd * w + b        (w, b optional: NULL means 1, 0)
 *            bwd:  xhat = (x - mean) * rstd,  g = gy * w
 *                  gx = rstd * (g - mean_c g - xhat * mean_c(g * xhat))
 *                  gw[c] = sum_r gy * xhat,  gb[c] = sum_r gy   (gw, gb optional: NULL skips)
 * rms_norm   fwd:  rstd[r] = 1/sqrt(mean_c x^2 + eps),  y = x * rstd * w   (w optional)
 *            bwd:  gx = rstd * (g - x * rstd^2 * mean_c(g * x)),  gw[c] = sum_r gy * x * rstd
 * Shapes: x, y, gy, gx (rows, C) f32; w, b, gw, gb (C); mean, rstd (rows), saved by fwd.
 * Row statistics are accumulated in double. */
sn_status sn_layer_norm_fwd(sn_ctx *ctx, sn_tensor *y, sn_tensor *mean, sn_tensor *rstd,
                            const sn_tensor *x, const sn_tensor *w, const sn_tensor *b, float eps);
sn_status sn_layer_norm_bwd(sn_ctx *ctx, sn_tensor *gx, sn_tensor *gw, sn_tensor *gb,
                            const sn_tensor *mean, const sn_tensor *rstd, const sn_tensor *gy,
                            const sn_tensor *x, const sn_tensor *w);
sn_status sn_rms_norm_fwd(sn_ctx *ctx, sn_tensor *y, sn_tensor *rstd, const sn_tensor *x,
                          const sn_tensor *w, float eps);
sn_status sn_rms_norm_bwd(sn_ctx *ctx, sn_tensor *gx, sn_tensor *gw, const sn_tensor *rstd,
                          const sn_tensor *gy, const sn_tensor *x, const sn_tensor *w);

/* ---- softmax family (kernels/softmax.c), over the last dim ---------------------------
 * softmax      fwd: y = exp(x - max) / sum exp(x - max)     bwd: gx = y * (gy - sum(gy * y))
 * log_softmax  fwd: y = x - logsumexp(x)                    bwd: gx = gy - exp(y) * sum(gy)
 * x, y, gy, gx (rows, C) f32, all the same numel. A row whose max is infinite or NaN gives
 * NaN where PyTorch does (all -inf: NaN everywhere). */
sn_status sn_softmax_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x);
sn_status sn_softmax_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *y, const sn_tensor *gy);
sn_status sn_log_softmax_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x);
sn_status sn_log_softmax_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *y, const sn_tensor *gy);

/* cross_entropy fwd: lse[r] = logsumexp_v logits[r, v],  loss[r] = lse[r] - logits[r, t[r]];
 *   rows with t[r] == ignore_index get loss 0 and are not counted. *total = sum_r loss[r]
 *   (in double, row order) and *count = rows not ignored, for the binding's reduction
 *   ('mean' = total / count, NaN when every row is ignored, as in PyTorch).
 * bwd: glogits[r, :] = scale * g[r] * (softmax(logits[r]) - onehot(t[r])), 0 on ignored
 *   rows; g is the upstream gradient per row (N elements) or one value for every row.
 * logits, glogits (N, V) f32; targets (N) i64, 0-based; loss, lse (N) f32, lse saved by fwd.
 * A target outside [0, V) that is not ignore_index fails with SN_EINVAL naming its row. */
sn_status sn_cross_entropy_fwd(sn_ctx *ctx, sn_tensor *loss, sn_tensor *lse, double *total,
                               int64_t *count, const sn_tensor *logits, const sn_tensor *targets,
                               int64_t ignore_index);
sn_status sn_cross_entropy_bwd(sn_ctx *ctx, sn_tensor *glogits, const sn_tensor *lse,
                               const sn_tensor *g, const sn_tensor *logits,
                               const sn_tensor *targets, int64_t ignore_index, float scale);

/* ---- embedding (kernels/embedding.c) -------------------------------------------------
 * fwd: out[i, :] = weight[ids[i], :]      bwd: gweight[v, :] = sum_{i: ids[i] = v} gy[i, :]
 * weight, gweight (V, D) f32; ids i64 of any shape (n elements), 0-based; out, gy (n, D).
 * Every id is checked before anything is read: an id outside [0, V) fails with SN_EINVAL
 * naming the value, its flat index and V. bwd sums each row's contributions in the order
 * of the ids (a counting sort, then one writer per vocabulary row: no atomics). */
sn_status sn_embedding_fwd(sn_ctx *ctx, sn_tensor *out, const sn_tensor *weight, const sn_tensor *ids);
sn_status sn_embedding_bwd(sn_ctx *ctx, sn_tensor *gweight, const sn_tensor *gy, const sn_tensor *ids);

/* ---- activation gradients (kernels/activation.c) -------------------------------------
 * gx = gy * f'(x) for the forward ops of sn_unary:
 *   SN_GELU (exact erf form)  f' = Phi(x) + x * phi(x)          `in` is x
 *   SN_SILU                   f' = s * (1 + x * (1 - s)), s = sigmoid(x)   `in` is x
 *   SN_SOFTPLUS               f' = sigmoid(x)                   `in` is x
 *   SN_TANH                   f' = 1 - y^2                      `in` is y = tanh(x)
 *   SN_SIGMOID                f' = y * (1 - y)                  `in` is y = sigmoid(x)
 * gx, gy, in: f32, same numel; other ops fail with SN_EINVAL. */
sn_status sn_activation_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *gy, const sn_tensor *in,
                            sn_unop op);

/* ---- dropout (kernels/dropout.c) -----------------------------------------------------
 * Element i is kept when the uniform u_i = (sn_rng_word(seed, offset + i) >> 40) * 2^-24
 * is >= p, and then scaled by 1/(1-p): y = keep ? x / (1-p) : 0,  gx = keep ? gy / (1-p) : 0.
 * No mask is stored: bwd regenerates it from the same (seed, offset), so callers save those
 * (the binding takes them from ctx->seed / ctx->rng_offset and advances the offset by numel).
 * x, y, gy, gx f32, same numel; 0 <= p < 1. */
sn_status sn_dropout_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, float p, uint64_t seed,
                         uint64_t offset);
sn_status sn_dropout_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *gy, float p, uint64_t seed,
                         uint64_t offset);
/* ---- optimizer steps (kernels/optim.c), in place over one parameter tensor -----------
 * AdamW, exactly PyTorch's torch.optim.AdamW (amsgrad off), with t = step >= 1:
 *   p  = p * (1 - lr * weight_decay)                      decoupled weight decay
 *   m  = m + (1 - beta1) * (g - m)                        exp_avg.lerp_(g, 1 - beta1)
 *   v  = v * beta2 + (1 - beta2) * g * g
 *   p  = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * SGD, as torch.optim.SGD (buf NULL when momentum is 0; `first` on the first step):
 *   g  = g + weight_decay * p;   buf = first ? g : momentum * buf + (1 - dampening) * g
 *   g  = nesterov ? g + momentum * buf : buf;   p = p - lr * g
 * Scalar factors are formed in double, elements updated in f32. All tensors f32 contiguous
 * with the same numel; grad is only read. */
sn_status sn_adamw_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *exp_avg, sn_tensor *exp_avg_sq,
                        const sn_tensor *grad, double lr, double beta1, double beta2, double eps,
                        double weight_decay, int64_t step);
sn_status sn_sgd_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *buf, const sn_tensor *grad, double lr,
                      double momentum, double dampening, double weight_decay, bool nesterov,
                      bool first);
/* Row-sparse (lazy) variants for a gradient that touches a few rows of p viewed as (R, D),
 * R = p's first dim: rows i64 (n) in [0, R), values f32 (n, D); duplicate rows are summed
 * (in the order given) before the update. Only the touched rows of p and of its state
 * change; untouched rows, including their moments, stay bit-identical. row_step i64 (R)
 * counts the steps each row has taken: a touched row's count goes up by one and its own
 * count is the t of the bias correction, so the update of a row equals the dense kernel's
 * on that row with step = its count (weight decay, too, reaches touched rows only). SGD
 * with momentum uses row_step (== 0 before a row's first step) to start its buffer; buf
 * and row_step are NULL when momentum is 0. */
sn_status sn_adamw_rows_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *exp_avg, sn_tensor *exp_avg_sq,
                             sn_tensor *row_step, const sn_tensor *rows, const sn_tensor *values, double lr,
                             double beta1, double beta2, double eps, double weight_decay);
sn_status sn_sgd_rows_step(sn_ctx *ctx, sn_tensor *p, sn_tensor *buf, sn_tensor *row_step,
                           const sn_tensor *rows, const sn_tensor *values, double lr, double momentum,
                           double dampening, double weight_decay, bool nesterov);
/* Row-sparse gradients (rows i64 (n), values f32 (n, D)) of an (R, D) table.
 * count: *unique = the number of distinct rows (each checked to be in [0, R)).
 * coalesce: out_rows (unique) ascending, out_values (unique, D) the sums of each row's
 *   values in input order (deterministic for any thread count).
 * scatter_add: dense (R, D) += the rows (duplicates added in order). */
sn_status sn_rows_count(sn_ctx *ctx, int64_t *unique, const sn_tensor *rows, int64_t R);
sn_status sn_rows_coalesce(sn_ctx *ctx, sn_tensor *out_rows, sn_tensor *out_values, const sn_tensor *rows,
                           const sn_tensor *values, int64_t R);
sn_status sn_rows_scatter_add(sn_ctx *ctx, sn_tensor *dense, const sn_tensor *rows, const sn_tensor *values);

/* ---- rotary position embedding (kernels/rope.c) ----------------------------------------
 * GPT-NeoX / HF-LLaMA "rotate_half" pairing: element i of each head pairs with i + Dh/2.
 * For x (B,T,H,Dh), Dh even, half = Dh/2, p = offset + t, theta_i = base^(-2i/Dh):
 *   fwd: y[i]        = x[i] cos(p theta_i) - x[i+half] sin(p theta_i)
 *        y[i+half]   = x[i] sin(p theta_i) + x[i+half] cos(p theta_i)      i = 0 .. half-1
 *   bwd: gx = the inverse rotation (angle -p theta_i) of gy (rotations are orthogonal).
 * x, gy, y, gx: f32 (B,T,H,Dh) with a contiguous last dim (other strides free: a narrow
 * view of a fused QKV output is read, or its gradient rotated, in place; y may be x and gx
 * may be gy), y and gx of x's and gy's shape. offset >= 0 (the
 * position of t = 0, for decoding), base > 0 (10000 in GPT-NeoX and LLaMA). */
sn_status sn_rope_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, int64_t offset, double base);
sn_status sn_rope_bwd(sn_ctx *ctx, sn_tensor *gx, const sn_tensor *gy, int64_t offset, double base);

/* ---- softmax attention (kernels/attention.c), FlashAttention-style ---------------------
 * q (B,T,H,Dh), k and v (B,S,Hkv,Dh), H % Hkv == 0: query head h reads kv head h/(H/Hkv).
 *   allowed(i,j): with p_i = i + S - T (bottom-right alignment, as flash-attn >= 2.1),
 *     causal:      j <= p_i
 *     window w>=0: p_i - w <= j <= p_i   (w + 1 keys including self; implies causal)
 *   o_i = sum_j softmax_j(scale * q_i.k_j over allowed j) v_j,  lse_i = log sum exp(...)
 *   A row with no allowed key (S < T under causal) gets o = 0 and lse = +inf.
 * fwd: o (B,T,H,Dh) and lse (B,H,T) contiguous f32; lse is saved for bwd. Never forms T x S:
 *   tiles of 64 queries x 64 keys with an online softmax, threads over (b, h, q tile). Its
 *   workspace holds a packed copy of k and v (head dim padded to a multiple of 16).
 * bwd: dq, dk, dv (shapes of q, k, v; views with unit stride on the last dim, such as the
 *   three parts of one packed q|k|v gradient, not overlapping) overwritten; recomputes P = exp(S - lse)
 *   per tile, dS = P (dP - D) with D_i = rowsum(dO_i * o_i). One task per (b, kv head)
 *   owns dk, dv and the dq of its query heads (with fewer such tasks than threads: key
 *   tiles own dk, dv, then query tiles own dq, in the same summation order), so there are
 *   no atomics and results are bitwise the same for any thread count (so are fwd's). The
 *   workspace holds k packed twice and v once, plus 2 x S x Dh floats per thread.
 * q, k, v, dout and o may be strided views with unit stride on the last dim.
 * Varlen (cu_seqlens_q/k both set): i64 (nseq + 1) prefix sums from 0; B must be 1 and
 *   sequence s is q rows cu_q[s] .. cu_q[s+1]-1 against k rows cu_k[s] .. cu_k[s+1]-1,
 *   with masks and alignment per sequence; lse is (1,H,total_q). Lengths may be 0.
 * step (decode): k_cache, v_cache (B,Hkv,Tmax,Dh) contiguous; q (B,1,H,Dh), k_new, v_new
 *   (B,1,Hkv,Dh). Writes k_new, v_new at cache position pos (0 <= pos < Tmax), then o
 *   (B,1,H,Dh) = attention of q over positions max(0, pos - window) .. pos. O(pos) work;
 *   the only scratch is ctx's workspace (no allocation once it is large enough). */
typedef struct sn_attention_opts {
  bool causal;
  int64_t window; /* < 0: unbounded */
  float scale;    /* multiplies q.k; the binding defaults it to 1/sqrt(Dh) */
  const sn_tensor *cu_seqlens_q, *cu_seqlens_k; /* NULL, or both i64 (nseq + 1) */
} sn_attention_opts;

sn_status sn_attention_fwd(sn_ctx *ctx, sn_tensor *o, sn_tensor *lse, const sn_tensor *q,
                           const sn_tensor *k, const sn_tensor *v, const sn_attention_opts *opts);
sn_status sn_attention_bwd(sn_ctx *ctx, sn_tensor *dq, sn_tensor *dk, sn_tensor *dv,
                           const sn_tensor *dout, const sn_tensor *q, const sn_tensor *k,
                           const sn_tensor *v, const sn_tensor *o, const sn_tensor *lse,
                           const sn_attention_opts *opts);
/* opts: window and scale (causal is implied; cu_seqlens must be NULL). */
sn_status sn_attention_step(sn_ctx *ctx, sn_tensor *o, sn_tensor *k_cache, sn_tensor *v_cache,
                            const sn_tensor *q, const sn_tensor *k_new, const sn_tensor *v_new,
                            int64_t pos, const sn_attention_opts *opts);

/* ---- selective scan, Mamba's S6 (kernels/selective_scan.c) -----------------------------
 * u, delta (B,T,D); A (D,N); Bm, Cm (B,T,N) (one group); per channel d, state n:
 *   dt[t,d]  = softplus(delta[t,d] + delta_bias[d]) if delta_softplus (x for x > 20),
 *              else delta[t,d] + delta_bias[d]                    (delta_bias: 0 if NULL)
 *   h[t,d,n] = exp(dt[t,d] A[d,n]) h[t-1,d,n] + dt[t,d] Bm[t,n] u[t,d]   (h[-1] = h0 or 0)
 *   y[t,d]   = sum_n Cm[t,n] h[t,d,n] + Dskip[d] u[t,d]                   (Dskip: 0 if NULL)
 *   out[t,d] = y[t,d] silu(z[t,d])   if z, else y[t,d]
 * Inputs: f32, any strides with a unit-stride last dim (views of one projection are read in
 * place). Vectorized over channels, 16 per tile (one AVX-512 vector, two AVX2 ones),
 * threaded over (batch, slices of 256 channels); the (B,T,D,N) state history is never
 * stored. exp is a polynomial (relative error within 2.1e-7); softplus is x past 20.
 * fwd: out (B,T,D) contiguous; final_state (B,D,N) or NULL; chunk_states (B,nchunks,D,N),
 *   nchunks = ceil(T / SN_SCAN_CHUNK), the state entering each chunk of SN_SCAN_CHUNK steps
 *   (chunk 0: h0), saved for bwd, or NULL (inference).
 * bwd: recomputes each chunk's states from chunk_states (contiguous, as fwd made it), then
 *   sweeps back in time. du, ddelta (B,T,D), dA (D,N), dBm, dCm (B,T,N) contiguous,
 *   overwritten; dDskip, ddelta_bias (D), dz (B,T,D), dh0 (B,D,N) overwritten when non-NULL
 *   (each needs its input: Dskip, delta_bias, z, initial_state). dfinal (B,D,N), the
 *   gradient of the final state, or NULL. dout and dfinal may be views like the inputs.
 *   Reductions over batch and channels run in a fixed order: the same bits for any thread
 *   count. Besides per-thread buffers the workspace holds 2 B ceil(D/256) T N floats of
 *   per-slice sums for dBm and dCm.
 * step (decode): one token. u, delta, z (B,D); Bm, Cm (B,N); state (B,D,N) contiguous,
 *   updated in place (h[t-1] -> h[t]); out (B,D). opts->initial_state is ignored. */
#define SN_SCAN_CHUNK 32
typedef struct sn_scan_opts {
  const sn_tensor *Dskip;         /* (D) or NULL */
  const sn_tensor *z;             /* (B,T,D) (step: (B,D)) or NULL */
  const sn_tensor *delta_bias;    /* (D) or NULL */
  bool delta_softplus;
  const sn_tensor *initial_state; /* (B,D,N) or NULL */
} sn_scan_opts;

sn_status sn_selective_scan_fwd(sn_ctx *ctx, sn_tensor *out, sn_tensor *final_state, sn_tensor *chunk_states,
                                const sn_tensor *u, const sn_tensor *delta, const sn_tensor *A,
                                const sn_tensor *Bm, const sn_tensor *Cm, const sn_scan_opts *opts);
sn_status sn_selective_scan_bwd(sn_ctx *ctx, sn_tensor *du, sn_tensor *ddelta, sn_tensor *dA, sn_tensor *dBm,
                                sn_tensor *dCm, sn_tensor *dDskip, sn_tensor *ddelta_bias, sn_tensor *dz,
                                sn_tensor *dh0, const sn_tensor *dout, const sn_tensor *dfinal,
                                const sn_tensor *chunk_states, const sn_tensor *u, const sn_tensor *delta,
                                const sn_tensor *A, const sn_tensor *Bm, const sn_tensor *Cm,
                                const sn_scan_opts *opts);
sn_status sn_selective_scan_step(sn_ctx *ctx, sn_tensor *out, sn_tensor *state, const sn_tensor *u,
                                 const sn_tensor *delta, const sn_tensor *A, const sn_tensor *Bm,
                                 const sn_tensor *Cm, const sn_scan_opts *opts);

/* ---- causal depthwise conv1d (kernels/conv1d.c) -----------------------------------------
 * x (B,T,C), w (C,W) (PyTorch's depthwise Conv1d weight (C,1,W) without the middle dim),
 * bias (C) or NULL, 1 <= W <= 8, all f32:
 *   pre[t,c] = bias[c] + sum_k w[c,k] x[t-W+1+k, c]   (x before t = 0 is 0)
 *   y[t,c]   = silu(pre[t,c]) if silu, else pre[t,c]
 * (PyTorch's Conv1d(groups = C, padding = W-1) cut to the first T outputs.) x and dy may be
 * views with a unit-stride last dim, w and bias any views; y (B,T,C) contiguous. Vectorized
 * over channels, threaded over (batch, chunk of 128 steps).
 * bwd: dpre = dy silu'(pre) (pre recomputed), dx[t] = sum_k w[:,k] dpre[t+W-1-k],
 *   dw[c,k] = sum dpre[t,c] x[t-W+1+k,c], dbias = sum dpre. dx (B,T,C), dw (C,W)
 *   contiguous, overwritten; dbias (C) overwritten when non-NULL (bias may be NULL). dw and
 *   dbias reduce over batch and time in a fixed order: the same bits for any thread count.
 * step (decode): x (B,C) one token; state (B,W-1,C) contiguous, the last W-1 inputs oldest
 *   first (zeros at the start), shifted in place to take x; y (B,C) contiguous. Decoding from
 *   zeros gives the forward's bits. */
sn_status sn_causal_conv1d_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, const sn_tensor *w,
                               const sn_tensor *bias, bool silu);
sn_status sn_causal_conv1d_bwd(sn_ctx *ctx, sn_tensor *dx, sn_tensor *dw, sn_tensor *dbias, const sn_tensor *dy,
                               const sn_tensor *x, const sn_tensor *w, const sn_tensor *bias, bool silu);
sn_status sn_causal_conv1d_step(sn_ctx *ctx, sn_tensor *y, sn_tensor *state, const sn_tensor *x,
                                const sn_tensor *w, const sn_tensor *bias, bool silu);

/* ---- linear attention family: gated linear attention and the delta rule -------------------
 * (kernels/linear_attention.c, kernels/delta_rule.c). Per (batch b, head h), with the
 * state S (Dk, Dv), S_{-1} = initial_state[b,h] or 0, and s = scale (the bindings default
 * it to 1/sqrt(Dk)):
 *   gated_linear_attention: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,    o_t = S_t^T (s q_t)
 *     g: NULL (no decay: plain linear attention), (B,T,H) one log gate per head (RetNet,
 *     Mamba-2) or (B,T,H,Dk) one per key dim (GLA). Every g must be <= 0 (a log forget
 *     gate: the chunked form relies on decays <= 1); a positive one fails with SN_EINVAL
 *     naming the first (fwd and bwd find it as they read g, and leave their outputs
 *     unspecified). -inf (a full reset) is exact; a NaN g propagates through its head.
 *   delta_rule: S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,         o_t = S_t^T (s q_t)
 *     beta (B,T,H), any real (in (0, 2) with L2-normalized keys the update is a contraction).
 * q, k (B,T,H,Dk), v (B,T,H,Dv), g, beta: f32 views with a unit-stride last dim (a narrow
 * of one fused projection is read in place). Training runs the chunked form over chunks of
 * SN_LINATTN_CHUNK steps (intra-chunk products, inter-chunk state passing; the delta rule
 * through the WY representation), threaded over (b, h).
 * fwd: o (B,T,H,Dv) contiguous; final_state (B,H,Dk,Dv) or NULL; chunk_states
 *   (B,H,nchunks,Dk,Dv), nchunks = ceil(T / SN_LINATTN_CHUNK), the state entering each
 *   chunk (chunk 0: the initial state), saved for bwd, or NULL.
 * bwd: dq, dk (B,T,H,Dk), dv (B,T,H,Dv) contiguous, overwritten; dg (g's shape) / dbeta
 *   (B,T,H) overwritten (dg only when g is given, and NULL skips it); dh0 (B,H,Dk,Dv)
 *   overwritten when non-NULL (needs initial_state). dout (B,T,H,Dv) and dfinal (B,H,Dk,Dv)
 *   (or NULL) may be views like the inputs; chunk_states as fwd made it.
 * step (decode): one token; q, k (B,1,H,Dk), v (B,1,H,Dv), g (B,1,H[,Dk]) / beta (B,1,H);
 *   state (B,H,Dk,Dv) contiguous, updated in place; o (B,1,H,Dv) contiguous. O(H Dk Dv) per
 *   sequence, equal to the chunked forward token by token. opts->initial_state is ignored. */
#define SN_LINATTN_CHUNK 64
typedef struct sn_linattn_opts {
  float scale;
  const sn_tensor *initial_state; /* (B,H,Dk,Dv) or NULL */
} sn_linattn_opts;

sn_status sn_gated_linear_attention_fwd(sn_ctx *ctx, sn_tensor *o, sn_tensor *final_state, sn_tensor *chunk_states,
                                        const sn_tensor *q, const sn_tensor *k, const sn_tensor *v,
                                        const sn_tensor *g, const sn_linattn_opts *opts);
sn_status sn_gated_linear_attention_bwd(sn_ctx *ctx, sn_tensor *dq, sn_tensor *dk, sn_tensor *dv, sn_tensor *dg,
                                        sn_tensor *dh0, const sn_tensor *dout, const sn_tensor *dfinal,
                                        const sn_tensor *chunk_states, const sn_tensor *q, const sn_tensor *k,
                                        const sn_tensor *v, const sn_tensor *g, const sn_linattn_opts *opts);
sn_status sn_gated_linear_attention_step(sn_ctx *ctx, sn_tensor *o, sn_tensor *state, const sn_tensor *q,
                                         const sn_tensor *k, const sn_tensor *v, const sn_tensor *g,
                                         const sn_linattn_opts *opts);

sn_status sn_delta_rule_fwd(sn_ctx *ctx, sn_tensor *o, sn_tensor *final_state, sn_tensor *chunk_states,
                            const sn_tensor *q, const sn_tensor *k, const sn_tensor *v, const sn_tensor *beta,
                            const sn_linattn_opts *opts);
sn_status sn_delta_rule_bwd(sn_ctx *ctx, sn_tensor *dq, sn_tensor *dk, sn_tensor *dv, sn_tensor *dbeta,
                            sn_tensor *dh0, const sn_tensor *dout, const sn_tensor *dfinal,
                            const sn_tensor *chunk_states, const sn_tensor *q, const sn_tensor *k,
                            const sn_tensor *v, const sn_tensor *beta, const sn_linattn_opts *opts);
sn_status sn_delta_rule_step(sn_ctx *ctx, sn_tensor *o, sn_tensor *state, const sn_tensor *q, const sn_tensor *k,
                             const sn_tensor *v, const sn_tensor *beta, const sn_linattn_opts *opts);

/* ---- hashing memory layer, MemoryFormer (kernels/hash_memory.c) --------------------------
 * A linear map x (d_in) -> y (d_out) replaced by K = d_in / bits lookup tables of 2^bits rows,
 * indexed by the signs of K chunks of bits consecutive features. x (..., d_in) contiguous
 * f32, N = numel / d_in tokens; 1 <= bits <= SN_HASH_MAX_BITS, d_in % bits == 0; tables
 * (K * 2^bits, d_out) contiguous, table k = rows k 2^bits .. (k+1) 2^bits - 1; bias (d_out)
 * or NULL. With z = x[n, k bits .. k bits + bits - 1]:
 *   h[n,k] = sum_i [z_i >= 0] 2^i        (LSB first: feature k bits + i is bit i; sgn(0) = +1)
 *   P = prod_i sigmoid(2 |z_i|)          (the selected corner's softmax probability)
 *   p[n,k] = S P, S = sum_i |z_i|        (SN_HASH_SCORE_CODE, the released code's form)
 *          = P                           (SN_HASH_SCORE_PAPER)
 *   y[n,:] = bias + sum_k p[n,k] tables[k 2^bits + h[n,k], :]
 * fwd: y (..., d_out) contiguous, overwritten; codes i64 (N, K) and p f32 (N, K) (any
 *   leading shape with N rows), the saved state of bwd, or NULL (not kept). packed: NULL,
 *   or the tables' copy made by pack, read instead of tables (faster: fwd otherwise copies
 *   each slice of the tables it reads into a panel first). It must be current: nothing
 *   here can tell that tables changed after it was made.
 * pack: packed f32 (ceil(d_out / SN_HASH_PANEL), K * 2^bits, SN_HASH_PANEL) contiguous:
 *   packed[j, r, c] = tables[r, j SN_HASH_PANEL + c] (0 past d_out), the panels fwd reads;
 *   or packed i64 (ceil(d_out / SN_HASH_PANEL_BF16), K * 2^bits, SN_HASH_PANEL_BF16 / 4):
 *   panels of SN_HASH_PANEL_BF16 columns in bf16 (each value within half a bf16 step: half
 *   the columns rounded to nearest even, half on a grid offset by their word's other half),
 *   half the bytes for inference, fwd summing in f32. Its words are an internal layout
 *   (simd/hash_memory.h), not numbers.
 * bwd: dp[n,k] = <tables[row], dy[n]>; dx[n, k bits + i] = dp dp[n,k]/dz_i
 *   (paper: 2 sgn(z_i) P sigmoid(-2|z_i|); code: sgn(z_i) P (1 + 2 S sigmoid(-2|z_i|)));
 *   dtables = sum_n p[n,k] dy[n] at the rows read (dense: every other row zero);
 *   dbias = sum_n dy[n]. dx (x's rows), dtables (tables' shape), dbias (d_out): contiguous,
 *   overwritten, each NULL to skip. codes are checked (each in [0, 2^bits)). Every output
 *   is summed in a fixed order: the same bits for any thread count. */
#define SN_HASH_MAX_BITS 16
#define SN_HASH_PANEL 64
#define SN_HASH_PANEL_BF16 32
typedef enum { SN_HASH_SCORE_CODE = 0, SN_HASH_SCORE_PAPER = 1 } sn_hash_score;
sn_status sn_hash_linear_pack(sn_ctx *ctx, sn_tensor *packed, const sn_tensor *tables);
sn_status sn_hash_linear_fwd(sn_ctx *ctx, sn_tensor *y, sn_tensor *codes, sn_tensor *p, const sn_tensor *x,
                             const sn_tensor *tables, const sn_tensor *packed, const sn_tensor *bias, int bits,
                             sn_hash_score score);
sn_status sn_hash_linear_bwd(sn_ctx *ctx, sn_tensor *dx, sn_tensor *dtables, sn_tensor *dbias, const sn_tensor *dy,
                             const sn_tensor *codes, const sn_tensor *p, const sn_tensor *x, const sn_tensor *tables,
                             int bits, sn_hash_score score);

/* ---- binary-code attention, EcoFormer (kernels/binary_attention.c) -----------------------
 * Causal, per (batch b, head h), with features h_t in {-1,+1}^bits (1 <= bits <= 64) given
 * as codes (bit n of code_t set <=> h_t[n] = +1, LSB first, one i64 per (b, t, h)):
 *   out_i = sum_{j<=i} w_ij v_j / sum_{j<=i} w_ij,  w_ij = h_i.h_j + c = 2 bits + 1 - 2
 *   popcount(code_i ^ code_j), c = bits + 1 (every weight >= 1).
 * The state is S = S0 + sum_j [h_j; 1][v_j; 1]^T, (B, H, bits+1, Dv+1): rows n < bits hold
 * M = sum h v^T with z = sum h in the last column, row bits holds sum v and the token count;
 * token i reads [num_i, den_i] = [h_i; c]^T S_i. Linear time: chunks of 64 tokens,
 * similarities within a chunk by popcount, earlier chunks through S (adds and subtracts
 * only). Same bits for any thread count and SIMD level.
 * pack: codes (B,T,H) i64 contiguous from y (B,T,H,bits) f32 (unit-stride last dim): bit n
 *   = y[..., n] >= 0 (NaN packs as -1).
 * fwd: codes (B,T,H) i64 contiguous, every code < 2^bits (checked); v (B,T,H,Dv) f32 with a
 *   unit-stride last dim; initial_state (or NULL: zeros) any strides. out (B,T,H,Dv), den
 *   (B,T,H) (the denominators, saved for bwd; may be NULL) and final_state (or NULL)
 *   contiguous, overwritten.
 * bwd: dv (B,T,H,Dv), dh (B,T,H,bits) (the gradient of the +-1 features; with y given,
 *   times 1[|y| < 1], the straight-through estimator of sign) and dinitial (or NULL)
 *   contiguous, overwritten; out, den as fwd made them; dout (B,T,H,Dv) a view like v;
 *   dfinal (the gradient of the final state, or NULL) and initial_state any strides.
 * step (decode): codes (B,1,H), v (B,1,H,Dv), state (B,H,bits+1,Dv+1) contiguous, updated
 *   in place; out (B,1,H,Dv). O(bits Dv) per head, equal to fwd token by token (to
 *   rounding: the state itself has fwd's bits). */
sn_status sn_binary_attention_pack(sn_ctx *ctx, sn_tensor *codes, const sn_tensor *y);
sn_status sn_binary_attention_fwd(sn_ctx *ctx, sn_tensor *out, sn_tensor *den, sn_tensor *final_state,
                                  const sn_tensor *codes, const sn_tensor *v, const sn_tensor *initial_state,
                                  int bits);
sn_status sn_binary_attention_bwd(sn_ctx *ctx, sn_tensor *dv, sn_tensor *dh, sn_tensor *dinitial,
                                  const sn_tensor *out, const sn_tensor *den, const sn_tensor *dout,
                                  const sn_tensor *dfinal, const sn_tensor *codes, const sn_tensor *v,
                                  const sn_tensor *initial_state, const sn_tensor *y, int bits);
sn_status sn_binary_attention_step(sn_ctx *ctx, sn_tensor *out, sn_tensor *state, const sn_tensor *codes,
                                   const sn_tensor *v, int bits);
/* The table in use: "avx512" (VPOPCNTDQ), "avx2" or "scalar". */
const char *sn_binary_attention_impl(void);

/* ---- block-sparse matmul (kernels/block_sparse.c, kernels/sparse24.c, kernels/sparse_int8.c)
 * A sparse weight W (M outputs x K inputs), used as Linear's y = x W^T + b.
 * BSR with one block shape (ro x ri) per matrix, M % ro == 0, K % ri == 0:
 *   browptr i64 (M/ro + 1): block-row r holds blocks [browptr[r], browptr[r+1]),
 *                           browptr[0] = 0, non-decreasing, browptr[M/ro] = nnzb;
 *   bcol    i64 (nnzb):     input-block index jb (inputs ri*jb .. ri*jb+ri-1), strictly
 *                           ascending within a block-row;
 *   values  f32 (nnzb, ro, ri): each block row-major.
 * Every kernel checks the index in O(M/ro + nnzb) and fails with SN_EINVAL naming the first
 * bad entry: a corrupt checkpoint can never make it read or write out of bounds. nnzb may
 * be 0 (y = bias). x, dy: f32 (N, K) / (N, M) views with a unit-stride last dim; the outputs
 * contiguous and overwritten.
 * mask: m (M/ro, K/ri) f32, 1 for the round((1 - sparsity) * nblocks) blocks of largest
 *   L2 norm (ties: the lower row-major index wins), 0 elsewhere; 0 <= sparsity <= 1.
 * pack: values/browptr/bcol allocated by the caller for nnzb = the mask's count of nonzeros;
 *   fills them from w (M,K) at the mask's nonzero blocks. to_dense: the inverse (zeros
 *   elsewhere).
 * matmul: y (N,M) = x W^T + bias (bias (M) or NULL).
 * matmul_bwd: dx (N,K) = dy W; dvalues (nnzb,ro,ri) = (dy^T x) at the stored blocks only
 *   (SDDMM, dy^T x never formed); dbias (M) = sum of dy over rows. Any output may be NULL
 *   (skipped); reductions in a fixed order: the same bits for any thread count. */
sn_status sn_bsr_mask(sn_ctx *ctx, sn_tensor *mask, const sn_tensor *w, int64_t ro, int64_t ri, double sparsity);
sn_status sn_bsr_pack(sn_ctx *ctx, sn_tensor *values, sn_tensor *browptr, sn_tensor *bcol, const sn_tensor *w,
                      const sn_tensor *mask);
sn_status sn_bsr_to_dense(sn_ctx *ctx, sn_tensor *w, const sn_tensor *values, const sn_tensor *browptr,
                          const sn_tensor *bcol);
sn_status sn_bsr_matmul(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, const sn_tensor *values,
                        const sn_tensor *browptr, const sn_tensor *bcol, const sn_tensor *bias);
sn_status sn_bsr_matmul_bwd(sn_ctx *ctx, sn_tensor *dx, sn_tensor *dvalues, sn_tensor *dbias, const sn_tensor *dy,
                            const sn_tensor *x, const sn_tensor *values, const sn_tensor *browptr,
                            const sn_tensor *bcol);

/* 2:4 semi-structured: in every group of 4 consecutive inputs of a row at most 2 weights
 * are nonzero. K % 4 == 0. values f32 (M, K/2): the group's two kept weights, lower
 * position first; idx i64 (M, ceil(K/64)): 16 groups per word, group g's 4-bit code at
 * bits 4(g%16) .. 4(g%16)+3 of word g/16, p0 | p1 << 2 with p0 < p1 (positions in 0..3);
 * unused bits zero. from_dense keeps the 2 largest |w| of each group (ties: lower
 * position); kernels check every code (p0 < p1) and fail with SN_EINVAL on a bad one.
 * matmul: y (N,M) = x W^T + bias, inference only (training uses a dense product with the
 * mask applied). */
sn_status sn_sparse24_from_dense(sn_ctx *ctx, sn_tensor *values, sn_tensor *idx, const sn_tensor *w);
sn_status sn_sparse24_to_dense(sn_ctx *ctx, sn_tensor *w, const sn_tensor *values, const sn_tensor *idx);
sn_status sn_sparse24_matmul(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, const sn_tensor *values,
                             const sn_tensor *idx, const sn_tensor *bias);

/* int8 inference on a BSR weight: sn_bsr_i8_new quantizes it (symmetric s8, one scale per
 * output row) into an opaque, immutable layout for the kernel (AVX-512 VNNI where the CPU
 * has it, portable code otherwise); K is the dense input count. sn_bsr_i8_matmul quantizes
 * each row of x on the fly (one scale per token) and computes y (N,M) = x W^T + bias in
 * int32, rescaled to f32. The object is not counted in ctx->live_bytes; _bytes tells its
 * size. */
typedef struct sn_bsr_i8 sn_bsr_i8;
sn_status sn_bsr_i8_new(sn_ctx *ctx, sn_bsr_i8 **out, const sn_tensor *values, const sn_tensor *browptr,
                        const sn_tensor *bcol, int64_t K);
void sn_bsr_i8_free(sn_bsr_i8 *w);
int64_t sn_bsr_i8_bytes(const sn_bsr_i8 *w);
sn_status sn_bsr_i8_matmul(sn_ctx *ctx, sn_tensor *y, const sn_tensor *x, const sn_bsr_i8 *w,
                           const sn_tensor *bias);

/* ---- product-key memory (kernels/product_key.c; Lample et al. 2019) -------------------
 * Scores over n sub-keys per half: s1, s2 f32 (R, n) (rows = token x head). With k <= n:
 * topk: idx i64 (R, k), val f32 (R, k) = the k largest of each row of scores, descending;
 *   ties: the lower index first. NaN ranks below every number (which NaNs: unspecified).
 * select: the k best of the n^2 sums s1[a] + s2[b] (slot a*n + b): slot i64 (R, k) and
 *   score f32 (R, k), descending, ties by the lower slot. Only the top-k of each half and
 *   the pairs of ranks (i, j) with (i+1)(j+1) <= k can be in it (each has that many better
 *   pairs), so ~k ln k sums are formed, not k^2; exact when the sums round without ties.
 * select_bwd: ds1, ds2 (R, n) overwritten: zero except ds1[r, slot/n] += dscore,
 *   ds2[r, slot%n] += dscore (the selection is treated as constant).
 * gather_fwd: y (N, D) = sum_j w[n, j] * values[idx[n, j]] (values (S, D), idx i64 and w
 *   f32 (N, J); J = heads * k, heads summed): EmbeddingBag with per-sample weights.
 * gather_rows: *unique = the number of distinct slots in idx (checked in [0, S)).
 * gather_bwd: dw (N, J) = <values[idx[n, j]], dy[n]> (may be NULL); the value gradient as
 *   rows: rows i64 (unique) ascending and drows (unique, D) = sum over the (n, j) that read
 *   the row of w[n, j] dy[n], summed in (n, j) order by the one thread that owns the row
 *   (the same bits for any thread count). rows/drows may be NULL (dw only).
 * Every kernel checks idx/slot ranges and fails with SN_EINVAL naming the first bad entry. */
sn_status sn_product_key_topk(sn_ctx *ctx, sn_tensor *idx, sn_tensor *val, const sn_tensor *scores, int64_t k);
sn_status sn_product_key_select(sn_ctx *ctx, sn_tensor *slot, sn_tensor *score, const sn_tensor *s1,
                                const sn_tensor *s2, int64_t k);
sn_status sn_product_key_select_bwd(sn_ctx *ctx, sn_tensor *ds1, sn_tensor *ds2, const sn_tensor *dscore,
                                    const sn_tensor *slot);
sn_status sn_product_key_gather_fwd(sn_ctx *ctx, sn_tensor *y, const sn_tensor *values, const sn_tensor *idx,
                                    const sn_tensor *w);
sn_status sn_product_key_gather_rows(sn_ctx *ctx, int64_t *unique, const sn_tensor *idx, int64_t S);
sn_status sn_product_key_gather_bwd(sn_ctx *ctx, sn_tensor *dw, sn_tensor *rows, sn_tensor *drows,
                                    const sn_tensor *dy, const sn_tensor *values, const sn_tensor *idx,
                                    const sn_tensor *w);

#endif /* SEQNN_H */
