"""bench/peers/scan_torch.py -- the PyTorch peer of the Mamba-1 selective scan and the Mamba
block (KERNELS.md section 2), fp32, 2 threads, forward + backward.

Implementations (layout (B,T,D) for u, delta, z; A (D,N); B, C (B,T,N)):
  selective_scan_ref       mamba_ssm's selective_scan_ref: deltaA = exp(einsum(delta, A)) and
                           deltaB_u = einsum(delta, B, u) materialized as (B,T,D,N), then a
                           Python loop over T on a (B,D,N) state; autograd does the backward.
  selective_scan_parallel  as mamba.py (alxndrTL/mamba.py) does it: the same (B,T,D,N) tensors,
                           the recurrence h_t = a_t h_{t-1} + b_t solved by a Blelloch
                           up-sweep/down-sweep over log2(T) levels on (B,D,T,N) copies padded to
                           a power of two, in a torch.autograd.Function whose backward runs the
                           same scan reversed in time (written from that description).
                           selective_scan_parallel_btdn: the same scan on (B,T,D,N) copies.
  MambaBlock               mamba.py's MambaBlock (d_model 768, expand 2, d_state 16, d_conv 4,
                           dt_rank 48) on selective_scan_parallel, mamba_ssm's init.
All apply softplus(delta + delta_bias), the D skip and the z gate y * silu(z).

Before timing, parallel (both layouts) == ref is asserted on B=2, T=37, D=24, N=16 for y and
the gradients of u, delta, A, B, C, D, z, delta_bias (rtol 1e-4, plus an absolute floor of
1e-5 x the tensor's max |ref|). Timings are forward + backward of loss = (y * g).sum()
(g fixed, random) to every input: median of repetitions after warm-up.

Usage: scan_torch.py [parallel|parallel_btdn|ref|long|block|scan|all ...]
(scan = parallel parallel_btdn ref long; default all). Prints
  torch <version> threads <n> blas <OpenBLAS core>
  check_ok B2 T37 D24 N16 max_err <e> (...)
then one line per measurement, `name value tags...`:
  scan_parallel_fwdbwd_ms <ms> B2 T1024 D1536 N16                 (1 warm-up, median of 5)
  scan_parallel_btdn_fwdbwd_ms <ms> B2 T1024 D1536 N16 (...)      (1 warm-up, median of 5)
  scan_ref_fwdbwd_ms <ms> B2 T1024 D1536 N16 (3 repetitions after 1 warm-up)
  scan_parallel_long_us_per_token <us> B<b> T16384 D1536 N16 (fwd+bwd <ms> ms, ...)
      per token = per (b, t) position; (B,D,T,N) layout; B2 when its estimated peak fits in
      ~12 GB and the memory available, else B1 (9.3 GB peak measured), else
      `scan_parallel_long_skip <why>`; 1 warm-up, 1 timed run (~40 s each here)
  mamba_block_fwdbwd_ms <ms> B2 T1024 d768                        (1 warm-up, median of 5)
or `skip: ...` (exit 0) when torch cannot be imported; a failed check exits 1 with
`check FAILED: ...`. Run it through run_scan.sh (jemalloc, both OMP_WAIT_POLICY values).
"""
import math
import sys
import time
import peerutil
from peerutil import median_ms

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    print(f"skip: import torch failed ({e})")
    sys.exit(0)

THREADS = 2
D_INNER, N_STATE = 1536, 16
LONG_T = 16384
PEAK_LIMIT = 12 << 30
# Peak memory of a parallel-scan fwd+bwd in (B,T,D,N) fp32 tensors (1.6 GB each at B=1,
# T=16384): ru_maxrss rose by 5.3 tensors over the process's size before the first step at
# B1 T1024, 4096 and 16384 (9.3 GB peak at T=16384, both layouts); 6 covers the rest.
PEAK_TENSORS = 6


# --------------------------------------------------------------------------------------------
# shared pre/post-processing

def _delta(delta, delta_bias):
    if delta_bias is not None:
        delta = delta + delta_bias
    return F.softplus(delta)  # threshold 20, as mamba_ssm


def _finish(y, u, D, z):
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y


# --------------------------------------------------------------------------------------------
# sequential reference

def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """mamba_ssm.ops.selective_scan_interface.selective_scan_ref in (B,T,D) layout."""
    delta = _delta(delta, delta_bias)
    deltaA = torch.exp(torch.einsum("btd,dn->btdn", delta, A))
    deltaB_u = torch.einsum("btd,btn,btd->btdn", delta, B, u)
    x = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    # mamba_ssm indexes deltaA[:, :, i]; here the per-step slices come from unbind, same
    # values and graph but one backward node per tensor: the backward of each indexing op
    # writes a zero-filled full (B,T,D,N) gradient, 2 x T x 200 MB at T=1024 (~650 s here).
    deltaA, deltaB_u, C = deltaA.unbind(1), deltaB_u.unbind(1), C.unbind(1)
    ys = []
    for t in range(u.shape[1]):
        x = deltaA[t] * x + deltaB_u[t]
        ys.append(torch.einsum("bdn,bn->bd", x, C[t]))
    return _finish(torch.stack(ys, dim=1), u, D, z)


# --------------------------------------------------------------------------------------------
# Blelloch scan of h_t = a_t h_{t-1} + b_t along dimension `dim` (length a power of two),
# in place: b becomes h, a is clobbered. Every level is a pair of strided views updated with
# one addcmul_ (and one mul_ on the up-sweep).

def _at(dim, start, stop, step):
    return (slice(None),) * dim + (slice(start, stop, step),)


def _scan_forward_(a, b, dim):
    """Inclusive scan, forward in time: b[t] <- a[t] b[t-1] + b[t] (b[-1] = 0)."""
    T = a.shape[dim]
    s = 1
    while s < T:  # up-sweep: element 2ks+2s-1 absorbs element 2ks+s-1
        lo, hi = _at(dim, s - 1, None, 2 * s), _at(dim, 2 * s - 1, None, 2 * s)
        b[hi].addcmul_(a[hi], b[lo])
        if 2 * s < T:  # the product over the whole sequence is never used
            a[hi].mul_(a[lo])
        s *= 2
    s = T // 4
    while s >= 1:  # down-sweep: element 2ks+3s-1 takes the finished prefix at 2ks+2s-1
        src, dst = _at(dim, 2 * s - 1, T - s, 2 * s), _at(dim, 3 * s - 1, None, 2 * s)
        b[dst].addcmul_(a[dst], b[src])
        s //= 2


def _scan_reverse_(a, b, dim):
    """Inclusive scan, backward in time: b[t] <- a[t] b[t+1] + b[t] (b[T] = 0)."""
    T = a.shape[dim]
    s = 1
    while s < T:  # mirror image of _scan_forward_
        dst, src = _at(dim, 0, None, 2 * s), _at(dim, s, None, 2 * s)
        b[dst].addcmul_(a[dst], b[src])
        if 2 * s < T:
            a[dst].mul_(a[src])
        s *= 2
    s = T // 4
    while s >= 1:
        dst, src = _at(dim, s, T - 2 * s, 2 * s), _at(dim, 2 * s, None, 2 * s)
        b[dst].addcmul_(a[dst], b[src])
        s //= 2


def _work_copy(x, Tp, bdtn, shift=0):
    """A fresh, zero-padded copy of x (B,T,D,N) holding x[:, shift:] at times 0..T-shift-1,
    stored (B,D,Tp,N) if bdtn (mamba.py's layout) else (B,Tp,D,N). Returns (storage, its
    (B,Tp,D,N) view)."""
    Bn, T, Dn, Nn = x.shape
    w = x.new_empty(Bn, Dn, Tp, Nn) if bdtn else x.new_empty(Bn, Tp, Dn, Nn)
    v = w.transpose(1, 2) if bdtn else w
    v[:, : T - shift].copy_(x[:, shift:])
    v[:, T - shift:].zero_()
    return w, v


class PScan(torch.autograd.Function):
    """H = scan(A, X): H_t = A_t H_{t-1} + X_t over dim 1 of (B,T,D,N) inputs, computed on
    copies padded to a power of two: (B,D,T,N) as mamba.py (bdtn=True), or (B,T,D,N), where
    each time step is one contiguous D*N block. Backward: with G = dL/dX,
    G_t = dH_t + A_{t+1} G_{t+1} (the same scan, reversed in time), dA_t = G_t H_{t-1}."""

    @staticmethod
    def forward(ctx, A, X, bdtn=True):
        T = A.shape[1]
        Tp = 1 << max(T - 1, 0).bit_length()
        dim = 2 if bdtn else 1
        a, _ = _work_copy(A, Tp, bdtn)
        h, hv = _work_copy(X, Tp, bdtn)
        _scan_forward_(a, h, dim)
        del a
        ctx.bdtn = bdtn
        ctx.save_for_backward(A, h)
        return hv[:, :T]

    @staticmethod
    def backward(ctx, dH):
        A, h = ctx.saved_tensors
        bdtn, T = ctx.bdtn, A.shape[1]
        hv = h.transpose(1, 2) if bdtn else h
        Tp = hv.shape[1]
        a, av = _work_copy(A, Tp, bdtn, shift=1)
        g, gv = _work_copy(dH, Tp, bdtn)
        _scan_reverse_(a, g, 2 if bdtn else 1)
        # dA reuses the clobbered coefficients' storage
        av[:, 0].zero_()
        torch.mul(gv[:, 1:T], hv[:, : T - 1], out=av[:, 1:T])
        return av[:, :T], gv[:, :T], None


def selective_scan_parallel(u, delta, A, B, C, D=None, z=None, delta_bias=None, bdtn=True):
    """mamba.py's selective_scan (pscan) with mamba_ssm's arguments, (B,T,D) layout. bdtn:
    run the scan on (B,D,T,N) copies as mamba.py does; False: on (B,T,D,N)."""
    delta = _delta(delta, delta_bias)
    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (B,T,D,N)
    deltaB_u = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (B,T,D,N)
    h = PScan.apply(deltaA, deltaB_u, bdtn)  # (B,T,D,N), a transposed view if bdtn
    y = (h @ C.unsqueeze(-1)).squeeze(-1)  # (B,T,D)
    return _finish(y, u, D, z)


def selective_scan_parallel_btdn(*args, **kw):
    return selective_scan_parallel(*args, bdtn=False, **kw)


# --------------------------------------------------------------------------------------------
# Mamba block (mamba.py's MambaBlock, mamba_ssm's init)

class MambaBlock(nn.Module):
    def __init__(self, d_model=768, d_state=16, expand=2, d_conv=4,
                 dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4):
        super().__init__()
        d_inner = expand * d_model
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1,
                                bias=True)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32))
                                  .repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x):  # (B,T,d_model)
        T = x.shape[1]
        xi, z = self.in_proj(x).chunk(2, dim=-1)
        xi = F.silu(self.conv1d(xi.transpose(1, 2))[..., :T].transpose(1, 2))
        dt, Bm, Cm = self.x_proj(xi).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # its bias goes in as delta_bias
        y = selective_scan_parallel(xi, delta, -torch.exp(self.A_log), Bm, Cm, self.D, z,
                                    self.dt_proj.bias)
        return self.out_proj(y)


# --------------------------------------------------------------------------------------------
# inputs, check, timing

def scan_inputs(Bn, T, Dn, Nn, seed=1):
    """Leaf tensors with mamba-like magnitudes: S4D-real A, delta_bias = inverse softplus of
    dt ~ logU(1e-3, 0.1). Returns the inputs (in argument order) and the fixed gradient g."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    dt = torch.exp(torch.rand(Dn, generator=gen) * (math.log(0.1) - math.log(1e-3))
                   + math.log(1e-3))
    xs = [rnd(Bn, T, Dn),                                     # u
          rnd(Bn, T, Dn, scale=0.5),                          # delta (before bias, softplus)
          -torch.arange(1, Nn + 1, dtype=torch.float32).repeat(Dn, 1)
          * torch.exp(rnd(Dn, Nn, scale=0.1)),                # A
          rnd(Bn, T, Nn), rnd(Bn, T, Nn),                     # B, C
          1 + rnd(Dn, scale=0.1),                             # D
          rnd(Bn, T, Dn),                                     # z
          dt + torch.log(-torch.expm1(-dt))]                  # delta_bias
    return [x.requires_grad_() for x in xs], rnd(Bn, T, Dn)


NAMES = ("y", "u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def check():
    shape = (2, 37, 24, 16)
    xs, g = scan_inputs(*shape, seed=7)
    outs = []
    for fn in (selective_scan_ref, selective_scan_parallel, selective_scan_parallel_btdn):
        y = fn(*xs)
        grads = torch.autograd.grad((y * g).sum(), xs)
        outs.append([y.detach()] + list(grads))
    worst = 0.0
    for name, r, p in [(n, r, p) for out in outs[1:] for n, r, p in zip(NAMES, outs[0], out)]:
        # rtol 1e-4 on each element, with an absolute floor of 1e-5 * the tensor's max |ref|
        # for elements near zero (sums of many terms that cancel)
        tol = 1e-4 * r.abs() + 1e-5 * r.abs().max()
        err = (p - r).abs()
        if not bool((err <= tol).all()):
            i = int((err - tol).argmax())
            sys.exit(f"check FAILED: {name}: parallel {p.flatten()[i].item():.7g} ref "
                     f"{r.flatten()[i].item():.7g} (max abs err {err.max().item():.3g})")
        worst = max(worst, (err.max() / r.abs().max()).item())
    print("check_ok B%d T%d D%d N%d max_err %.2g (of max |ref|, y and 8 gradients, both layouts)"
          % (*shape, worst), flush=True)


def time_scan(fn, shape, warmup, reps):
    xs, g = scan_inputs(*shape)

    def step():
        for x in xs:
            x.grad = None
        (fn(*xs) * g).sum().backward()

    return median_ms(step, warmup, reps)


def bench_parallel():
    ms = time_scan(selective_scan_parallel, (2, 1024, D_INNER, N_STATE), 1, 5)
    print(f"scan_parallel_fwdbwd_ms {ms:.1f} B2 T1024 D{D_INNER} N{N_STATE}", flush=True)


def bench_parallel_btdn():
    ms = time_scan(selective_scan_parallel_btdn, (2, 1024, D_INNER, N_STATE), 1, 5)
    print(f"scan_parallel_btdn_fwdbwd_ms {ms:.1f} B2 T1024 D{D_INNER} N{N_STATE} "
          "(scan on (B,T,D,N) instead of (B,D,T,N))", flush=True)


def bench_ref():
    reps = 3  # ~4 s per fwd+bwd here
    ms = time_scan(selective_scan_ref, (2, 1024, D_INNER, N_STATE), 1, reps)
    print(f"scan_ref_fwdbwd_ms {ms:.1f} B2 T1024 D{D_INNER} N{N_STATE} "
          f"({reps} repetitions after 1 warm-up)", flush=True)


def bench_long():
    tensor = LONG_T * D_INNER * N_STATE * 4  # bytes of (1,T,D,N)
    avail = PEAK_LIMIT
    try:  # never plan beyond what the machine has free now
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        avail = min(avail, int(info["MemAvailable"].split()[0]) * 1024 - (1 << 30))
    except (OSError, KeyError, ValueError):
        pass
    Bn = next((b for b in (2, 1) if PEAK_TENSORS * b * tensor <= avail), 0)
    if not Bn:
        print(f"scan_parallel_long_skip T{LONG_T}: estimated peak "
              f"{PEAK_TENSORS * tensor / 2**30:.1f} GiB at B1 exceeds {avail / 2**30:.1f} GiB")
        return
    # ~40 s per fwd+bwd at B1 here: one warm-up (first touch of ~9 GB), one timed run
    ms = time_scan(selective_scan_parallel, (Bn, LONG_T, D_INNER, N_STATE), 1, 1)
    print(f"scan_parallel_long_us_per_token {ms * 1e3 / (Bn * LONG_T):.1f} B{Bn} T{LONG_T} "
          f"D{D_INNER} N{N_STATE} (fwd+bwd {ms:.1f} ms, 1 repetition after 1 warm-up; "
          f"estimated peak {PEAK_TENSORS * Bn * tensor / 2**30:.1f} GiB)", flush=True)


def bench_block():
    torch.manual_seed(1)
    block = MambaBlock()
    x = torch.randn(2, 1024, 768, requires_grad=True)
    g = torch.randn(2, 1024, 768)

    def step():
        block.zero_grad(set_to_none=True)
        x.grad = None
        (block(x) * g).sum().backward()

    ms = median_ms(step, 1, 5)
    print(f"mamba_block_fwdbwd_ms {ms:.1f} B2 T1024 d768", flush=True)


BENCHES = {"parallel": bench_parallel, "parallel_btdn": bench_parallel_btdn, "ref": bench_ref,
           "long": bench_long, "block": bench_block}
GROUPS = {"scan": ["parallel", "parallel_btdn", "ref", "long"], "all": list(BENCHES)}


if __name__ == "__main__":
    peerutil.main(BENCHES, GROUPS, THREADS, check)
