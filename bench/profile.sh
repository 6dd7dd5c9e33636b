#!/usr/bin/env bash
# Where the time goes, for the targets BENCHMARKS.md reports as missed: `perf record` with
# DWARF call graphs, folded by bench/fold.py into a text summary (self and inclusive time)
# plus folded stacks (input of flamegraph.pl / inferno-flamegraph).
#   bench/profile.sh hit    the release gateway serving the cached 7-day GET under wrk (3)
#   bench/profile.sh miss   the in-process miss scenario of `cargo bench --bench gateway` (4)
#   bench/profile.sh merge  criterion's merge_runs benchmark (6)
#   bench/profile.sh hit-callgrind   hits of the cached 7-day GET with a browser's
#                           Accept-Encoding (AE=… to change), counted by valgrind's callgrind
#                           (for machines whose perf has no hardware counters, as a KVM guest):
#                           instructions per hit and the top functions, self and inclusive
# Needs `perf` (Debian: linux-perf) and a kernel that lets root sample user space, or
# `valgrind` for hit-callgrind.
# Loopback only; bounded; stops only what it started.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
RESULTS="${RESULTS:-bench/results}"
mkdir -p "$RESULTS"
mode="${1:-hit}"
if [ "$mode" = hit-callgrind ]; then need_tools valgrind curl python3; else need_tools perf wrk curl python3; fi
TMP="$(mktemp -d /tmp/kore-bench-prof.XXXXXX)"
trap 'stop_all; rm -rf "$TMP"' EXIT

bench_exe() { # newest bench binary of that name
  cargo bench --no-run --bench "$1" --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m.get("target", {}).get("kind") == ["bench"]:
        print(m["executable"])' | tail -1
}

case "$mode" in
  hit)
    SIM_PORT=$(free_port)
    start_simulator "$SIM_PORT" 0ms
    GW_PORT=$(free_port)
    start_gateway "$GW_PORT" "$SIM_PORT"
    url="http://127.0.0.1:$GW_PORT/v1/interactions?from=2024-09-02&to=2024-09-08&tz=UTC&limit=100"
    curl -s -o /dev/null -H "Authorization: Bearer $BENCH_KEY" "$url"
    timeout 30 wrk -t1 -c32 -d8s -H "Authorization: Bearer $BENCH_KEY" "$url" >"$TMP/wrk.txt" &
    wrk_pid=$!
    sleep 1
    perf record -F 499 --call-graph dwarf,32768 -o "$TMP/perf.data" -p "$GW_PID" -- sleep 5 2>/dev/null
    wait "$wrk_pid"
    ;;
  miss)
    exe=$(bench_exe gateway)
    perf record -F 999 --call-graph dwarf,32768 -o "$TMP/perf.data" "$exe" --bench miss >"$TMP/run.txt" 2>/dev/null
    grep RESULT "$TMP/run.txt"
    ;;
  merge)
    exe=$(bench_exe hot)
    perf record -F 499 --call-graph dwarf,16384 -o "$TMP/perf.data" "$exe" --bench merge_runs --profile-time 3 >/dev/null 2>&1
    ;;
  hit-callgrind)
    AE="${AE-gzip, deflate, br, zstd}"
    HITS="${HITS:-2000}"
    SIM_PORT=$(free_port)
    start_simulator "$SIM_PORT" 0ms
    GW_PORT=$(free_port)
    # The gateway under callgrind, collecting nothing until the cache is warm.
    WAIT_TRIES=1200 start_gateway "$GW_PORT" "$SIM_PORT" valgrind --tool=callgrind --instr-atstart=no \
      --callgrind-out-file="$TMP/callgrind.out" --
    url="http://127.0.0.1:$GW_PORT/v1/interactions?from=2024-09-02&to=2024-09-08&tz=UTC&limit=100"
    for _ in 1 2 3; do
      curl -s -o /dev/null -H "Authorization: Bearer $BENCH_KEY" -H "Accept-Encoding: $AE" "$url"
    done
    timeout 60 callgrind_control -i on "$GW_PID" >/dev/null
    # HITS sequential hits over 4 keep-alive connections (curl reuses its connection).
    for i in $(seq $((HITS / 4))); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done >"$TMP/urls"
    seq 4 | timeout 600 xargs -P4 -I{} curl -s -K "$TMP/urls" -H "Authorization: Bearer $BENCH_KEY" -H "Accept-Encoding: $AE"
    timeout 60 callgrind_control -i off "$GW_PID" >/dev/null
    stop_pid "$GW_PID"
    total=$(callgrind_annotate "$TMP/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    callgrind_annotate --threshold=100 "$TMP/callgrind.out" >"$TMP/self.txt" 2>/dev/null || true
    callgrind_annotate --inclusive=yes --threshold=100 "$TMP/callgrind.out" >"$TMP/incl.txt" 2>/dev/null || true
    {
      echo "hits: $HITS, Accept-Encoding: '$AE'; instructions: $total in all, $((total / HITS)) per hit"
      echo "== self (top 45; Ir, share of the total, function)"
      grep -E '^ *[0-9,]+ \(' "$TMP/self.txt" | sed -n 2,46p | sed -E 's|/root/.cargo/registry/src/[^/]+/||; s|/rustc/[0-9a-f]+/||; s| \[[^]]*\]$||'
      echo "== inclusive, the gateway's own code (top 25)"
      # (the gateway's sources as a relative path, or absolute when built elsewhere)
      { grep -E '^ *[0-9,]+ \(' "$TMP/incl.txt" | grep -E '( |/)src/(api|cache|[a-z_]+\.rs)' | grep -v registry || true; } |
        sed -n 1,25p | sed -E 's| \[[^]]*\]$||'
    } >"$TMP/summary.txt"
    cp "$TMP/callgrind.out" "/tmp/kore-bench-callgrind${TAG:+-$TAG}.out"
    tee "$RESULTS/profile-hit-callgrind${TAG:+-$TAG}.txt" <"$TMP/summary.txt"
    exit 0
    ;;
  *) echo "usage: $0 hit|hit-callgrind|miss|merge" >&2; exit 2 ;;
esac
perf script -i "$TMP/perf.data" 2>/dev/null | python3 bench/fold.py "$TMP/folded.txt" | tee "$RESULTS/profile-$mode.txt"
cp "$TMP/folded.txt" "/tmp/kore-bench-$mode.folded"
echo "folded stacks: /tmp/kore-bench-$mode.folded (flamegraph.pl or inferno-flamegraph renders them)"
