#!/usr/bin/env bash
# /metrics as Prometheus reads it: a `--demo` gateway serves a few requests (JSON, a
# repeat from cache, CSV, a summary, the drop-in route, an admin stats call and a refused
# key), then one page of /metrics goes through `promtool check metrics`, which fails on any
# lint (a family without # HELP, a counter not named _total, a gauge named like one, …).
# promtool is Debian's `prometheus` package unpacked without its service into
# target/ci-tools by .ci/run (PROMTOOL=/path/to/promtool uses another).
#
#   ci/metrics.sh            # prints promtool's verdict; exits non-zero on any finding
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

# .ci/run installs promtool into target/ci-tools; a promtool on PATH or in $PROMTOOL works too.
PROMTOOL=${PROMTOOL:-$(realpath -m target/ci-tools/usr/bin/promtool)}
if [ ! -x "$PROMTOOL" ]; then
  if command -v promtool >/dev/null 2>&1; then
    PROMTOOL=$(command -v promtool)
  else
    echo "metrics: promtool not found (.ci/run installs it; or set PROMTOOL)" >&2
    exit 1
  fi
fi
"$PROMTOOL" --version 2>&1 | head -n1

cargo build --locked --bin kore-gateway
LOGDIR=$(mktemp -d)
start_demo target/debug/kore-gateway "$LOGDIR"
echo "== gateway pid $GW_PID on $GW_URL"

KEY=demo-key-0001
ADMIN=admin-demo-key-0001
ACCOUNT=66bc4a29bdaafdb08461de30
call() { curl -sS -o /dev/null -w '%{http_code}\n' --max-time 60 "$@"; }
{
  call -H "Authorization: Bearer $KEY" "$GW_URL/v1/interactions?from=2024-09-01&to=2024-09-30&tz=Asia/Kolkata&limit=2"
  call -H "Authorization: Bearer $KEY" "$GW_URL/v1/interactions?from=2024-09-01&to=2024-09-30&tz=Asia/Kolkata&limit=2"
  call -H "Authorization: Bearer $KEY" "$GW_URL/v1/interactions?from=2024-09-03&to=2024-09-04&format=csv"
  call -H "Authorization: Bearer $KEY" "$GW_URL/v1/interactions/summary?from=2024-09-01&to=2024-09-30&group_by=channel"
  call -H "Authorization: Bearer $KEY" -H 'content-type: application/json' -X POST \
    -d '{"startDate":"2024-09-26","endDate":"2024-09-26","timeZoneOffset":-330}' \
    "$GW_URL/agentassist/api/public/analytics/account/$ACCOUNT/v2/interactionDetails?offset=0&limit=10"
  call -H "Authorization: Bearer $ADMIN" "$GW_URL/v1/cache"
  call -H "Authorization: Bearer wrong-key-0000" "$GW_URL/v1/interactions?from=2024-09-01&to=2024-09-01"
} >"$LOGDIR/statuses.txt"
echo "   statuses: $(tr '\n' ' ' <"$LOGDIR/statuses.txt")"

curl -fsS --max-time 10 "$GW_URL/metrics" >"$LOGDIR/metrics.txt"
violations=0
assert_no_violations "$LOGDIR" || violations=1
stop_demo
echo "   /metrics: $(grep -c '^# TYPE' "$LOGDIR/metrics.txt") families, $(grep -vc '^#' "$LOGDIR/metrics.txt") lines of samples"

fail=0
expected="200 200 200 200 200 200 401 "
if [ "$(tr '\n' ' ' <"$LOGDIR/statuses.txt")" != "$expected" ]; then
  echo "metrics: the warm-up requests did not answer as expected ($expected)" >&2
  fail=1
fi
set +e
"$PROMTOOL" check metrics <"$LOGDIR/metrics.txt" >"$LOGDIR/promtool.txt" 2>&1
rc=$?
set -e
echo "== promtool check metrics (exit $rc):"
sed 's/^/   /' "$LOGDIR/promtool.txt"
if [ "$rc" -ne 0 ] || [ -s "$LOGDIR/promtool.txt" ]; then
  echo "metrics: promtool found problems (above)" >&2
  fail=1
fi
[ "$violations" -eq 0 ] || { echo "metrics: the gateway broke vendor rules" >&2; fail=1; }
assert_no_panic "$LOGDIR" || fail=1
[ "$fail" -eq 0 ] && echo "metrics: promtool check metrics clean" || echo "metrics: FAILED"
exit $fail
