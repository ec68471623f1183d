"""bench/peers/linear_attention_torch.py -- the PyTorch peer of the delta rule (DeltaNet) and
gated linear attention (GLA), fp32, 2 threads, forward + backward.

Layout: q, k (B,T,H,Dk), v (B,T,H,Dv), beta (B,T,H), g log-gates (B,T,H,Dk) (GLA, per key
dim) or (B,T,H) (per head); q is scaled by Dk^-0.5. State S (B,H,Dk,Dv), o_t = S_t^T q_t.
Implementations (written from the math; autograd does every backward):
  delta_rule_recurrent  the naive loop over t: v^_t = beta_t (v_t - S^T k_t),
                        S <- S + k_t v^_t^T, o_t = S^T q_t.
  delta_rule_chunked    the chunked WY/UT form, chunk 64 (the last one zero-padded, which
                        leaves the state alone: padded k, v, beta are 0). Batched over all
                        chunks at once (B,H,N,C,C): Kb = beta K, Vb = beta V,
                        A = strict_tril(Kb K^T), [W U] = (I + A)^-1 [Kb Vb] by one batched
                        unit-lower triangular solve (torch.linalg.solve_triangular; the same
                        as T = (I + A)^-1, W = T Kb, U = T Vb without forming T). Then the only
                        loop, the state pass over chunks: Vn = U - W S, S <- S + K^T Vn,
                        keeping each chunk's entry state; after it, batched again:
                        O = Q S_entry + tril(Q K^T) Vn.
  gla_recurrent         the naive loop: S <- exp(g_t)[:,None] * S + k_t v_t^T, o_t = S^T q_t.
  gla_chunked           chunk 64 with in-chunk cumulative gates G (inclusive cumsum of g);
                        the in-chunk scores A_ij = sum_d q_id k_jd exp(G_id - G_jd), j <= i,
                        by the sub-chunk factorization (sub-chunk 8), every exponent <= 0:
                        the diagonal 8x8 blocks from the (8,8,Dk) difference tensor masked
                        to j <= i before the exp; the blocks below them as batched GEMMs of
                        q_i exp(G_i - G_r) exp(G_r - G_e) by k_j exp(G_e - G_j) (r: the end of
                        the sub-chunk before the query's, e: the end of the key's; the blocks
                        on and above the diagonal get exp(-inf) = 0 there). Sub-chunk 8 ran
                        faster here than 16 or 32 (less elementwise work on the diagonal
                        tensors; 16 is fla's). Then O = A V + (Q exp(G)) S_entry, the state
                        pass over chunks S <- exp(G_C)[:,None] S + (K exp(G_C - G))^T V the
                        only loop, as in delta_rule_chunked.
                        Per-head gates are broadcast over Dk.

Before timing, chunked == recurrent is asserted on B=2, T=100 (not a multiple of the chunk),
H=2, Dk=20, Dv=24 (L2-normalized keys, beta = sigmoid(x), g = logsigmoid(x)/16) for o and the
gradients of q, k, v and beta (delta rule) or g (GLA, per-key and per-head gates): rtol 1e-4
plus an absolute floor of 1e-5 x the tensor's max |ref|. Timings are forward + backward of
loss = (o * G).sum() (G fixed, random) to q, k, v, beta / g: median after warm-up.

Usage: linear_attention_torch.py [delta|gla|long|delta_chunked|delta_recurrent|gla_chunked|
gla_recurrent|delta_long|gla_long|all ...] (delta = delta_chunked delta_recurrent, gla =
gla_chunked gla_recurrent, long = delta_long gla_long; default all). Prints
  torch <version> threads <n> blas <OpenBLAS core>
  check_ok B2 T100 H2 Dk20 Dv24 max_err <e> (...)
then one line per measurement, `name value tags...`:
  delta_rule_chunked_fwdbwd_ms <ms> B2 H4 T1024 Dk64 Dv64      (2 warm-ups, median of 9)
  delta_rule_recurrent_fwdbwd_ms <ms> B2 H4 T1024 Dk64 Dv64    (1 warm-up, median of 3)
  gla_chunked_fwdbwd_ms <ms> B2 H4 T1024 Dk64 Dv64 (...)       (2 warm-ups, median of 9)
  gla_recurrent_fwdbwd_ms <ms> B2 H4 T1024 Dk64 Dv64 (...)     (1 warm-up, median of 3)
  delta_rule_chunked_long_us_per_token <us> B2 H4 T16384 Dk64 Dv64 (fwd+bwd <ms> ms, ...)
  gla_chunked_long_us_per_token <us> B2 H4 T16384 Dk64 Dv64 (fwd+bwd <ms> ms, ...)
      per token = per (b, t) position, all heads; 1 warm-up, median of 3; with the ratio to
      the T1024 per-token cost when that ran in the same process; or
      `<name>_long_skip <why>` when the estimated peak exceeds ~8 GB or the memory available
or `skip: ...` (exit 0) when torch cannot be imported; a failed check exits 1 with
`check FAILED: ...`. Run it through run_linear_attention.sh (jemalloc, both
OMP_WAIT_POLICY values).
"""
import sys
import time
import peerutil
from peerutil import median_ms

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print(f"skip: import torch failed ({e})")
    sys.exit(0)

THREADS = 2
CHUNK, SUB = 64, 8
B, H, T, DK, DV = 2, 4, 1024, 64, 64
LONG_T = 16384
PEAK_LIMIT = 8 << 30
# Peak memory per (b, t) position of a chunked fwd+bwd at H = 4, Dk = Dv = 64: ru_maxrss rose
# over the process's size before the first step by 20-23 KiB (delta rule) and 62-67 KiB (GLA,
# its (B,H,T,8,Dk) sub-chunk tensors) per position at B2 T1024, 4096 and 16384 (0.63 and
# 1.9 GB at T16384); about 1.5x that.
PEAK_BYTES_PER_TOKEN = {"delta": 32 << 10, "gla": 96 << 10}


# --------------------------------------------------------------------------------------------
# layout helpers

def _heads_first(x):
    """(B,T,H,...) -> (B,H,T,...)."""
    return x.transpose(1, 2)


def _chunks(x, C):
    """(B,H,T,D) -> (B,H,N,C,D), T zero-padded up to N*C."""
    Bn, Hn, Tn, Dn = x.shape
    N = -(-Tn // C)
    if N * C != Tn:
        x = F.pad(x, (0, 0, 0, N * C - Tn))
    return x.reshape(Bn, Hn, N, C, Dn)


def _unchunk(x, Tn):
    """(B,H,N,C,D) -> (B,T,H,D)."""
    Bn, Hn, N, C, Dn = x.shape
    return x.reshape(Bn, Hn, N * C, Dn)[:, :, :Tn].transpose(1, 2)


def _gates(g, k):
    """Per-head gates (B,T,H) broadcast to per-key (B,T,H,Dk)."""
    return g.unsqueeze(-1).expand_as(k) if g.dim() == 3 else g


# --------------------------------------------------------------------------------------------
# delta rule

def delta_rule_recurrent(q, k, v, beta):
    Bn, Tn, Hn, Dk = k.shape
    q = q * Dk ** -0.5
    S = q.new_zeros(Bn, Hn, Dk, v.shape[-1])
    # per-step slices from unbind: one backward node per tensor (indexing would write a
    # zero-filled full-size gradient per step)
    qs, ks, vs, bs = q.unbind(1), k.unbind(1), v.unbind(1), beta.unbind(1)
    os_ = []
    for t in range(Tn):
        kt = ks[t].unsqueeze(-2)                                    # (B,H,1,Dk)
        vhat = bs[t].unsqueeze(-1) * (vs[t] - (kt @ S).squeeze(-2))  # (B,H,Dv)
        S = S + kt.transpose(-1, -2) * vhat.unsqueeze(-2)
        os_.append((qs[t].unsqueeze(-2) @ S).squeeze(-2))
    return torch.stack(os_, dim=1)


def delta_rule_chunked(q, k, v, beta, C=CHUNK):
    Tn, Dk = k.shape[1], k.shape[-1]
    q = _chunks(_heads_first(q * Dk ** -0.5), C)                    # (B,H,N,C,Dk)
    k = _chunks(_heads_first(k), C)
    v = _chunks(_heads_first(v), C)                                  # (B,H,N,C,Dv)
    beta = _chunks(_heads_first(beta).unsqueeze(-1), C)              # (B,H,N,C,1)
    kb, vb = k * beta, v * beta
    A = (kb @ k.transpose(-1, -2)).tril(-1)                          # (B,H,N,C,C)
    # (I + A) [W U] = [Kb Vb]; unitriangular: the (zero) diagonal of A is read as 1
    WU = torch.linalg.solve_triangular(A, torch.cat([kb, vb], -1), upper=False,
                                       unitriangular=True)
    W, U = WU.split([Dk, v.shape[-1]], -1)
    S = q.new_zeros(q.shape[0], q.shape[1], Dk, v.shape[-1])
    entry, vn = [], []
    for Wn, Un, Kn in zip(W.unbind(2), U.unbind(2), k.unbind(2)):
        entry.append(S)
        Vn = Un - Wn @ S
        vn.append(Vn)
        S = S + Kn.transpose(-1, -2) @ Vn
    entry, vn = torch.stack(entry, 2), torch.stack(vn, 2)            # (B,H,N,Dk,Dv), (B,H,N,C,Dv)
    o = q @ entry + (q @ k.transpose(-1, -2)).tril() @ vn
    return _unchunk(o, Tn)


# --------------------------------------------------------------------------------------------
# gated linear attention

def gla_recurrent(q, k, v, g):
    Bn, Tn, Hn, Dk = k.shape
    q = q * Dk ** -0.5
    g = _gates(g, k)
    S = q.new_zeros(Bn, Hn, Dk, v.shape[-1])
    qs, ks, vs, gs = q.unbind(1), k.unbind(1), v.unbind(1), g.unbind(1)
    os_ = []
    for t in range(Tn):
        S = torch.exp(gs[t]).unsqueeze(-1) * S + ks[t].unsqueeze(-1) * vs[t].unsqueeze(-2)
        os_.append((qs[t].unsqueeze(-2) @ S).squeeze(-2))
    return torch.stack(os_, dim=1)


def gla_chunked(q, k, v, g, C=CHUNK, c=SUB):
    Tn, Dk = k.shape[1], k.shape[-1]
    g = _gates(g, k)
    q = _chunks(_heads_first(q * Dk ** -0.5), C)                    # (B,H,N,C,Dk)
    k = _chunks(_heads_first(k), C)
    v = _chunks(_heads_first(v), C)                                  # (B,H,N,C,Dv)
    G = _chunks(_heads_first(g), C).cumsum(-2)                       # (B,H,N,C,Dk), <= 0
    Bn, Hn, N = q.shape[:3]
    ns = C // c
    # ---- in-chunk scores A (B,H,N,C,C), on sub-chunks (B,H,N,ns,c,Dk)
    qs, ks, Gs = (x.reshape(Bn, Hn, N, ns, c, Dk) for x in (q, k, G))
    # diagonal blocks: exp(G_i - G_j) masked to j <= i before the exp
    diff = Gs.unsqueeze(-2) - Gs.unsqueeze(-3)                       # (...,ns,c_i,c_j,Dk)
    upper = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)
    E = torch.exp(diff.masked_fill(upper.unsqueeze(-1), float("-inf")))
    A_diag = (E * (qs.unsqueeze(-2) * ks.unsqueeze(-3))).sum(-1)    # (...,ns,c_i,c_j)
    # blocks below the diagonal: query sub-chunk sq > key sub-chunk sk
    Ge = Gs[..., -1, :]                                              # (...,ns,Dk) sub-chunk end
    Gr = torch.cat([torch.zeros_like(Ge[..., :1, :]), Ge[..., :-1, :]], -2)  # before its start
    qt = qs * torch.exp(Gs - Gr.unsqueeze(-2))
    kt = ks * torch.exp(Ge.unsqueeze(-2) - Gs)
    not_below = torch.ones(ns, ns, dtype=torch.bool, device=q.device).triu()
    between = torch.exp((Gr.unsqueeze(-2) - Ge.unsqueeze(-3))       # (...,sq,sk,Dk)
                        .masked_fill(not_below.unsqueeze(-1), float("-inf")))
    A_off = ((qt.unsqueeze(-3) * between.unsqueeze(-2))             # (...,sq,sk,c,Dk)
             @ kt.unsqueeze(-4).transpose(-1, -2))                  # (...,sq,sk,c_i,c_j)
    blocks = A_off + torch.diag_embed(A_diag.permute(0, 1, 2, 4, 5, 3)).permute(0, 1, 2, 5, 6, 3, 4)
    A = blocks.transpose(-3, -2).reshape(Bn, Hn, N, C, C)
    # ---- state pass over chunks, then the inter-chunk part batched
    GC = G[..., -1, :]                                               # (B,H,N,Dk)
    kd = k * torch.exp(GC.unsqueeze(-2) - G)
    dC = torch.exp(GC).unsqueeze(-1)                                 # (B,H,N,Dk,1)
    S = q.new_zeros(Bn, Hn, Dk, v.shape[-1])
    entry = []
    for dn, Kn, Vn in zip(dC.unbind(2), kd.unbind(2), v.unbind(2)):
        entry.append(S)
        S = dn * S + Kn.transpose(-1, -2) @ Vn
    entry = torch.stack(entry, 2)                                    # (B,H,N,Dk,Dv)
    o = (q * torch.exp(G)) @ entry + A @ v
    return _unchunk(o, Tn)


# --------------------------------------------------------------------------------------------
# inputs, check, timing

def inputs(Bn, Tn, Hn, Dk, Dv, kind, seed=1, per_head=False):
    """Leaf tensors q, k (L2-normalized), v, and beta = sigmoid(x) (kind "delta") or
    g = logsigmoid(x)/16 (kind "gla"); and the fixed output gradient."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = rnd(Bn, Tn, Hn, Dk), F.normalize(rnd(Bn, Tn, Hn, Dk), dim=-1), rnd(Bn, Tn, Hn, Dv)
    if kind == "delta":
        last = torch.sigmoid(rnd(Bn, Tn, Hn))
    else:
        last = F.logsigmoid(rnd(Bn, Tn, Hn) if per_head else rnd(Bn, Tn, Hn, Dk)) / 16
    return [x.requires_grad_() for x in (q, k, v, last)], rnd(Bn, Tn, Hn, Dv)


def check():
    shape = (2, 100, 2, 20, 24)
    worst, n = 0.0, 0
    cases = [("delta_rule", "delta", False, delta_rule_recurrent, delta_rule_chunked,
              ("o", "q", "k", "v", "beta")),
             ("gla", "gla", False, gla_recurrent, gla_chunked, ("o", "q", "k", "v", "g")),
             ("gla per-head", "gla", True, gla_recurrent, gla_chunked,
              ("o", "q", "k", "v", "g"))]
    for label, kind, per_head, ref_fn, fn, names in cases:
        xs, G = inputs(*shape, kind, seed=7, per_head=per_head)
        outs = []
        for f in (ref_fn, fn):
            o = f(*xs)
            outs.append([o.detach()] + list(torch.autograd.grad((o * G).sum(), xs)))
        for name, r, p in zip(names, *outs):
            # rtol 1e-4 on each element, with an absolute floor of 1e-5 * the tensor's max
            # |ref| for elements near zero (sums of many terms that cancel)
            tol = 1e-4 * r.abs() + 1e-5 * r.abs().max()
            err = (p - r).abs()
            if not bool((err <= tol).all()):
                i = int((err - tol).argmax())
                sys.exit(f"check FAILED: {label} {name}: chunked {p.flatten()[i].item():.7g} "
                         f"recurrent {r.flatten()[i].item():.7g} "
                         f"(max abs err {err.max().item():.3g})")
            worst = max(worst, (err.max() / r.abs().max()).item())
            n += 1
    print("check_ok B%d T%d H%d Dk%d Dv%d max_err %.2g (of max |ref|, o and 4 gradients; "
          "delta rule, GLA per-key and per-head gates; chunk %d)" % (*shape, worst, CHUNK),
          flush=True)


def time_fn(fn, kind, Tn, warmup, reps):
    xs, G = inputs(B, Tn, H, DK, DV, kind)

    def step():
        for x in xs:
            x.grad = None
        (fn(*xs) * G).sum().backward()

    return median_ms(step, warmup, reps)


TAGS = f"B{B} H{H} T{T} Dk{DK} Dv{DV}"
CHUNKED_MS = {}  # T=1024 chunked times of this run, for the long runs' per-token comparison


def bench_delta_chunked():
    ms = CHUNKED_MS["delta"] = time_fn(delta_rule_chunked, "delta", T, 2, 9)
    print(f"delta_rule_chunked_fwdbwd_ms {ms:.2f} {TAGS} (chunk {CHUNK})", flush=True)


def bench_delta_recurrent():
    reps = 3
    ms = time_fn(delta_rule_recurrent, "delta", T, 1, reps)
    print(f"delta_rule_recurrent_fwdbwd_ms {ms:.1f} {TAGS} ({reps} repetitions after 1 warm-up)",
          flush=True)


def bench_gla_chunked():
    ms = CHUNKED_MS["gla"] = time_fn(gla_chunked, "gla", T, 2, 9)
    print(f"gla_chunked_fwdbwd_ms {ms:.2f} {TAGS} (per-key gates, chunk {CHUNK}, sub-chunk {SUB})",
          flush=True)


def bench_gla_recurrent():
    reps = 3
    ms = time_fn(gla_recurrent, "gla", T, 1, reps)
    print(f"gla_recurrent_fwdbwd_ms {ms:.1f} {TAGS} (per-key gates, {reps} repetitions after "
          "1 warm-up)", flush=True)


def bench_long(name, fn, kind):
    peak = PEAK_BYTES_PER_TOKEN[kind] * B * LONG_T
    avail = PEAK_LIMIT
    try:  # never plan beyond what the machine has free now
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        avail = min(avail, int(info["MemAvailable"].split()[0]) * 1024 - (1 << 30))
    except (OSError, KeyError, ValueError):
        pass
    tags = f"B{B} H{H} T{LONG_T} Dk{DK} Dv{DV}"
    if peak > avail:
        print(f"{name}_long_skip {tags}: estimated peak {peak / 2**30:.1f} GiB exceeds "
              f"{avail / 2**30:.1f} GiB", flush=True)
        return
    reps = 3
    ms = time_fn(fn, kind, LONG_T, 1, reps)
    us = ms * 1e3 / (B * LONG_T)
    short = CHUNKED_MS.get(kind)
    vs = f"; x{us / (short * 1e3 / (B * T)):.2f} the T{T} per-token cost of this run" if short else ""
    print(f"{name}_long_us_per_token {us:.2f} {tags} (fwd+bwd {ms:.1f} ms, median of {reps} "
          f"after 1 warm-up; estimated peak {peak / 2**30:.1f} GiB{vs})", flush=True)


BENCHES = {"delta_chunked": bench_delta_chunked, "delta_recurrent": bench_delta_recurrent,
           "gla_chunked": bench_gla_chunked, "gla_recurrent": bench_gla_recurrent,
           "delta_long": lambda: bench_long("delta_rule_chunked", delta_rule_chunked, "delta"),
           "gla_long": lambda: bench_long("gla_chunked", gla_chunked, "gla")}
GROUPS = {"delta": ["delta_chunked", "delta_recurrent"], "gla": ["gla_chunked", "gla_recurrent"],
          "long": ["delta_long", "gla_long"], "all": list(BENCHES)}


if __name__ == "__main__":
    peerutil.main(BENCHES, GROUPS, THREADS, check)
