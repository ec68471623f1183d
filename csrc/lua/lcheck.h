/* lcheck.h -- the binding's shared helpers: the tensor userdata, argument checks that raise
 * errors naming the function and argument, allocation paced with the garbage collector. */
#ifndef SN_LCHECK_H
#define SN_LCHECK_H

#include <lauxlib.h>
#include <lua.h>

#include "seqnn.h"

#define SN_TENSOR_MT "seqnn.Tensor"

/* The per-state userdata: the core's context plus the collector pacing of lcheck.c. */
typedef struct {
  sn_ctx ctx; /* first, so the userdata pointer is also the sn_ctx pointer */
  int64_t allocated_since_collect; /* tensor bytes allocated since the last full collection */
  int64_t live_after_collect;      /* tensor bytes that collection left live */
} sn_lua_state;

/* Every binding function has the sn_lua_state userdata as upvalue 1. */
static inline sn_ctx *sn_lua_ctx(lua_State *L) { return (sn_ctx *)lua_touserdata(L, lua_upvalueindex(1)); }

/* "4x6" for error messages; the buffer lives until the end of the enclosing block. */
#define SN_SHAPE(t) sn_shape_str((t), (char[160]){0}, 160)

/* Formats a message and raises it as a Lua error. Never returns. */
int sn_lua_fail(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* Raises ctx->err (set by the core) for status st. */
int sn_lua_raise(lua_State *L, const char *fn, sn_status st) __attribute__((noreturn));

/* The tensor at idx, checked for type, dtype (pass -1 for any) and not freed. */
sn_tensor *sn_lua_check_tensor(lua_State *L, int idx, const char *fn, const char *arg, int dtype);
/* An f32 tensor argument for a kernel that reads rows: NULL for nil when optional; a view
 * whose last dim is not unit-stride is copied (pushed, so the collector owns the copy),
 * others are returned as they are (a narrow of a fused projection is read in place). */
sn_tensor *sn_lua_rows_arg(lua_State *L, int idx, const char *fn, const char *arg, bool optional);
/* Makes the table at idx the metatable of every tensor pushed from now on. */
void sn_lua_register_metatable(lua_State *L, int idx);
/* The tensor at idx or NULL when the value is not a tensor (no error). */
sn_tensor *sn_lua_test_tensor(lua_State *L, int idx);

/* Pushes a new tensor userdata with no storage yet (safe for the finalizer). */
sn_tensor *sn_lua_push_tensor(lua_State *L);
/* Pushes a new contiguous tensor with uninitialised values; raises on a bad shape or when
 * memory runs out (after a full collection and one retry). */
sn_tensor *sn_lua_push_empty(lua_State *L, const char *fn, sn_dtype dt, int ndim, const int64_t *size);
sn_tensor *sn_lua_push_empty_like(lua_State *L, const char *fn, const sn_tensor *t, sn_dtype dt);
/* t itself when contiguous, else a contiguous copy pushed on the stack. */
sn_tensor *sn_lua_contiguous(lua_State *L, const char *fn, sn_tensor *t);

/* Reads a shape given as varargs of integers from idx up to `last`, or as one table at idx.
 * Returns ndim. */
int sn_lua_check_shape(lua_State *L, int idx, int last, const char *fn, int64_t *size);
/* A dim argument: 1-based, negative counts from the end; returns it 0-based. `extra` allows
 * ndim + 1 (for unsqueeze). */
int sn_lua_check_dim(lua_State *L, int idx, const char *fn, const sn_tensor *t, int extra);
/* An integer argument (a float with an integral value is accepted). */
int64_t sn_lua_check_int(lua_State *L, int idx, const char *fn, const char *arg);
/* "f32" or "i64" at idx, or def when absent. */
sn_dtype sn_lua_opt_dtype(lua_State *L, int idx, const char *fn, sn_dtype def);

/* Registers the tensor functions and methods (ltensor.c, lmath.c). */
void sn_lua_open_tensor(lua_State *L, int methods);
void sn_lua_open_math(lua_State *L, int methods);
/* Registers the nn kernels as core.k_* (lnn.c). */
void sn_lua_open_nn(lua_State *L);
/* Registers the attention kernels as core.k_attention_* (lattention.c). */
void sn_lua_open_attention(lua_State *L);
/* Registers save and load (lio.c). */
void sn_lua_open_io(lua_State *L, int methods);
/* Registers the RoPE kernels as core.k_rope_* (lrope.c). */
void sn_lua_open_rope(lua_State *L);
/* Registers the selective scan kernels as core.k_selective_scan_* (lscan.c). */
void sn_lua_open_scan(lua_State *L);
/* Registers the causal conv1d kernels as core.k_causal_conv1d_* (lconv1d.c). */
void sn_lua_open_conv1d(lua_State *L);
/* Registers core.k_gated_linear_attention_* and core.k_delta_rule_* (llinear_attention.c). */
void sn_lua_open_linear_attention(lua_State *L);
/* lsparse.c: BSR block-sparse kernels; lsparse_lowp.c: 2:4 and int8 BSR. */
void sn_lua_open_sparse(lua_State *L);
void sn_lua_open_sparse_lowp(lua_State *L);
/* Registers core.k_product_key_* (lproduct_key.c). */
void sn_lua_open_product_key(lua_State *L);
void sn_lua_open_hash_memory(lua_State *L);
/* Registers core.k_binary_attention_* (lbinary_attention.c). */
void sn_lua_open_binary_attention(lua_State *L);

#endif
