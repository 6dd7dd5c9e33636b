#!/usr/bin/env python3
"""Deterministic edge probes of a running gateway, run next to schemathesis.

Schemathesis explores at random; these are the edges the issue names, asked every time:
ranges far in the past and future, at and over the limits, DST gaps and folds, odd zones,
huge page sizes, foreign cursors, the drop-in body at its bounds. Each must get the status
listed (never a 5xx); every 4xx must be problem+json naming the same status.

Usage: edge_probes.py BASE_URL API_KEY ACCOUNT_ID
"""

import http.client
import json
import sys
import urllib.error
import urllib.request

BASE, KEY, ACCOUNT = sys.argv[1], sys.argv[2], sys.argv[3]
DROPIN = f"/agentassist/api/public/analytics/account/{ACCOUNT}/v2/interactionDetails"

OK = {200}
BAD = {400}

# (method, path, body, expected statuses, extra headers)
PROBES = [
    # Far in the past and the future, at the parser's year bounds.
    ("GET", "/v1/interactions?from=1971-01-01&to=1971-01-07&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=1971-01-01&to=1971-01-01&tz=%2B14:00&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2099-12-25&to=2099-12-31T23:59:59&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2099-12-31&to=2099-12-31&tz=-14:00&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=1970-12-31&to=1971-01-01", None, BAD, {}),
    ("GET", "/v1/interactions?from=2099-12-31&to=2100-01-01", None, BAD, {}),
    ("GET", "/v1/interactions?from=0001-01-01&to=9999-12-31", None, BAD, {}),
    # A sub-minute historical offset (Monrovia, -0:44:30 until 1972) cannot be sent upstream.
    ("GET", "/v1/interactions?from=1971-06-01&to=1971-06-02&tz=Africa/Monrovia", None, BAD, {}),
    # The range limit: exactly 92 days passes, one second more does not.
    ("GET", "/v1/interactions?from=2024-01-01&to=2024-04-01&limit=1", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-01-01&to=2024-04-02T00:00:00&limit=1", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-02&to=2024-09-01", None, BAD, {}),
    # Page sizes.
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&limit=10000", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&limit=10001", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&limit=18446744073709551616", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&limit=-1", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&limit=1e3", None, BAD, {}),
    # Odd zones and offsets.
    ("GET", "/v1/interactions?from=2024-04-06&to=2024-04-08&tz=Australia/Lord_Howe&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-27&tz=Asia/Kathmandu&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-27&tz=Pacific/Kiritimati&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-03-30&to=2024-03-31&tz=Antarctica/Troll&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2011-12-29&to=2011-12-31&tz=Pacific/Apia&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=Etc/GMT%2B12&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=utc&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=%2B0545&limit=5", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=%2B14:01", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=%2B05:60", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=Mars/Olympus", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=../../etc/passwd", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=" + "A" * 300, None, BAD, {}),
    # A sign then multi-byte characters (found by fuzzing: sliced inside a character).
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=%2Ba%C3%A9b", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&tz=-%E2%82%AC5", None, BAD, {}),
    # DST gap (02:30 does not exist) and fold (01:30 happens twice) in New York.
    ("GET", "/v1/interactions?from=2024-03-10T02:30&to=2024-03-10T02:45&tz=America/New_York", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-11-03T01:30&to=2024-11-03T01:30&tz=America/New_York", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-03-10T02:30&to=2024-03-10T02:00&tz=America/New_York", None, BAD, {}),
    # Formats over a range that crosses a DST change.
    ("GET", "/v1/interactions?from=2024-10-30&to=2024-11-05&tz=America/New_York&format=ndjson", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-10-30&to=2024-11-05&tz=America/New_York&format=csv", None, OK, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26", None, OK, {"Accept": "text/csv"}),
    # The paths that name their representation (one OpenAPI operation each), and a second
    # `format` beside one.
    ("GET", "/v1/interactions.ndjson?from=2024-10-30&to=2024-11-05&tz=America/New_York", None, OK, {}),
    ("GET", "/v1/interactions.csv?from=2024-10-30&to=2024-11-05&tz=America/New_York", None, OK, {}),
    ("GET", "/v1/interactions/summary.csv?from=2024-10-30&to=2024-11-05&tz=America/New_York&group_by=hour", None, OK, {}),
    ("GET", "/v1/interactions.csv?from=2024-09-26&to=2024-09-26&format=csv", None, BAD, {}),
    ("GET", "/v1/interactions.ndjson?from=2024-09-26&to=2024-09-26&format=", None, BAD, {}),
    ("GET", "/v1/interactions/summary.csv?from=2024-09-26&to=2024-09-26&format=json", None, BAD, {}),
    # Cursors that the gateway did not issue for this query.
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&cursor=" + "A" * 5000, None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&cursor=%00%FF", None, BAD, {}),
    # Malformed query strings.
    ("GET", "/v1/interactions?from=%FF%FE&to=2024-09-26", None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&channels=" + ",".join(["x"] * 101), None, BAD, {}),
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26&&&=&=x", None, BAD, {}),
    # The drop-in route at its bounds.
    ("POST", DROPIN, {"startDate": "2024-09-20 00:00:00", "endDate": "2024-09-27 00:00:00", "timeZoneOffset": -330}, OK, {}),
    ("POST", DROPIN, {"startDate": "2024-09-20 00:00:00", "endDate": "2024-09-27 00:00:01", "timeZoneOffset": -330}, BAD, {}),
    ("POST", DROPIN, {"startDate": "1971-01-01", "endDate": "1971-01-01", "timeZoneOffset": 840}, OK, {}),
    ("POST", DROPIN, {"startDate": "2099-12-31", "endDate": "2099-12-31", "timeZoneOffset": -840}, OK, {}),
    ("POST", DROPIN, {"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": 841}, BAD, {}),
    ("POST", DROPIN, {"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": 1e30}, BAD, {}),
    ("POST", DROPIN, {"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": 0, "channels": [None]}, BAD, {}),
    ("POST", DROPIN + "?offset=11", {"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": 0}, BAD, {}),
    ("POST", DROPIN + "?limit=101", {"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": 0}, BAD, {}),
    ("POST", DROPIN, b"[" * 10000, BAD, {}),
    ("POST", DROPIN, b'{"startDate":"' + b"x" * 70000 + b'"}', {400, 413}, {}),
    ("POST", f"/agentassist/api/public/analytics/account/other/v2/interactionDetails", {"startDate": "2024-09-26", "endDate": "2024-09-26", "timeZoneOffset": 0}, {404}, {}),
    # Auth and methods.
    ("GET", "/v1/interactions?from=2024-09-26&to=2024-09-26", None, {401}, {"Authorization": ""}),
    ("GET", "/v1/cache", None, {403}, {}),
    ("PUT", "/v1/interactions?from=2024-09-26&to=2024-09-26", None, {405}, {}),
]


def call(method, path, body, headers):
    data = None
    h = {"Authorization": f"Bearer {KEY}"}
    h.update(headers)
    if not h.get("Authorization"):
        del h["Authorization"]
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()
    except (OSError, http.client.HTTPException) as e:
        # No answer at all (the connection dropped: a panic in a handler, say).
        return 0, "", repr(e).encode()


def main():
    failures = []
    for method, path, body, expected, headers in PROBES:
        status, ctype, text = call(method, path, body, headers)
        problem = ""
        if 400 <= status < 500:
            try:
                p = json.loads(text)
                if not ctype.startswith("application/problem+json") or p.get("status") != status:
                    problem = f"not a problem+json {status}: {ctype} {text[:120]!r}"
            except ValueError:
                problem = f"4xx body is not JSON: {ctype} {text[:120]!r}"
        shown = path if len(path) < 110 else path[:100] + "…"
        if status not in expected or problem:
            failures.append(f"{method} {shown} -> {status}, expected {sorted(expected)} {problem}")
            print(f"  FAIL {status} {method} {shown} {problem} {text[:160]!r}")
    # ETag round trip: the same query with If-None-Match is a 304.
    q = "/v1/interactions?from=2024-09-26&to=2024-09-26&limit=3"
    req = urllib.request.Request(BASE + q, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        etag = r.headers.get("ETag")
    status, _, _ = call("GET", q, None, {"If-None-Match": etag or "none"})
    if status != 304:
        failures.append(f"If-None-Match with the ETag -> {status}, expected 304")
    total = len(PROBES) + 1
    print(f"edge probes: {total - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
