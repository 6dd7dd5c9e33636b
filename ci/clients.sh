#!/usr/bin/env bash
# Generated clients: what a user gets from /openapi.json with two common generators, used
# against a running `--demo` gateway for JSON, NDJSON, CSV and the summary.
#
# - Python: openapi-python-client (pinned below, in its own venv target/clients-venv)
#   generates a package from the served document; ci/clients/check_python.py uses it.
# - TypeScript: openapi-typescript generates the types, openapi-fetch calls the API (both
#   pinned in ci/clients/package-lock.json); ci/clients/check.ts is type-checked against the
#   generated types with `tsc --strict`, then run with node.
#
# Both checks fetch one range as JSON models (every page, along the cursor), as NDJSON and
# as CSV, and require the same records in the same order, as many as `meta.total`; and the
# summary's JSON total equal to its CSV's. Generation must be clean: a warning from
# openapi-python-client (a response it cannot parse) fails the check. The generated code
# goes to target/clients/ and is never committed.
#
# Under CI=true a missing tool (python3 with venv, node, npm) fails the check; elsewhere it
# is skipped with a message.
#
#   ci/clients.sh            # exits non-zero on any failed check
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

OPC_VERSION=0.29.1
VENV=$(realpath -m "${CLIENTS_VENV:-target/clients-venv}")
OUT=$(realpath -m target/clients)

ci=0
case "${CI:-}" in "" | false | 0) ;; *) ci=1 ;; esac
missing=""
python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$missing python3-venv"
command -v node >/dev/null 2>&1 || missing="$missing node"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
  if [ "$ci" = 1 ]; then
    echo "clients: FAILED: missing$missing (.ci/run installs node and npm)" >&2
    exit 1
  fi
  echo "clients: SKIPPED: missing$missing (fails under CI=true)"
  exit 0
fi

if ! "$VENV/bin/openapi-python-client" --version 2>/dev/null | grep -q "$OPC_VERSION"; then
  echo "== installing openapi-python-client $OPC_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-python-client==$OPC_VERSION"
fi
echo "== npm ci in ci/clients (openapi-typescript, openapi-fetch, typescript)"
npm ci --prefix ci/clients --no-audit --no-fund --silent

cargo build --locked --bin kore-gateway
LOGDIR=$(mktemp -d)
start_demo target/debug/kore-gateway "$LOGDIR"
echo "== gateway pid $GW_PID on $GW_URL"
# The demo's team key, as the README's curl uses it.
KEY=demo-key-0001

rm -rf "$OUT"
mkdir -p "$OUT/python" "$OUT/ts"
fail=0

echo "== openapi-python-client $OPC_VERSION: generate from $GW_URL/openapi.json"
set +e
# Its venv's bin on PATH: the generator formats what it writes with the ruff installed there.
PATH="$VENV/bin:$PATH" openapi-python-client generate --url "$GW_URL/openapi.json" \
  --output-path "$OUT/python/kore_gateway_client" --meta none >"$LOGDIR/opc.log" 2>&1
rc=$?
set -e
sed 's/^/   /' "$LOGDIR/opc.log"
# It exits 0 with "Warning(s) encountered" when it left a response out of the client.
if [ "$rc" -ne 0 ] || grep -q 'encountered while generating' "$LOGDIR/opc.log"; then
  echo "clients: openapi-python-client did not generate cleanly (exit $rc, log above)" >&2
  fail=1
else
  echo "== the Python client against the gateway"
  "$VENV/bin/python" ci/clients/check_python.py "$OUT/python" "$GW_URL" "$KEY" || fail=1
fi

echo "== openapi-typescript: generate types from $GW_URL/openapi.json, tsc --strict, run"
# The check compiles next to the generated types; node resolves openapi-fetch through the
# link to ci/clients/node_modules.
cp ci/clients/check.ts ci/clients/tsconfig.json "$OUT/ts/"
ln -s "$(realpath ci/clients/node_modules)" "$OUT/ts/node_modules"
echo '{ "private": true, "type": "module" }' >"$OUT/ts/package.json"
if ! ci/clients/node_modules/.bin/openapi-typescript "$GW_URL/openapi.json" -o "$OUT/ts/schema.d.ts" >"$LOGDIR/ots.log" 2>&1; then
  sed 's/^/   /' "$LOGDIR/ots.log"
  echo "clients: openapi-typescript failed (log above)" >&2
  fail=1
elif ! (cd "$OUT/ts" && ./node_modules/.bin/tsc -p tsconfig.json); then
  echo "clients: check.ts does not type-check against the generated types" >&2
  fail=1
else
  (cd "$OUT/ts" && node check.js "$GW_URL" "$KEY") || fail=1
fi

violations=0
assert_no_violations "$LOGDIR" || violations=1
stop_demo
[ "$violations" -eq 0 ] || { echo "clients: the gateway broke vendor rules" >&2; fail=1; }
assert_no_panic "$LOGDIR" || fail=1
[ "$fail" -eq 0 ] && echo "clients: passed" || echo "clients: FAILED"
exit $fail
