"""bench/peers/peerutil.py -- what the PyTorch peer scripts share: the OpenBLAS core torch
runs on (their GEMM-bound rows depend on it), the median time of a step, and the command
line that picks measurements."""
import ctypes
import os
import sys
import time


def blas_core():
    """The OpenBLAS core torch runs on, when torch uses OpenBLAS and exports its symbols."""
    for lib in (None, "libopenblas.so.0", "libblas.so.3"):
        try:
            f = ctypes.CDLL(lib).openblas_get_corename
        except (OSError, AttributeError):
            continue
        f.restype = ctypes.c_char_p
        return f().decode()
    return "unknown (not OpenBLAS, or symbols not exported)"


def median_ms(step, warmup, reps):
    """Median milliseconds of step() over reps calls after warmup calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def main(benches, groups, threads, check):
    """Runs the measurements named on the command line (keys of benches, or of groups: lists
    of them; default "all"), each once, after the `torch ...` header line and check()."""
    import torch
    todo = []
    for arg in sys.argv[1:] or ["all"]:
        if arg not in benches and arg not in groups:
            sys.exit(f"usage: {os.path.basename(sys.argv[0])} "
                     f"[{'|'.join(list(benches) + list(groups))} ...]")
        todo += [n for n in groups.get(arg, [arg]) if n not in todo]
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()} blas {blas_core()}",
          flush=True)
    check()
    for name in todo:
        benches[name]()
