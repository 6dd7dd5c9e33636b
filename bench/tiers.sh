#!/usr/bin/env bash
# Issue #12 figures, in one run, release binary, everything on 127.0.0.1:
#  1. a cold 92-day query under the shared budget (BUDGET, default 6/s: the vendor's 60/min
#     with the clock sped up 10x; CLOCK=real uses 60/min and takes minutes), then the same
#     query after a restart on the same CACHE_DIR;
#  2. disk-tier read latency: each week of that range asked alone right after a restart (read
#     from disk) and again (from memory);
#  3. a dashboard polling "today" every second for POLL_SECONDS (default 60) with a 10 s recent
#     TTL and a 300 ms upstream: how many polls waited (> 150 ms) or were stale, without SWR or
#     refresh-ahead (the old behaviour), with SWR only, and with refresh-ahead (the defaults).
#
#   bench/tiers.sh            # writes bench/results/tiers.txt
set -euo pipefail
cd "$(dirname "$0")"
source ./lib.sh

[ -x "$GW_BIN" ] || (cd "$ROOT" && cargo build --release --locked --bin kore-gateway)
TMP=$(mktemp -d)
trap 'stop_all; rm -rf "$TMP"' EXIT
OUT="$ROOT/bench/results/tiers.txt"
BUDGET=${BUDGET:-6/s}
[ "${CLOCK:-scaled}" = real ] && BUDGET=60/min
POLL_SECONDS=${POLL_SECONDS:-60}
AUTH="Authorization: Bearer $BENCH_KEY"

# curl_time URL → "seconds upstream_calls stale"
curl_time() {
  curl -s -H "$AUTH" -o "$TMP/body.json" -w '%{time_total}\n' "$1" >"$TMP/t.txt"
  python3 - "$TMP/body.json" "$(cat "$TMP/t.txt")" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])).get("meta", {})
print(sys.argv[2], m.get("upstream_calls", "?"), str(m.get("stale", "?")).lower())
PY
}

{
  echo "# bench/tiers.sh — $(date -u +%FT%TZ), commit $(git -C "$ROOT" rev-parse --short HEAD)"
  echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# budget: KORE_RATE_LIMIT=$BUDGET (simulator latency 50 ms, KORE_CONCURRENCY=8)"
} | tee "$OUT"

SIM=$(free_port)
start_simulator "$SIM" 50ms
CACHE="$TMP/cache"
Q="/v1/interactions?from=2024-06-03&to=2024-09-01&tz=Asia/Kolkata&limit=1"

GW=$(free_port)
start_gateway "$GW" "$SIM" KORE_RATE_LIMIT="$BUDGET" KORE_CONCURRENCY=8 CACHE_DIR="$CACHE"
before=$(sim_calls "$SIM")
read -r cold_s cold_calls _ < <(curl_time "http://127.0.0.1:$GW$Q")
echo "1. cold 92-day query: ${cold_s} s, ${cold_calls} upstream calls (simulator saw $(( $(sim_calls "$SIM") - before )))" | tee -a "$OUT"
read -r warm_s _ _ < <(curl_time "http://127.0.0.1:$GW$Q")
echo "   repeat in the same process: ${warm_s} s" | tee -a "$OUT"
stop_pid "$GW_PID"

t0=$(date +%s.%N)
start_gateway "$GW" "$SIM" KORE_RATE_LIMIT="$BUDGET" KORE_CONCURRENCY=8 CACHE_DIR="$CACHE"
up=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
before=$(sim_calls "$SIM")
read -r restart_s restart_calls _ < <(curl_time "http://127.0.0.1:$GW$Q")
echo "   after a restart on the same CACHE_DIR: up in ${up} s, query ${restart_s} s, ${restart_calls} upstream calls (simulator saw $(( $(sim_calls "$SIM") - before )))" | tee -a "$OUT"
stop_pid "$GW_PID"

# 2. Each grid week (Monday to Sunday in the zone) is one window: read from disk, then memory.
start_gateway "$GW" "$SIM" KORE_RATE_LIMIT="$BUDGET" KORE_CONCURRENCY=8 CACHE_DIR="$CACHE"
disk=() mem=()
for w in $(python3 -c "
import datetime
d = datetime.date(2024, 6, 3)
while d < datetime.date(2024, 9, 2):
    print(d, d + datetime.timedelta(days=6)); d += datetime.timedelta(days=7)" | tr ' ' '_'); do
  from=${w%_*} to=${w#*_}
  u="http://127.0.0.1:$GW/v1/interactions?from=$from&to=$to&tz=Asia/Kolkata&limit=1"
  read -r s _ _ < <(curl_time "$u"); disk+=("$s")
  read -r s _ _ < <(curl_time "$u"); mem+=("$s")
done
python3 - "${#disk[@]}" "${disk[@]}" "${mem[@]}" <<'PY' | tee -a "$OUT"
import statistics, sys
n = int(sys.argv[1]); d = [float(x) * 1000 for x in sys.argv[2:2 + n]]; m = [float(x) * 1000 for x in sys.argv[2 + n:]]
print(f"2. one-week answer read from disk: median {statistics.median(d):.2f} ms, max {max(d):.2f} ms ({n} weeks); "
      f"the repeat from memory: median {statistics.median(m):.2f} ms")
PY
echo "   disk tier after the run: $(du -sh "$CACHE" | cut -f1) on disk" | tee -a "$OUT"
stop_pid "$GW_PID"
stop_pid "$SIM_PID"

# 3. A dashboard polling today.
SIM=$(free_port)
start_simulator "$SIM" 300ms
today=$(date -u +%F)
for mode in "no SWR, no refresh-ahead:CACHE_SWR=0s REFRESH_AHEAD=false" \
            "SWR only:REFRESH_AHEAD=false" \
            "refresh-ahead (defaults):REFRESH_AHEAD=true"; do
  label=${mode%%:*} vars=${mode#*:}
  # shellcheck disable=SC2086
  start_gateway "$GW" "$SIM" KORE_RATE_LIMIT="$BUDGET" CACHE_TTL_RECENT=10s $vars
  u="http://127.0.0.1:$GW/v1/interactions?from=$today&to=$today&limit=1"
  curl_time "$u" >/dev/null
  : >"$TMP/polls.txt"
  end=$(( $(date +%s) + POLL_SECONDS ))
  while [ "$(date +%s)" -lt "$end" ]; do
    curl_time "$u" >>"$TMP/polls.txt"
    sleep 1
  done
  python3 - "$TMP/polls.txt" "$label" <<'PY' | tee -a "$OUT"
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
waits = [float(r[0]) for r in rows if float(r[0]) > 0.150]
stale = sum(1 for r in rows if r[2] == "true")
total_wait = sum(waits)
print(f"3. polling today, {sys.argv[2]}: {len(rows)} polls, {len(waits)} waited for the upstream "
      f"({total_wait:.1f} s in all), {stale} answered stale")
PY
  stop_pid "$GW_PID"
done
echo "violations recorded by the simulators: $(sim_violations "$SIM")" | tee -a "$OUT"
