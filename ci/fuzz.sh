#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz + libFuzzer) of the pure cores a request goes through:
# the query parser (dates, tz, lists, cursor, Accept), the window planner, cursors, the
# drop-in body, and the change feed's event ids and tickets. Builds the targets once, runs
# each for FUZZ_SECONDS (default 45) from the seed corpus in fuzz/corpus/<target>/, and
# fails on any crash, leaving the input in fuzz/artifacts/<target>/ (add it to
# tests/fuzz_regressions.rs before fixing).
#
#   FUZZ_SECONDS=45 FUZZ_TARGETS="query plan cursor dropin_body feed_ids" ci/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${FUZZ_SECONDS:-45}
TARGETS=${FUZZ_TARGETS:-"query plan cursor dropin_body feed_ids"}
CARGO_FUZZ_VERSION=0.13.2

# cargo fuzz passes nightly-only flags (-Z…); the machine has stable Rust only, and
# RUSTC_BOOTSTRAP lets stable accept them.
export RUSTC_BOOTSTRAP=1
# No sanitizer: everything fuzzed is safe Rust, so what there is to find is panics (overflow
# checks and debug assertions are on), and without ASan both the build and each run go
# faster. More codegen units: the instrumented build recompiles every dependency, and on
# two cores that is most of this step's time.
BUILD_FLAGS=(--sanitizer none --codegen-units 16)

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

cd fuzz
started=$(date +%s)
echo "== cargo fuzz build (${TARGETS// /, })"
cargo fuzz build "${BUILD_FLAGS[@]}"
echo "   built in $(( $(date +%s) - started )) s"
BIN_DIR=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release

failed=()
for t in $TARGETS; do
  # New inputs go to a scratch corpus under fuzz/target; the committed seeds are read only.
  scratch=target/corpus-run/$t
  mkdir -p "$scratch" "corpus/$t"
  log=target/fuzz-$t.log
  echo "== fuzzing $t for ${SECS}s"
  set +e
  # The binary as built above (not `cargo fuzz run`, which would rebuild if anything changed).
  mkdir -p "artifacts/$t"
  timeout --kill-after=30 $(( SECS + 60 )) \
    "$BIN_DIR/$t" "$scratch" "corpus/$t" -artifact_prefix="artifacts/$t/" \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
      -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$( (grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" || true) | grep -o '[0-9]*$' | tail -n1 || true)
  done_line=$( (grep -E '^#[0-9]+[[:space:]]+DONE' "$log" || true) | tail -n1)
  cov=$( (grep -o 'cov: [0-9]*' "$log" || true) | tail -n1)
  echo "   $t: executions=${execs:-?} ${cov} rc=$rc ${done_line}"
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "   $t FAILED; the last lines of its log ($log):"
    grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' "$log" | tail -n 40 || true
    for a in "artifacts/$t"/*; do
      [ -f "$a" ] || continue
      echo "   artifact: fuzz/$a"
      echo "   reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${BUILD_FLAGS[*]} $t $a)"
    done
  fi
done

echo "fuzz: $(( $(date +%s) - started )) s in all; targets: $TARGETS"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}"
  exit 1
fi
