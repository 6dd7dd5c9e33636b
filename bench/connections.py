#!/usr/bin/env python3
"""RSS of a `--demo` gateway (started here on a free loopback port, stopped by pid) before and
with N idle HTTP/1.1 keep-alive connections, each after one `GET /healthz`: the baseline an
idle change-feed subscriber is compared with (bench/feed.py memory).

    python3 bench/connections.py BINARY N
"""
import asyncio, sys, subprocess, os, time, socket, urllib.request, signal
binary, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
p = subprocess.Popen([binary, "--demo"], env=dict(os.environ, GATEWAY_LISTEN=f"127.0.0.1:{port}", RUST_LOG="warn"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(300):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read(); break
    except OSError: time.sleep(0.1)
def rss():
    return int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS:")][0].split()[1])
async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()); await w.drain()
    await r.readuntil(b"\r\n\r\n")
    return r, w
async def main():
    time.sleep(1); before = rss()
    conns = await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(3); after = rss()
    print(f"{n} idle keep-alive connections (after one /healthz each): RSS {before} -> {after} KiB, {(after-before)/n:.1f} KiB each")
asyncio.run(main())
p.send_signal(signal.SIGTERM); p.wait()
