/* vec_switch.h -- the op switches shared by the per-ISA files. Each file defines
 * unary_loop, binary_loop and scalar_loop as inline functions of a constant op, then
 * includes this: the switch turns the op into a constant, so every case compiles to a
 * loop specialised for that op, with no branch on the op inside. */
static void unary(sn_unop op, float *y, const float *x, int64_t n) {
  switch (op) {
  case SN_EXP: unary_loop(SN_EXP, y, x, n); break;
  case SN_LOG: unary_loop(SN_LOG, y, x, n); break;
  case SN_TANH: unary_loop(SN_TANH, y, x, n); break;
  case SN_SIGMOID: unary_loop(SN_SIGMOID, y, x, n); break;
  case SN_SILU: unary_loop(SN_SILU, y, x, n); break;
  case SN_GELU: unary_loop(SN_GELU, y, x, n); break;
  case SN_SOFTPLUS: unary_loop(SN_SOFTPLUS, y, x, n); break;
  case SN_SQRT: unary_loop(SN_SQRT, y, x, n); break;
  case SN_RSQRT: unary_loop(SN_RSQRT, y, x, n); break;
  case SN_ABS: unary_loop(SN_ABS, y, x, n); break;
  case SN_NEG: unary_loop(SN_NEG, y, x, n); break;
  default: break;
  }
}

static void binary(sn_binop op, float *y, const float *a, const float *b, int64_t n) {
  switch (op) {
  case SN_ADD: binary_loop(SN_ADD, y, a, b, n); break;
  case SN_SUB: binary_loop(SN_SUB, y, a, b, n); break;
  case SN_MUL: binary_loop(SN_MUL, y, a, b, n); break;
  case SN_DIV: binary_loop(SN_DIV, y, a, b, n); break;
  case SN_POW: binary_loop(SN_POW, y, a, b, n); break;
  case SN_MAX: binary_loop(SN_MAX, y, a, b, n); break;
  case SN_MIN: binary_loop(SN_MIN, y, a, b, n); break;
  default: break;
  }
}

static void binary_scalar(sn_binop op, float *y, const float *a, float s, int64_t n, bool first) {
  switch (op) {
  case SN_ADD: scalar_loop(SN_ADD, y, a, s, n, first); break;
  case SN_SUB: scalar_loop(SN_SUB, y, a, s, n, first); break;
  case SN_MUL: scalar_loop(SN_MUL, y, a, s, n, first); break;
  case SN_DIV: scalar_loop(SN_DIV, y, a, s, n, first); break;
  case SN_POW: scalar_loop(SN_POW, y, a, s, n, first); break;
  case SN_MAX: scalar_loop(SN_MAX, y, a, s, n, first); break;
  case SN_MIN: scalar_loop(SN_MIN, y, a, s, n, first); break;
  default: break;
  }
}
