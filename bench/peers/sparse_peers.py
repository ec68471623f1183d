"""bench/peers/sparse_peers.py -- the PyTorch and SciPy peers of seqnn's block-sparse Linear
(issue 8): y = x W^T + b, W (M=4096 outputs, K=1024 inputs), x (N=128 tokens, K), fp32.

Weights: W, b, x ~ N(0,1) from one seeded generator. For each block shape ro x ri (4x1, 16x1,
4x4) and sparsity s (50 60 70 80 90 95 %), W is pruned by block magnitude, the rule of
sn_bsr_mask (and so of sn.nn.SparseLinear.from_dense): keep the round((1 - s) * nblocks)
blocks of largest L2 norm (exact count; ties: lower row-major block index), zero the rest.
2:4: in every group of 4 consecutive inputs of a row keep the 2 largest |w| (ties: lower
position), the rule of sn_sparse24_from_dense.

Measured (median ms, 1 warm-up, 5-25 repetitions: as many as fit in ~0.5 s):
  torch_dense_ms        F.linear(x, W, b) on the dense W (OpenBLAS SGEMM; 2 threads)
  torch_qint_dense_ms   torch.ao.quantization.quantize_dynamic's int8 Linear on the dense W
                        (dynamic per-token activation quantization, the int8 rows' peer)
  torch_csr_<b>_<s>_ms  torch.addmm(b[:, None], W_csr, x.t().contiguous()) -> y^T (M, N):
                        W as sparse_csr (M, K), the dense operand (K, N) contiguous, the
                        transposes of x and of the result included (the result is returned
                        as the view y^T.t()). The fastest orientation found here: the same
                        product with the strided view x.t() ran ~2x slower, and
                        x @ W^T_csr (dense @ sparse, W^T as sparse_csr (K, M)) ~10x slower.
                        torch 1.13 without MKL cannot multiply sparse_bsr on CPU.
  torch_coo_<b>_<s>_ms  torch.sparse.addmm of W as a coalesced COO tensor, same
                        orientation (often faster than CSR in this torch build)
  numpy_dense_ms        x @ W.T + b with numpy (its BLAS; the core is in the tags)
  scipy_bsr_<b>_<s>_ms  W_bsr @ x.T + b[:, None], W_bsr = scipy.sparse.bsr_matrix built
                        directly from the kept blocks (data, indices, indptr) with
                        blocksize=(ro, ri) (scipy's sparse products are single-threaded)
  torch_csr_two_four_ms, torch_coo_two_four_ms, scipy_csr_two_four_ms
                        the same on the 2:4-pruned W (scipy: csr_matrix; BSR 1x1 is slower)
<b> is four_one, sixteen_one or four_four and <s> fifty ... ninetyfive: measurement names
hold letters and underscores only (what bench/peers/env.sh's run_policies passes on); the
tags after the value give them as b4x1 s90. Each case's result is checked against the dense
product on the pruned W before it is timed (max |err| <= 1e-4 x max |y|, else exit 1 with
`check FAILED: ...`).

Before timing, check() prints `check_ok ...` after verifying on M=64 K=32 N=8, for each
block shape at 70%, the mask (exact count, every kept block's norm >= every dropped one's)
and every peer's product against the dense one.

Libraries: Debian's python3-torch (1.13 here) and python3-scipy (with python3-numpy;
`apt-get install -y python3-scipy`) under /usr/bin/python3. Either may be missing: without
torch its rows print `torch_skip skip: ...` and the numpy/scipy rows still run; without
scipy, `scipy_skip skip: ...` and the torch (and numpy dense) rows run; without both,
`skip: ...` and exit 0.

Usage: sparse_peers.py [torch|scipy|dense|block_4x1|block_16x1|block_4x4|two_four|
torch_dense|torch_qint|torch_4x1|torch_16x1|torch_4x4|torch_24|numpy_dense|scipy_4x1|
scipy_16x1|scipy_4x4|scipy_24|all ...]. Run it through run_sparse.sh (jemalloc, the torch rows
under both OMP_WAIT_POLICY values, the single-threaded scipy rows under PASSIVE).
"""
import os
import sys
import time
import warnings

import peerutil
from peerutil import median_ms

try:
    import torch
    import torch.nn.functional as F
    TORCH_ERR = None
except ImportError as e:
    torch, TORCH_ERR = None, str(e)
try:
    import numpy as np
except ImportError as e:
    np, NUMPY_ERR = None, str(e)
else:
    NUMPY_ERR = None
try:
    import scipy
    import scipy.sparse as sps
    SCIPY_ERR = None
except ImportError as e:
    scipy, SCIPY_ERR = None, str(e)

warnings.filterwarnings("ignore")  # torch's "sparse CSR support is in beta" UserWarning

THREADS = 2
M, K, N = 4096, 1024, 128
BLOCKS = [(4, 1), (16, 1), (4, 4)]
SPARSITIES = [50, 60, 70, 80, 90, 95]
WORD = {1: "one", 4: "four", 16: "sixteen", 50: "fifty", 60: "sixty", 70: "seventy",
        80: "eighty", 90: "ninety", 95: "ninetyfive"}
TAGS = f"M{M} K{K} N{N}"
TARGET_S, MIN_REPS, MAX_REPS = 0.5, 5, 25


def case_name(ro, ri, s):
    return f"{WORD[ro]}_{WORD[ri]}_{WORD[s]}"


def timed(step):
    """Median ms of step(): 1 warm-up, then as many repetitions as fit in ~TARGET_S."""
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    reps = max(MIN_REPS, min(MAX_REPS, int(TARGET_S / max(first, 1e-6))))
    return median_ms(step, 0, reps), reps


# --------------------------------------------------------------------------------------------
# data and masks (numpy when present, else torch: the same rule either way)

def keep_count(nblocks, s):
    """round((1 - s) * nblocks) with C's round (half away from zero), as sn_bsr_mask."""
    return int((1 - s / 100) * nblocks + 0.5)


def data(m, k, n, seed=1):
    """W (m,k), b (m), x (n,k) float32 ~ N(0,1); numpy arrays if numpy is present, else
    torch tensors."""
    if np is not None:
        rng = np.random.default_rng(seed)
        return (rng.standard_normal((m, k), dtype=np.float32),
                rng.standard_normal(m, dtype=np.float32),
                rng.standard_normal((n, k), dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*sh, generator=gen) for sh in ((m, k), (m,), (n, k)))


def block_mask(w, ro, ri, s):
    """Boolean (m/ro, k/ri) mask of the kept blocks of w, and the block norms^2."""
    m, k = w.shape
    mb, kb = m // ro, k // ri
    keep = keep_count(mb * kb, s)
    if np is not None:
        norms = (w.astype(np.float64).reshape(mb, ro, kb, ri) ** 2).sum(axis=(1, 3))
        order = np.argsort(-norms.ravel(), kind="stable")[:keep]
        mask = np.zeros(mb * kb, dtype=bool)
        mask[order] = True
        return mask.reshape(mb, kb), norms
    norms = (w.double().reshape(mb, ro, kb, ri) ** 2).sum(dim=(1, 3))
    order = torch.sort(-norms.flatten(), stable=True).indices[:keep]
    mask = torch.zeros(mb * kb, dtype=torch.bool)
    mask[order] = True
    return mask.reshape(mb, kb), norms


def expand(mask, ro, ri):
    if np is not None:
        return np.repeat(np.repeat(mask, ro, axis=0), ri, axis=1)
    return mask.repeat_interleave(ro, 0).repeat_interleave(ri, 1)


def mask_24(w):
    """Elementwise 2:4 mask: the 2 largest |w| of each group of 4 inputs, ties lower first."""
    m, k = w.shape
    if np is not None:
        a = np.abs(w).reshape(m, k // 4, 4)
        order = np.argsort(-a, axis=2, kind="stable")[:, :, :2]
        mask = np.zeros_like(a, dtype=bool)
        np.put_along_axis(mask, order, True, axis=2)
        return mask.reshape(m, k)
    a = w.abs().reshape(m, k // 4, 4)
    order = torch.sort(-a, dim=2, stable=True).indices[:, :, :2]
    return torch.zeros_like(a, dtype=torch.bool).scatter_(2, order, True).reshape(m, k)


def as_torch(a):
    return a if not hasattr(a, "dtype") or torch is None or isinstance(a, torch.Tensor) \
        else torch.from_numpy(a)


def as_numpy(a):
    return a.numpy() if torch is not None and isinstance(a, torch.Tensor) else a


# --------------------------------------------------------------------------------------------
# the peers' products: each returns step() computing y (or y^T) for x

def torch_csr(ws, b, x):
    wc = as_torch(ws).to_sparse_csr()
    bt = as_torch(b)[:, None]
    xt = as_torch(x)
    return lambda: torch.addmm(bt, wc, xt.t().contiguous()).t()


def torch_coo(ws, b, x):
    w = as_torch(ws).to_sparse().coalesce()
    bt = as_torch(b)[:, None].expand(ws.shape[0], x.shape[0])
    xt = as_torch(x)
    return lambda: torch.sparse.addmm(bt, w, xt.t().contiguous()).t()


def scipy_bsr(ws, mask, ro, ri, b, x):
    """bsr_matrix from the kept blocks: (data (nnzb, ro, ri), indices, indptr)."""
    ws, x, mask = as_numpy(ws), as_numpy(x), as_numpy(mask)
    m, k = ws.shape
    mb, kb = m // ro, k // ri
    rows, cols = np.nonzero(mask)                  # row-major: sorted by row, then column
    blocks = ws.reshape(mb, ro, kb, ri).transpose(0, 2, 1, 3)[rows, cols]
    indptr = np.zeros(mb + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=mb), out=indptr[1:])
    w = sps.bsr_matrix((np.ascontiguousarray(blocks), cols.astype(np.int32), indptr),
                       shape=(m, k), blocksize=(ro, ri))
    assert w.nnz == len(rows) * ro * ri and w.dtype == np.float32
    bt = as_numpy(b)[:, None]
    return lambda: (w @ x.T + bt).T


def scipy_csr(ws, b, x):
    ws, x = as_numpy(ws), as_numpy(x)
    w = sps.csr_matrix(ws)
    bt = as_numpy(b)[:, None]
    return lambda: (w @ x.T + bt).T


def reference(ws, b, x):
    """The dense product on the pruned weight, float64."""
    if np is not None:
        return as_numpy(x).astype(np.float64) @ as_numpy(ws).astype(np.float64).T + as_numpy(b)
    return (as_torch(x).double() @ as_torch(ws).double().t() + as_torch(b).double()).numpy()


def error(y, ref):
    """max |y - ref| / max |ref|."""
    if torch is not None and isinstance(y, torch.Tensor):
        y = y.double()
        r = torch.as_tensor(ref) if not isinstance(ref, torch.Tensor) else ref
        return float((y - r).abs().max() / r.abs().max())
    y = np.asarray(y, dtype=np.float64)
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def verified(label, step, ref, tol=1e-4):
    err = error(step(), ref)
    if not err <= tol:
        sys.exit(f"check FAILED: {label}: max |err| {err:.3g} of max |y| (tolerance {tol:g})")
    return err


# --------------------------------------------------------------------------------------------
# check and measurements

def check():
    m, k, n = 64, 32, 8
    w, b, x = data(m, k, n, seed=7)
    worst, what = 0.0, []
    for ro, ri in BLOCKS:
        mask, norms = block_mask(w, ro, ri, 70)
        mb, kb = m // ro, k // ri
        kept = int(mask.sum())
        if kept != keep_count(mb * kb, 70):
            sys.exit(f"check FAILED: {ro}x{ri} mask keeps {kept} blocks, not "
                     f"{keep_count(mb * kb, 70)}")
        if float(norms[mask].min()) < float(norms[~mask].max()):
            sys.exit(f"check FAILED: {ro}x{ri} mask drops a block larger than a kept one")
        ws = w * expand(mask, ro, ri)
        ref = reference(ws, b, x)
        if torch is not None:
            worst = max(worst, verified(f"torch csr {ro}x{ri}", torch_csr(ws, b, x), ref),
                        verified(f"torch coo {ro}x{ri}", torch_coo(ws, b, x), ref))
        if scipy is not None:
            worst = max(worst, verified(f"scipy bsr {ro}x{ri}",
                                        scipy_bsr(ws, mask, ro, ri, b, x), ref))
    m24 = mask_24(w)
    if int(m24.sum()) != m * k // 2:
        sys.exit("check FAILED: 2:4 mask does not keep 2 of every 4")
    ws = w * m24
    ref = reference(ws, b, x)
    if torch is not None:
        worst = max(worst, verified("torch csr 2:4", torch_csr(ws, b, x), ref))
    if scipy is not None:
        worst = max(worst, verified("scipy csr 2:4", scipy_csr(ws, b, x), ref))
    if torch is not None:
        what.append("torch CSR, COO")
    if scipy is not None:
        what.append(f"scipy {scipy.__version__} BSR/CSR")
    print(f"check_ok M{m} K{k} N{n} max_err {worst:.2g} (of max |y|; {' and '.join(what)} "
          f"against the dense product on the pruned W; block magnitude masks at 70% keep the "
          f"exact count and the largest blocks; 2:4 keeps 2 of 4)", flush=True)


W = B = X = None


def full():
    global W, B, X
    if W is None:
        W, B, X = data(M, K, N)
    return W, B, X


def report(name, ms, reps, tags):
    print(f"{name} {ms:.3f} {tags} (median of {reps})", flush=True)


def bench_torch_dense():
    w, b, x = (as_torch(a) for a in full())
    ms, reps = timed(lambda: F.linear(x, w, b))
    report("torch_dense_ms", ms, reps, f"{TAGS} (F.linear, blas {peerutil.blas_core()})")


def bench_torch_qint():
    w, b, x = (as_torch(a) for a in full())
    lin = torch.nn.Linear(K, M)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    try:
        q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                   dtype=torch.qint8)
    except Exception as e:  # no quantized engine in this build
        print(f"torch_qint_dense_skip {TAGS}: quantize_dynamic failed ({e})", flush=True)
        return
    ref = reference(w, b, x)
    with torch.no_grad():
        err = error(q(x), ref)
        ms, reps = timed(lambda: q(x))
    report("torch_qint_dense_ms", ms, reps,
           f"{TAGS} (quantize_dynamic qint8 dense Linear, engine "
           f"{torch.backends.quantized.engine}, max_err {err:.2g} of max |y|)")


def bench_numpy_dense():
    w, b, x = (as_numpy(a) for a in full())
    ms, reps = timed(lambda: x @ w.T + b)
    report("numpy_dense_ms", ms, reps, f"{TAGS} (numpy {np.__version__} x @ W.T + b, "
           f"blas {peerutil.blas_core()})")


def bench_block(lib, ro, ri):
    w, b, x = full()
    for s in SPARSITIES:
        mask, _ = block_mask(w, ro, ri, s)
        ws = w * expand(mask, ro, ri)
        nnzb = int(mask.sum())
        ref = reference(ws, b, x)
        tags = f"b{ro}x{ri} s{s} nnzb {nnzb} {TAGS}"
        steps = [("torch_csr", torch_csr(ws, b, x)), ("torch_coo", torch_coo(ws, b, x))] \
            if lib == "torch" else [("scipy_bsr", scipy_bsr(ws, mask, ro, ri, b, x))]
        for kind, step in steps:
            verified(f"{kind} b{ro}x{ri} s{s}", step, ref)
            ms, reps = timed(step)
            report(f"{kind}_{case_name(ro, ri, s)}_ms", ms, reps, tags)


def bench_24(lib):
    w, b, x = full()
    ws = w * mask_24(w)
    ref = reference(ws, b, x)
    steps = [("torch_csr", torch_csr(ws, b, x)), ("torch_coo", torch_coo(ws, b, x))] \
        if lib == "torch" else [("scipy_csr", scipy_csr(ws, b, x))]
    for kind, step in steps:
        verified(f"{kind} 2:4", step, ref)
        ms, reps = timed(step)
        report(f"{kind}_two_four_ms", ms, reps, f"2:4 {TAGS}")


TORCH_BENCHES = {"torch_dense": bench_torch_dense, "torch_qint": bench_torch_qint,
                 "torch_24": lambda: bench_24("torch")}
SCIPY_BENCHES = {"scipy_24": lambda: bench_24("scipy")}
for _ro, _ri in BLOCKS:
    TORCH_BENCHES[f"torch_{_ro}x{_ri}"] = lambda ro=_ro, ri=_ri: bench_block("torch", ro, ri)
    SCIPY_BENCHES[f"scipy_{_ro}x{_ri}"] = lambda ro=_ro, ri=_ri: bench_block("scipy", ro, ri)
BENCHES = {**TORCH_BENCHES, "numpy_dense": bench_numpy_dense, **SCIPY_BENCHES}
GROUPS = {"torch": list(TORCH_BENCHES), "scipy": ["numpy_dense"] + list(SCIPY_BENCHES),
          "dense": ["torch_dense", "torch_qint", "numpy_dense"],
          "two_four": ["torch_24", "scipy_24"],
          **{f"block_{ro}x{ri}": [f"torch_{ro}x{ri}", f"scipy_{ro}x{ri}"] for ro, ri in BLOCKS},
          "all": list(BENCHES)}


def runnable(name):
    """The bench itself, or one printing why its library is missing."""
    if name in TORCH_BENCHES and torch is None:
        return lambda: None  # torch_skip printed once below
    if name in SCIPY_BENCHES and scipy is None:
        return lambda: None
    if name == "numpy_dense" and np is None:
        return lambda: print(f"numpy_dense_skip skip: import numpy failed ({NUMPY_ERR})",
                             flush=True)
    return BENCHES[name]


def main():
    if torch is None and scipy is None:
        print(f"skip: import torch failed ({TORCH_ERR}) and import scipy failed ({SCIPY_ERR}); "
              "install python3-torch and/or python3-scipy")
        return
    benches = {name: runnable(name) for name in BENCHES}
    if scipy is None:
        print(f"scipy_skip skip: import scipy failed ({SCIPY_ERR}); install python3-scipy",
              flush=True)
    if torch is not None:
        peerutil.main(benches, GROUPS, THREADS, check)
        return
    # no torch: peerutil.main's command line and order, without its torch header
    print(f"torch_skip skip: import torch failed ({TORCH_ERR}); install python3-torch",
          flush=True)
    todo = []
    for arg in sys.argv[1:] or ["all"]:
        if arg not in benches and arg not in GROUPS:
            sys.exit(f"usage: {os.path.basename(sys.argv[0])} "
                     f"[{'|'.join(list(benches) + list(GROUPS))} ...]")
        todo += [n for n in GROUPS.get(arg, [arg]) if n not in todo]
    check()
    for name in todo:
        benches[name]()


if __name__ == "__main__":
    main()
