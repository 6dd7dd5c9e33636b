#!/usr/bin/env bash
# Checks the Prometheus alerting rules under deploy/prometheus (`promtool check rules`) and
# runs their unit tests (`promtool test rules`), then checks that every PromQL expression of
# the Grafana dashboard parses (as a throw-away recording rule). promtool comes from PATH,
# or from Debian's prometheus package unpacked under target/ci-tools (no service is
# installed or started). No promtool = failure.
set -euo pipefail
cd "$(dirname "$0")/.."
promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
  tools=target/ci-tools
  if [ ! -x "$tools/usr/bin/promtool" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    mkdir -p "$tools"
    (cd "$tools" && apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null; })
    dpkg-deb -x "$tools"/prometheus_*.deb "$tools"
  fi
  promtool="$PWD/$tools/usr/bin/promtool"
fi
[ -x "$promtool" ] || { echo "promtool not found (install Debian's prometheus package, or put promtool on PATH)" >&2; exit 1; }
"$promtool" check rules deploy/prometheus/kore-gateway.rules.yml
(cd deploy/prometheus && "$promtool" test rules kore-gateway.rules.test.yml)
# The dashboard's queries, with Grafana's variables replaced, must be valid PromQL.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - deploy/grafana/kore-gateway.json "$tmp/dashboard.rules.yml" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
assert exprs, "the dashboard has no queries"
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace('"$job"', '".*"')
        f.write(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(exprs)} dashboard queries")
PY
"$promtool" check rules "$tmp/dashboard.rules.yml"
