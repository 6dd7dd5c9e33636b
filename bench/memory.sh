#!/usr/bin/env bash
# Measurement 5: peak RSS (VmHWM) of the release gateway, run as its own process,
#   A — streaming a year (> 50,000 records) as NDJSON with the default cache (256 MiB);
#   B — the same with CACHE_MAX_BYTES=32 MiB, streamed twice (so the cache overflows and
#       evicts), then JSON queries with other filters until the response cache is full too
#       (each asked twice: plain, then with a browser's Accept-Encoding, so the stored answers
#       hold their br forms as well);
#   C — B again with glibc limited to one malloc arena (MALLOC_ARENA_MAX=1).
#   RUNS="B" runs only those; DHAT=FILE runs B under valgrind's DHAT (heap at its peak, by
#   allocation site, into FILE; `python3 bench/dhat-peak.py FILE` summarises it; DHAT sees
#   only the system allocator, which is the gateway's).
# Target: peak RSS ≤ cache bound + 64 MiB. Loopback only; every request bounded by
# --max-time; stops only the processes it started.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

FROM="${FROM:-2023-01-01}"
TO="${TO:-2023-12-31}"
need_tools curl python3
[ -x "$GW_BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
TMP="$(mktemp -d /tmp/kore-bench-mem.XXXXXX)"
trap 'stop_all; rm -rf "$TMP"' EXIT

SIM_PORT=$(free_port)
start_simulator "$SIM_PORT" 0ms

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
mib() { awk -v x="$1" 'BEGIN {printf "%.1f", x / 1024}'; }

stream() { # port → prints "records seconds"
  local start end n
  start=$(date +%s.%N)
  n=$(curl -sS --fail --max-time 600 -H "Authorization: Bearer $BENCH_KEY" \
    "http://127.0.0.1:$1/v1/interactions?from=$FROM&to=$TO&tz=UTC&format=ndjson" | wc -l)
  end=$(date +%s.%N)
  echo "$n $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}')"
}

cache_line() {
  curl -s -H "Authorization: Bearer $BENCH_ADMIN_KEY" "http://127.0.0.1:$1/v1/cache" |
    python3 -c 'import json,sys; c=json.load(sys.stdin); print("window cache %.1f MiB in %d entries, response cache %.1f MiB in %d entries (bound %.0f MiB)" % (c["window_bytes"]/2**20, c["window_entries"], c["response_bytes"]/2**20, c["response_entries"], c["max_bytes"]/2**20))'
}

run() { # name cache_bytes passes json_queries [VAR=value ...]
  local name="$1" bytes="$2" passes="$3" json="$4"
  shift 4
  local port
  port=$(free_port)
  start_gateway "$port" "$SIM_PORT" MAX_RANGE_DAYS=366 CACHE_MAX_BYTES="$bytes" "$@"
  local idle
  idle=$(kib "$GW_PID" VmHWM)
  local p r
  for p in $(seq "$passes"); do
    r=$(stream "$port")
    echo "run $name pass $p: streamed ${r% *} records in ${r#* } s; VmHWM now $(mib "$(kib "$GW_PID" VmHWM)") MiB"
  done
  local q=0 from to f
  local filters=("" "&channels=voice" "&channels=chat" "&channels=email" "&channels=sms" "&channels=rtm" "&bots=st-4b6a22d1-b8e5-533d-8020-93f847a9c0de" "&bots=st-bdc0f473-406d-59bd-bd15-0d1b80af5e11")
  while [ "$q" -lt "$json" ]; do
    f="${filters[$((q % ${#filters[@]}))]}"
    from=$(date -d "$FROM + $((q / ${#filters[@]} * 30)) days" +%F)
    to=$(date -d "$from + 29 days" +%F)
    curl -sS --fail --max-time 120 -o /dev/null -H "Authorization: Bearer $BENCH_KEY" \
      "http://127.0.0.1:$port/v1/interactions?from=$from&to=$to&tz=UTC&limit=10000$f"
    # Again as a browser: the stored answer gains its br form, which the bound must cover.
    curl -sS --fail --max-time 120 -o /dev/null -H "Authorization: Bearer $BENCH_KEY" \
      -H "Accept-Encoding: gzip, deflate, br, zstd" \
      "http://127.0.0.1:$port/v1/interactions?from=$from&to=$to&tz=UTC&limit=10000$f"
    q=$((q + 1))
  done
  [ "$json" -gt 0 ] && echo "run $name: $json JSON queries (30-day ranges, ${#filters[@]} filter combinations, limit=10000), each plain and as a browser"
  local peak bound_mib
  peak=$(kib "$GW_PID" VmHWM)
  bound_mib=$((bytes / 1048576))
  echo "run $name: $(cache_line "$port")"
  echo "RESULT 5 $name cache_mib=$bound_mib idle_hwm_mib=$(mib "$idle") peak_hwm_mib=$(mib "$peak") target_mib=$((bound_mib + 64)) records=${r% *}"
  stop_pid "$GW_PID"
}

RUNS="${RUNS:-A B C}"
case " $RUNS " in *" A "*) run A-default-cache 268435456 1 0 ;; esac
if [ -n "${DHAT:-}" ]; then
  need_tools valgrind
  WAIT_TRIES=1200 run B-32MiB-cache-full-under-dhat 33554432 2 24 valgrind --tool=dhat --dhat-out-file="$DHAT"
else
  case " $RUNS " in *" B "*) run B-32MiB-cache-full 33554432 2 24 ;; esac
fi
# The same as B with one malloc arena: how much of B's peak is allocator fragmentation
# (glibc's; the Dockerfile sets MALLOC_ARENA_MAX=2).
case " $RUNS " in *" C "*) run C-32MiB-cache-full-one-malloc-arena 33554432 2 24 MALLOC_ARENA_MAX=1 ;; esac
echo "simulator rule breaches: $(sim_violations "$SIM_PORT")"
