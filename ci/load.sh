#!/usr/bin/env bash
# Load and soak on loopback: kore-load (crates/tools/src/bin/kore-load.rs) against a `--demo` gateway,
# with the gateway's memory and open file descriptors sampled before and after.
#
#   ci/load.sh                                              # CI: 50 clients x 15 s, debug build
#   LOAD_CLIENTS=200 LOAD_SECONDS=60 LOAD_PROFILE=release ci/load.sh   # the full soak
#   LOAD_SKIP_BUILD=1 …                                     # use target/<profile>/ as built
#
# Fails on any unexpected answer (a 5xx, a wrong status class, an incomplete JSON answer, a
# body cut short, a transport error), on a panic in the gateway's log, on any vendor rule
# the demo's simulator saw broken (its /__sim/violations), or on a descriptor
# leak: once the clients have gone, the gateway must hold none of their connections, and no
# more descriptors than after warm-up plus LOAD_FD_SLACK (8) and its bounded upstream pool.
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

CLIENTS=${LOAD_CLIENTS:-50}
SECS=${LOAD_SECONDS:-15}
PROFILE=${LOAD_PROFILE:-debug}
FD_SLACK=${LOAD_FD_SLACK:-8}
UPSTREAM_CONCURRENCY=32

case "$PROFILE" in
  release) build=(cargo build --release --locked --workspace --bin kore-gateway --bin kore-load) ;;
  debug) build=(cargo build --locked --workspace --bin kore-gateway --bin kore-load) ;;
  *) echo "LOAD_PROFILE must be debug or release" >&2; exit 2 ;;
esac
# LOAD_SKIP_BUILD=1 uses the binaries as they are (repeat runs on a busy machine).
[ "${LOAD_SKIP_BUILD:-0}" = 1 ] || "${build[@]}"
BIN=target/$PROFILE/kore-gateway
LOAD=target/$PROFILE/kore-load
KEY=demo-key-0001

# Every client holds a connection to the gateway, and the gateway one per client.
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

LOGDIR=$(mktemp -d)
# A generous upstream budget: this measures the gateway, not the vendor's 60 calls/min.
# More upstream calls in flight than the vendor default (8): the simulator is in-process, and
# this measures the gateway under many clients, not the queue in front of one vendor.
start_demo "$BIN" "$LOGDIR" KORE_RATE_LIMIT=1000000/s KORE_CONCURRENCY=$UPSTREAM_CONCURRENCY
echo "== gateway pid $GW_PID on $GW_URL ($PROFILE build)"

fds() { ls "/proc/$GW_PID/fd" | wc -l; }
# TCP connections the gateway holds on its own port (callers' connections, not its listener
# and not its pool of upstream connections to the simulator).
client_conns() {
  local port_hex inodes
  port_hex=$(printf '%04X' "${GW_URL##*:}")
  inodes=$(ls -l "/proc/$GW_PID/fd" 2>/dev/null | grep -o 'socket:\[[0-9]*\]' | grep -o '[0-9]*' | sort -u)
  [ -n "$inodes" ] || { echo 0; return; }
  # /proc/net/tcp: local "ADDR:PORT", state 0A = LISTEN, inode in column 10.
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null \
    | awk -v p="$port_hex" 'NR > 1 && $4 != "0A" { split($2, a, ":"); if (a[2] == p) print $10 }' \
    | grep -c -x -F "$inodes" || true
}
status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$GW_PID/status"; }

# Warm-up: fills the upstream connection pool and the caches of the repeated queries, so
# "before" is a gateway that has served traffic, not a fresh one.
"$LOAD" --url "$GW_URL" --key "$KEY" --clients 32 --seconds 3 --seed 99 >"$LOGDIR/warmup.txt" \
  || { cat "$LOGDIR/warmup.txt"; echo "warm-up failed" >&2; exit 1; }
sleep 2
FDS_BEFORE=$(fds)
RSS_BEFORE=$(status_kb VmRSS)
echo "   before: fds=$FDS_BEFORE client_conns=$(client_conns) rss_kb=$RSS_BEFORE"

echo "== kore-load: $CLIENTS clients for ${SECS}s"
set +e
timeout --kill-after=10 $(( SECS + 120 )) \
  "$LOAD" --url "$GW_URL" --key "$KEY" --clients "$CLIENTS" --seconds "$SECS" | tee "$LOGDIR/load.txt"
load_rc=${PIPESTATUS[0]}
set -e
FDS_PEAK_HINT=$(fds)
CONNS_PEAK_HINT=$(client_conns)

# The clients have exited; give the gateway a moment to see their sockets close. What may
# stay is its pool of idle upstream connections (two descriptors each, the simulator being
# in-process), bounded by KORE_CONCURRENCY: that is the allowance over FD_SLACK.
FD_ALLOWANCE=$(( FD_SLACK + 2 * UPSTREAM_CONCURRENCY ))
for _ in $(seq 1 50); do
  FDS_AFTER=$(fds)
  CONNS_AFTER=$(client_conns)
  [ "$CONNS_AFTER" -eq 0 ] && [ "$FDS_AFTER" -le $(( FDS_BEFORE + FD_SLACK )) ] && break
  sleep 0.2
done
RSS_AFTER=$(status_kb VmRSS)
PEAK_RSS=$(status_kb VmHWM)
echo "   after:  fds=$FDS_AFTER client_conns=$CONNS_AFTER rss_kb=$RSS_AFTER peak_rss_kb=$PEAK_RSS (right after the run: fds=$FDS_PEAK_HINT client_conns=$CONNS_PEAK_HINT)"

summary=$(grep '^kore-load:' "$LOGDIR/load.txt" | tail -n1 || true)
fail=0
if [ "$load_rc" -ne 0 ]; then
  echo "load: kore-load reported unexpected outcomes (exit $load_rc)" >&2
  fail=1
fi
if [ "$CONNS_AFTER" -ne 0 ] || [ "$FDS_AFTER" -gt $(( FDS_BEFORE + FD_ALLOWANCE )) ]; then
  echo "load: descriptor leak: $FDS_BEFORE before, $FDS_AFTER after (allowance $FD_ALLOWANCE)," \
    "$CONNS_AFTER callers' connections still open after the callers left" >&2
  ls -l "/proc/$GW_PID/fd" | tail -n 20 >&2
  fail=1
fi
kill -0 "$GW_PID" 2>/dev/null || { echo "load: the gateway died" >&2; fail=1; }
assert_no_violations "$LOGDIR" || { echo "load: the gateway broke vendor rules" >&2; fail=1; }
stop_demo
assert_no_panic "$LOGDIR" || fail=1

echo "load: profile=$PROFILE ${summary#kore-load: } rss_before_kb=$RSS_BEFORE rss_after_kb=$RSS_AFTER peak_rss_kb=$PEAK_RSS fds_before=$FDS_BEFORE fds_after=$FDS_AFTER client_conns_after=$CONNS_AFTER result=$([ $fail -eq 0 ] && echo pass || echo FAIL)"
exit $fail
