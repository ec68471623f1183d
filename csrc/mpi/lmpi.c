/* lmpi.c -- seqnn.mpi: the MPI collectives behind sn.dist (lua/seqnn/dist.lua), built as
 * its own Lua C module, build/seqnn/mpi.so, with mpicc. It links MPI only: core.so never
 * depends on MPI, and mpi.so never links core.so.
 *
 * Reading tensors without linking the core: a tensor is a full userdata whose metatable is
 * the registry's "seqnn.Tensor" (luaL_newmetatable in lseqnn.c), holding an sn_tensor
 * (seqnn.h). We include seqnn.h for the struct and compute the data pointer ourselves
 * (storage->data + offset * itemsize), as sn_data does. Only contiguous tensors are
 * accepted. layout_check(t) lets dist.lua verify, once at init, that this struct matches
 * the loaded core.so (a tensor of known shape and values read back), so a stale mpi.so
 * fails with a message instead of reading garbage.
 *
 *   mpi.init()                     -> rank, size   (MPI_Init_thread, FUNNELED; idempotent)
 *   mpi.initialized(), mpi.finalized()
 *   mpi.rank(), mpi.size(), mpi.barrier(), mpi.finalize(), mpi.abort(code, msg)
 *   mpi.allreduce(fn, tensors, op, bucket_bytes)   op "sum" | "mean"; in place
 *   mpi.broadcast(fn, tensors, root)
 *   mpi.layout_check(t)            t = seqnn tensor {1, 2, 3} (f32), from dist.lua
 *   mpi.library()                  MPI_Get_library_version's first line
 *
 * Errors: the communicator uses MPI_ERRORS_RETURN, so a failed call raises a Lua error
 * naming the function and MPI's message instead of aborting. Every collective first agrees
 * on the tensors (count, dtype, elements) across ranks with one tiny MPI_MAX allreduce,
 * so ranks that pass different lists all raise the same error rather than hang or truncate.
 *
 * A rank whose Lua state closes without finalize() (an uncaught error, os.exit(n, true))
 * calls MPI_Abort from the module's __gc when the world has more than one rank: the other
 * ranks may be blocked in a collective waiting for it, and only an abort frees them. */
#include <lauxlib.h>
#include <lua.h>
#include <mpi.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seqnn.h"

#define TENSOR_MT "seqnn.Tensor"
#define MAX_CHUNK ((int64_t)1 << 30) /* elements per MPI call: counts are ints */

typedef struct {
  int inited, finalized, rank, size;
  MPI_Comm comm;      /* a dup of MPI_COMM_WORLD with MPI_ERRORS_RETURN */
  void *bucket;       /* packing buffer, grown on demand, kept between calls */
  size_t bucket_cap;
} state;

static state S; /* one MPI per process: the state is process-wide, like MPI itself */

static int fail(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static int fail(lua_State *L, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  lua_pushstring(L, msg);
  lua_error(L);
  __builtin_unreachable();
}

static void check_mpi(lua_State *L, int rc, const char *fn, const char *what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "error code %d", rc);
  fail(L, "%s: %s failed on rank %d of %d: %s", fn, what, S.rank, S.size, text);
}

static void need_init(lua_State *L, const char *fn) {
  if (S.finalized) fail(L, "%s: seqnn.dist.finalize() was called; MPI cannot be used again in this process", fn);
  if (!S.inited) fail(L, "%s: call seqnn.dist.init() first", fn);
}

static size_t itemsize(sn_dtype dt) { return dt == SN_I64 ? 8 : 4; }

static int64_t numel_of(const sn_tensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->ndim; d++) n *= t->size[d];
  return n;
}

static int contiguous(const sn_tensor *t) {
  int64_t expect = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    if (t->size[d] != 1 && t->stride[d] != expect) return 0;
    expect *= t->size[d];
  }
  return 1;
}

static void shape_str(const sn_tensor *t, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = 0;
  if (t->ndim == 0) snprintf(buf, cap, "scalar");
  for (int d = 0; d < t->ndim && n < cap; d++)
    n += (size_t)snprintf(buf + n, cap - n, d ? "x%lld" : "%lld", (long long)t->size[d]);
}

typedef struct {
  void *data;
  int64_t n;
  sn_dtype dt;
} item;

/* The address of element `elems` of an array of `isz`-byte elements. */
static void *at(void *base, int64_t elems, size_t isz) { return (char *)base + elems * (int64_t)isz; }

/* The tensor at Lua index idx (a list element or the single tensor), checked. */
static item check_item(lua_State *L, int idx, const char *fn, const char *arg, int pos) {
  char name[64];
  if (pos > 0) snprintf(name, sizeof name, "%s[%d]", arg, pos);
  else snprintf(name, sizeof name, "%s", arg);
  sn_tensor *t = (sn_tensor *)luaL_testudata(L, idx, TENSOR_MT);
  if (!t) fail(L, "%s: %s must be a seqnn.Tensor, got %s", fn, name, luaL_typename(L, idx));
  if (!t->storage) fail(L, "%s: %s: tensor was freed", fn, name);
  if (t->dtype != SN_F32 && t->dtype != SN_I64) fail(L, "%s: %s has an unknown dtype", fn, name);
  if (!contiguous(t)) {
    char shp[160];
    shape_str(t, shp, sizeof shp);
    fail(L, "%s: %s is not contiguous (%s view): reduce a contiguous tensor, e.g. t:contiguous(), and copy back",
         fn, name, shp);
  }
  item it = {at(t->storage->data, t->offset, itemsize(t->dtype)), numel_of(t), t->dtype};
  return it;
}

/* Arg idx: one tensor or a list of them. The array is a userdata pushed on the stack, so
 * the collector frees it whether the call returns or raises. */
static item *check_list(lua_State *L, int idx, const char *fn, int *count) {
  int n;
  item *items;
  if (lua_type(L, idx) == LUA_TTABLE) {
    lua_Integer len = luaL_len(L, idx);
    if (len < 0 || len > INT_MAX / 2) fail(L, "%s: tensors: bad list length", fn);
    n = (int)len;
    items = (item *)lua_newuserdatauv(L, sizeof(item) * (size_t)(n ? n : 1), 0);
    for (int i = 1; i <= n; i++) {
      lua_geti(L, idx, i);
      items[i - 1] = check_item(L, -1, fn, "tensors", i);
      lua_pop(L, 1);
    }
  } else if (luaL_testudata(L, idx, TENSOR_MT)) {
    n = 1;
    items = (item *)lua_newuserdatauv(L, sizeof(item), 0);
    items[0] = check_item(L, idx, fn, "tensor", 0);
  } else {
    fail(L, "%s: tensors must be a seqnn.Tensor or a list of them, got %s", fn, luaL_typename(L, idx));
  }
  *count = n;
  return items;
}

/* Overlapping tensors (the same parameter twice, or views of one storage) would be reduced
 * twice: refuse them. Sorting by address finds any overlap in O(n log n). */
typedef struct {
  uintptr_t lo, hi;
  int pos;
} span;

static int span_cmp(const void *a, const void *b) {
  const span *x = a, *y = b;
  return x->lo < y->lo ? -1 : x->lo > y->lo ? 1 : x->pos - y->pos;
}

static void check_overlap(lua_State *L, const item *items, int n, const char *fn) {
  if (n < 2) return;
  span *s = (span *)lua_newuserdatauv(L, sizeof(span) * (size_t)n, 0);
  int k = 0;
  for (int i = 0; i < n; i++) {
    if (items[i].n == 0) continue;
    s[k].lo = (uintptr_t)items[i].data;
    s[k].hi = s[k].lo + (uintptr_t)items[i].n * itemsize(items[i].dt);
    s[k].pos = i + 1;
    k++;
  }
  qsort(s, (size_t)k, sizeof(span), span_cmp);
  for (int i = 1; i < k; i++)
    if (s[i].lo < s[i - 1].hi) {
      int a = s[i - 1].pos < s[i].pos ? s[i - 1].pos : s[i].pos, b = s[i - 1].pos ^ s[i].pos ^ a;
      fail(L, "%s: tensors[%d] and tensors[%d] share memory: each tensor must appear once", fn, a, b);
    }
  lua_pop(L, 1);
}

/* Every rank must pass the same list: agree on (count, f32 elements, i64 elements, a hash
 * of the sizes) with MPI_MAX over (v, -v), so each rank sees max and min and all of them
 * raise together when any differs. */
static void check_agree(lua_State *L, const item *items, int n, const char *fn, int64_t extra) {
  int64_t f32 = 0, i64 = 0;
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < n; i++) {
    if (items[i].dt == SN_F32) f32 += items[i].n; else i64 += items[i].n;
    h = (h ^ (uint64_t)items[i].n ^ ((uint64_t)items[i].dt << 62)) * 1099511628211ull;
  }
  int64_t v[5] = {n, f32, i64, (int64_t)(h >> 2), extra}, buf[10];
  for (int i = 0; i < 5; i++) buf[i] = v[i], buf[5 + i] = -v[i];
  check_mpi(L, MPI_Allreduce(MPI_IN_PLACE, buf, 10, MPI_INT64_T, MPI_MAX, S.comm), fn, "MPI_Allreduce (agreement)");
  for (int i = 0; i < 5; i++)
    if (buf[i] != v[i] || -buf[5 + i] != v[i]) {
      if (i == 4)
        fail(L, "%s: ranks disagree on the arguments (root or op): rank %d passed %lld, others between %lld and %lld",
             fn, S.rank, (long long)v[4], (long long)-buf[9], (long long)buf[4]);
      fail(L, "%s: ranks disagree on the tensors: rank %d passed %d tensors of %lld f32 + %lld i64 elements; "
              "across ranks the count is %lld..%lld, f32 elements %lld..%lld (every rank must pass the same shapes "
              "in the same order)",
           fn, S.rank, n, (long long)f32, (long long)i64, (long long)-buf[5], (long long)buf[0],
           (long long)-buf[6], (long long)buf[1]);
    }
}

static int grow_bucket(lua_State *L, size_t bytes, const char *fn) {
  if (S.bucket_cap >= bytes) return 1;
  void *p = realloc(S.bucket, bytes);
  if (!p) fail(L, "%s: out of memory for a %.1f MiB packing bucket", fn, (double)bytes / 1048576.0);
  S.bucket = p, S.bucket_cap = bytes;
  return 1;
}

static MPI_Datatype mpi_type(sn_dtype dt) { return dt == SN_I64 ? MPI_INT64_T : MPI_FLOAT; }

/* What a collective does with a tensor of one dtype: alone (at least a bucket's worth, in
 * place, no copy), or with the small ones packed into S.bucket. */
typedef struct collective {
  const char *fn;
  sn_dtype dt;
  int64_t cap;  /* elements per bucket */
  int mean;     /* allreduce: scale by 1/size */
  int root;     /* broadcast: the root rank */
  void (*whole)(lua_State *L, const struct collective *c, const item *it);
  void (*bucket)(lua_State *L, const struct collective *c, const item *items, int first, int last, int64_t used);
} collective;

static int packed(const collective *c, const item *it) { return it->dt == c->dt && it->n > 0 && it->n < c->cap; }

/* The packed items of [first, last) into S.bucket, in list order. */
static void pack(const collective *c, const item *items, int first, int last) {
  size_t isz = itemsize(c->dt);
  int64_t off = 0;
  for (int j = first; j < last; j++)
    if (packed(c, &items[j])) {
      memcpy(at(S.bucket, off, isz), items[j].data, (size_t)items[j].n * isz);
      off += items[j].n;
    }
}

/* S.bucket back into the packed items of [first, last), times 1/size when c->mean. */
static void unpack(const collective *c, const item *items, int first, int last) {
  size_t isz = itemsize(c->dt);
  float inv = 1.0f / (float)S.size;
  int64_t off = 0;
  for (int j = first; j < last; j++) {
    if (!packed(c, &items[j])) continue;
    if (c->mean) {
      const float *src = at(S.bucket, off, isz);
      float *dst = items[j].data;
      for (int64_t e = 0; e < items[j].n; e++) dst[e] = src[e] * inv;
    } else {
      memcpy(items[j].data, at(S.bucket, off, isz), (size_t)items[j].n * isz);
    }
    off += items[j].n;
  }
}

/* Every item of c->dt, in list order: whole() for one of at least cap elements; the smaller
 * ones gathered into buckets of at most cap elements, bucket() once per full bucket and
 * once at the end. */
static void each_bucket(lua_State *L, const collective *c, const item *items, int n) {
  int first = 0; /* first item of the current bucket */
  int64_t used = 0;
  for (int i = 0; i <= n; i++) {
    int small = i < n && packed(c, &items[i]);
    if (i < n && items[i].dt == c->dt && items[i].n >= c->cap) c->whole(L, c, &items[i]);
    /* Flush when the next small tensor does not fit, or at the end of the list. */
    if ((i == n || (small && used + items[i].n > c->cap)) && used > 0) {
      grow_bucket(L, (size_t)used * itemsize(c->dt), c->fn);
      c->bucket(L, c, items, first, i, used);
      used = 0;
    }
    if (used == 0) first = i;
    if (small) used += items[i].n;
  }
}

/* Runs c over the f32 tensors, then the i64 ones, buckets of bucket_bytes. */
static void run_collective(lua_State *L, collective *c, const item *items, int n, lua_Integer bucket_bytes) {
  for (int pass = 0; pass < 2; pass++) {
    c->dt = pass ? SN_I64 : SN_F32;
    c->cap = (int64_t)bucket_bytes / (int64_t)itemsize(c->dt);
    if (c->cap > MAX_CHUNK) c->cap = MAX_CHUNK;
    each_bucket(L, c, items, n);
  }
}

static void allreduce_whole(lua_State *L, const collective *c, const item *it) {
  for (int64_t off = 0; off < it->n; off += MAX_CHUNK) {
    int64_t k = it->n - off < MAX_CHUNK ? it->n - off : MAX_CHUNK;
    check_mpi(L, MPI_Allreduce(MPI_IN_PLACE, at(it->data, off, itemsize(c->dt)), (int)k, mpi_type(c->dt), MPI_SUM,
                               S.comm), c->fn, "MPI_Allreduce");
  }
  if (c->mean) {
    float *x = it->data, inv = 1.0f / (float)S.size;
    for (int64_t e = 0; e < it->n; e++) x[e] *= inv;
  }
}

static void allreduce_bucket(lua_State *L, const collective *c, const item *items, int first, int last, int64_t used) {
  pack(c, items, first, last);
  check_mpi(L, MPI_Allreduce(MPI_IN_PLACE, S.bucket, (int)used, mpi_type(c->dt), MPI_SUM, S.comm), c->fn,
            "MPI_Allreduce");
  unpack(c, items, first, last);
}

/* mpi.allreduce(fn, tensors, op, bucket_bytes): tensors of at least bucket_bytes are reduced
 * in place by themselves (no copy); smaller ones are packed, in list order and by dtype,
 * into buckets of bucket_bytes, one MPI_Allreduce per bucket, then copied back (scaled by
 * 1/size for "mean" in the same pass). */
static int l_allreduce(lua_State *L) {
  lua_settop(L, 4); /* check_list pushes its array above the arguments */
  const char *fn = luaL_checkstring(L, 1);
  int n;
  item *items = check_list(L, 2, fn, &n);
  const char *op = luaL_optstring(L, 3, "sum");
  int mean = strcmp(op, "mean") == 0;
  if (!mean && strcmp(op, "sum") != 0) fail(L, "%s: op must be \"sum\" or \"mean\", got \"%s\"", fn, op);
  lua_Integer bucket_bytes = luaL_optinteger(L, 4, 25 << 20);
  if (bucket_bytes < 64) fail(L, "%s: bucket_bytes must be at least 64, got %lld", fn, (long long)bucket_bytes);
  for (int i = 0; i < n; i++)
    if (mean && items[i].dt != SN_F32)
      fail(L, "%s: tensors[%d] is i64: op \"mean\" needs f32 tensors (use \"sum\")", fn, i + 1);
  check_overlap(L, items, n, fn);
  need_init(L, fn);
  check_agree(L, items, n, fn, mean);
  if (S.size == 1) return 0; /* sum and mean over one rank are the identity */
  collective c = {.fn = fn, .mean = mean, .whole = allreduce_whole, .bucket = allreduce_bucket};
  run_collective(L, &c, items, n, bucket_bytes);
  return 0;
}

static void broadcast_whole(lua_State *L, const collective *c, const item *it) {
  for (int64_t off = 0; off < it->n; off += MAX_CHUNK) {
    int64_t k = it->n - off < MAX_CHUNK ? it->n - off : MAX_CHUNK;
    check_mpi(L, MPI_Bcast(at(it->data, off, itemsize(c->dt)), (int)k, mpi_type(c->dt), c->root, S.comm), c->fn,
              "MPI_Bcast");
  }
}

static void broadcast_bucket(lua_State *L, const collective *c, const item *items, int first, int last, int64_t used) {
  if (S.rank == c->root) pack(c, items, first, last);
  check_mpi(L, MPI_Bcast(S.bucket, (int)used, mpi_type(c->dt), c->root, S.comm), c->fn, "MPI_Bcast");
  if (S.rank != c->root) unpack(c, items, first, last);
}

/* mpi.broadcast(fn, tensors, root): root's values into every rank's tensors, in place.
 * Buckets as for allreduce (MPI_Bcast is as cheap per byte packed or not; packing makes
 * many small tensors a few calls). */
static int l_broadcast(lua_State *L) {
  lua_settop(L, 4); /* check_list pushes its array above the arguments */
  const char *fn = luaL_checkstring(L, 1);
  int n;
  item *items = check_list(L, 2, fn, &n);
  lua_Integer root = luaL_optinteger(L, 3, 0);
  lua_Integer bucket_bytes = luaL_optinteger(L, 4, 25 << 20);
  if (bucket_bytes < 64) fail(L, "%s: bucket_bytes must be at least 64, got %lld", fn, (long long)bucket_bytes);
  check_overlap(L, items, n, fn);
  need_init(L, fn);
  if (root < 0 || root >= S.size)
    fail(L, "%s: root must be a rank in 0..%d, got %lld", fn, S.size - 1, (long long)root);
  check_agree(L, items, n, fn, root);
  if (S.size == 1) return 0;
  collective c = {.fn = fn, .root = (int)root, .whole = broadcast_whole, .bucket = broadcast_bucket};
  run_collective(L, &c, items, n, bucket_bytes);
  return 0;
}

static int l_init(lua_State *L) {
  const char *fn = "seqnn.dist.init";
  if (S.finalized) fail(L, "%s: seqnn.dist.finalize() was called; MPI cannot be initialized again in this process", fn);
  if (!S.inited) {
    int already = 0, provided = 0;
    MPI_Initialized(&already);
    if (!already) {
      /* OpenMP threads never call MPI: only the main thread does. */
      int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
      if (rc != MPI_SUCCESS) fail(L, "%s: MPI_Init_thread failed (error %d): is this run under mpirun?", fn, rc);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    check_mpi(L, MPI_Comm_dup(MPI_COMM_WORLD, &S.comm), fn, "MPI_Comm_dup");
    MPI_Comm_set_errhandler(S.comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(S.comm, &S.rank);
    MPI_Comm_size(S.comm, &S.size);
    S.inited = 1;
  }
  lua_pushinteger(L, S.rank);
  lua_pushinteger(L, S.size);
  return 2;
}

static int l_initialized(lua_State *L) { lua_pushboolean(L, S.inited && !S.finalized); return 1; }
static int l_finalized(lua_State *L) { lua_pushboolean(L, S.finalized); return 1; }

static int l_rank(lua_State *L) {
  need_init(L, "seqnn.dist.rank");
  lua_pushinteger(L, S.rank);
  return 1;
}

static int l_size(lua_State *L) {
  need_init(L, "seqnn.dist.world_size");
  lua_pushinteger(L, S.size);
  return 1;
}

static int l_barrier(lua_State *L) {
  need_init(L, "seqnn.dist.barrier");
  check_mpi(L, MPI_Barrier(S.comm), "seqnn.dist.barrier", "MPI_Barrier");
  return 0;
}

static void release(void) {
  free(S.bucket);
  S.bucket = NULL, S.bucket_cap = 0;
}

static int l_finalize(lua_State *L) {
  if (!S.inited || S.finalized) return 0;
  MPI_Comm_free(&S.comm);
  S.finalized = 1;
  release();
  check_mpi(L, MPI_Finalize(), "seqnn.dist.finalize", "MPI_Finalize");
  return 0;
}

static int l_abort(lua_State *L) {
  int code = (int)luaL_optinteger(L, 1, 1);
  const char *msg = luaL_optstring(L, 2, NULL);
  if (msg) fprintf(stderr, "%s\n", msg), fflush(stderr);
  if (S.inited && !S.finalized) MPI_Abort(MPI_COMM_WORLD, code);
  exit(code);
}

static int l_library(lua_State *L) {
  char v[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(v, &len);
  v[strcspn(v, "\n,")] = 0;
  lua_pushstring(L, v);
  return 1;
}

/* layout_check(t): t must be the core's tensor {1, 2, 3} (f32). */
static int l_layout_check(lua_State *L) {
  sn_tensor *t = (sn_tensor *)luaL_testudata(L, 1, TENSOR_MT);
  const float *x = t && t->storage ? at(t->storage->data, t->offset, 4) : NULL;
  int ok = t && t->storage && t->dtype == SN_F32 && t->ndim == 1 && t->size[0] == 3 && t->stride[0] == 1 &&
           x[0] == 1.0f && x[1] == 2.0f && x[2] == 3.0f;
  lua_pushboolean(L, ok);
  return 1;
}

/* The module's finalizer, when its Lua state closes. */
static int l_gc(lua_State *L) {
  if (!S.inited || S.finalized) return 0;
  if (S.size > 1) {
    fprintf(stderr, "seqnn.dist: rank %d of %d ended without seqnn.dist.finalize() (an error above, or a script "
                    "that does not call it): aborting the job so that the other ranks do not wait for it\n",
            S.rank, S.size);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Comm_free(&S.comm);
  S.finalized = 1;
  release();
  MPI_Finalize(); /* alone in the world: nobody can be waiting for us */
  return 0;
}

static const luaL_Reg fns[] = {
    {"init", l_init}, {"initialized", l_initialized}, {"finalized", l_finalized}, {"rank", l_rank},
    {"size", l_size}, {"barrier", l_barrier}, {"allreduce", l_allreduce}, {"broadcast", l_broadcast},
    {"finalize", l_finalize}, {"abort", l_abort}, {"library", l_library}, {"layout_check", l_layout_check},
    {NULL, NULL}};

int luaopen_seqnn_mpi(lua_State *L) {
  luaL_newlib(L, fns);
  /* A sentinel in the registry: its __gc runs when the state closes (after the script). */
  lua_newuserdatauv(L, 1, 0);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, "seqnn.mpi.sentinel");
  return 1;
}
