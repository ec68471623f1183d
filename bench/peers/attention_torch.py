"""bench/peers/attention_torch.py -- the peer of the "attention fwd+bwd" row of
bench/bench_attention.c: causal attention forward + backward at B=4, H=8, T=1024, Dh=64,
f32, 2 threads, in PyTorch two ways:
  eager  q @ k^T * scale, masked_fill of the upper triangle, softmax, @ v (what a model
         written without a fused kernel runs; materializes B x H x T x T);
  sdpa   torch.nn.functional.scaled_dot_product_attention(is_causal=True), PyTorch's
         fused CPU kernel.
Prints `torch <version> threads N blas <core>` and one line per variant:
`<variant>_ms <median ms of fwd+bwd>` (`sdpa_skip <why>` on torch < 2.0, which lacks
scaled_dot_product_attention), or `skip: ...` when torch cannot be imported.
Run it through run_attention.sh (jemalloc, both OMP_WAIT_POLICY values).
"""
import sys
import time
from peerutil import blas_core

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print(f"skip: import torch failed ({e})")
    sys.exit(0)

B, H, T, D = 4, 8, 1024, 64
THREADS, WARMUP, SAMPLES = 2, 3, 11


def eager(q, k, v):
    s = (q @ k.transpose(-2, -1)) * (D ** -0.5)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    return torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1) @ v


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def median_ms(fn):
    torch.manual_seed(1)
    # (B, T, H, D) like seqnn, viewed as (B, H, T, D) as torch's attention expects
    q, k, v = (torch.randn(B, T, H, D).transpose(1, 2).requires_grad_() for _ in range(3))
    g = torch.randn(B, H, T, D)
    times = []
    for i in range(WARMUP + SAMPLES):
        t0 = time.perf_counter()
        fn(q, k, v).backward(g)
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
        q.grad = k.grad = v.grad = None
    times.sort()
    return times[len(times) // 2] * 1e3


def main():
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()} blas {blas_core()}")
    print(f"eager_ms {median_ms(eager):.2f}", flush=True)
    if hasattr(F, "scaled_dot_product_attention"):
        print(f"sdpa_ms {median_ms(sdpa):.2f}")
    else:
        print(f"sdpa_skip torch {torch.__version__} has no scaled_dot_product_attention (torch >= 2.0)")


if __name__ == "__main__":
    main()
