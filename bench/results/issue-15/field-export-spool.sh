# Field check of the export spool (issue #15): a year export from the release --demo with an 8 MiB cache and CACHE_DIR;
# SIGKILL while it runs (the O_TMPFILE must vanish), restart on the same folder, SIGTERM during a slow download.
# Loopback only; stops only the gateway it started. GW_BIN= picks the binary.
set -u
D=/tmp/kore-field-dir
start() { KORE_RATE_LIMIT=100000/s GATEWAY_LISTEN=127.0.0.1:18932 SIM_LATENCY=0ms MAX_RANGE_DAYS=366 CACHE_MAX_BYTES=8388608 CACHE_DIR=$D RUST_LOG=warn ${GW_BIN:-/tmp/gw-final} --demo > /tmp/field-gw.log 2>&1 & GW=$!; for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18932/healthz && break; sleep 0.2; done; }
URL='http://127.0.0.1:18932/v1/interactions?from=2023-01-01&to=2023-12-31&tz=UTC&format=ndjson'
start
echo "files before: $(ls $D)"
curl -sS --max-time 120 --limit-rate 2M -H 'Authorization: Bearer demo-key-0001' "$URL" -o /tmp/field-out1.ndjson &
C=$!
sleep 4
echo "open spool files of the gateway: $(ls -l /proc/$GW/fd 2>/dev/null | grep -c 'deleted\|#')"
ls -l /proc/$GW/fd | grep -E 'deleted|kore-field' | sed 's/.*-> //'
echo "directory while exporting: $(ls -a $D | tr '\n' ' ')"
kill -KILL $GW; wait $GW 2>/dev/null
wait $C; echo "curl rc=$? after SIGKILL, got $(wc -l < /tmp/field-out1.ndjson) lines (a cut transfer, not a short success)"
echo "directory after SIGKILL: $(ls -a $D | tr '\n' ' ')"
start
curl -sS --max-time 120 -D /tmp/field-h2.txt -H 'Authorization: Bearer demo-key-0001' "$URL" -o /tmp/field-out2.ndjson; echo "restart export rc=$? lines=$(wc -l < /tmp/field-out2.ndjson) $(grep -i 'x-complete\|x-cache:' /tmp/field-h2.txt | tr -d '\r' | tr '\n' ' ')"
curl -s http://127.0.0.1:18932/metrics | grep '^gateway_export_spilled'
# TERM in the middle of a slow download
curl -sS --max-time 120 --limit-rate 4M -H 'Authorization: Bearer demo-key-0001' "$URL" -o /tmp/field-out3.ndjson &
C=$!
sleep 3
kill -TERM $GW; T0=$(date +%s.%N)
wait $C; echo "curl rc=$? after SIGTERM: $(wc -l < /tmp/field-out3.ndjson) lines"
wait $GW; echo "gateway exit $? after $(awk -v a=$T0 -v b=$(date +%s.%N) 'BEGIN{printf "%.1f", b-a}') s"
echo "directory at the end: $(ls -a $D | tr '\n' ' ')"
python3 - <<'PY'
import json
a=[json.loads(l)["sessionId"]+str(json.loads(l).get("conversationId")) for l in open('/tmp/field-out2.ndjson')]
b=[json.loads(l)["sessionId"]+str(json.loads(l).get("conversationId")) for l in open('/tmp/field-out3.ndjson')]
print("restart export: %d records, %d distinct; after-TERM export: %d records, equal to restart export: %s" % (len(a), len(set(a)), len(b), a==b))
PY
