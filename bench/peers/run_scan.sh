#!/bin/sh
# bench/peers/run_scan.sh -- runs scan_torch.py (the Mamba selective scan and Mamba block
# peers, fwd+bwd) with jemalloc under OMP_WAIT_POLICY=PASSIVE and ACTIVE. Prints each run's
# header (`torch ... (OMP_WAIT_POLICY=...)`), the correctness check, every measurement of each
# run prefixed by its policy (`PASSIVE: name value ...`), and as the last lines, per
# measurement, the faster of the two (all are times, lower is better):
#   scan_parallel_fwdbwd_ms N B2 T1024 D1536 N16 (OMP_WAIT_POLICY=...)
#   scan_parallel_btdn_fwdbwd_ms N B2 T1024 D1536 N16 (...) (OMP_WAIT_POLICY=...)
#   scan_ref_fwdbwd_ms N B2 T1024 D1536 N16 (...) (OMP_WAIT_POLICY=...)
#   mamba_block_fwdbwd_ms N B2 T1024 d768 (OMP_WAIT_POLICY=...)
#   scan_parallel_long_us_per_token N B1 T16384 D1536 N16 (...) (OMP_WAIT_POLICY=PASSIVE)
#     or scan_parallel_long_skip <why>
# or the peer's `skip: ...` line, or `skip: scan_torch.py failed: ...`.
# Usage: run_scan.sh [measurements...] (scan_torch.py's names: parallel parallel_btdn ref
# long block, scan, all; default all). 5.3 minutes here with the machine loaded (load average
# ~4 on 2 cores), a third of it the T=16384 run.
cd "$(dirname "$0")" || exit 1
. ./env.sh
want=" ${*:-all} "
case $want in *" all "*|*" scan "*) long=1 ;; *" long "*) long=1 ;; *) long= ;; esac
# everything but `long` runs under both policies
both=$(printf '%s\n' ${*:-all} | sed 's/^all$/parallel parallel_btdn ref block/;
  s/^scan$/parallel parallel_btdn ref/; /^long$/d' | tr '\n' ' ')
# The T=16384 scan (~2 x 40 s: warm-up and timed run, 9.3 GB) runs under PASSIVE only.
run_policies scan_torch.py "$both" "${long:+long}"
