#!/bin/sh
# bench/peers/run_linear_attention.sh -- runs linear_attention_torch.py (the delta rule and
# gated linear attention peers, chunked and recurrent, fwd+bwd) with jemalloc under
# OMP_WAIT_POLICY=PASSIVE and ACTIVE. Prints each run's header (`torch ... (OMP_WAIT_POLICY=...)`),
# the correctness check, every measurement of each run prefixed by its policy
# (`PASSIVE: name value ...`), and as the last lines, per measurement, the faster of the two
# (all are times, lower is better):
#   delta_rule_chunked_fwdbwd_ms N B2 H4 T1024 Dk64 Dv64 (...) (OMP_WAIT_POLICY=...)
#   delta_rule_recurrent_fwdbwd_ms N B2 H4 T1024 Dk64 Dv64 (...) (OMP_WAIT_POLICY=...)
#   gla_chunked_fwdbwd_ms N B2 H4 T1024 Dk64 Dv64 (...) (OMP_WAIT_POLICY=...)
#   gla_recurrent_fwdbwd_ms N B2 H4 T1024 Dk64 Dv64 (...) (OMP_WAIT_POLICY=...)
#   delta_rule_chunked_long_us_per_token N B2 H4 T16384 Dk64 Dv64 (...) (OMP_WAIT_POLICY=PASSIVE)
#   gla_chunked_long_us_per_token N B2 H4 T16384 Dk64 Dv64 (...) (OMP_WAIT_POLICY=PASSIVE)
#     or <name>_long_skip <why>
# or the peer's `skip: ...` line, or `skip: linear_attention_torch.py failed: ...`.
# Usage: run_linear_attention.sh [measurements...] (linear_attention_torch.py's names:
# delta_chunked delta_recurrent gla_chunked gla_recurrent delta_long gla_long, or the groups
# delta gla long all; default all). 1.7-2.7 minutes here with the machine loaded (load
# average 3-4.7 on 2 cores), a third to a half of it the T=16384 runs.
cd "$(dirname "$0")" || exit 1
. ./env.sh
# `long` measurements run under PASSIVE only
long=$(printf '%s\n' ${*:-all} | sed 's/^all$/long/; s/^long$/delta_long gla_long/' |
  tr ' ' '\n' | grep -E '^(delta|gla)_long$' | tr '\n' ' ')
both=$(printf '%s\n' ${*:-all} | sed 's/^all$/delta gla/; /^long$/d; /^delta_long$/d;
  /^gla_long$/d' | tr '\n' ' ')
# The T=16384 runs (50-80 s together here: 1 warm-up and 3 timed fwd+bwd each, 2.5 GB peak
# RSS) run under PASSIVE only, to keep the whole run within ~4 minutes; their lines give the
# ratio to the PASSIVE T=1024 per-token cost of the same process.
run_policies linear_attention_torch.py "$both" "$long"
