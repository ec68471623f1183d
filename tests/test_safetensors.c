/* test_safetensors.c -- the safetensors reader and writer: round trips, a file laid out by
 * hand byte by byte, every validation error, atomic saves that fail at each stage, views of
 * the mapping, misaligned data, dtype conversion, and the fuzz corpus. */
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static sn_ctx ctx;
static char dir[64];

static void setup(void) {
  sn_ctx_init(&ctx);
  strcpy(dir, "/tmp/sn_safetensors_XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void) {
  cr_expect_eq(ctx.live_bytes, 0, "every storage released (live %lld)", (long long)ctx.live_bytes);
  sn_ctx_free(&ctx);
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[512];
  while (d && (e = readdir(d))) {
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (e->d_name[0] != '.') unlink(p);
  }
  if (d) closedir(d);
  rmdir(dir);
}
TestSuite(safetensors, .init = setup, .fini = teardown);

/* ---- helpers ------------------------------------------------------------------------ */

static char *path_in_dir(const char *name) {
  static char p[4][256];
  static int k;
  k = (k + 1) % 4;
  snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
  return p[k];
}

static void write_file(const char *path, const void *bytes, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f);
  cr_assert_eq(fwrite(bytes, 1, n, f), n);
  fclose(f);
}

/* The whole file in a malloc'd buffer of exactly its size (so ASan sees any over-read). */
static uint8_t *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc(*n ? *n : 1);
  cr_assert_eq(fread(buf, 1, *n, f), *n);
  fclose(f);
  return buf;
}

/* Entries in the directory (without . and ..). */
static int count_dir(void) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

/* A file image: little-endian header length, header padded with spaces, data. */
static uint8_t *st_image(const char *header, const void *data, size_t dlen, size_t *n) {
  size_t h = strlen(header), padded = (h + 7) / 8 * 8;
  *n = 8 + padded + dlen;
  uint8_t *buf = malloc(*n);
  uint64_t len = padded;
  memcpy(buf, &len, 8);
  memcpy(buf + 8, header, h);
  memset(buf + 8 + h, ' ', padded - h);
  if (dlen) memcpy(buf + 8 + padded, data, dlen);
  return buf;
}

static int64_t find(const sn_st_file *f, const char *name) {
  for (int64_t i = 0; i < f->n; i++)
    if (strcmp(f->entries[i].name, name) == 0) return i;
  cr_assert_fail("no tensor '%s' in the file", name);
  return -1;
}

static sn_tensor load_entry(const sn_st_file *f, const char *name) {
  sn_tensor t;
  cr_assert_eq(sn_safetensors_tensor(&ctx, &t, f, find(f, name)), SN_OK, "%s", ctx.err);
  return t;
}

static void expect_values(const sn_tensor *t, const double *want, int64_t n, const char *what) {
  cr_assert_eq(sn_numel(t), n, "%s: numel", what);
  for (int64_t i = 0; i < n; i++) {
    double v = tu_get(t, i);
    if (isnan(want[i])) cr_expect(isnan(v), "%s[%lld] = %g, want NaN", what, (long long)i, v);
    else cr_expect(v == want[i] && signbit(v) == signbit(want[i]), "%s[%lld] = %.17g, want %.17g", what,
                   (long long)i, v, want[i]);
  }
}

/* ---- round trips -------------------------------------------------------------------- */

Test(safetensors, round_trips_dtypes_shapes_views_and_metadata) {
  int64_t s23[] = {2, 3}, s3[] = {3}, s0[] = {0, 5}, s8[] = {1, 2, 1, 2, 1, 1, 2, 1};
  sn_tensor m = tu_empty(&ctx, SN_F32, 2, s23), ids = tu_empty(&ctx, SN_I64, 1, s3);
  sn_tensor sf = tu_empty(&ctx, SN_F32, 0, NULL), si = tu_empty(&ctx, SN_I64, 0, NULL);
  sn_tensor empty = tu_empty(&ctx, SN_F32, 2, s0), deep = tu_empty(&ctx, SN_F32, 8, s8), mt;
  tu_fill_f32(&m, 1);
  tu_fill_f32(&deep, 2);
  int64_t idv[] = {-1, INT64_MAX, INT64_MIN};
  memcpy(sn_i64(&ids), idv, sizeof idv);
  sn_f32(&sf)[0] = -0.0f;
  sn_i64(&si)[0] = 42;
  cr_assert_eq(sn_transpose(&ctx, &mt, &m, 0, 1), SN_OK);
  const char *names[] = {"m", "ids", "scalar_f", "scalar_i", "empty", "deep", "m.T", "\"q\"\\\n\xc3\xa9"};
  const sn_tensor *ts[] = {&m, &ids, &sf, &si, &empty, &deep, &mt, &sf};
  const char *keys[] = {"epoch", "note"}, *vals[] = {"3", "line\nbreak \"quoted\""};
  const char *path = path_in_dir("rt.safetensors");
  cr_assert_eq(sn_safetensors_save(&ctx, path, names, ts, 8, keys, vals, 2), SN_OK, "%s", ctx.err);
  cr_expect_eq(count_dir(), 1, "only the file, no temporary left");

  sn_st_file f;
  cr_assert_eq(sn_safetensors_load(&ctx, &f, path), SN_OK, "%s", ctx.err);
  cr_assert_eq(f.n, 8);
  cr_assert_eq(f.nmeta, 2);
  cr_expect_str_eq(f.meta_keys[0], "epoch"); /* metadata sorted by key */
  cr_expect_str_eq(f.meta_vals[1], "line\nbreak \"quoted\"");
  for (int64_t i = 1; i < f.n; i++)
    cr_expect_lt(strcmp(f.entries[i - 1].name, f.entries[i].name), 0, "tensors written sorted by name");
  for (int k = 0; k < 8; k++) {
    sn_tensor t = load_entry(&f, names[k]);
    cr_expect_eq(t.dtype, ts[k]->dtype, "%s dtype", names[k]);
    cr_expect(sn_same_shape(&t, ts[k]), "%s shape", names[k]);
    for (int64_t i = 0; i < sn_numel(&t); i++) {
      double a = tu_get(&t, i), b = tu_get(ts[k], i);
      cr_expect(a == b && signbit(a) == signbit(b), "%s[%lld]: %g vs %g", names[k], (long long)i, a, b);
    }
    sn_tensor_release(&t);
  }
  /* i64 sorted after "empty"/"deep" f32 data is still exact (viewed or copied) */
  sn_tensor t = load_entry(&f, "ids");
  cr_expect_eq(sn_i64(&t)[1], INT64_MAX);
  sn_tensor_release(&t);
  sn_safetensors_close(&f);
  sn_safetensors_close(&f); /* idempotent */
  sn_tensor *all[] = {&m, &ids, &sf, &si, &empty, &deep, &mt};
  for (int k = 0; k < 7; k++) sn_tensor_release(all[k]);
}

Test(safetensors, save_is_reproducible_and_pads_the_header) {
  int64_t s[] = {5};
  sn_tensor a = tu_empty(&ctx, SN_F32, 1, s), b = tu_empty(&ctx, SN_I64, 0, NULL);
  tu_fill_f32(&a, 3);
  sn_i64(&b)[0] = 7;
  const char *n1[] = {"b", "a"}, *n2[] = {"a", "b"};
  const sn_tensor *t1[] = {&b, &a}, *t2[] = {&a, &b};
  cr_assert_eq(sn_safetensors_save(&ctx, path_in_dir("1"), n1, t1, 2, NULL, NULL, 0), SN_OK, "%s", ctx.err);
  cr_assert_eq(sn_safetensors_save(&ctx, path_in_dir("2"), n2, t2, 2, NULL, NULL, 0), SN_OK, "%s", ctx.err);
  size_t l1, l2;
  uint8_t *f1 = read_file(path_in_dir("1"), &l1), *f2 = read_file(path_in_dir("2"), &l2);
  cr_expect(l1 == l2 && memcmp(f1, f2, l1) == 0, "the same tensors give the same bytes");
  uint64_t hl;
  memcpy(&hl, f1, 8);
  cr_expect_eq(hl % 8, 0, "header length %llu is a multiple of 8", (unsigned long long)hl);
  cr_expect_eq(f1[8 + hl - 1], ' ', "padded with spaces");
  cr_expect_eq(l1, 8 + hl + 5 * 4 + 8);
  free(f1);
  free(f2);
  sn_tensor_release(&a);
  sn_tensor_release(&b);
}

/* Laid out by hand, independent of the writer: header length 112 (107 + 5 spaces), then the header, then
 * a = [1.0f, -2.0f] and b = -3 (i64, 0-dim). */
Test(safetensors, reads_a_file_written_by_hand) {
  const char header[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[8,16]}}";
  uint8_t bytes[8 + 112 + 16];
  size_t h = strlen(header);
  cr_assert_eq(h, 107);
  memset(bytes, 0, sizeof bytes);
  bytes[0] = 112; /* u64 little-endian: 112, 0, 0, ... */
  memcpy(bytes + 8, header, h);
  memset(bytes + 8 + h, ' ', 112 - h);
  const uint8_t data[16] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0,  /* 1.0f, -2.0f */
                            0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}; /* -3 */
  memcpy(bytes + 120, data, 16);
  const char *path = path_in_dir("hand.safetensors");
  write_file(path, bytes, sizeof bytes);

  sn_st_file f;
  cr_assert_eq(sn_safetensors_load(&ctx, &f, path), SN_OK, "%s", ctx.err);
  cr_assert_eq(f.n, 2);
  cr_expect_eq(f.nmeta, 0);
  cr_expect(sn_safetensors_can_view(&f, find(&f, "a")) && sn_safetensors_can_view(&f, find(&f, "b")),
            "aligned F32/I64 data is viewed in place");
  sn_tensor a = load_entry(&f, "a"), b = load_entry(&f, "b");
  cr_expect_eq(ctx.live_bytes, 0, "views allocate nothing");
  expect_values(&a, (double[]){1.0, -2.0}, 2, "a");
  cr_expect_eq(b.ndim, 0);
  cr_expect_eq(sn_i64(&b)[0], -3);
  sn_safetensors_close(&f);
  cr_expect_eq(sn_f32(&a)[1], -2.0f, "views outlive the file index");
  /* the mapping is private: writing to a view never reaches the file */
  sn_f32(&a)[0] = 99.0f;
  size_t n;
  uint8_t *again = read_file(path, &n);
  cr_expect_eq(memcmp(again, bytes, sizeof bytes), 0, "file unchanged");
  free(again);
  sn_tensor_release(&a);
  sn_tensor_release(&b);
}

/* ---- validation ------------------------------------------------------------------------ */

static void expect_parse_error(const uint8_t *buf, size_t n, const char *want, const char *what) {
  sn_st_file f;
  memset(&f, 0x5a, sizeof f);
  sn_status st = sn_safetensors_parse(&ctx, &f, buf, n);
  cr_expect_eq(st, SN_EIO, "%s: status %d", what, st);
  cr_expect(strstr(ctx.err, want) != NULL, "%s: message was: %s\nexpected it to contain: %s", what, ctx.err, want);
  cr_expect(f.n == 0 && f.entries == NULL && f.nmeta == 0 && f.mapping == NULL, "%s: f left empty", what);
}

static void expect_header_error(const char *header, size_t dlen, const char *want) {
  uint8_t zeros[64] = {0};
  size_t n;
  uint8_t *buf = st_image(header, zeros, dlen, &n);
  expect_parse_error(buf, n, want, header);
  free(buf);
}

Test(safetensors, rejects_bad_lengths) {
  expect_parse_error((const uint8_t *)"\x10\0\0\0\0", 5, "truncated: the file has 5 bytes", "5 bytes");
  expect_parse_error((const uint8_t *)"", 0, "truncated: the file has 0 bytes", "empty");
  uint8_t buf[100] = {0};
  uint64_t n = 4096;
  memcpy(buf, &n, 8);
  expect_parse_error(buf, sizeof buf, "truncated: header says 4096 bytes but the file has 92 after the 8-byte length",
                     "header longer than the file");
  n = (uint64_t)1 << 40;
  memcpy(buf, &n, 8);
  expect_parse_error(buf, sizeof buf, "over the 100 MiB limit", "huge header length");
  n = UINT64_MAX;
  memcpy(buf, &n, 8);
  expect_parse_error(buf, sizeof buf, "over the 100 MiB limit", "u64 max");
  n = 0;
  memcpy(buf, &n, 8);
  expect_parse_error(buf, 8, "not valid JSON", "empty header");
}

Test(safetensors, rejects_bad_json) {
  expect_header_error("{\"w\": {\"dtype\": ", 0, "header is not valid JSON");
  expect_header_error("[1, 2]", 0, "header is an array, expected a JSON object");
  expect_header_error("\"w\"", 0, "header is a string, expected a JSON object");
  expect_header_error("{} {}", 0, "extra bytes after the JSON value (at byte 3");
  size_t n;
  uint8_t *buf = st_image("{\"a\":1}", NULL, 0, &n);
  buf[8 + 3] = 0;
  expect_parse_error(buf, n, "header has a NUL byte at offset 3", "NUL");
  buf[8 + 3] = 0xff;
  expect_parse_error(buf, n, "header is not valid UTF-8 (byte 3)", "invalid UTF-8");
  free(buf);
  /* an overlong encoding of '/' and a lone surrogate are not UTF-8 either */
  expect_header_error("{\"\xc0\xaf\":1}", 0, "not valid UTF-8 (byte 2)");
  expect_header_error("{\"\xed\xa0\x80\":1}", 0, "not valid UTF-8 (byte 2)");
}

Test(safetensors, rejects_bad_entries) {
  static const struct {
    const char *header;
    size_t data;
    const char *want;
  } cases[] = {
      {"{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
       "tensor 'w': dtype F8_E4M3 is not supported"},
      {"{\"w\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 'w': dtype must be a string, got a number"},
      {"{\"w\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype f32 is not supported"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, "tensor 'w': shape entry 1 is -1"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2.5],\"data_offsets\":[0,0]}}", 0, "shape entry 2 is 2.5"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,0]}}", 0, "shape entry 1 is 1e+300"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "shape entry 1 is a string"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "shape must be an array, got a number"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
       "shape has 9 dims, at most 8"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4503599627370496,4503599627370496],\"data_offsets\":[0,0]}}", 0,
       "tensor 'w': shape 4503599627370496x4503599627370496 overflows"},
      {"{\"w\":{\"dtype\":\"U8\",\"shape\":[1073741824,1073741824,8],\"data_offsets\":[0,0]}}", 0, "overflows"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,100]}}", 8,
       "truncated: tensor 'w' has data_offsets [0, 100] but the data section has 8 bytes"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "data_offsets [8, 0] are reversed"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,12]}}", 12,
       "tensor 'w': data_offsets [0, 12] hold 12 bytes but F32 3x2 needs 24"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,8]}}", 8, "hold 8 bytes but F32 scalar needs 4"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets must be two integers"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8, "data_offsets must be two integers"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "data_offsets must be two integers"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.5,8.5]}}", 9, "data_offsets must be two integers"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "tensor 'w': missing field 'data_offsets'"},
      {"{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "missing field 'dtype'"},
      {"{\"w\":{\"dtype\":\"F32\",\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
       "tensor 'w': field 'dtype' appears twice"},
      {"{\"w\":[1,2]}", 0, "tensor 'w': expected an object with dtype, shape and data_offsets, got an array"},
      {"{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "a tensor has an empty name"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
       "tensors 'a' [0, 8] and 'b' [4, 12] overlap"},
      {"{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}", 8, "tensors 'a' [0, 8] and 'b' [2, 3] overlap"},
      {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
       "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "tensor 'a' appears twice in the header"},
      {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ appears twice"},
      {"{\"__metadata__\":{\"step\":3}}", 0, "__metadata__ 'step' is a number; metadata values must be strings"},
      {"{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0, "__metadata__ key 'a' appears twice"},
      {"{\"__metadata__\":[\"a\"]}", 0, "__metadata__ must be an object of strings, got an array"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_header_error(cases[i].header, cases[i].data, cases[i].want);
}

Test(safetensors, accepts_what_other_writers_produce) {
  /* unknown fields, gaps and trailing bytes, an empty tensor inside another's range,
   * whitespace and an empty header object */
  const char *ok[] = {
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8],\"extra\":{\"x\":[1]}}}",
      ("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
       "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]}}"),
      " {\n\"__metadata__\" : {\"k\" : \"v\"}\t}\n",
      "{}",
  };
  uint8_t zeros[16] = {0};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    size_t n;
    uint8_t *buf = st_image(ok[i], zeros, 16, &n);
    sn_st_file f;
    cr_expect_eq(sn_safetensors_parse(&ctx, &f, buf, n), SN_OK, "%s: %s", ok[i], ctx.err);
    cr_expect_null(f.mapping);
    sn_safetensors_close(&f);
    free(buf);
  }
}

/* ---- loading: paths, alignment, conversion ---------------------------------------------- */

Test(safetensors, load_errors_name_the_path) {
  sn_st_file f;
  const char *missing = path_in_dir("missing.safetensors");
  cr_expect_eq(sn_safetensors_load(&ctx, &f, missing), SN_EIO);
  char want[512];
  snprintf(want, sizeof want, "seqnn.load: %s: No such file or directory", missing);
  cr_expect_str_eq(ctx.err, want);

  const char *empty = path_in_dir("empty");
  write_file(empty, "", 0);
  cr_expect_eq(sn_safetensors_load(&ctx, &f, empty), SN_EIO);
  snprintf(want, sizeof want, "seqnn.load: %s: truncated: the file has 0 bytes", empty);
  cr_expect(strstr(ctx.err, want) == ctx.err, "%s", ctx.err);

  /* a FIFO must fail at once rather than wait for a writer */
  const char *fifo = path_in_dir("fifo");
  cr_assert_eq(mkfifo(fifo, 0600), 0);
  cr_expect_eq(sn_safetensors_load(&ctx, &f, fifo), SN_EIO);
  cr_expect(strstr(ctx.err, "not a regular file") != NULL, "%s", ctx.err);

  const char *bad = path_in_dir("bad");
  size_t n;
  uint8_t zeros[12] = {0};
  uint8_t *buf = st_image("{\"w\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,12]}}", zeros, 12, &n);
  write_file(bad, buf, n);
  free(buf);
  cr_expect_eq(sn_safetensors_load(&ctx, &f, bad), SN_EIO);
  snprintf(want, sizeof want, "seqnn.load: %s: tensor 'w': data_offsets [0, 12] hold 12 bytes but F32 3x2 needs 24", bad);
  cr_expect_str_eq(ctx.err, want);
  cr_expect_null(f.entries);
}

Test(safetensors, copies_misaligned_data) {
  /* the data section starts 8-aligned; F32 at offset 1 and I64 at offset 9 are not */
  uint8_t data[17] = {0xee};
  float fv[2] = {1.5f, -2.25f};
  int64_t iv = -123456789012345;
  memcpy(data + 1, fv, 8);
  memcpy(data + 9, &iv, 8);
  size_t n;
  uint8_t *buf = st_image("{\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]},"
                          "\"i\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[9,17]}}", data, 17, &n);
  const char *path = path_in_dir("misaligned");
  write_file(path, buf, n);
  free(buf);
  sn_st_file f;
  cr_assert_eq(sn_safetensors_load(&ctx, &f, path), SN_OK, "%s", ctx.err);
  cr_expect_not(sn_safetensors_can_view(&f, find(&f, "f")));
  cr_expect_not(sn_safetensors_can_view(&f, find(&f, "i")));
  sn_tensor v;
  cr_expect_eq(sn_safetensors_view(&ctx, &v, &f, find(&f, "f")), SN_EINVAL, "no view of misaligned data");
  sn_tensor a = load_entry(&f, "f"), b = load_entry(&f, "i");
  cr_expect_eq((uintptr_t)sn_data(&a) % SN_ALIGN, 0, "copied into an aligned storage");
  cr_expect_gt(ctx.live_bytes, 0, "copies are counted");
  expect_values(&a, (double[]){1.5, -2.25}, 2, "f");
  cr_expect_eq(sn_i64(&b)[0], iv);
  sn_safetensors_close(&f);
  sn_tensor_release(&a);
  sn_tensor_release(&b);
}

Test(safetensors, converts_other_dtypes) {
  uint8_t data[128];
  size_t at = 0;
#define PUT(type, ...)                                  \
  do {                                                  \
    type v_[] = {__VA_ARGS__};                          \
    memcpy(data + at, v_, sizeof v_), at += sizeof v_;  \
  } while (0)
  PUT(double, 0.1, -1e300, 2.5);                                                        /* d  [0, 24)  */
  PUT(uint16_t, 0x3c00, 0xc100, 0x7bff, 0x0001, 0x7c00, 0xfc00, 0x7e00, 0x8000, 0x0400); /* h  [24, 42) */
  PUT(uint16_t, 0x3f80, 0xc049, 0x7f80, 0x0001);                                        /* bf [42, 50) */
  PUT(int32_t, INT32_MIN, -1, INT32_MAX);                                               /* i32 [50, 62) */
  PUT(int16_t, INT16_MIN, 7);                                                           /* i16 [62, 66) */
  PUT(int8_t, -128, 127);                                                               /* i8 [66, 68) */
  PUT(uint32_t, UINT32_MAX);                                                            /* u32 [68, 72) */
  PUT(uint16_t, 65535);                                                                 /* u16 [72, 74) */
  PUT(uint8_t, 255, 0);                                                                 /* u8 [74, 76) */
  PUT(uint8_t, 0, 1, 2);                                                                /* b [76, 79) */
#undef PUT
  cr_assert_eq(at, 79);
  size_t n;
  uint8_t *buf = st_image(
      "{\"d\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[0,24]},"
      "\"h\":{\"dtype\":\"F16\",\"shape\":[3,3],\"data_offsets\":[24,42]},"
      "\"bf\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[42,50]},"
      "\"i32\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[50,62]},"
      "\"i16\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[62,66]},"
      "\"i8\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[66,68]},"
      "\"u32\":{\"dtype\":\"U32\",\"shape\":[],\"data_offsets\":[68,72]},"
      "\"u16\":{\"dtype\":\"U16\",\"shape\":[1],\"data_offsets\":[72,74]},"
      "\"u8\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[74,76]},"
      "\"b\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[76,79]}}",
      data, at, &n);
  sn_st_file f;
  cr_assert_eq(sn_safetensors_parse(&ctx, &f, buf, n), SN_OK, "%s", ctx.err);
  static const struct {
    const char *name;
    sn_dtype dt;
    int64_t n;
    double want[9];
  } cases[] = {
      {"d", SN_F32, 3, {(float)0.1, -INFINITY, 2.5}},
      {"h", SN_F32, 9, {1.0, -2.5, 65504.0, 0x1p-24, INFINITY, -INFINITY, NAN, -0.0, 0x1p-14}},
      {"bf", SN_F32, 4, {1.0, -3.140625, INFINITY, 0x1p-133}},
      {"i32", SN_I64, 3, {INT32_MIN, -1, INT32_MAX}},
      {"i16", SN_I64, 2, {INT16_MIN, 7}},
      {"i8", SN_I64, 2, {-128, 127}},
      {"u32", SN_I64, 1, {UINT32_MAX}},
      {"u16", SN_I64, 1, {65535}},
      {"u8", SN_I64, 2, {255, 0}},
      {"b", SN_I64, 3, {0, 1, 1}},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    sn_tensor t = load_entry(&f, cases[k].name);
    cr_expect_eq(t.dtype, cases[k].dt, "%s dtype", cases[k].name);
    expect_values(&t, cases[k].want, cases[k].n, cases[k].name);
    sn_tensor_release(&t);
  }
  /* read checks its destination */
  int64_t wrong[] = {2};
  sn_tensor t = tu_empty(&ctx, SN_F32, 1, wrong);
  cr_expect_eq(sn_safetensors_read(&ctx, &t, &f, find(&f, "d")), SN_EINVAL);
  cr_expect(strstr(ctx.err, "tensor 'd' needs a contiguous f32 3 destination, got f32 2") != NULL, "%s", ctx.err);
  sn_tensor_release(&t);
  sn_safetensors_close(&f);
  free(buf);
}

/* ---- atomic saves ------------------------------------------------------------------------ */

/* Saves a small file at path and returns its bytes, for comparison after a failed save. */
static uint8_t *save_previous(const char *path, size_t *n) {
  int64_t s[] = {4};
  sn_tensor t = tu_empty(&ctx, SN_F32, 1, s);
  tu_fill_f32(&t, 9);
  const char *name = "old";
  const sn_tensor *ts[] = {&t};
  cr_assert_eq(sn_safetensors_save(&ctx, path, &name, ts, 1, NULL, NULL, 0), SN_OK, "%s", ctx.err);
  sn_tensor_release(&t);
  return read_file(path, n);
}

static void expect_unchanged(const char *path, const uint8_t *before, size_t n, const char *what) {
  size_t m;
  uint8_t *now = read_file(path, &m);
  cr_expect(m == n && memcmp(now, before, n) == 0, "%s: the previous file changed", what);
  free(now);
  cr_expect_eq(count_dir(), 1, "%s: a temporary file was left behind", what);
}

Test(safetensors, failed_saves_keep_the_previous_file) {
  const char *path = path_in_dir("model.safetensors");
  size_t n;
  uint8_t *before = save_previous(path, &n);
  int64_t s[] = {64, 256};
  sn_tensor big = tu_empty(&ctx, SN_F32, 2, s), tr, freed = tu_empty(&ctx, SN_F32, 1, s);
  tu_fill_f32(&big, 4);
  cr_assert_eq(sn_transpose(&ctx, &tr, &big, 0, 1), SN_OK);
  sn_tensor_release(&freed);

  /* invalid arguments: nothing is written */
  const char *dup[] = {"a", "a"}, *one[] = {"w"}, *bad_utf8[] = {"\xff"};
  const sn_tensor *two[] = {&big, &big}, *fr[] = {&freed}, *b1[] = {&big};
  cr_expect_eq(sn_safetensors_save(&ctx, path, dup, two, 2, NULL, NULL, 0), SN_EINVAL);
  cr_expect(strstr(ctx.err, "tensor name 'a' is given twice") != NULL, "%s", ctx.err);
  expect_unchanged(path, before, n, "duplicate names");
  cr_expect_eq(sn_safetensors_save(&ctx, path, one, fr, 1, NULL, NULL, 0), SN_EINVAL);
  cr_expect(strstr(ctx.err, "tensor 'w' was freed") != NULL, "%s", ctx.err);
  expect_unchanged(path, before, n, "freed tensor");
  cr_expect_eq(sn_safetensors_save(&ctx, path, bad_utf8, b1, 1, NULL, NULL, 0), SN_EINVAL);
  cr_expect(strstr(ctx.err, "is not valid UTF-8") != NULL, "%s", ctx.err);
  expect_unchanged(path, before, n, "invalid UTF-8 name");

  /* out of memory midway: the header is written, then copying the transposed tensor fails */
  const sn_tensor *trs[] = {&tr};
  ctx.limit_bytes = ctx.live_bytes + 1024;
  cr_expect_eq(sn_safetensors_save(&ctx, path, one, trs, 1, NULL, NULL, 0), SN_ENOMEM);
  cr_expect(strstr(ctx.err, "copying non-contiguous tensor 'w' failed: seqnn: out of memory") != NULL, "%s", ctx.err);
  ctx.limit_bytes = 0;
  expect_unchanged(path, before, n, "out of memory");

  /* the disk fills midway: writes past 4 KiB fail with EFBIG */
  struct rlimit old, small = {4096, 4096};
  getrlimit(RLIMIT_FSIZE, &old);
  small.rlim_max = old.rlim_max;
  signal(SIGXFSZ, SIG_IGN);
  cr_assert_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
  sn_status st = sn_safetensors_save(&ctx, path, one, b1, 1, NULL, NULL, 0);
  setrlimit(RLIMIT_FSIZE, &old);
  cr_expect_eq(st, SN_EIO);
  cr_expect(strstr(ctx.err, "failed: File too large") != NULL, "%s", ctx.err);
  expect_unchanged(path, before, n, "file size limit");

  /* the rename fails: path is a directory */
  cr_expect_eq(sn_safetensors_save(&ctx, dir, one, b1, 1, NULL, NULL, 0), SN_EIO);
  cr_expect(strstr(ctx.err, "cannot rename") != NULL, "%s", ctx.err);
  char tmp[128];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dir, (long)getpid());
  cr_expect_neq(access(tmp, F_OK), 0, "temporary %s removed", tmp);

  /* a missing directory */
  const char *missing = path_in_dir("no/such/dir/m.safetensors");
  cr_expect_eq(sn_safetensors_save(&ctx, missing, one, b1, 1, NULL, NULL, 0), SN_EIO);
  cr_expect(strstr(ctx.err, "cannot create") && strstr(ctx.err, "No such file or directory"), "%s", ctx.err);
  expect_unchanged(path, before, n, "missing directory");

  /* and a save that works replaces the file */
  cr_expect_eq(sn_safetensors_save(&ctx, path, one, trs, 1, NULL, NULL, 0), SN_OK, "%s", ctx.err);
  sn_st_file f;
  cr_assert_eq(sn_safetensors_load(&ctx, &f, path), SN_OK, "%s", ctx.err);
  sn_tensor w = load_entry(&f, "w");
  cr_expect(sn_same_shape(&w, &tr));
  for (int64_t i = 0; i < sn_numel(&tr); i++)
    if (tu_get(&w, i) != tu_get(&tr, i)) cr_assert_fail("element %lld not in row-major order of the view", (long long)i);
  sn_safetensors_close(&f);
  sn_tensor_release(&w);
  free(before);
  sn_tensor_release(&tr);
  sn_tensor_release(&big);
}

/* ---- the fuzz corpus ------------------------------------------------------------------------ */

/* Every seed and every crash reproducer the fuzzer found: no crash, a defined status. */
Test(safetensors, fuzz_corpus_does_not_crash) {
  DIR *d = opendir("tests/fuzz_corpus");
  cr_assert_not_null(d, "run from the repository root (tests/fuzz_corpus)");
  struct dirent *e;
  int files = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char p[512];
    snprintf(p, sizeof p, "tests/fuzz_corpus/%s", e->d_name);
    size_t n;
    uint8_t *buf = read_file(p, &n);
    sn_st_file f;
    sn_status st = sn_safetensors_parse(&ctx, &f, buf, n);
    cr_expect(st == SN_OK || st == SN_EIO || st == SN_EINVAL, "%s: status %d", p, st);
    for (int64_t i = 0; st == SN_OK && i < f.n; i++) {
      sn_tensor t;
      cr_expect_eq(sn_safetensors_tensor(&ctx, &t, &f, i), SN_OK, "%s: %s", p, ctx.err);
      sn_tensor_release(&t);
    }
    if (st == SN_OK) sn_safetensors_close(&f);
    free(buf);
    files++;
  }
  closedir(d);
  cr_expect_geq(files, 10, "the corpus has its seeds (%d files)", files);
}
