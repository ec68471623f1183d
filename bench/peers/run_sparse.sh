#!/bin/sh
# bench/peers/run_sparse.sh -- runs sparse_peers.py (issue 8: y = x W^T + b, W 4096 x 1024,
# 128 tokens, block-sparse W at 50..95% for blocks 4x1, 16x1, 4x4, and 2:4) with jemalloc:
# the PyTorch rows (dense F.linear, its int8 dynamic-quantized Linear, CSR and COO products)
# under OMP_WAIT_POLICY=PASSIVE and ACTIVE, the numpy dense and single-threaded scipy rows
# (BSR, CSR for 2:4) under PASSIVE only. Prints each run's `torch ...` header, the
# check_ok line, every measurement prefixed by its policy, and last, per measurement, the
# faster of the policies (all are median ms, lower is better):
#   torch_dense_ms N M4096 K1024 N128 (F.linear, blas <core>) (...) (OMP_WAIT_POLICY=...)
#   torch_qint_dense_ms N ...
#   numpy_dense_ms N ...
#   torch_csr_<b>_<s>_ms N b4x1 s90 nnzb <count> M4096 K1024 N128 (...) (OMP_WAIT_POLICY=...)
#   torch_coo_<b>_<s>_ms, scipy_bsr_<b>_<s>_ms  the same
#   torch_csr_two_four_ms, torch_coo_two_four_ms, scipy_csr_two_four_ms
#     <b>: four_one sixteen_one four_four; <s>: fifty sixty seventy eighty ninety ninetyfive
# plus `scipy_skip skip: ...` or `torch_skip skip: ...` when one library is missing (the other's
# rows still run), or the peer's `skip: ...` line when both are, or
# `skip: sparse_peers.py failed: ...`.
# Usage: run_sparse.sh [all|torch|scipy|dense|block_4x1|block_16x1|block_4x4|two_four|
# torch_dense|torch_qint|torch_4x1|torch_16x1|torch_4x4|torch_24|numpy_dense|scipy_4x1|
# scipy_16x1|scipy_4x4|scipy_24 ...] (default all). About 2-4 minutes here with the machine
# loaded, most of it the 50-60% CSR/COO/BSR products.
cd "$(dirname "$0")" || exit 1
. ./env.sh
names=$(printf '%s\n' ${*:-all} | sed '
  s/^all$/torch scipy/
  s/^dense$/torch_dense torch_qint numpy_dense/
  s/^two_four$/torch_24 scipy_24/
  s/^block_\(.*\)$/torch_\1 scipy_\1/' | tr ' ' '\n')
# scipy's sparse products are single-threaded and numpy's BLAS threads are not OpenMP's:
# the policy cannot matter for them
passive=$(printf '%s\n' $names | grep -E '^(scipy|numpy)' | tr '\n' ' ')
both=$(printf '%s\n' $names | grep -vE '^(scipy|numpy)' | tr '\n' ' ')
run_policies sparse_peers.py "$both" "$passive"
