# Shared helpers of the benchmark scripts (sourced, not run).
# Everything here stays on 127.0.0.1 and only ever stops the processes it started, by pid.

# The simulator's demo credentials (SimConfig::demo() in crates/sim/src/lib.rs): the standalone
# simulator (`kore-gateway --simulator`) accepts exactly these.
SIM_ACCOUNT_ID=66bc4a29bdaafdb08461de30
SIM_CLIENT_ID=cs-173508e1-29f2-5e90-9532-122ec6b9de30
SIM_CLIENT_SECRET=demo-secret-not-for-production-0123456789
BENCH_KEY=bench-key-0001
BENCH_ADMIN_KEY=admin-bench-key-0001
VENDOR_PATH="/agentassist/api/public/analytics/account/$SIM_ACCOUNT_ID/v2/interactionDetails"
ALL_FIELDS='["customerinfo","sessionleveltags","skills","userleveltags"]'

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GW_BIN="${GW_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/kore-gateway}"

BENCH_PIDS=()

# start_bg LOGFILE CMD... — runs CMD in the background and remembers its pid.
start_bg() {
  local log="$1"
  shift
  "$@" >"$log" 2>&1 &
  BENCH_PIDS+=("$!")
  LAST_PID=$!
}

# Stops what start_bg started (only those pids), newest first.
stop_all() {
  local i
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    kill "${BENCH_PIDS[$i]}" 2>/dev/null || true
  done
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    wait "${BENCH_PIDS[$i]}" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

# stop_pid PID — stops one process this script started.
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${BENCH_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL — waits up to 10 s for URL to answer at all.
wait_http() {
  local i
  for i in $(seq "${WAIT_TRIES:-100}"); do
    if curl -s -o /dev/null --max-time 1 "$1"; then return 0; fi
    sleep 0.1
  done
  echo "no answer from $1 after 10 s" >&2
  return 1
}

# An HS256 JWT the simulator accepts (appId = the demo client id; no exp, like the vendor's
# own samples), made without any dependency.
mint_jwt() {
  python3 - "$SIM_CLIENT_ID" "$SIM_CLIENT_SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"appId": sys.argv[1], "iat": int(time.time())}).encode())
sig = hmac.new(sys.argv[2].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
}

# start_simulator PORT LATENCY — the built-in simulator as its own process.
start_simulator() {
  start_bg "$TMP/sim-$1.log" env GATEWAY_LISTEN="127.0.0.1:$1" RUST_LOG=warn \
    "$GW_BIN" --simulator --sim-latency "$2"
  SIM_PID=$LAST_PID
  wait_http "http://127.0.0.1:$1/__sim/violations"
}

# start_gateway PORT SIM_PORT [VAR=value ...] — the release gateway as its own process.
start_gateway() {
  local port="$1" sim_port="$2"
  shift 2
  start_bg "$TMP/gateway-$port.log" env \
    GATEWAY_LISTEN="127.0.0.1:$port" \
    KORE_BASE_URL="http://127.0.0.1:$sim_port" \
    KORE_ACCOUNT_ID="$SIM_ACCOUNT_ID" \
    KORE_CLIENT_ID="$SIM_CLIENT_ID" \
    KORE_CLIENT_SECRET="$SIM_CLIENT_SECRET" \
    GATEWAY_API_KEYS="bench:$BENCH_KEY,admin-bench:$BENCH_ADMIN_KEY" \
    KORE_RATE_LIMIT=100000/s \
    KORE_CONCURRENCY=32 \
    RUST_LOG=warn \
    "$@" "$GW_BIN"
  GW_PID=$LAST_PID
  wait_http "http://127.0.0.1:$port/healthz"
}

# Upstream calls the standalone simulator has answered so far.
sim_calls() {
  curl -s "http://127.0.0.1:$1/__sim/calls" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'
}

# Rule breaches the standalone simulator recorded.
sim_violations() {
  curl -s "http://127.0.0.1:$1/__sim/violations" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'
}

need_tools() {
  local missing=() t
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${missing[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]} (apt-get install ${missing[*]})" >&2
    return 1
  fi
}
