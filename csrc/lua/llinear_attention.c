/* llinear_attention.c -- the chunked linear-attention kernels (kernels/linear_attention.c,
 * kernels/delta_rule.c), called by sn.F.gated_linear_attention, sn.F.delta_rule and the
 * linear-time mixers' decoding. The two kernels have the same signatures, with g (optional)
 * or beta (required) as the gate, so one set of functions serves both:
 *   o, final|nil, chunk_states|nil = k_<kernel>_fwd(q, k, v, gate, scale, initial_state|nil,
 *                                                   want_final, want_chunk_states)
 *   dq, dk, dv, dgate|nil, dh0|nil = k_<kernel>_bwd(dout, dfinal|nil, chunk_states, q, k, v,
 *                                                   gate, scale, initial_state|nil)
 *       (dgate is a tensor exactly when the gate is given, dh0 when initial_state is)
 *   o = k_<kernel>_step(state, q, k, v, gate, scale)   one token, q (B,1,H,Dk), state
 *                                                      (B,H,Dk,Dv) updated in place
 * for <kernel> gated_linear_attention (gate g|nil) and delta_rule (gate beta). scale is a
 * finite number (the Lua side defaults it to 1/sqrt(Dk)). The kernels check shapes and name
 * them in their messages. Inputs may be views: only one whose last dim is not unit-stride
 * is copied. Outputs are pushed before the kernel runs, so on an error the collector owns
 * them. */
#include <math.h>
#include <stdio.h>

#include "lcheck.h"

typedef sn_status (*fwd_fn)(sn_ctx *, sn_tensor *, sn_tensor *, sn_tensor *, const sn_tensor *, const sn_tensor *,
                            const sn_tensor *, const sn_tensor *, const sn_linattn_opts *);
typedef sn_status (*bwd_fn)(sn_ctx *, sn_tensor *, sn_tensor *, sn_tensor *, sn_tensor *, sn_tensor *,
                            const sn_tensor *, const sn_tensor *, const sn_tensor *, const sn_tensor *,
                            const sn_tensor *, const sn_tensor *, const sn_tensor *, const sn_linattn_opts *);
typedef sn_status (*step_fn)(sn_ctx *, sn_tensor *, sn_tensor *, const sn_tensor *, const sn_tensor *,
                             const sn_tensor *, const sn_tensor *, const sn_linattn_opts *);

typedef struct {
  const char *fn, *gate; /* "seqnn.F.<kernel>", the gate's name */
  bool gate_optional;
  fwd_fn fwd;
  bwd_fn bwd;
  step_fn step;
} kernel;

static const kernel GLA = {"seqnn.F.gated_linear_attention", "g", true, sn_gated_linear_attention_fwd,
                           sn_gated_linear_attention_bwd, sn_gated_linear_attention_step};
static const kernel DELTA = {"seqnn.F.delta_rule", "beta", false, sn_delta_rule_fwd, sn_delta_rule_bwd,
                             sn_delta_rule_step};

static void check(lua_State *L, const kernel *K, sn_status st) {
  if (st != SN_OK) sn_lua_raise(L, K->fn, st);
}

/* q, k, v at first, first+1, first+2 and the gate after them (step: of one token). */
static void read_inputs(lua_State *L, const kernel *K, int first, bool step, sn_tensor **q, sn_tensor **k,
                        sn_tensor **v, sn_tensor **gate) {
  *q = sn_lua_rows_arg(L, first, K->fn, "q", false);
  *k = sn_lua_rows_arg(L, first + 1, K->fn, "k", false);
  *v = sn_lua_rows_arg(L, first + 2, K->fn, "v", false);
  *gate = sn_lua_rows_arg(L, first + 3, K->fn, K->gate, K->gate_optional);
  /* The outputs are made from q's and v's sizes. */
  const char *t = step ? "1" : "T";
  if ((*q)->ndim != 4) sn_lua_fail(L, "%s: q must be (B, %s, H, Dk), got %s", K->fn, t, SN_SHAPE(*q));
  if ((*v)->ndim != 4) sn_lua_fail(L, "%s: v must be (B, %s, H, Dv), got %s", K->fn, t, SN_SHAPE(*v));
}

/* The scale at idx and the initial state at h0 (0: none). */
static sn_linattn_opts read_opts(lua_State *L, const kernel *K, int scale, int h0) {
  if (lua_type(L, scale) != LUA_TNUMBER)
    sn_lua_fail(L, "%s: scale must be a number, got %s", K->fn, luaL_typename(L, scale));
  double s = lua_tonumber(L, scale);
  if (!isfinite((float)s)) sn_lua_fail(L, "%s: scale must be a finite f32, got %g", K->fn, s);
  return (sn_linattn_opts){.scale = (float)s,
                           .initial_state = h0 ? sn_lua_rows_arg(L, h0, K->fn, "initial_state", true) : NULL};
}

static const kernel *kernel_of(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(2)); }

static int l_fwd(lua_State *L) {
  const kernel *K = kernel_of(L);
  lua_settop(L, 8);
  sn_tensor *q, *k, *v, *gate;
  read_inputs(L, K, 1, false, &q, &k, &v, &gate);
  sn_linattn_opts opts = read_opts(L, K, 5, 6);
  int64_t B = q->size[0], T = q->size[1], H = q->size[2], Dk = q->size[3], Dv = v->size[3];
  sn_tensor *o = sn_lua_push_empty(L, K->fn, SN_F32, 4, (int64_t[]){B, T, H, Dv}), *final_state = NULL, *chunks = NULL;
  if (lua_toboolean(L, 7)) final_state = sn_lua_push_empty(L, K->fn, SN_F32, 4, (int64_t[]){B, H, Dk, Dv});
  else lua_pushnil(L);
  if (lua_toboolean(L, 8))
    chunks = sn_lua_push_empty(L, K->fn, SN_F32, 5,
                               (int64_t[]){B, H, (T + SN_LINATTN_CHUNK - 1) / SN_LINATTN_CHUNK, Dk, Dv});
  else lua_pushnil(L);
  check(L, K, K->fwd(sn_lua_ctx(L), o, final_state, chunks, q, k, v, gate, &opts));
  return 3;
}

static int l_bwd(lua_State *L) {
  const kernel *K = kernel_of(L);
  lua_settop(L, 9);
  sn_tensor *dout = sn_lua_rows_arg(L, 1, K->fn, "grad_output", false);
  sn_tensor *dfinal = sn_lua_rows_arg(L, 2, K->fn, "grad_final_state", true);
  sn_tensor *chunks = sn_lua_check_tensor(L, 3, K->fn, "chunk_states", SN_F32);
  sn_tensor *q, *k, *v, *gate;
  read_inputs(L, K, 4, false, &q, &k, &v, &gate);
  sn_linattn_opts opts = read_opts(L, K, 8, 9);
  int64_t B = q->size[0], H = q->size[2], Dk = q->size[3], Dv = v->size[3];
  sn_tensor *dq = sn_lua_push_empty(L, K->fn, SN_F32, 4, q->size), *dk = sn_lua_push_empty(L, K->fn, SN_F32, 4, q->size);
  sn_tensor *dv = sn_lua_push_empty(L, K->fn, SN_F32, 4, v->size), *dgate = NULL, *dh0 = NULL;
  if (gate) {
    if (gate->ndim != 3 && gate->ndim != 4)
      sn_lua_fail(L, "%s: %s must be (B, T, H)%s, got %s", K->fn, K->gate, K->gate_optional ? " or (B, T, H, Dk)" : "",
                  SN_SHAPE(gate));
    dgate = sn_lua_push_empty(L, K->fn, SN_F32, gate->ndim, gate->size);
  } else {
    lua_pushnil(L);
  }
  if (opts.initial_state) dh0 = sn_lua_push_empty(L, K->fn, SN_F32, 4, (int64_t[]){B, H, Dk, Dv});
  else lua_pushnil(L);
  check(L, K, K->bwd(sn_lua_ctx(L), dq, dk, dv, dgate, dh0, dout, dfinal, chunks, q, k, v, gate, &opts));
  return 5;
}

static int l_step(lua_State *L) {
  const kernel *K = kernel_of(L);
  lua_settop(L, 6);
  sn_tensor *state = sn_lua_check_tensor(L, 1, K->fn, "state", SN_F32);
  sn_tensor *q, *k, *v, *gate;
  read_inputs(L, K, 2, true, &q, &k, &v, &gate);
  sn_linattn_opts opts = read_opts(L, K, 6, 0);
  sn_tensor *o = sn_lua_push_empty(L, K->fn, SN_F32, 4, (int64_t[]){q->size[0], 1, q->size[2], v->size[3]});
  check(L, K, K->step(sn_lua_ctx(L), o, state, q, k, v, gate, &opts));
  return 1;
}

/* core["k_" .. name .. "_fwd" / "_bwd" / "_step"], each with upvalues ctx and the kernel. */
static void open_kernel(lua_State *L, int module, int ctx, const char *name, const kernel *K) {
  static const struct {
    const char *suffix;
    lua_CFunction f;
  } parts[] = {{"fwd", l_fwd}, {"bwd", l_bwd}, {"step", l_step}};
  for (int i = 0; i < 3; i++) {
    char key[64];
    snprintf(key, sizeof key, "k_%s_%s", name, parts[i].suffix);
    lua_pushvalue(L, ctx);
    lua_pushlightuserdata(L, (void *)K);
    lua_pushcclosure(L, parts[i].f, 2);
    lua_setfield(L, module, key);
  }
}

/* Expects module, ctx on top (as lseqnn.c calls every open function); leaves them. */
void sn_lua_open_linear_attention(lua_State *L) {
  int ctx = lua_gettop(L), module = ctx - 1;
  open_kernel(L, module, ctx, "gated_linear_attention", &GLA);
  open_kernel(L, module, ctx, "delta_rule", &DELTA);
}
