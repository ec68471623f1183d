# bench/peers/env.sh -- sourced by the run_*.sh peers: the interpreter and the allocator.
# Debian's python3-torch is installed for /usr/bin/python3, which another python3 on PATH
# (pyenv, a venv) would not see; PYTHON overrides. jemalloc is preloaded when present:
# without it page faults on fresh temporaries dominate PyTorch's small ops.
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[ -r "$JEMALLOC" ] || JEMALLOC=
# jemalloc's defaults still hand freed pages back to the kernel (at once for blocks past 8
# MiB, its oversize arena; others within 10 s), so PyTorch's large temporaries -- a scan's
# (B,T,D,N) tensors are 200 MiB -- fault in afresh on every step: with this, the parallel
# scan peer ran 552-826 ms instead of 1.9-2.0 s. Kept unless the caller sets its own.
export MALLOC_CONF="${MALLOC_CONF:-oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1}"

# run_policies SCRIPT BOTH PASSIVE_ONLY: runs SCRIPT with the measurement names BOTH under
# OMP_WAIT_POLICY=PASSIVE and ACTIVE (PASSIVE_ONLY, the long runs, under PASSIVE alone:
# their ops are few and long, where the policy cannot matter). Prints each run's `torch`
# header, the first `check_ok` line, every measurement prefixed by its policy, and last, per
# measurement in first-seen order, the lower value (all are times) with its policy. A
# `skip:` from SCRIPT is printed as is; a run without `check_ok` prints `skip: SCRIPT
# failed: <its last line>`. Either way the caller should exit 0.
run_policies() {
  script=$1 both=$2 passive_only=$3 results= checked=
  for policy in PASSIVE ACTIVE; do
    args=$both
    [ "$policy" = PASSIVE ] && args="$args $passive_only"
    [ -n "$(printf '%s' "$args" | tr -d ' ')" ] || continue
    out=$(LD_PRELOAD=$JEMALLOC OMP_WAIT_POLICY=$policy PYTHONDONTWRITEBYTECODE=1 \
      "$PYTHON" "$script" $args 2>&1)
    case $out in
      skip:*) echo "$out"; return 0 ;;
    esac
    if ! printf '%s\n' "$out" | grep -q '^check_ok '; then
      echo "skip: $script failed: $(printf '%s' "$out" | tail -n 1)"
      return 0
    fi
    printf '%s\n' "$out" | grep '^torch ' | sed "s/\$/ (OMP_WAIT_POLICY=$policy)/"
    [ -n "$checked" ] || printf '%s\n' "$out" | grep '^check_ok '
    checked=1
    measured=$(printf '%s\n' "$out" | grep -E '^[a-z_]+ [0-9.]+( |$)|^[a-z_]+_skip ' |
      grep -v -e '^check_ok ' -e '^torch ')
    printf '%s\n' "$measured" | sed "/^\$/d; s/^/$policy: /"
    results="$results$(printf '%s\n' "$measured" | sed "/^\$/d; s/^/$policy /")
"
  done
  printf '%s' "$results" | awk '
    { p = $1; name = $2; val = $3; rest = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ ?/, "", rest)
      if (!(name in best)) order[n++] = name
      if (name ~ /_skip$/) { line[name] = name " " val (rest == "" ? "" : " " rest); best[name] = 0; next }
      if (!(name in best) || val + 0 < best[name] + 0) {
        best[name] = val; line[name] = name " " val (rest == "" ? "" : " " rest) " (OMP_WAIT_POLICY=" p ")" } }
    END { for (i = 0; i < n; i++) print line[order[i]] }'
}
