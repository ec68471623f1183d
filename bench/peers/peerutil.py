"""bench/peers/peerutil.py -- what the PyTorch peer scripts share: the OpenBLAS core torch
runs on (their GEMM-bound rows depend on it) and the median time of a step."""
import ctypes
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
