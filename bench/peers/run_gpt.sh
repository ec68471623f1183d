#!/bin/sh
# bench/peers/run_gpt.sh -- runs gpt_torch.py with jemalloc under OMP_WAIT_POLICY=PASSIVE
# and ACTIVE, and prints the faster as `train_tokens_per_s N (OMP_WAIT_POLICY=...)`,
# or the peer's `skip: ...` line. bench/bench_gpt.lua reads that last line.
cd "$(dirname "$0")" || exit 1
. ./env.sh
best='' best_policy=''
for policy in PASSIVE ACTIVE; do
  out=$(LD_PRELOAD=$JEMALLOC OMP_WAIT_POLICY=$policy PYTHONDONTWRITEBYTECODE=1 "$PYTHON" gpt_torch.py 2>&1)
  case $out in
    skip:*) echo "$out"; exit 0 ;;
  esac
  rate=$(printf '%s\n' "$out" | sed -n 's/^train_tokens_per_s //p')
  if [ -z "$rate" ]; then echo "skip: gpt_torch.py failed: $(printf '%s' "$out" | tail -n 1)"; exit 0; fi
  printf '%s\n' "$out" | grep '^torch ' | sed "s/\$/ ($policy: $rate tokens\/s)/"
  if [ -z "$best" ] || awk -v a="$rate" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$rate best_policy=$policy; fi
done
echo "train_tokens_per_s $best (OMP_WAIT_POLICY=$best_policy)"
