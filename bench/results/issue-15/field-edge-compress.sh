# Field check of the edge and compression layers (issue #15, fourth pass), as a browser and
# odd callers meet them: the release --demo with CORS for one origin. Loopback only; stops
# only the gateway it started. GW_BIN= picks the binary.
set -u
D=$(mktemp -d /tmp/kore-field-edge.XXXXXX)
P=18941
B="http://127.0.0.1:$P"
KEY='Authorization: Bearer demo-key-0001'
BROWSER=(-H 'Accept-Encoding: gzip, deflate, br, zstd' -H 'Origin: https://dash.example' -H 'Accept: application/json, text/plain, */*')
start() { KORE_RATE_LIMIT=100000/s GATEWAY_LISTEN=127.0.0.1:$P SIM_LATENCY=0ms MAX_RANGE_DAYS=366 GATEWAY_CORS_ORIGINS=https://dash.example CACHE_DIR=$D RUST_LOG=info ${GW_BIN:-/work/main/target/release/kore-gateway} --demo > "$D/gw.log" 2>&1 & GW=$!; for i in $(seq 100); do curl -s -o /dev/null $B/healthz && break; sleep 0.2; done; }
hdr() { grep -i "^$1:" "$2" | tr -d '\r' | cut -d' ' -f2- | tr '\n' ' '; }
decode() { case "$1" in zstd) zstd -dc ;; br) python3 -c 'import sys,brotli; sys.stdout.buffer.write(brotli.decompress(sys.stdin.buffer.read()))' ;; gzip) gzip -dc ;; deflate) python3 -c 'import sys,zlib; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read()))' ;; *) cat ;; esac; }
start
echo "== cold exports, each asked first with one coding (compressed on the way out), then as a stored identity hit"
echo "   (X-Cache PARTIAL: the range overlaps the previous one's cached windows)"
i=0
for c in "gzip, deflate, br, zstd" br gzip deflate zstd; do
  i=$((i + 1))
  U="$B/v1/interactions?from=2024-0$i-01&to=2024-0$((i + 1))-15&tz=Europe/Berlin&format=ndjson"
  curl -sS --max-time 120 -D "$D/h1" -H "$KEY" -H "Accept-Encoding: $c" -H 'Origin: https://dash.example' "$U" -o "$D/cold"
  enc=$(hdr content-encoding "$D/h1" | tr -d ' ')
  curl -sS --max-time 120 -D "$D/h2" -H "$KEY" "$U" -o "$D/warm"
  decode "$enc" < "$D/cold" > "$D/cold.dec"
  same=$(cmp -s "$D/cold.dec" "$D/warm" && echo yes || echo NO)
  echo "AE='$c': miss $(hdr x-cache "$D/h1")enc=$enc $(stat -c %s "$D/cold") B -> $(stat -c %s "$D/cold.dec") B, vary=$(hdr vary "$D/h1")acao=$(hdr access-control-allow-origin "$D/h1")id=$(hdr x-request-id "$D/h1")| repeat $(hdr x-cache "$D/h2")$(wc -l < "$D/warm") lines; decoded miss == stored hit: $same"
done
echo "== a JSON page as a browser polls it: miss, hit, If-None-Match"
U="$B/v1/interactions?from=2024-09-02&to=2024-09-08&tz=UTC&limit=100"
curl -sS -D "$D/h" -o /dev/null -H "$KEY" "${BROWSER[@]}" "$U"; echo "miss: $(hdr x-cache $D/h)enc=$(hdr content-encoding $D/h)vary=$(hdr vary $D/h)"
curl -sS -D "$D/h" -o /dev/null -H "$KEY" "${BROWSER[@]}" "$U"; E=$(hdr etag $D/h); echo "hit: $(hdr x-cache $D/h)enc=$(hdr content-encoding $D/h)len=$(hdr content-length $D/h)ratelimit=$(hdr ratelimit $D/h)"
curl -sS -D "$D/h" -o /dev/null -w '%{http_code} %{size_download}' -H "$KEY" "${BROWSER[@]}" -H "If-None-Match: ${E% }" "$U"; echo " <- If-None-Match: vary=$(hdr vary $D/h)etag=$(hdr etag $D/h)"
echo "== odd request ids"
for id in 'ok-123' "$(printf 'x%.0s' $(seq 200))" 'has space' 'café' ''; do
  got=$(curl -sS -D - -o /dev/null -H "$KEY" -H "X-Request-Id: $id" "$U" | grep -i '^x-request-id:' | tr -d '\r' | cut -d' ' -f2)
  echo "sent '${id:0:20}' (${#id} chars) -> '$got'"
done
echo "== bad input stays 4xx through the new layers"
for q in 'from=2024-13-01&to=2024-13-02' 'from=2024-01-01&to=2024-01-02&tz=Mars/Base' 'from=2024-01-01&to=2024-01-02&limit=-1'; do
  curl -sS -o "$D/b" -D "$D/h" -H "$KEY" "${BROWSER[@]}" "$B/v1/interactions?$q"; echo "$q -> $(head -1 $D/h | tr -d '\r') $(hdr content-type $D/h)enc=$(hdr content-encoding $D/h)"
done
echo "== metrics"
curl -s $B/metrics | grep -E '^gateway_compressed_on_the_way_out_total|^gateway_requests_total\{.*route="/v1/interactions"' | head -5
echo "== SIGTERM during a slow compressed miss (a new range)"
U="$B/v1/interactions?from=2023-01-01&to=2023-03-31&tz=UTC&format=ndjson"
curl -sS --max-time 120 --limit-rate 100K -H "$KEY" -H 'Accept-Encoding: br' "$U" -o "$D/term.br" &
C=$!
sleep 4
kill -TERM $GW; T0=$(date +%s.%N)
wait $C; rc=$?
wait $GW; grc=$?
echo "curl rc=$rc, gateway exit $grc after $(awk -v a=$T0 -v b=$(date +%s.%N) 'BEGIN{printf "%.1f", b-a}') s; decoded $(decode br < "$D/term.br" | wc -l) lines"
start
curl -sS --max-time 120 -D "$D/h" -H "$KEY" "$U" -o "$D/term.id"
echo "after restart: $(hdr x-cache $D/h)$(wc -l < "$D/term.id") lines; equal to the TERM-time download: $(decode br < "$D/term.br" | cmp -s - "$D/term.id" && echo yes || echo NO)"
kill -TERM $GW; wait $GW
rm -rf "$D"
