#!/usr/bin/env bash
# Session 6: instructions per hit of the ceiling (crates/tools/src/bin/ceiling.rs) under
# callgrind, by the method of `bench/profile.sh hit-callgrind`: the gateway (GW_BIN) is
# warmed and its stored identity and br bytes of the 7-day page are fetched; the ceiling
# serves those bytes under valgrind, collecting only while HITS sequential GETs run over 4
# keep-alive connections, once with AE=identity, once with a browser's Accept-Encoding.
#   GW_BIN=… CEILING_BIN=… bench/results/session-6/ceiling-callgrind.sh
# Loopback only; stops only the processes it started.
set -euo pipefail
source "$(cd "$(dirname "$0")/../.." && pwd)/lib.sh"
HITS="${HITS:-1000}"
CEILING_BIN="${CEILING_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ceiling}"
need_tools valgrind curl python3
TMP="$(mktemp -d /tmp/kore-bench-ceil.XXXXXX)"
trap 'stop_all; rm -rf "$TMP"' EXIT
SIM_PORT=$(free_port)
start_simulator "$SIM_PORT" 0ms
GW_PORT=$(free_port)
start_gateway "$GW_PORT" "$SIM_PORT"
page="/v1/interactions?from=2024-09-02&to=2024-09-08&tz=UTC&limit=100"
mkdir -p "$TMP/bytes/0"
curl -s -o /dev/null -H "Authorization: Bearer $BENCH_KEY" "http://127.0.0.1:$GW_PORT$page"
curl -s -o "$TMP/bytes/0/body" -H "Authorization: Bearer $BENCH_KEY" "http://127.0.0.1:$GW_PORT$page"
curl -s -o "$TMP/bytes/0/body.br" -H "Authorization: Bearer $BENCH_KEY" -H "Accept-Encoding: br" "http://127.0.0.1:$GW_PORT$page"
stop_pid "$GW_PID"
stop_pid "$SIM_PID"
echo "ceiling bytes: identity $(stat -c %s "$TMP/bytes/0/body"), br $(stat -c %s "$TMP/bytes/0/body.br")"
for AE in identity "gzip, deflate, br, zstd"; do
  port=$(free_port)
  start_bg "$TMP/ceiling.log" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$TMP/callgrind.out" -- "$CEILING_BIN" "$port" "$TMP/bytes"
  pid=$LAST_PID
  WAIT_TRIES=1200 wait_http "http://127.0.0.1:$port/0"
  url="http://127.0.0.1:$port/0"
  for _ in 1 2 3; do curl -s -o /dev/null -H "Accept-Encoding: $AE" "$url"; done
  timeout 60 callgrind_control -i on "$pid" >/dev/null
  for i in $(seq $((HITS / 4))); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done >"$TMP/urls"
  seq 4 | timeout 600 xargs -P4 -I{} curl -s -K "$TMP/urls" -H "Accept-Encoding: $AE"
  timeout 60 callgrind_control -i off "$pid" >/dev/null
  stop_pid "$pid"
  total=$(callgrind_annotate "$TMP/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "ceiling, hits: $HITS, Accept-Encoding: '$AE'; instructions: $total in all, $((total / HITS)) per hit"
  rm -f "$TMP/callgrind.out"
done
