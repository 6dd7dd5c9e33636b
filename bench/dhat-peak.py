#!/usr/bin/env python3
"""Summarises a valgrind DHAT output file: the heap live at its peak (t-gmax), by allocation
site, largest first, each with its innermost frames of this project (src/) and the nearest
library frame. Usage: bench/dhat-peak.py FILE [TOP]"""
import json
import sys

d = json.load(open(sys.argv[1]))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
ftbl = d["ftbl"]
pps = d["pps"]
total = sum(p.get("gb", 0) for p in pps)
print(f"heap at its peak (t-gmax): {total / 2**20:.1f} MiB in {sum(p.get('gbk', 0) for p in pps)} blocks")
print(f"total allocated over the run: {sum(p['tb'] for p in pps) / 2**20:.0f} MiB in {sum(p['tbk'] for p in pps)} blocks")


ALLOC = ("alloc::", "alloc.rs", "raw_vec", "UnknownInlinedFun", "malloc", "realloc", "vec/mod.rs",
         "bytes_mut.rs", "slice.rs", "boxed.rs", "string.rs", "option.rs", "function.rs", "clone.rs")


def site(p):
    frames = [ftbl[i] for i in p["fs"]]
    # The innermost frame that is not the allocator or a std container growing, and the
    # innermost two frames of this project's own code.
    lib = [f for f in frames if not any(a in f for a in ALLOC)][:1]
    own = [f for f in frames if "kore_gateway::" in f.split("(")[0]][:2]
    pick = lib + [f for f in own if f not in lib]
    return " <- ".join(short(f) for f in pick) or short(frames[0])


def short(f):
    # "0x...: func (file:line)" -> "func (file:line)"
    f = f.split(": ", 1)[-1]
    return f if len(f) < 160 else f[:157] + "..."


# Group by the summarised site.
groups = {}
for p in pps:
    if p.get("gb", 0) == 0:
        continue
    k = site(p)
    g = groups.setdefault(k, [0, 0])
    g[0] += p["gb"]
    g[1] += p["gbk"]
print("== live at the peak, by site (MiB, blocks, share)")
for k, (b, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"{b / 2**20:8.1f} {n:8d} {100 * b / total:5.1f}%  {k}")
