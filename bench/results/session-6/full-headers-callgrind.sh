#!/usr/bin/env bash
# Session 6: instructions per hit when the request carries what a browser's fetch() sends
# (about 1 KB of headers: user agent, client hints, Accept-Language, a cookie, Referer,
# `Accept: application/json, text/plain, */*`) instead of curl's ~200 bytes. The same method
# as `bench/profile.sh hit-callgrind` (gateway under callgrind, collection only during
# HITS sequential hits over 4 keep-alive connections), with those headers added.
#   GW_BIN=… bench/results/session-6/full-headers-callgrind.sh
# Loopback only; stops only the processes it started.
set -euo pipefail
source "$(cd "$(dirname "$0")/../.." && pwd)/lib.sh"
HITS="${HITS:-1000}"
AE="${AE-gzip, deflate, br, zstd}"
need_tools valgrind curl python3
TMP="$(mktemp -d /tmp/kore-bench-fullh.XXXXXX)"
trap 'stop_all; rm -rf "$TMP"' EXIT
H=(-H "Authorization: Bearer $BENCH_KEY" -H "Accept-Encoding: $AE"
  -H "Accept: application/json, text/plain, */*"
  -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
  -H 'sec-ch-ua: "Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"'
  -H "sec-ch-ua-mobile: ?0" -H 'sec-ch-ua-platform: "Linux"'
  -H "Accept-Language: en-GB,en-US;q=0.9,en;q=0.8,de;q=0.7"
  -H "Origin: https://dash.example" -H "Referer: https://dash.example/team/overview?range=7d"
  -H "Sec-Fetch-Site: same-site" -H "Sec-Fetch-Mode: cors" -H "Sec-Fetch-Dest: empty"
  -H "Cookie: _ga=GA1.1.1234567890.1733350000; session=$(printf 'a%.0s' $(seq 300)); theme=dark")
SIM_PORT=$(free_port)
start_simulator "$SIM_PORT" 0ms
GW_PORT=$(free_port)
WAIT_TRIES=1200 start_gateway "$GW_PORT" "$SIM_PORT" valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$TMP/callgrind.out" --
url="http://127.0.0.1:$GW_PORT/v1/interactions?from=2024-09-02&to=2024-09-08&tz=UTC&limit=100"
for _ in 1 2; do curl -s -o /dev/null "${H[@]}" "$url"; done
curl -s -o /dev/null -D "$TMP/h" "${H[@]}" "$url"
grep -qi '^x-cache: HIT' "$TMP/h" || { echo "not a hit" >&2; exit 1; }
bytes=$(curl -s -o /dev/null -v "${H[@]}" "$url" 2>&1 | grep '^> ' | awk '{n += length($0) - 2 + 2} END {print n}')
timeout 60 callgrind_control -i on "$GW_PID" >/dev/null
for i in $(seq $((HITS / 4))); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done >"$TMP/urls"
seq 4 | timeout 600 xargs -P4 -I{} curl -s -K "$TMP/urls" "${H[@]}"
timeout 60 callgrind_control -i off "$GW_PID" >/dev/null
stop_pid "$GW_PID"
total=$(callgrind_annotate "$TMP/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "full browser headers (request head ~$bytes bytes), hits: $HITS, Accept-Encoding: '$AE'; instructions: $total in all, $((total / HITS)) per hit"
cp "$TMP/callgrind.out" "/tmp/kore-bench-callgrind-fullh${TAG:+-$TAG}.out"
