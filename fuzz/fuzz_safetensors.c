/* fuzz_safetensors.c -- libFuzzer entry point: sn_safetensors_parse over arbitrary bytes;
 * every entry of an accepted file is then read into a tensor (the conversion path) and
 * summed, so ASan sees each byte the parser vouched for. Invariant violations abort. */
#include <stdlib.h>
#include <string.h>

#include "seqnn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Where the sums go, so the reads cannot be optimized away. */
volatile double fuzz_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sn_ctx ctx;
  sn_ctx_init(&ctx);
  sn_st_file f;
  sn_status st = sn_safetensors_parse(&ctx, &f, data, size);
  if (st != SN_OK && st != SN_EIO && st != SN_ENOMEM) abort();
  if (st != SN_OK && (f.n != 0 || f.entries || f.nmeta != 0)) abort(); /* a failed parse leaves f empty */
  double acc = 0;
  for (int64_t i = 0; st == SN_OK && i < f.n; i++) {
    const sn_st_entry *e = &f.entries[i];
    if (!e->name[0] || e->begin > e->end || e->end > f.data_len) abort();
    sn_tensor t;
    sn_status ts = sn_safetensors_tensor(&ctx, &t, &f, i);
    if (ts == SN_ENOMEM) continue;
    if (ts != SN_OK) abort();
    int64_t n = sn_numel(&t);
    for (int64_t k = 0; k < n; k++) acc += t.dtype == SN_F32 ? (double)sn_f32(&t)[k] : (double)sn_i64(&t)[k];
    sn_tensor_release(&t);
  }
  for (int64_t i = 0; st == SN_OK && i < f.nmeta; i++) acc += (double)strlen(f.meta_keys[i]) + (double)strlen(f.meta_vals[i]);
  fuzz_sink = acc;
  if (st == SN_OK) sn_safetensors_close(&f);
  if (ctx.live_bytes != 0) abort(); /* every copy released */
  sn_ctx_free(&ctx);
  return 0;
}
