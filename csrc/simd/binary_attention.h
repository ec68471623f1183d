/* simd/binary_attention.h -- internal: the per-sequence sweeps of kernels/binary_attention.c
 * (EcoFormer's causal binary-code attention), one table per instruction set. The code is
 * written once, in simd/binary_attention_tile.h, with GCC vector types of one register; each
 * of binary_attention_{scalar,avx2,avx512}.c defines BA_TABLE and includes that file under
 * its ISA flags. The AVX-512 table also needs VPOPCNTDQ (it turns
 * the target on itself, so the Makefile's generic AVX-512 rule builds it), and the kernel
 * picks it only when the CPU reports that extension.
 *
 * Per (batch, head) the codes are b-bit integers (bit n set <=> h_n = +1), packed LSB-first
 * in one int64 per token, and everything is normalized linear attention over augmented
 * vectors: query q~ = [h; c], key k~ = [h; 1], value v~ = [v; 1] with c = b + 1, so that
 *   q~_i . k~_j = h_i . h_j + c = 2b + 1 - 2 popcount(code_i ^ code_j) >= 1,
 * the state is S = S0 + sum_j k~_j v~_j^T ((b+1) x (Dv+1): rows n < b hold M = sum h v^T
 * and z = sum h in the last column, row b holds sum v and the token count), and q~_i^T S_i
 * is [numerator, denominator] of token i. Rows of S (and every other Dv+1 vector) are
 * padded with zeros to Dp = a multiple of 16 floats.
 *
 * Results do not depend on the table: the similarities are exact integers, every product
 * with +-1 is an add or subtract (a sign-bit flip, no branch), there is no contraction into
 * FMA (C11 mode), the lanes of every vector loop are output elements that take their terms
 * in a fixed order, and the one horizontal sum (g . o per token) goes through 16 lanes in
 * every build. So the portable, AVX2 and popcount tables give the same bits. */
#ifndef SN_SIMD_BINARY_ATTENTION_H
#define SN_SIMD_BINARY_ATTENTION_H

#include <stdint.h>

#define BA_CHUNK 64 /* tokens per chunk: the intra-chunk similarities are a BA_CHUNK^2 block */
#define BA_PAD 16   /* Dp, bp: multiples of the widest vector and of the dot products' lanes */

/* One (batch, head) sequence. Token t's code at codes[t * cs], its value row at v + t * vs,
 * and so on; every buffer is the caller's (workspace), 64-byte aligned, sizes in floats. */
typedef struct ba_seq {
  int64_t T, Dv, Dp, bp; /* Dp = Dv + 1 padded, bp = bits padded */
  int bits;
  const int64_t *codes;
  int64_t cs;
  const float *v;
  int64_t vs;
  float *out, *den; /* fwd: out row at out + t * os (Dv floats), den[t * ds] */
  int64_t os, ds;
  /* bwd: the upstream gradient and the forward's out and den (same strides as out/den
   * for out and den, gs for g), dv rows at dv + t * os, dh rows at dh + t * hs (bits). */
  const float *g;
  int64_t gs, hs;
  float *dv, *dh;
  /* scratch */
  float *S;      /* (bits+1) x Dp: the state, set by the caller (initial state or zeros);
                  * fwd leaves the final state in it */
  float *D;      /* bwd: (bits+1) x Dp: the gradient of the state leaving the sequence
                  * (or zeros), left holding the gradient of the initial state */
  float *states; /* bwd: nchunks x (bits+1) x Dp */
  float *V, *U;  /* BA_CHUNK x Dp */
  float *Hf, *dhb; /* BA_CHUNK x bp: +-1 features (0 past bits), dh rows */
  float *W, *dS; /* BA_CHUNK x BA_CHUNK */
  float *acc;    /* Dp */
  float *VT;     /* bwd: Dp x BA_CHUNK: V transposed */
  float *ST, *DT; /* bwd: Dp x bp: the first bits rows of S_prev and of D, transposed */
} ba_seq;

/* Floats of scratch a sequence needs (bwd: with the chunk states). */
static inline int64_t ba_scratch_floats(int64_t T, int bits, int64_t Dp, int64_t bp, int bwd) {
  int64_t nch = (T + BA_CHUNK - 1) / BA_CHUNK, st = (bits + 1) * Dp;
  int64_t n = st + 2 * BA_CHUNK * Dp + BA_CHUNK * BA_CHUNK + Dp;
  if (bwd) n += st + nch * st + 2 * BA_CHUNK * bp + BA_CHUNK * BA_CHUNK + Dp * BA_CHUNK + 2 * Dp * bp;
  return n;
}

typedef struct sn_ba_ops {
  const char *name;
  /* w[j] = 2 bits + 1 - 2 popcount(code ^ codes[j]) for j < n, as floats. */
  void (*weights)(float *w, const uint64_t *codes, int64_t n, uint64_t code, int bits);
  /* The forward of one sequence: out, den, and the final state in s->S. */
  void (*fwd)(const ba_seq *s);
  /* The backward of one sequence: dv, dh (the gradient of the +-1 features), and the
   * initial state's gradient in s->D; s->S holds the initial state (overwritten). */
  void (*bwd)(const ba_seq *s);
  /* One decoding step: S += k~ v~^T, then out = (q~^T S)[:Dv] / (q~^T S)[Dv]; S is
   * (bits+1) x (Dv+1) unpadded (the state tensor's layout), acc Dp floats of scratch.
   * Returns the denominator. */
  float (*step)(float *out, float *S, float *acc, uint64_t code, const float *v, int64_t Dv, int bits);
} sn_ba_ops;

extern const sn_ba_ops sn_ba_scalar, sn_ba_avx2, sn_ba_avx512;

#endif
