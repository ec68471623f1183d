#!/bin/sh
# bench/peers/run_attention.sh -- runs attention_torch.py with jemalloc under
# OMP_WAIT_POLICY=PASSIVE and ACTIVE and reports, per variant (eager, sdpa), the faster:
# `<variant>_ms N (OMP_WAIT_POLICY=...)` (or `sdpa: skip: ...` on torch < 2.0), or the
# peer's `skip: ...` line. Compare with the
# "attention fwd+bwd B4 T1024 H8 Dh64 causal" row of `build/bench/seqnn_bench attention`.
cd "$(dirname "$0")" || exit 1
. ./env.sh
results=
for policy in PASSIVE ACTIVE; do
  out=$(LD_PRELOAD=$JEMALLOC OMP_WAIT_POLICY=$policy "$PYTHON" attention_torch.py 2>&1)
  case $out in
    skip:*) echo "$out"; exit 0 ;;
  esac
  if ! printf '%s\n' "$out" | grep -q '^eager_ms '; then
    echo "skip: attention_torch.py failed: $(printf '%s' "$out" | tail -n 1)"
    exit 0
  fi
  printf '%s\n' "$out" | grep '^torch ' | sed "s/\$/ (OMP_WAIT_POLICY=$policy)/"
  results="$results$(printf '%s\n' "$out" | sed -n "s/^\([a-z]*_ms\) \(.*\)/\1 \2 $policy/p")
"
done
printf '%s\n' "$out" | grep -m1 '^sdpa_skip ' | sed 's/^sdpa_skip /sdpa: skip: /'
for variant in eager_ms sdpa_ms; do
  printf '%s' "$results" | awk -v v="$variant" '$1 == v && (best == "" || $2 < best) { best = $2; p = $3 }
    END { if (best != "") printf "%s %s (OMP_WAIT_POLICY=%s)\n", v, best, p }'
done
