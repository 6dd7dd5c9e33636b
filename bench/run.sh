#!/usr/bin/env bash
# The whole benchmark suite of BENCHMARKS.md, in one bounded run on loopback:
#   1, 2, 4, 7  cargo bench --bench gateway   (in-process simulator + gateway, reqwest client;
#            7 = rolling 30-day dashboard, upstream calls without / with containment reuse)
#   3        bench/http.sh                 (wrk: gateway vs nginx proxy_cache)
#   8        bench/encoding.sh             (wrk, browser Accept-Encoding: gateway vs nginx
#            proxy_cache + gzip on vs crates/tools/src/bin/ceiling.rs serving the same stored bytes)
#   5        bench/memory.sh               (peak RSS of the release binary)
#   6        cargo bench --bench hot       (criterion: plan, merge, render)
# Raw output goes to bench/results/ (RESULTS=dir to change); the last lines are the table.
# Builds once: `cargo build --release` for the binary, `cargo bench --no-run` for the benches
# (BUILD=0 skips that; GW_BIN=path runs another gateway binary in 3 and 5).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS="${RESULTS:-bench/results}"
mkdir -p "$RESULTS"
source bench/lib.sh

need_tools nginx wrk curl python3

{
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "cpu:     $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}') — $(nproc) cores"
  echo "memory:  $(free -h | awk '/^Mem:/ {print $2}') total"
  echo "kernel:  $(uname -sr)"
  echo "rustc:   $(rustc --version)"
  echo "nginx:   $(nginx -v 2>&1 | sed 's/^nginx version: //')"
  echo "wrk:     $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min averages, at the start)"
} | tee "$RESULTS/machine.txt"

if [ "${BUILD:-1}" = 1 ]; then
  echo "== build (release binary, bench binaries)"
  timeout 3600 cargo build --release --quiet --workspace --bin kore-gateway --bin ceiling
  timeout 3600 cargo bench --no-run --quiet 2>&1 | grep -v '^ *Executable' || true
fi

echo "== 1, 2, 4: cargo bench --bench gateway"
BENCH_OUT="$RESULTS/gateway.json" timeout 900 cargo bench --quiet --bench gateway | tee "$RESULTS/gateway.txt"

echo "== 3: bench/http.sh"
timeout 600 bench/http.sh | tee "$RESULTS/http.txt"

echo "== 8: bench/encoding.sh"
timeout 900 bench/encoding.sh | tee "$RESULTS/encoding.txt"

echo "== 5: bench/memory.sh"
timeout 900 bench/memory.sh | tee "$RESULTS/memory.txt"

echo "== 6: cargo bench --bench hot"
timeout 900 cargo bench --quiet --bench hot 2>&1 | tee "$RESULTS/hot.txt"

echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (at the end)" | tee -a "$RESULTS/machine.txt"
echo
echo "== results"
cat "$RESULTS/machine.txt"
grep -h '^RESULT' "$RESULTS/gateway.txt" "$RESULTS/http.txt" "$RESULTS/encoding.txt" "$RESULTS/memory.txt"
# criterion prints a long name on its own line and the time on the next one
awk '/^[a-z]/ {name = $0} /time: *\[/ {t = $0; sub(/^.*time: */, "", t); if ($0 ~ /^[a-z]/) {n = $0; sub(/ *time:.*$/, "", n)} else {n = name}; print "RESULT 6 " n " " t}' "$RESULTS/hot.txt"
