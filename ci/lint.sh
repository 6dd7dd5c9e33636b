#!/usr/bin/env bash
# Lints the committed OpenAPI document with Redocly and Spectral (versions pinned in
# ci/lint/package-lock.json). Exits non-zero on any finding of either: Redocly's
# recommended rules (ci/lint/redocly.yaml; the only exceptions, 4xx responses of the four
# probe routes, are listed in ci/lint/.redocly.lint-ignore.yaml) and Spectral's spectral:oas
# with warnings counted as failures.
set -euo pipefail
cd "$(dirname "$0")/lint"
npm ci --no-audit --no-fund --silent
doc=../../openapi/openapi.json
echo "-- redocly lint"
./node_modules/.bin/redocly lint "$doc" --config redocly.yaml
echo "-- spectral lint"
./node_modules/.bin/spectral lint -r .spectral.yaml --fail-severity=warn "$doc"
