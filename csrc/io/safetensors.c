/* safetensors.c -- checkpoints in the safetensors format: validation of a whole file from a
 * byte buffer, memory-mapped loading with zero-copy views, dtype conversion, and atomic
 * saving (temporary file, fsync, rename, fsync of the directory). The JSON header is read
 * and written with cJSON. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "seqnn.h"

/* Data is read and written in place, which is only right on a little-endian host. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* A larger header is not a checkpoint but a corrupt length or another file type. */
#define HEADER_LIMIT ((uint64_t)100 << 20)
/* Integers in the header come through a double: exact up to 2^53. */
#define JSON_INT_MAX 9007199254740992.0

static const struct {
  const char *name;
  int64_t size;
} st_dtypes[SN_ST_DTYPE_COUNT] = {
    [SN_ST_F32] = {"F32", 4}, [SN_ST_I64] = {"I64", 8},  [SN_ST_F64] = {"F64", 8},
    [SN_ST_F16] = {"F16", 2}, [SN_ST_BF16] = {"BF16", 2}, [SN_ST_I32] = {"I32", 4},
    [SN_ST_I16] = {"I16", 2}, [SN_ST_I8] = {"I8", 1},    [SN_ST_U32] = {"U32", 4},
    [SN_ST_U16] = {"U16", 2}, [SN_ST_U8] = {"U8", 1},    [SN_ST_BOOL] = {"BOOL", 1},
};

const char *sn_safetensors_dtype_name(sn_st_dtype dt) { return st_dtypes[dt].name; }

sn_dtype sn_safetensors_load_dtype(sn_st_dtype dt) {
  return dt == SN_ST_F32 || dt == SN_ST_F64 || dt == SN_ST_F16 || dt == SN_ST_BF16 ? SN_F32 : SN_I64;
}

/* ---- the shared mapping ------------------------------------------------------------ */

struct sn_st_mapping {
  int64_t refs; /* the sn_st_file's reference plus one per view storage */
  void *addr;
  size_t len;
};

static void mapping_drop(sn_st_mapping *m) {
  if (m && --m->refs == 0) {
    munmap(m->addr, m->len);
    free(m);
  }
}

static void view_release(void *ud, void *data, int64_t nbytes) { mapping_drop(ud); }

/* ---- parsing ----------------------------------------------------------------------- */

/* Offset of the first byte that does not start a valid UTF-8 sequence (RFC 3629: no
 * overlong forms, surrogates or code points above U+10FFFF), or len when all are valid. */
static size_t utf8_invalid_at(const unsigned char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i], n;
    uint32_t cp, min;
    if (c < 0x80) {
      i++;
      continue;
    }
    if ((c & 0xE0) == 0xC0) n = 1, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0) n = 2, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0) n = 3, cp = c & 0x07, min = 0x10000;
    else return i;
    if (len - i <= n) return i;
    for (unsigned k = 1; k <= n; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = cp << 6 | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += n + 1;
  }
  return len;
}

static const char *json_type(const cJSON *j) {
  if (cJSON_IsNumber(j)) return "a number";
  if (cJSON_IsString(j)) return "a string";
  if (cJSON_IsArray(j)) return "an array";
  if (cJSON_IsObject(j)) return "an object";
  if (cJSON_IsBool(j)) return "a boolean";
  return "null";
}

/* A JSON number that is an integer in 0 .. 2^53 (so exact). */
static bool json_uint(const cJSON *j, int64_t *v) {
  if (!cJSON_IsNumber(j)) return false;
  double d = j->valuedouble;
  if (!(d >= 0 && d <= JSON_INT_MAX) || d != floor(d)) return false;
  *v = (int64_t)d;
  return true;
}

static void entry_shape_str(const sn_st_entry *e, char *buf, size_t n) {
  sn_tensor t = {.ndim = e->ndim};
  memcpy(t.size, e->size, sizeof t.size);
  sn_shape_str(&t, buf, n);
}

static sn_status parse_entry(sn_ctx *ctx, sn_st_entry *e, const cJSON *obj, int64_t data_len) {
  const char *name = obj->string;
  if (!name[0]) return sn_fail(ctx, SN_EIO, "a tensor has an empty name");
  if (!(e->name = strdup(name))) return sn_fail(ctx, SN_ENOMEM, "out of memory reading the header");
  if (!cJSON_IsObject(obj))
    return sn_fail(ctx, SN_EIO, "tensor '%s': expected an object with dtype, shape and data_offsets, got %s",
                   name, json_type(obj));
  const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL, *c;
  cJSON_ArrayForEach(c, obj) {
    const cJSON **slot = strcmp(c->string, "dtype") == 0          ? &dtype
                         : strcmp(c->string, "shape") == 0        ? &shape
                         : strcmp(c->string, "data_offsets") == 0 ? &offsets
                                                                  : NULL;
    if (!slot) continue; /* other writers may add fields; they do not change the data */
    if (*slot) return sn_fail(ctx, SN_EIO, "tensor '%s': field '%s' appears twice", name, c->string);
    *slot = c;
  }
  if (!dtype || !shape || !offsets)
    return sn_fail(ctx, SN_EIO, "tensor '%s': missing field '%s'", name,
                   !dtype ? "dtype" : !shape ? "shape" : "data_offsets");

  if (!cJSON_IsString(dtype))
    return sn_fail(ctx, SN_EIO, "tensor '%s': dtype must be a string, got %s", name, json_type(dtype));
  int dt = 0;
  while (dt < SN_ST_DTYPE_COUNT && strcmp(dtype->valuestring, st_dtypes[dt].name) != 0) dt++;
  if (dt == SN_ST_DTYPE_COUNT)
    return sn_fail(ctx, SN_EIO,
                   "tensor '%s': dtype %s is not supported (F32, F64, F16, BF16, I64, I32, I16, I8, "
                   "U32, U16, U8 and BOOL are)", name, dtype->valuestring);
  e->dtype = (sn_st_dtype)dt;

  if (!cJSON_IsArray(shape))
    return sn_fail(ctx, SN_EIO, "tensor '%s': shape must be an array, got %s", name, json_type(shape));
  int ndim = cJSON_GetArraySize(shape);
  if (ndim > SN_MAX_DIMS)
    return sn_fail(ctx, SN_EIO, "tensor '%s': shape has %d dims, at most %d are supported", name, ndim,
                   SN_MAX_DIMS);
  e->ndim = ndim;
  int d = 0;
  cJSON_ArrayForEach(c, shape) {
    if (!json_uint(c, &e->size[d]))
      return cJSON_IsNumber(c)
                 ? sn_fail(ctx, SN_EIO, "tensor '%s': shape entry %d is %g, expected an integer in 0..2^53",
                           name, d + 1, c->valuedouble)
                 : sn_fail(ctx, SN_EIO, "tensor '%s': shape entry %d is %s, expected an integer", name,
                           d + 1, json_type(c));
    d++;
  }
  /* Bounded for 8-byte elements, so the file's bytes and the loaded tensor's bytes (i64 from
   * U8, say) both stay within SN_MAX_BYTES. */
  int64_t itemsize = st_dtypes[dt].size, numel = 1;
  bool overflow = false, empty = false;
  for (d = 0; d < ndim; d++) {
    if (e->size[d] == 0) empty = true;
    else if (numel > SN_MAX_BYTES / 8 / e->size[d]) overflow = true;
    else numel *= e->size[d];
  }
  char shp[160];
  entry_shape_str(e, shp, sizeof shp);
  if (empty) numel = 0;
  else if (overflow)
    return sn_fail(ctx, SN_EIO, "tensor '%s': shape %s overflows (more than 2^62 bytes)", name, shp);

  if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
      !json_uint(cJSON_GetArrayItem(offsets, 0), &e->begin) ||
      !json_uint(cJSON_GetArrayItem(offsets, 1), &e->end))
    return sn_fail(ctx, SN_EIO, "tensor '%s': data_offsets must be two integers [begin, end] in 0..2^53",
                   name);
  if (e->begin > e->end)
    return sn_fail(ctx, SN_EIO, "tensor '%s': data_offsets [%lld, %lld] are reversed", name,
                   (long long)e->begin, (long long)e->end);
  if (e->end > data_len)
    return sn_fail(ctx, SN_EIO, "truncated: tensor '%s' has data_offsets [%lld, %lld] but the data section has %lld bytes",
                   name, (long long)e->begin, (long long)e->end, (long long)data_len);
  if (e->end - e->begin != numel * itemsize)
    return sn_fail(ctx, SN_EIO, "tensor '%s': data_offsets [%lld, %lld] hold %lld bytes but %s %s needs %lld",
                   name, (long long)e->begin, (long long)e->end, (long long)(e->end - e->begin),
                   st_dtypes[dt].name, shp, (long long)(numel * itemsize));
  return SN_OK;
}

static sn_status parse_metadata(sn_ctx *ctx, sn_st_file *f, const cJSON *m) {
  if (!cJSON_IsObject(m))
    return sn_fail(ctx, SN_EIO, "__metadata__ must be an object of strings, got %s", json_type(m));
  int n = cJSON_GetArraySize(m);
  f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
  f->meta_vals = calloc((size_t)n + 1, sizeof(char *));
  if (!f->meta_keys || !f->meta_vals) return sn_fail(ctx, SN_ENOMEM, "out of memory reading the header");
  const cJSON *c;
  cJSON_ArrayForEach(c, m) {
    if (!cJSON_IsString(c))
      return sn_fail(ctx, SN_EIO, "__metadata__ '%s' is %s; metadata values must be strings", c->string,
                     json_type(c));
    f->meta_keys[f->nmeta] = strdup(c->string);
    f->meta_vals[f->nmeta] = strdup(c->valuestring);
    f->nmeta++; /* counted before the check, so close() frees a half-made pair */
    if (!f->meta_keys[f->nmeta - 1] || !f->meta_vals[f->nmeta - 1])
      return sn_fail(ctx, SN_ENOMEM, "out of memory reading the header");
  }
  return SN_OK;
}

static int by_name(const void *a, const void *b) {
  return strcmp((*(const sn_st_entry *const *)a)->name, (*(const sn_st_entry *const *)b)->name);
}

static int by_begin(const void *a, const void *b) {
  const sn_st_entry *x = *(const sn_st_entry *const *)a, *y = *(const sn_st_entry *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int by_string(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Duplicate names (JSON allows them; cJSON keeps both) and overlapping data. */
static sn_status check_unique(sn_ctx *ctx, const sn_st_file *f) {
  sn_st_entry **order = malloc(((size_t)f->n + 1) * sizeof *order);
  char **keys = malloc(((size_t)f->nmeta + 1) * sizeof *keys);
  sn_status st = SN_OK;
  if (!order || !keys) {
    st = sn_fail(ctx, SN_ENOMEM, "out of memory reading the header");
    goto done;
  }
  for (int64_t i = 0; i < f->n; i++) order[i] = &f->entries[i];
  qsort(order, (size_t)f->n, sizeof *order, by_name);
  for (int64_t i = 1; i < f->n && st == SN_OK; i++)
    if (strcmp(order[i - 1]->name, order[i]->name) == 0)
      st = sn_fail(ctx, SN_EIO, "tensor '%s' appears twice in the header", order[i]->name);
  if (st != SN_OK) goto done;

  qsort(order, (size_t)f->n, sizeof *order, by_begin);
  const sn_st_entry *prev = NULL;
  for (int64_t i = 0; i < f->n && st == SN_OK; i++) {
    const sn_st_entry *e = order[i];
    if (e->begin == e->end) continue; /* holds no bytes, overlaps nothing */
    if (prev && e->begin < prev->end)
      st = sn_fail(ctx, SN_EIO, "tensors '%s' [%lld, %lld] and '%s' [%lld, %lld] overlap", prev->name,
                   (long long)prev->begin, (long long)prev->end, e->name, (long long)e->begin,
                   (long long)e->end);
    if (!prev || e->end > prev->end) prev = e;
  }
  if (st != SN_OK) goto done;

  for (int64_t i = 0; i < f->nmeta; i++) keys[i] = f->meta_keys[i];
  qsort(keys, (size_t)f->nmeta, sizeof *keys, by_string);
  for (int64_t i = 1; i < f->nmeta && st == SN_OK; i++)
    if (strcmp(keys[i - 1], keys[i]) == 0)
      st = sn_fail(ctx, SN_EIO, "__metadata__ key '%s' appears twice", keys[i]);
done:
  free(order);
  free(keys);
  return st;
}

static sn_status parse_header(sn_ctx *ctx, sn_st_file *f, const cJSON *root) {
  if (!cJSON_IsObject(root))
    return sn_fail(ctx, SN_EIO, "header is %s, expected a JSON object", json_type(root));
  int count = cJSON_GetArraySize(root);
  if (!(f->entries = calloc((size_t)count + 1, sizeof *f->entries)))
    return sn_fail(ctx, SN_ENOMEM, "out of memory reading the header");
  const cJSON *c, *meta = NULL;
  cJSON_ArrayForEach(c, root) {
    if (strcmp(c->string, "__metadata__") == 0) {
      if (meta) return sn_fail(ctx, SN_EIO, "__metadata__ appears twice in the header");
      meta = c;
      continue;
    }
    sn_status st = parse_entry(ctx, &f->entries[f->n++], c, f->data_len);
    if (st != SN_OK) return st;
  }
  if (meta) {
    sn_status st = parse_metadata(ctx, f, meta);
    if (st != SN_OK) return st;
  }
  return check_unique(ctx, f);
}

sn_status sn_safetensors_parse(sn_ctx *ctx, sn_st_file *f, const uint8_t *buf, size_t len) {
  memset(f, 0, sizeof *f);
  if (len < 8)
    return sn_fail(ctx, SN_EIO, "truncated: the file has %zu bytes, less than the 8-byte header length", len);
  uint64_t n;
  memcpy(&n, buf, 8);
  if (n > HEADER_LIMIT)
    return sn_fail(ctx, SN_EIO, "header length %llu is over the 100 MiB limit (not a safetensors file?)",
                   (unsigned long long)n);
  if (n > len - 8)
    return sn_fail(ctx, SN_EIO, "truncated: header says %llu bytes but the file has %zu after the 8-byte length",
                   (unsigned long long)n, len - 8);
  const char *text = (const char *)buf + 8;
  const char *nul = memchr(text, 0, (size_t)n);
  if (nul) return sn_fail(ctx, SN_EIO, "header has a NUL byte at offset %td", nul - text);
  size_t bad = utf8_invalid_at((const unsigned char *)text, (size_t)n);
  if (bad < n) return sn_fail(ctx, SN_EIO, "header is not valid UTF-8 (byte %zu)", bad);

  /* cJSON gets its own NUL-terminated copy: it must never read past the header, whatever
   * the header holds. */
  char *copy = malloc((size_t)n + 1);
  if (!copy) return sn_fail(ctx, SN_ENOMEM, "out of memory reading a header of %llu bytes", (unsigned long long)n);
  memcpy(copy, text, (size_t)n);
  copy[n] = 0;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithOpts(copy, &end, 0);
  size_t at = end ? (size_t)(end - copy) : 0;
  if (root)
    while (at < n && (copy[at] == ' ' || copy[at] == '\t' || copy[at] == '\n' || copy[at] == '\r')) at++;
  free(copy);
  if (!root) return sn_fail(ctx, SN_EIO, "header is not valid JSON (error at byte %zu of %llu)", at, (unsigned long long)n);
  if (at < n) {
    cJSON_Delete(root);
    return sn_fail(ctx, SN_EIO, "header has extra bytes after the JSON value (at byte %zu of %llu)", at,
                   (unsigned long long)n);
  }
  f->data = buf + 8 + n;
  f->data_len = (int64_t)(len - 8 - n);
  sn_status st = parse_header(ctx, f, root);
  cJSON_Delete(root);
  if (st != SN_OK) sn_safetensors_close(f);
  return st;
}

void sn_safetensors_close(sn_st_file *f) {
  for (int64_t i = 0; i < f->n; i++) free(f->entries[i].name);
  for (int64_t i = 0; i < f->nmeta; i++) free(f->meta_keys[i]), free(f->meta_vals[i]);
  free(f->entries);
  free(f->meta_keys);
  free(f->meta_vals);
  mapping_drop(f->mapping);
  memset(f, 0, sizeof *f);
}

/* ---- loading ----------------------------------------------------------------------- */

/* Prefixes the parser's message with the function and the path. */
static sn_status with_path(sn_ctx *ctx, sn_status st, const char *fn, const char *path) {
  char reason[sizeof ctx->err];
  memcpy(reason, ctx->err, sizeof reason);
  return sn_fail(ctx, st, "%s: %s: %s", fn, path, reason);
}

sn_status sn_safetensors_load(sn_ctx *ctx, sn_st_file *f, const char *path) {
  memset(f, 0, sizeof *f);
  /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is rejected below. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return sn_fail(ctx, SN_EIO, "seqnn.load: %s: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int err = errno;
    close(fd);
    return sn_fail(ctx, SN_EIO, "seqnn.load: %s: %s", path, strerror(err));
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    return sn_fail(ctx, SN_EIO, "seqnn.load: %s: not a regular file", path);
  }
  if (sb.st_size == 0) {
    close(fd);
    sn_safetensors_parse(ctx, f, (const uint8_t *)"", 0);
    return with_path(ctx, SN_EIO, "seqnn.load", path);
  }
  /* Private and writable: a tensor viewing the file can be changed in place (copy on
   * write) without touching the file. */
  size_t len = (size_t)sb.st_size;
  void *addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int err = errno;
  close(fd);
  if (addr == MAP_FAILED) return sn_fail(ctx, SN_EIO, "seqnn.load: %s: mmap failed: %s", path, strerror(err));
  sn_st_mapping *m = malloc(sizeof *m);
  if (!m) {
    munmap(addr, len);
    return sn_fail(ctx, SN_ENOMEM, "seqnn.load: %s: out of memory", path);
  }
  *m = (sn_st_mapping){.refs = 1, .addr = addr, .len = len};
  sn_status st = sn_safetensors_parse(ctx, f, addr, len);
  if (st != SN_OK) {
    mapping_drop(m);
    return with_path(ctx, st, "seqnn.load", path);
  }
  f->mapping = m;
  return SN_OK;
}

bool sn_safetensors_can_view(const sn_st_file *f, int64_t i) {
  const sn_st_entry *e = &f->entries[i];
  if (!f->mapping || (e->dtype != SN_ST_F32 && e->dtype != SN_ST_I64)) return false;
  return (uintptr_t)(f->data + e->begin) % (uintptr_t)st_dtypes[e->dtype].size == 0;
}

sn_status sn_safetensors_view(sn_ctx *ctx, sn_tensor *t, const sn_st_file *f, int64_t i) {
  const sn_st_entry *e = &f->entries[i];
  if (!sn_safetensors_can_view(f, i))
    return sn_fail(ctx, SN_EINVAL, "seqnn.load: tensor '%s' (%s) cannot be a view of the file", e->name,
                   st_dtypes[e->dtype].name);
  /* The mapping is writable (MAP_PRIVATE), so dropping const is sound. */
  void *data = (void *)(uintptr_t)(f->data + e->begin);
  sn_status st = sn_tensor_wrap(ctx, t, data, e->end - e->begin, sn_safetensors_load_dtype(e->dtype),
                                e->ndim, e->size, view_release, f->mapping);
  if (st == SN_OK) f->mapping->refs++;
  return st;
}

/* IEEE half to float: every half value is exact in float. */
static float half_to_float(uint16_t h) {
  unsigned exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  float v = exp == 0    ? ldexpf((float)man, -24) /* zero and subnormals */
            : exp == 31 ? (man ? NAN : INFINITY)
                        : ldexpf((float)(man | 0x400), (int)exp - 25);
  return (h & 0x8000) ? -v : v;
}

/* Unaligned little-endian loads: the file gives no alignment. */
static double load_f64(const uint8_t *p) { double v; memcpy(&v, p, sizeof v); return v; }
static uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, sizeof v); return v; }
static int16_t load_i16(const uint8_t *p) { int16_t v; memcpy(&v, p, sizeof v); return v; }
static int32_t load_i32(const uint8_t *p) { int32_t v; memcpy(&v, p, sizeof v); return v; }
static uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, sizeof v); return v; }

sn_status sn_safetensors_read(sn_ctx *ctx, sn_tensor *t, const sn_st_file *f, int64_t i) {
  const sn_st_entry *e = &f->entries[i];
  sn_dtype want = sn_safetensors_load_dtype(e->dtype);
  bool ok = t->storage && t->dtype == want && t->ndim == e->ndim && sn_is_contiguous(t);
  for (int d = 0; ok && d < e->ndim; d++) ok = t->size[d] == e->size[d];
  if (!ok) {
    char have[160], shp[160];
    entry_shape_str(e, shp, sizeof shp);
    return sn_fail(ctx, SN_EINVAL, "seqnn.load: tensor '%s' needs a contiguous %s %s destination, got %s %s",
                   e->name, sn_dtype_name(want), shp, sn_dtype_name(t->dtype), sn_shape_str(t, have, sizeof have));
  }
  const uint8_t *src = f->data + e->begin;
  int64_t n = sn_numel(t);
  float *y = want == SN_F32 ? sn_f32(t) : NULL;
  int64_t *z = want == SN_I64 ? sn_i64(t) : NULL;
  switch (e->dtype) {
  case SN_ST_F32:
  case SN_ST_I64: memcpy(sn_data(t), src, (size_t)(e->end - e->begin)); break;
  case SN_ST_F64: for (int64_t k = 0; k < n; k++) y[k] = (float)load_f64(src + 8 * k); break;
  case SN_ST_F16: for (int64_t k = 0; k < n; k++) y[k] = half_to_float(load_u16(src + 2 * k)); break;
  case SN_ST_BF16:
    /* bf16 is the top half of a float32. */
    for (int64_t k = 0; k < n; k++) {
      uint32_t bits = (uint32_t)load_u16(src + 2 * k) << 16;
      memcpy(&y[k], &bits, sizeof bits);
    }
    break;
  case SN_ST_I32: for (int64_t k = 0; k < n; k++) z[k] = load_i32(src + 4 * k); break;
  case SN_ST_I16: for (int64_t k = 0; k < n; k++) z[k] = load_i16(src + 2 * k); break;
  case SN_ST_I8: for (int64_t k = 0; k < n; k++) z[k] = (int8_t)src[k]; break;
  case SN_ST_U32: for (int64_t k = 0; k < n; k++) z[k] = load_u32(src + 4 * k); break;
  case SN_ST_U16: for (int64_t k = 0; k < n; k++) z[k] = load_u16(src + 2 * k); break;
  case SN_ST_U8: for (int64_t k = 0; k < n; k++) z[k] = src[k]; break;
  case SN_ST_BOOL: for (int64_t k = 0; k < n; k++) z[k] = src[k] != 0; break;
  case SN_ST_DTYPE_COUNT: break;
  }
  return SN_OK;
}

sn_status sn_safetensors_tensor(sn_ctx *ctx, sn_tensor *t, const sn_st_file *f, int64_t i) {
  if (sn_safetensors_can_view(f, i)) return sn_safetensors_view(ctx, t, f, i);
  const sn_st_entry *e = &f->entries[i];
  sn_status st = sn_tensor_empty(ctx, t, sn_safetensors_load_dtype(e->dtype), e->ndim, e->size);
  if (st == SN_OK) st = sn_safetensors_read(ctx, t, f, i);
  if (st != SN_OK) sn_tensor_release(t);
  return st;
}

/* ---- saving ------------------------------------------------------------------------ */

typedef struct {
  const char *key;
  const void *val; /* the sn_tensor, or the metadata value string */
} item;

static int by_key(const void *a, const void *b) { return strcmp(((const item *)a)->key, ((const item *)b)->key); }

static bool add_int(cJSON *array, int64_t v) {
  char buf[24];
  snprintf(buf, sizeof buf, "%lld", (long long)v);
  /* Raw, not cJSON_CreateNumber: a double would print large sizes as 1e+15. */
  cJSON *j = cJSON_CreateRaw(buf);
  if (j && cJSON_AddItemToArray(array, j)) return true;
  cJSON_Delete(j);
  return false;
}

/* The header JSON (unpadded), or NULL when memory runs out. */
static char *header_json(const item *ts, int64_t n, const item *meta, int64_t nmeta) {
  cJSON *root = cJSON_CreateObject();
  bool ok = root != NULL;
  if (ok && nmeta > 0) {
    cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
    ok = m != NULL;
    for (int64_t i = 0; ok && i < nmeta; i++) ok = cJSON_AddStringToObject(m, meta[i].key, meta[i].val) != NULL;
  }
  int64_t at = 0;
  for (int64_t i = 0; ok && i < n; i++) {
    const sn_tensor *t = ts[i].val;
    int64_t nbytes = sn_numel(t) * (int64_t)sn_dtype_size(t->dtype);
    cJSON *o = cJSON_AddObjectToObject(root, ts[i].key);
    cJSON *shape = o ? cJSON_AddArrayToObject(o, "shape") : NULL;
    cJSON *offsets = o ? cJSON_AddArrayToObject(o, "data_offsets") : NULL;
    ok = o && shape && offsets && cJSON_AddStringToObject(o, "dtype", t->dtype == SN_F32 ? "F32" : "I64");
    for (int d = 0; ok && d < t->ndim; d++) ok = add_int(shape, t->size[d]);
    ok = ok && add_int(offsets, at) && add_int(offsets, at + nbytes);
    at += nbytes;
  }
  char *s = ok ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  return s;
}

/* Writes t's elements in row-major order; a non-contiguous tensor goes through a
 * contiguous copy. */
static sn_status write_tensor(sn_ctx *ctx, FILE *fp, const char *path, const char *name, const sn_tensor *t) {
  size_t nbytes = (size_t)sn_numel(t) * sn_dtype_size(t->dtype);
  if (sn_is_contiguous(t))
    return fwrite(sn_data(t), 1, nbytes, fp) == nbytes ? SN_OK : SN_EIO;
  sn_tensor c;
  sn_status st = sn_tensor_empty(ctx, &c, t->dtype, t->ndim, t->size);
  if (st == SN_OK) st = sn_copy(ctx, &c, t);
  if (st != SN_OK) {
    sn_tensor_release(&c);
    char reason[sizeof ctx->err];
    memcpy(reason, ctx->err, sizeof reason);
    return sn_fail(ctx, st, "seqnn.save: %s: copying non-contiguous tensor '%s' failed: %s", path, name, reason);
  }
  st = fwrite(sn_data(&c), 1, nbytes, fp) == nbytes ? SN_OK : SN_EIO;
  sn_tensor_release(&c);
  return st;
}

/* fsync of the directory makes the rename itself durable. */
static int sync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (!dir) return ENOMEM;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), err = 0;
  free(dir);
  if (fd < 0) return errno;
  if (fsync(fd) != 0) err = errno;
  close(fd);
  return err;
}

static sn_status check_save_args(sn_ctx *ctx, const char *path, item *ts, int64_t n, item *meta, int64_t nmeta) {
  for (int64_t i = 0; i < n; i++) {
    const char *name = ts[i].key;
    const sn_tensor *t = ts[i].val;
    if (!name || !name[0]) return sn_fail(ctx, SN_EINVAL, "seqnn.save: %s: tensor %lld has an empty name", path, (long long)i + 1);
    if (utf8_invalid_at((const unsigned char *)name, strlen(name)) < strlen(name))
      return sn_fail(ctx, SN_EINVAL, "seqnn.save: %s: tensor name '%s' is not valid UTF-8", path, name);
    if (strcmp(name, "__metadata__") == 0)
      return sn_fail(ctx, SN_EINVAL, "seqnn.save: %s: '__metadata__' is reserved and cannot name a tensor", path);
    if (!t || !t->storage) return sn_fail(ctx, SN_EINVAL, "seqnn.save: %s: tensor '%s' was freed", path, name);
  }
  for (int64_t i = 0; i < nmeta; i++) {
    const char *k = meta[i].key, *v = meta[i].val;
    if (!k || !v) return sn_fail(ctx, SN_EINVAL, "seqnn.save: %s: metadata entry %lld is NULL", path, (long long)i + 1);
    if (utf8_invalid_at((const unsigned char *)k, strlen(k)) < strlen(k) ||
        utf8_invalid_at((const unsigned char *)v, strlen(v)) < strlen(v))
      return sn_fail(ctx, SN_EINVAL, "seqnn.save: %s: metadata '%s' is not valid UTF-8", path, k);
  }
  qsort(ts, (size_t)n, sizeof *ts, by_key);
  for (int64_t i = 1; i < n; i++)
    if (strcmp(ts[i - 1].key, ts[i].key) == 0)
      return sn_fail(ctx, SN_EINVAL, "seqnn.save: %s: tensor name '%s' is given twice", path, ts[i].key);
  qsort(meta, (size_t)nmeta, sizeof *meta, by_key);
  for (int64_t i = 1; i < nmeta; i++)
    if (strcmp(meta[i - 1].key, meta[i].key) == 0)
      return sn_fail(ctx, SN_EINVAL, "seqnn.save: %s: metadata key '%s' is given twice", path, meta[i].key);
  return SN_OK;
}

sn_status sn_safetensors_save(sn_ctx *ctx, const char *path, const char *const *names,
                              const sn_tensor *const *tensors, int64_t n,
                              const char *const *meta_keys, const char *const *meta_vals,
                              int64_t nmeta) {
  sn_status st = SN_OK;
  char *header = NULL, *tmp = NULL;
  FILE *fp = NULL;
  bool created = false;
  item *ts = malloc(((size_t)n + 1) * sizeof *ts), *meta = malloc(((size_t)nmeta + 1) * sizeof *meta);
  if (!ts || !meta) {
    st = sn_fail(ctx, SN_ENOMEM, "seqnn.save: %s: out of memory", path);
    goto done;
  }
  for (int64_t i = 0; i < n; i++) ts[i] = (item){names[i], tensors[i]};
  for (int64_t i = 0; i < nmeta; i++) meta[i] = (item){meta_keys[i], meta_vals[i]};
  if ((st = check_save_args(ctx, path, ts, n, meta, nmeta)) != SN_OK) goto done;

  if (!(header = header_json(ts, n, meta, nmeta))) {
    st = sn_fail(ctx, SN_ENOMEM, "seqnn.save: %s: out of memory building the header", path);
    goto done;
  }
  /* Pad with spaces to 8 bytes, as other writers do, so the data section is 8-aligned. */
  size_t hlen = strlen(header), padded = (hlen + 7) / 8 * 8;
  if (padded > HEADER_LIMIT) {
    st = sn_fail(ctx, SN_EINVAL, "seqnn.save: %s: the header would take %zu bytes, over the 100 MiB limit of readers",
                 path, padded);
    goto done;
  }

  size_t tlen = strlen(path) + 32;
  if (!(tmp = malloc(tlen))) {
    st = sn_fail(ctx, SN_ENOMEM, "seqnn.save: %s: out of memory", path);
    goto done;
  }
  snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0 && errno == EEXIST) {
    /* Left by an earlier save of a process with our pid that died midway. */
    unlink(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  }
  if (fd < 0) {
    st = sn_fail(ctx, SN_EIO, "seqnn.save: %s: cannot create %s: %s", path, tmp, strerror(errno));
    goto done;
  }
  created = true;
  if (!(fp = fdopen(fd, "wb"))) {
    st = sn_fail(ctx, SN_EIO, "seqnn.save: %s: %s", path, strerror(errno));
    close(fd);
    goto done;
  }

  uint64_t hl = padded;
  errno = 0;
  bool ok = fwrite(&hl, 8, 1, fp) == 1 && fwrite(header, 1, hlen, fp) == hlen;
  for (size_t k = hlen; ok && k < padded; k++) ok = fputc(' ', fp) != EOF;
  for (int64_t i = 0; ok && i < n; i++) {
    st = write_tensor(ctx, fp, path, ts[i].key, ts[i].val);
    if (st == SN_ENOMEM || st == SN_EINVAL) goto done; /* message already set */
    ok = st == SN_OK;
  }
  ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
  int err = errno;
  if (fclose(fp) != 0 && ok) ok = false, err = errno;
  fp = NULL;
  if (!ok) {
    st = sn_fail(ctx, SN_EIO, "seqnn.save: %s: writing %s failed: %s", path, tmp,
                 err ? strerror(err) : "short write");
    goto done;
  }
  if (rename(tmp, path) != 0) {
    st = sn_fail(ctx, SN_EIO, "seqnn.save: %s: cannot rename %s over it: %s", path, tmp, strerror(errno));
    goto done;
  }
  created = false;
  if ((err = sync_dir(path)) != 0)
    st = sn_fail(ctx, SN_EIO, "seqnn.save: %s: written, but syncing its directory failed: %s", path, strerror(err));
done:
  if (fp) fclose(fp);
  if (created) unlink(tmp);
  free(tmp);
  free(header);
  free(ts);
  free(meta);
  return st;
}
