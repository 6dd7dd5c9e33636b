# Shared by the ci/*.sh scripts (sourced, not run): start a `--demo` gateway on a free
# loopback port, wait until it is healthy, and stop exactly that process afterwards.

# start_demo BIN LOGDIR [ENV=VALUE ...]
# Sets GW_PID, GW_URL and SIM_URL (the built-in simulator). The gateway binds 127.0.0.1:0
# and the demo banner names both ports.
start_demo() {
  local bin=$1 logdir=$2
  shift 2
  env GATEWAY_LISTEN=127.0.0.1:0 SIM_LATENCY=0ms KORE_RATE_LIMIT=100000/s RUST_LOG=warn "$@" \
    "$bin" --demo >"$logdir/gateway.out" 2>"$logdir/gateway.err" &
  GW_PID=$!
  trap stop_demo EXIT
  GW_URL=
  local i
  for i in $(seq 1 300); do
    GW_URL=$(grep -o 'gateway on http://127\.0\.0\.1:[0-9]*' "$logdir/gateway.out" 2>/dev/null | head -n1 | sed 's/^gateway on //' || true)
    [ -n "$GW_URL" ] && break
    if ! kill -0 "$GW_PID" 2>/dev/null; then
      echo "the gateway exited at start-up:" >&2
      cat "$logdir/gateway.err" >&2
      return 1
    fi
    sleep 0.1
  done
  if [ -z "$GW_URL" ]; then
    echo "the gateway printed no address within 30 s" >&2
    return 1
  fi
  SIM_URL=$(grep -o 'Simulator: *http://127\.0\.0\.1:[0-9]*' "$logdir/gateway.out" | head -n1 | grep -o 'http://.*' || true)
  if [ -z "$SIM_URL" ]; then
    echo "the demo banner names no simulator address" >&2
    return 1
  fi
  for i in $(seq 1 100); do
    if curl -fsS --max-time 2 "$GW_URL/healthz" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "$GW_URL/healthz did not answer within 10 s" >&2
  return 1
}

# Stops the gateway this script started (by its pid only), politely first.
stop_demo() {
  if [ -n "${GW_PID:-}" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
      kill -0 "$GW_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
  fi
  GW_PID=
}

# Fails when the gateway logged a panic (a handler that panicked is a bug even if the
# client saw a tidy status).
assert_no_panic() {
  local logdir=$1
  if grep -n -i 'panicked' "$logdir/gateway.err" "$logdir/gateway.out"; then
    echo "the gateway panicked (log above)" >&2
    return 1
  fi
}

# Fails when the demo's simulator recorded any breach of a vendor rule (rate limit, JWT,
# paging, dates, …) by the gateway. Call it while the gateway still runs (before stop_demo).
assert_no_violations() {
  local logdir=$1 report
  report="$logdir/violations.json"
  if ! curl -fsS --max-time 10 "$SIM_URL/__sim/violations" >"$report"; then
    echo "the simulator's violation log could not be read at $SIM_URL" >&2
    return 1
  fi
  python3 - "$report" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["count"]
print(f"   simulator: {n} vendor-rule violation(s)")
for v in r["violations"][:10]:
    print(f"   violation: {v['rule']}: {v['detail']} (request {v['request_id']})")
sys.exit(1 if n else 0)
PY
}
