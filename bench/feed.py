#!/usr/bin/env python3
"""Change-feed benchmarks against `--demo` gateways this script starts (and stops, by pid).

    python3 bench/feed.py latency  BINARY INTERVAL SECONDS   # publication -> event
    python3 bench/feed.py busy     BINARY SECONDS            # upstream calls/h, busy day, 60/min
    python3 bench/feed.py memory   BINARY SUBSCRIBERS        # RSS per idle subscriber

The demo's simulators are live and deterministic: a session is published 60 s after it
starts, and half the records are revised every 30 min after publication (Live::demo). So
the moment the vendor starts showing a change is known from the record itself, and the
latency of an event is its arrival minus that moment. Only loopback is used.
"""

import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

KEY = "demo-key-0001"
PUBLISH_DELAY = 60
REVISE_EVERY = 30 * 60


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(binary, env):
    port = free_port()
    e = dict(os.environ, GATEWAY_LISTEN=f"127.0.0.1:{port}", RUST_LOG="warn", **env)
    log = open(f"/tmp/feed-bench-{port}.log", "w")
    p = subprocess.Popen([binary, "--demo"], env=e, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    text = open(f"/tmp/feed-bench-{port}.log").read()
    m = re.search(r"Simulator:\s+(http://127\.0\.0\.1:\d+)/__sim", text)
    return p, base, (m.group(1) if m else None)


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def get_json(url, key=KEY):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    return json.load(urllib.request.urlopen(req, timeout=30))


def utc(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def events(base, query, seconds):
    """(arrival, event, data) of every event in the next `seconds` of one stream."""
    req = urllib.request.Request(
        f"{base}/v1/interactions/changes?{query}",
        headers={"Authorization": f"Bearer {KEY}", "Accept": "text/event-stream"},
    )
    # No read timeout: a keep-alive comes at least every 15 s, so the loop looks at the
    # clock at least that often.
    resp = urllib.request.urlopen(req)
    end = time.time() + seconds
    out, event, data = [], None, []
    while time.time() < end:
        line = resp.readline()
        if not line:
            break
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and event:
            out.append((time.time(), event, "\n".join(data)))
            event, data = None, []
    resp.close()
    return out


def latency(binary, interval, seconds):
    p, base, _ = start(binary, {"FEED_INTERVAL": interval, "SIM_VOLUME": "20"})
    try:
        got = events(base, "tz=UTC", float(seconds))
    finally:
        stop(p)
    lat = []
    for arrival, kind, data in got:
        if kind not in ("created", "updated"):
            continue
        start_t = utc(json.loads(data)["sessionStartTime"])
        shown = start_t + PUBLISH_DELAY
        if kind == "updated":
            shown += (arrival - shown) // REVISE_EVERY * REVISE_EVERY
        lat.append(arrival - shown)
    kinds = {k: sum(1 for _, e, _ in got if e == k) for k in ("created", "updated", "warning")}
    if not lat:
        print(f"latency interval={interval}: no events in {seconds} s ({kinds})")
        return
    lat.sort()
    p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
    print(
        f"latency interval={interval} over {seconds} s: {len(lat)} events {kinds}; "
        f"publication -> event min {lat[0]:.1f} s, median {statistics.median(lat):.1f} s, "
        f"p90 {p90:.1f} s, max {lat[-1]:.1f} s"
    )


def busy(binary, seconds):
    env = {
        "SIM_VOLUME": "180",
        "SIM_RATE_LIMIT": "60/min",
        "KORE_RATE_LIMIT": "60/min",
        "SIM_LATENCY": "50ms",
    }
    p, base, sim = start(binary, env)
    try:
        t0 = time.time()
        got = events(base, "tz=UTC", float(seconds))
        span = time.time() - t0
        st = get_json(base + "/status.json")["feed"]
        calls = json.load(urllib.request.urlopen(sim + "/__sim/calls", timeout=30))
        viol = json.load(urllib.request.urlopen(sim + "/__sim/violations", timeout=30))
    finally:
        stop(p)
    total = calls["total"]
    statuses = {}
    for c in calls["calls"]:
        statuses[c["status"]] = statuses.get(c["status"], 0) + 1
    topic = st["topics"][0] if st["topics"] else {}
    kinds = {k: sum(1 for _, e, _ in got if e == k) for k in ("created", "updated", "warning")}
    print(
        f"busy day (SIM_VOLUME=180, 60/min) over {span:.0f} s: {total} upstream calls "
        f"({total / span * 3600:.0f}/h), statuses {statuses}, violations {viol['count']}; "
        f"feed polls {st['polls']}, last poll {topic.get('last_poll_calls')} calls, "
        f"records watched {topic.get('records')}; events {kinds}"
    )


async def idle_subscriber(port, ready):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(
        f"GET /v1/interactions/changes?tz=UTC HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {KEY}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    ready.append(1)
    return r, w


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(binary, n):
    n = int(n)
    p, base, _ = start(binary, {"FEED_MAX_SUBSCRIBERS_PER_KEY": str(n + 10)})
    port = int(base.rsplit(":", 1)[1])
    try:
        # One stream first: the topic exists and made its first poll.
        warm = events(base, "tz=UTC", 3.0)
        time.sleep(1)
        before = rss_kib(p.pid)

        async def run():
            ready = []
            conns = await asyncio.gather(*(idle_subscriber(port, ready) for _ in range(n)))
            await asyncio.sleep(3)
            during = rss_kib(p.pid)
            st = get_json(base + "/status.json")["feed"]["subscribers"]
            for _, w in conns:
                w.close()
            return during, st

        during, open_streams = asyncio.run(run())
    finally:
        stop(p)
    print(
        f"memory: {n} idle subscribers (status says {open_streams} open): RSS {before} KiB -> "
        f"{during} KiB, {(during - before) / n:.1f} KiB per subscriber "
        f"(warm-up events {len(warm)})"
    )


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    {"latency": latency, "busy": busy, "memory": memory}[what](*args)
