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
results= checked=
for policy in PASSIVE ACTIVE; do
  args=$both
  # The T=16384 scan (~2 x 40 s: warm-up and timed run, 9.3 GB) runs under PASSIVE only: its
  # ops are few and long (tens of ms to seconds each), where the wait policy cannot matter.
  [ "$policy" = PASSIVE ] && [ -n "$long" ] && args="$args long"
  [ -n "$(printf '%s' "$args" | tr -d ' ')" ] || continue
  out=$(LD_PRELOAD=$JEMALLOC OMP_WAIT_POLICY=$policy PYTHONDONTWRITEBYTECODE=1 \
    "$PYTHON" scan_torch.py $args 2>&1)
  case $out in
    skip:*) echo "$out"; exit 0 ;;
  esac
  if ! printf '%s\n' "$out" | grep -q '^check_ok '; then
    echo "skip: scan_torch.py failed: $(printf '%s' "$out" | tail -n 1)"
    exit 0
  fi
  printf '%s\n' "$out" | grep '^torch ' | sed "s/\$/ (OMP_WAIT_POLICY=$policy)/"
  [ -n "$checked" ] || printf '%s\n' "$out" | grep '^check_ok '
  checked=1
  measured=$(printf '%s\n' "$out" | grep -E '^[a-z_]+ [0-9.]+( |$)|^[a-z_]+_skip ' | grep -v -e '^check_ok ' -e '^torch ')
  printf '%s\n' "$measured" | sed "/^\$/d; s/^/$policy: /"
  results="$results$(printf '%s\n' "$measured" | sed "/^\$/d; s/^/$policy /")
"
done
# per name, in first-seen order: the lower value, with its tags and policy
printf '%s' "$results" | awk '
  { p = $1; name = $2; val = $3; rest = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ ?/, "", rest)
    if (!(name in best)) order[n++] = name
    if (name ~ /_skip$/) { line[name] = name " " val (rest == "" ? "" : " " rest); best[name] = 0; next }
    if (!(name in best) || val + 0 < best[name] + 0) {
      best[name] = val; line[name] = name " " val (rest == "" ? "" : " " rest) " (OMP_WAIT_POLICY=" p ")" } }
  END { for (i = 0; i < n; i++) print line[order[i]] }'
