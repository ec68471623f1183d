/* tensor.c -- storage (refcounted, 64-byte aligned, counted on sn_ctx), tensor views, and
 * the strided copy that contiguous/clone/dtype conversion are built on. */
#define _DEFAULT_SOURCE /* madvise's MADV_HUGEPAGE */
#include <omp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "seqnn.h"
#include "strided.h"

size_t sn_dtype_size(sn_dtype dt) { return dt == SN_I64 ? 8 : 4; }

const char *sn_dtype_name(sn_dtype dt) { return dt == SN_I64 ? "i64" : "f32"; }

sn_status sn_check_shape(sn_ctx *ctx, const char *fn, sn_dtype dt, int ndim, const int64_t *size,
                         int64_t *numel) {
  if (ndim < 0 || ndim > SN_MAX_DIMS)
    return sn_fail(ctx, SN_EINVAL, "%s: %d dims requested, at most %d are supported", fn, ndim,
                   SN_MAX_DIMS);
  int64_t limit = SN_MAX_BYTES / (int64_t)sn_dtype_size(dt), n = 1;
  bool overflow = false;
  for (int d = 0; d < ndim; d++) {
    if (size[d] < 0)
      return sn_fail(ctx, SN_EINVAL, "%s: size %lld of dim %d is negative", fn, (long long)size[d], d + 1);
    if (size[d] != 0 && n > limit / size[d]) overflow = true;
    else n *= size[d];
  }
  /* A zero anywhere makes the product 0, however large the other sizes. */
  for (int d = 0; d < ndim; d++)
    if (size[d] == 0) overflow = false, n = 0;
  if (overflow) {
    char buf[256];
    int at = 0;
    for (int d = 0; d < ndim && at < (int)sizeof buf - 24; d++)
      at += snprintf(buf + at, sizeof buf - at, d ? "x%lld" : "%lld", (long long)size[d]);
    return sn_fail(ctx, SN_EINVAL, "%s: %s elements overflow (max 2^%d %s elements)", fn, buf,
                   dt == SN_I64 ? 59 : 60, sn_dtype_name(dt));
  }
  if (numel) *numel = n;
  return SN_OK;
}

static void set_contiguous_strides(sn_tensor *t) {
  int64_t s = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    t->stride[d] = s;
    s *= t->size[d] > 0 ? t->size[d] : 1;
  }
}

/* A released storage of at least CACHE_MIN bytes leaves its block here for the next
 * request of the same size (up to CACHE_SLOTS blocks, CACHE_BYTES in all; to make room,
 * the blocks kept longest go back to malloc, so sizes no longer asked for, such as a
 * model's one-off set-up temporaries, do not hold the cache). A training step asks for
 * the same activation sizes every time, and a fresh large malloc is an mmap whose pages
 * fault on first touch: ~1000 faults per GPT step without it, and a 16 MiB output that
 * faulted in on every call took ~10% of a memory layer's forward. Off under
 * AddressSanitizer, so that a use after free stays visible. */
#define CACHE_MIN ((size_t)1 << 20)
#define HUGE_PAGE ((size_t)2 << 20)
#define HUGE_MIN ((size_t)4 << 20)
#define CACHE_SLOTS 64
#define CACHE_BYTES ((size_t)256 << 20)
#if defined(__SANITIZE_ADDRESS__)
#define CACHE_ON 0
#else
#define CACHE_ON 1
#endif

static struct {
  void *block;
  size_t bytes;
  uint64_t stamp; /* when it was kept: the smallest goes first */
} cache[CACHE_SLOTS];
static size_t cache_bytes;
static uint64_t cache_clock;
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

/* A kept block of exactly `bytes`, or a new one. */
static void *block_alloc(size_t bytes) {
  if (CACHE_ON && bytes >= CACHE_MIN) {
    void *found = NULL;
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < CACHE_SLOTS && !found; i++)
      if (cache[i].block && cache[i].bytes == bytes) {
        found = cache[i].block;
        cache[i].block = NULL;
        cache_bytes -= bytes;
      }
    pthread_mutex_unlock(&cache_lock);
    if (found) return found;
  }
  void *p = malloc(bytes);
  /* Huge pages for big tensors: a kernel walking one channel tile down the rows of a
   * (batch, T, D) tensor touches a new 4 KiB page at every row, and TLB misses showed in its
   * profile (2-6% of the selective scan). Only the whole 2 MiB pages inside the block. */
  if (p && bytes >= HUGE_MIN) {
    uintptr_t a = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    uintptr_t e = ((uintptr_t)p + bytes) & ~(uintptr_t)(HUGE_PAGE - 1);
    if (e > a) madvise((void *)a, e - a, MADV_HUGEPAGE); /* advice only: failure changes nothing */
  }
  return p;
}

/* The slot of the block kept longest, or -1 when the cache is empty. */
static int oldest_slot(void) {
  int at = -1;
  for (int i = 0; i < CACHE_SLOTS; i++)
    if (cache[i].block && (at < 0 || cache[i].stamp < cache[at].stamp)) at = i;
  return at;
}

static void block_free(void *block, size_t bytes) {
  if (CACHE_ON && bytes >= CACHE_MIN && bytes <= CACHE_BYTES) {
    void *evicted[CACHE_SLOTS];
    int nev = 0, slot = -1;
    pthread_mutex_lock(&cache_lock);
    for (;;) {
      for (int i = 0; i < CACHE_SLOTS && slot < 0; i++)
        if (!cache[i].block) slot = i;
      if (slot >= 0 && cache_bytes + bytes <= CACHE_BYTES) break;
      int old = oldest_slot();
      evicted[nev++] = cache[old].block;
      cache_bytes -= cache[old].bytes;
      cache[old].block = NULL;
      if (slot < 0) slot = old;
    }
    cache[slot].block = block, cache[slot].bytes = bytes, cache[slot].stamp = ++cache_clock;
    cache_bytes += bytes;
    pthread_mutex_unlock(&cache_lock);
    for (int i = 0; i < nev; i++) free(evicted[i]); /* outside the lock: munmap can take a while */
    return;
  }
  free(block);
}

_Static_assert(sizeof(sn_storage) <= SN_ALIGN, "the storage header must fit before its data");

/* The storage header and its data share one aligned block (data at +SN_ALIGN): one
 * allocation per tensor keeps tiny ops cheap. */
static sn_storage *storage_new(sn_ctx *ctx, int64_t nbytes) {
  /* Round up so vector loops may read whole 64-byte lines. */
  int64_t rounded = (nbytes + SN_ALIGN - 1) / SN_ALIGN * SN_ALIGN;
  if (ctx->limit_bytes > 0 && ctx->live_bytes + rounded > ctx->limit_bytes) {
    sn_fail(ctx, SN_ENOMEM,
            "seqnn: out of memory: requested %.1f MiB; live %.1f MiB, limit %.1f MiB",
            nbytes / 1048576.0, ctx->live_bytes / 1048576.0, ctx->limit_bytes / 1048576.0);
    return NULL;
  }
  /* malloc plus alignment by hand, not posix_memalign: glibc serves small mallocs from
   * per-thread caches, while aligned requests split and coalesce chunks, which made a loop
   * of tiny tensors slow down as the heap fragmented. */
  void *block = block_alloc((size_t)(2 * SN_ALIGN + rounded));
  if (!block) {
    sn_fail(ctx, SN_ENOMEM, "seqnn: out of memory: requested %.1f MiB; live %.1f MiB",
            nbytes / 1048576.0, ctx->live_bytes / 1048576.0);
    return NULL;
  }
  sn_storage *s = (sn_storage *)(((uintptr_t)block + SN_ALIGN - 1) & ~(uintptr_t)(SN_ALIGN - 1));
  *s = (sn_storage){.refcount = 1, .data = (char *)s + SN_ALIGN, .nbytes = rounded, .ctx = ctx, .block = block};
  ctx->live_bytes += rounded;
  if (ctx->live_bytes > ctx->peak_bytes) ctx->peak_bytes = ctx->live_bytes;
  return s;
}

sn_status sn_tensor_empty(sn_ctx *ctx, sn_tensor *t, sn_dtype dt, int ndim, const int64_t *size) {
  memset(t, 0, sizeof *t);
  int64_t n;
  sn_status st = sn_check_shape(ctx, "seqnn", dt, ndim, size, &n);
  if (st != SN_OK) return st;
  sn_storage *s = storage_new(ctx, n * (int64_t)sn_dtype_size(dt));
  if (!s) return SN_ENOMEM;
  t->storage = s;
  t->dtype = dt;
  t->ndim = ndim;
  for (int d = 0; d < ndim; d++) t->size[d] = size[d];
  set_contiguous_strides(t);
  return SN_OK;
}

sn_status sn_tensor_wrap(sn_ctx *ctx, sn_tensor *t, void *data, int64_t nbytes, sn_dtype dt,
                         int ndim, const int64_t *size,
                         void (*release)(void *ud, void *data, int64_t nbytes), void *ud) {
  memset(t, 0, sizeof *t);
  int64_t n;
  sn_status st = sn_check_shape(ctx, "seqnn", dt, ndim, size, &n);
  if (st != SN_OK) return st;
  if (n * (int64_t)sn_dtype_size(dt) > nbytes)
    return sn_fail(ctx, SN_EINVAL, "seqnn: %lld bytes cannot hold %lld %s elements",
                   (long long)nbytes, (long long)n, sn_dtype_name(dt));
  sn_storage *s = malloc(sizeof *s);
  if (!s) return sn_fail(ctx, SN_ENOMEM, "seqnn: out of memory");
  *s = (sn_storage){.refcount = 1, .data = data, .nbytes = nbytes, .release = release, .release_ud = ud, .block = s};
  t->storage = s;
  t->dtype = dt;
  t->ndim = ndim;
  for (int d = 0; d < ndim; d++) t->size[d] = size[d];
  set_contiguous_strides(t);
  return SN_OK;
}

void sn_tensor_release(sn_tensor *t) {
  sn_storage *s = t->storage;
  t->storage = NULL;
  if (!s || --s->refcount > 0) return;
  if (s->release) { /* wrapped: data is not ours, the block is the header alone */
    s->release(s->release_ud, s->data, s->nbytes);
    free(s->block);
    return;
  }
  if (s->ctx) s->ctx->live_bytes -= s->nbytes; /* data lives in s's block */
  block_free(s->block, (size_t)(2 * SN_ALIGN + s->nbytes));
}

void sn_tensor_share(sn_tensor *dst, const sn_tensor *src) {
  *dst = *src;
  if (dst->storage) dst->storage->refcount++;
}

int64_t sn_numel(const sn_tensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->ndim; d++) n *= t->size[d];
  return n;
}

bool sn_is_contiguous(const sn_tensor *t) {
  int64_t s = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    if (t->size[d] == 1) continue; /* any stride is fine for a size-1 dim */
    if (t->size[d] == 0) return true;
    if (t->stride[d] != s) return false;
    s *= t->size[d];
  }
  return true;
}

void *sn_data(const sn_tensor *t) {
  return (char *)t->storage->data + t->offset * (int64_t)sn_dtype_size(t->dtype);
}

char *sn_shape_str(const sn_tensor *t, char *buf, size_t n) {
  if (t->ndim == 0) {
    snprintf(buf, n, "scalar");
    return buf;
  }
  size_t at = 0;
  buf[0] = 0;
  for (int d = 0; d < t->ndim && at < n; d++)
    at += (size_t)snprintf(buf + at, n - at, d ? "x%lld" : "%lld", (long long)t->size[d]);
  return buf;
}

bool sn_same_shape(const sn_tensor *a, const sn_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int d = 0; d < a->ndim; d++)
    if (a->size[d] != b->size[d]) return false;
  return true;
}

/* ---- views ------------------------------------------------------------------------- */

static sn_status check_dim(sn_ctx *ctx, const char *fn, const sn_tensor *t, int dim, bool extra) {
  int hi = t->ndim + (extra ? 1 : 0);
  if (dim < 0 || dim >= hi) {
    char s[128];
    return sn_fail(ctx, SN_EINVAL, "%s: dim %d out of range for a tensor of %d dims (%s)", fn,
                   dim + 1, t->ndim, sn_shape_str(t, s, sizeof s));
  }
  return SN_OK;
}

sn_status sn_infer_shape(sn_ctx *ctx, const char *fn, const sn_tensor *src, int ndim, int64_t *size) {
  if (ndim < 0 || ndim > SN_MAX_DIMS)
    return sn_fail(ctx, SN_EINVAL, "%s: %d dims requested, at most %d are supported", fn, ndim, SN_MAX_DIMS);
  int infer = -1;
  int64_t known = 1, n = sn_numel(src);
  for (int d = 0; d < ndim; d++) {
    if (size[d] == -1) {
      if (infer >= 0) return sn_fail(ctx, SN_EINVAL, "%s: only one size may be -1", fn);
      infer = d;
    } else if (size[d] < 0) {
      return sn_fail(ctx, SN_EINVAL, "%s: size %lld of dim %d is negative", fn, (long long)size[d], d + 1);
    } else if (size[d] != 0 && known > INT64_MAX / size[d]) {
      return sn_fail(ctx, SN_EINVAL, "%s: the requested shape overflows", fn);
    } else {
      known *= size[d];
    }
  }
  char s[128];
  if (infer >= 0) {
    if (known == 0 || n % known != 0)
      return sn_fail(ctx, SN_EINVAL, "%s: cannot infer the -1 size: %lld elements (%s) are not a multiple of %lld",
                     fn, (long long)n, sn_shape_str(src, s, sizeof s), (long long)known);
    size[infer] = n / known;
  } else if (known != n) {
    char want[128];
    sn_tensor tmp = {.ndim = ndim};
    memcpy(tmp.size, size, sizeof(int64_t) * (size_t)ndim);
    return sn_fail(ctx, SN_EINVAL, "%s: shape %s has %lld elements but the tensor (%s) has %lld", fn,
                   sn_shape_str(&tmp, want, sizeof want), (long long)known, sn_shape_str(src, s, sizeof s),
                   (long long)n);
  }
  return SN_OK;
}

/* Computes strides for `size` over src's memory without copying, if the old dims can be
 * grouped into runs that are contiguous in memory and the new dims split those runs
 * exactly. Returns false when a copy is needed. */
static bool view_strides(const sn_tensor *src, int ndim, const int64_t *size, int64_t *stride) {
  if (sn_numel(src) == 0 || src->ndim == 0) {
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) stride[d] = s, s *= size[d] > 0 ? size[d] : 1;
    return true;
  }
  int nd = ndim - 1;
  int64_t base = src->stride[src->ndim - 1], have = 1, made = 1;
  for (int od = src->ndim - 1; od >= 0; od--) {
    have *= src->size[od];
    bool run_end = od == 0 || (src->size[od - 1] != 1 && src->stride[od - 1] != have * base);
    if (!run_end) continue;
    /* New dims take strides inside this run until they cover exactly its elements. */
    while (nd >= 0 && (made < have || size[nd] == 1)) {
      stride[nd] = made * base;
      made *= size[nd];
      nd--;
    }
    if (made != have) return false;
    if (od > 0) base = src->stride[od - 1], have = 1, made = 1;
  }
  return nd == -1;
}

bool sn_can_view(const sn_tensor *src, int ndim, const int64_t *size) {
  int64_t stride[SN_MAX_DIMS];
  return view_strides(src, ndim, size, stride);
}

sn_status sn_view(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int ndim, const int64_t *size) {
  int64_t sz[SN_MAX_DIMS], stride[SN_MAX_DIMS];
  if (ndim < 0 || ndim > SN_MAX_DIMS)
    return sn_fail(ctx, SN_EINVAL, "seqnn.view: %d dims requested, at most %d", ndim, SN_MAX_DIMS);
  memcpy(sz, size, sizeof(int64_t) * (size_t)ndim);
  sn_status st = sn_infer_shape(ctx, "seqnn.view", src, ndim, sz);
  if (st != SN_OK) return st;
  if (!view_strides(src, ndim, sz, stride)) {
    char s[128];
    return sn_fail(ctx, SN_EINVAL,
                   "seqnn.view: the tensor's strides do not allow this shape without a copy "
                   "(%s); use reshape or contiguous first", sn_shape_str(src, s, sizeof s));
  }
  sn_tensor_share(dst, src);
  dst->ndim = ndim;
  for (int d = 0; d < ndim; d++) dst->size[d] = sz[d], dst->stride[d] = stride[d];
  return SN_OK;
}

sn_status sn_transpose(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int d0, int d1) {
  sn_status st;
  if ((st = check_dim(ctx, "seqnn.transpose", src, d0, false)) != SN_OK) return st;
  if ((st = check_dim(ctx, "seqnn.transpose", src, d1, false)) != SN_OK) return st;
  sn_tensor_share(dst, src);
  int64_t t = dst->size[d0];
  dst->size[d0] = dst->size[d1], dst->size[d1] = t;
  t = dst->stride[d0];
  dst->stride[d0] = dst->stride[d1], dst->stride[d1] = t;
  return SN_OK;
}

sn_status sn_permute(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, const int *perm) {
  bool seen[SN_MAX_DIMS] = {0};
  for (int d = 0; d < src->ndim; d++) {
    if (perm[d] < 0 || perm[d] >= src->ndim || seen[perm[d]]) {
      char s[128];
      return sn_fail(ctx, SN_EINVAL, "seqnn.permute: the order is not a permutation of 1..%d (%s)",
                     src->ndim, sn_shape_str(src, s, sizeof s));
    }
    seen[perm[d]] = true;
  }
  sn_tensor_share(dst, src);
  for (int d = 0; d < src->ndim; d++) {
    dst->size[d] = src->size[perm[d]];
    dst->stride[d] = src->stride[perm[d]];
  }
  return SN_OK;
}

sn_status sn_narrow(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int dim, int64_t start,
                    int64_t len) {
  sn_status st = check_dim(ctx, "seqnn.narrow", src, dim, false);
  if (st != SN_OK) return st;
  if (start < 0 || len < 0 || start > src->size[dim] || len > src->size[dim] - start) {
    char s[128];
    return sn_fail(ctx, SN_EINVAL, "seqnn.narrow: range %lld..%lld is outside dim %d of size %lld (%s)",
                   (long long)start + 1, (long long)(start + len), dim + 1, (long long)src->size[dim],
                   sn_shape_str(src, s, sizeof s));
  }
  sn_tensor_share(dst, src);
  dst->offset += start * src->stride[dim];
  dst->size[dim] = len;
  return SN_OK;
}

sn_status sn_select(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int dim, int64_t index) {
  sn_status st = check_dim(ctx, "seqnn.select", src, dim, false);
  if (st != SN_OK) return st;
  if (index < 0 || index >= src->size[dim]) {
    char s[128];
    return sn_fail(ctx, SN_EINVAL, "seqnn.select: index %lld is out of range for dim %d of size %lld (%s)",
                   (long long)index + 1, dim + 1, (long long)src->size[dim], sn_shape_str(src, s, sizeof s));
  }
  sn_tensor_share(dst, src);
  dst->offset += index * src->stride[dim];
  for (int d = dim; d < src->ndim - 1; d++) {
    dst->size[d] = src->size[d + 1];
    dst->stride[d] = src->stride[d + 1];
  }
  dst->ndim--;
  return SN_OK;
}

sn_status sn_expand(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int ndim, const int64_t *size) {
  char s[128], w[128];
  sn_tensor want = {.ndim = ndim};
  if (ndim < src->ndim || ndim > SN_MAX_DIMS)
    return sn_fail(ctx, SN_EINVAL, "seqnn.expand: cannot expand %d dims (%s) to %d", src->ndim,
                   sn_shape_str(src, s, sizeof s), ndim);
  memcpy(want.size, size, sizeof(int64_t) * (size_t)ndim);
  int lead = ndim - src->ndim;
  int64_t nsize[SN_MAX_DIMS] = {0}, nstride[SN_MAX_DIMS] = {0};
  for (int d = 0; d < ndim; d++) {
    int64_t target = size[d];
    if (d < lead) {
      if (target < 0) goto bad;
      nsize[d] = target, nstride[d] = 0;
      continue;
    }
    int64_t have = src->size[d - lead];
    if (target == -1) target = have;
    if (target == have) nsize[d] = have, nstride[d] = src->stride[d - lead];
    else if (have == 1 && target >= 0) nsize[d] = target, nstride[d] = 0;
    else goto bad;
  }
  sn_tensor_share(dst, src);
  dst->ndim = ndim;
  memcpy(dst->size, nsize, sizeof(int64_t) * (size_t)ndim);
  memcpy(dst->stride, nstride, sizeof(int64_t) * (size_t)ndim);
  return SN_OK;
bad:
  return sn_fail(ctx, SN_EINVAL, "seqnn.expand: cannot expand %s to %s (only size-1 dims expand)",
                 sn_shape_str(src, s, sizeof s), sn_shape_str(&want, w, sizeof w));
}

sn_status sn_unsqueeze(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int dim) {
  sn_status st = check_dim(ctx, "seqnn.unsqueeze", src, dim, true);
  if (st != SN_OK) return st;
  if (src->ndim == SN_MAX_DIMS)
    return sn_fail(ctx, SN_EINVAL, "seqnn.unsqueeze: a tensor has at most %d dims", SN_MAX_DIMS);
  sn_tensor_share(dst, src);
  for (int d = src->ndim; d > dim; d--) {
    dst->size[d] = src->size[d - 1];
    dst->stride[d] = src->stride[d - 1];
  }
  dst->size[dim] = 1;
  dst->stride[dim] = dim < src->ndim ? src->stride[dim] * src->size[dim] : 1;
  dst->ndim++;
  return SN_OK;
}

sn_status sn_squeeze(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src, int dim) {
  if (dim >= 0) {
    sn_status st = check_dim(ctx, "seqnn.squeeze", src, dim, false);
    if (st != SN_OK) return st;
  }
  sn_tensor_share(dst, src);
  int nd = 0;
  for (int d = 0; d < src->ndim; d++) {
    bool drop = src->size[d] == 1 && (dim < 0 || d == dim);
    if (drop) continue;
    dst->size[nd] = src->size[d];
    dst->stride[nd] = src->stride[d];
    nd++;
  }
  dst->ndim = nd;
  return SN_OK;
}

sn_status sn_broadcast_shape(sn_ctx *ctx, const char *fn, const sn_tensor *a, const sn_tensor *b,
                             int *ndim, int64_t *size) {
  int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int d = 0; d < nd; d++) {
    int da = d - (nd - a->ndim), db = d - (nd - b->ndim);
    int64_t sa = da >= 0 ? a->size[da] : 1, sb = db >= 0 ? b->size[db] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      char s1[128], s2[128];
      return sn_fail(ctx, SN_EINVAL, "%s: shapes %s and %s do not broadcast (dim %d: %lld vs %lld)", fn,
                     sn_shape_str(a, s1, sizeof s1), sn_shape_str(b, s2, sizeof s2), d + 1,
                     (long long)sa, (long long)sb);
    }
    size[d] = sa == 1 ? sb : sa;
  }
  *ndim = nd;
  return SN_OK;
}

/* ---- copies and fills ---------------------------------------------------------------- */

/* Copies one inner run of n elements with strides (in elements), converting dtype. */
static void copy_run(void *dst, sn_dtype dt, int64_t ds, const void *src, sn_dtype st, int64_t ss,
                     int64_t n) {
  if (dt == st && ds == 1 && ss == 1) {
    memcpy(dst, src, (size_t)n * sn_dtype_size(dt));
  } else if (dt == SN_F32 && st == SN_F32) {
    float *d = dst;
    const float *s = src;
    for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
  } else if (dt == SN_I64 && st == SN_I64) {
    int64_t *d = dst;
    const int64_t *s = src;
    for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
  } else if (dt == SN_F32) {
    float *d = dst;
    const int64_t *s = src;
    for (int64_t i = 0; i < n; i++) d[i * ds] = (float)s[i * ss];
  } else {
    int64_t *d = dst;
    const float *s = src;
    for (int64_t i = 0; i < n; i++) {
      float v = s[i * ss];
      /* Out-of-range and NaN conversions are undefined in C; saturate instead. */
      d[i * ds] = v != v ? 0 : v >= 9.2233715e18f ? INT64_MAX : v <= -9.2233715e18f ? INT64_MIN : (int64_t)v;
    }
  }
}

#define TILE 32

/* Copies a transposed layout (the source is contiguous along the destination's rows, not
 * its columns) in TILE x TILE blocks, so both sides stay in cache; a plain strided walk
 * would touch a new source cache line for every element. */
static void transpose_tiles(const sn_strided2 *it, void *dbase, const void *sbase, size_t esz) {
  int last = it->ndim - 1;
  int64_t rows = it->size[last], cols = it->inner, batches = it->rows / rows;
  int64_t drs = it->stride[0][last], scs = it->inner_stride[1];
  int64_t rblocks = (rows + TILE - 1) / TILE, cblocks = (cols + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t b = 0; b < batches; b++) {
    for (int64_t rb = 0; rb < rblocks; rb++) {
      int64_t od = 0, os = 0, rest = b;
      for (int d = last - 1; d >= 0; d--) {
        int64_t i = rest % it->size[d];
        rest /= it->size[d];
        od += i * it->stride[0][d];
        os += i * it->stride[1][d];
      }
      int64_t r0 = rb * TILE, r1 = r0 + TILE < rows ? r0 + TILE : rows;
      for (int64_t cb = 0; cb < cblocks; cb++) {
        int64_t c0 = cb * TILE, c1 = c0 + TILE < cols ? c0 + TILE : cols;
        for (int64_t r = r0; r < r1; r++) {
          if (esz == 4) {
            float *d = (float *)dbase + od + r * drs;
            const float *src = (const float *)sbase + os + r;
            for (int64_t c = c0; c < c1; c++) d[c] = src[c * scs];
          } else {
            int64_t *d = (int64_t *)dbase + od + r * drs;
            const int64_t *src = (const int64_t *)sbase + os + r;
            for (int64_t c = c0; c < c1; c++) d[c] = src[c * scs];
          }
        }
      }
    }
  }
}

sn_status sn_copy(sn_ctx *ctx, sn_tensor *dst, const sn_tensor *src) {
  sn_tensor s;
  sn_status st = sn_expand(ctx, &s, src, dst->ndim, dst->size);
  if (st != SN_OK) {
    char a[128], b[128];
    return sn_fail(ctx, SN_EINVAL, "seqnn.copy: source %s does not broadcast to destination %s",
                   sn_shape_str(src, a, sizeof a), sn_shape_str(dst, b, sizeof b));
  }
  sn_strided2 it;
  sn_strided2_init(&it, dst, &s);
  size_t dsz = sn_dtype_size(dst->dtype), ssz = sn_dtype_size(src->dtype);
  char *dbase = sn_data(dst);
  const char *sbase = sn_data(&s);
  int64_t n = sn_numel(dst);
  if (dst->dtype == src->dtype && it.ndim >= 1 && it.inner_stride[0] == 1 && it.inner_stride[1] != 1 &&
      it.stride[1][it.ndim - 1] == 1 && it.inner >= TILE && it.size[it.ndim - 1] >= TILE) {
    transpose_tiles(&it, dbase, sbase, dsz);
  } else {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t task = 0; task < it.tasks; task++) {
      int64_t od, os, len = sn_strided2_task(&it, task, &od, &os);
      copy_run(dbase + od * (int64_t)dsz, dst->dtype, it.inner_stride[0], sbase + os * (int64_t)ssz,
               src->dtype, it.inner_stride[1], len);
    }
  }
  sn_tensor_release(&s);
  return SN_OK;
}

sn_status sn_fill(sn_ctx *ctx, sn_tensor *t, double value) {
  sn_strided2 it;
  sn_strided2_init(&it, t, t);
  void *base = sn_data(t);
  int64_t s = it.inner_stride[0];
#pragma omp parallel for schedule(static) if (sn_numel(t) > (1 << 16))
  for (int64_t task = 0; task < it.tasks; task++) {
    int64_t o, unused, n = sn_strided2_task(&it, task, &o, &unused);
    if (t->dtype == SN_F32) {
      float *p = (float *)base + o, v = (float)value;
      for (int64_t i = 0; i < n; i++) p[i * s] = v;
    } else {
      int64_t *p = (int64_t *)base + o, v = (int64_t)value;
      for (int64_t i = 0; i < n; i++) p[i * s] = v;
    }
  }
  return SN_OK;
}

sn_status sn_arange(sn_ctx *ctx, sn_tensor *t, double start, double step) {
  if (!sn_is_contiguous(t)) return sn_fail(ctx, SN_EINVAL, "seqnn.arange: output must be contiguous");
  int64_t n = sn_numel(t);
  if (t->dtype == SN_F32) {
    float *p = sn_f32(t);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(start + (double)i * step);
  } else {
    int64_t *p = sn_i64(t);
    for (int64_t i = 0; i < n; i++) p[i] = (int64_t)(start + (double)i * step);
  }
  return SN_OK;
}

sn_status sn_index_select(sn_ctx *ctx, sn_tensor *out, const sn_tensor *src, int dim,
                          const sn_tensor *index) {
  char s1[128], s2[128], s3[128];
  sn_status st = check_dim(ctx, "seqnn.index_select", src, dim, false);
  if (st != SN_OK) return st;
  if (index->dtype != SN_I64 || index->ndim != 1)
    return sn_fail(ctx, SN_EINVAL, "seqnn.index_select: index must be a 1-dim i64 tensor, got %s %s",
                   sn_shape_str(index, s1, sizeof s1), sn_dtype_name(index->dtype));
  int64_t k = index->size[0];
  bool shape_ok = out->ndim == src->ndim && out->dtype == src->dtype;
  for (int d = 0; shape_ok && d < src->ndim; d++)
    shape_ok = out->size[d] == (d == dim ? k : src->size[d]);
  if (!shape_ok)
    return sn_fail(ctx, SN_EINVAL, "seqnn.index_select: out has shape %s, expected src %s with dim %d = %lld",
                   sn_shape_str(out, s1, sizeof s1), sn_shape_str(src, s2, sizeof s2), dim + 1, (long long)k);
  const int64_t *idx = sn_i64(index);
  for (int64_t i = 0; i < k; i++) {
    int64_t v = idx[i * index->stride[0]];
    if (v < 0 || v >= src->size[dim])
      return sn_fail(ctx, SN_EINVAL, "seqnn.index_select: index %lld (0-based) is out of range for dim %d of size %lld (%s, index %s)",
                     (long long)v, dim + 1, (long long)src->size[dim], sn_shape_str(src, s2, sizeof s2),
                     sn_shape_str(index, s3, sizeof s3));
  }
  if (sn_is_contiguous(src) && sn_is_contiguous(out)) {
    /* (outer, size[dim], inner) blocks: each pick is one memcpy of `inner` elements. */
    int64_t outer = 1, inner = 1, n = src->size[dim];
    for (int d = 0; d < dim; d++) outer *= src->size[d];
    for (int d = dim + 1; d < src->ndim; d++) inner *= src->size[d];
    size_t row = (size_t)inner * sn_dtype_size(src->dtype);
    const char *from = sn_data(src);
    char *to = sn_data(out);
#pragma omp parallel for schedule(static) if (outer * k * inner > (1 << 16))
    for (int64_t o = 0; o < outer; o++)
      for (int64_t i = 0; i < k; i++)
        memcpy(to + (size_t)(o * k + i) * row, from + (size_t)(o * n + idx[i * index->stride[0]]) * row, row);
    return SN_OK;
  }
  for (int64_t i = 0; i < k; i++) {
    sn_tensor from, to;
    sn_select(ctx, &from, src, dim, idx[i * index->stride[0]]);
    sn_select(ctx, &to, out, dim, i);
    st = sn_copy(ctx, &to, &from);
    sn_tensor_release(&from);
    sn_tensor_release(&to);
    if (st != SN_OK) return st;
  }
  return SN_OK;
}
