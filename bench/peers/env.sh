# bench/peers/env.sh -- sourced by the run_*.sh peers: the interpreter and the allocator.
# Debian's python3-torch is installed for /usr/bin/python3, which another python3 on PATH
# (pyenv, a venv) would not see; PYTHON overrides. jemalloc is preloaded when present:
# without it page faults on fresh temporaries dominate PyTorch's small ops.
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[ -r "$JEMALLOC" ] || JEMALLOC=
