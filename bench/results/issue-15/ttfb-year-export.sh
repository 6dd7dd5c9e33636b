#!/usr/bin/env bash
# warm year NDJSON export: time to first byte and total, before vs after (default cache)
set -euo pipefail
source /work/main/bench/lib.sh
TMP="$(mktemp -d /tmp/kore-ttfb.XXXXXX)"
trap 'stop_all; rm -rf "$TMP"' EXIT
SIM_PORT=$(free_port)
start_simulator "$SIM_PORT" 0ms
for b in before final; do
  GW_BIN=/tmp/gw-$b
  port=$(free_port)
  start_gateway "$port" "$SIM_PORT" MAX_RANGE_DAYS=366
  url="http://127.0.0.1:$port/v1/interactions?from=2023-01-01&to=2023-12-31&tz=UTC&format=ndjson"
  for i in 1 2 3 4; do
    curl -sS --max-time 300 -o /dev/null -H "Authorization: Bearer $BENCH_KEY" -w "$b request $i: first byte %{time_starttransfer} s, all %{time_total} s, %{size_download} bytes, X-Cache %header{x-cache}\n" "$url"
  done
  echo "$b VmHWM $(awk '$1=="VmHWM:"{print $2}' /proc/$GW_PID/status) kB"
  stop_pid "$GW_PID"
done
