#!/usr/bin/env python3
"""Session 6: where the instructions of a hit moved between two callgrind profiles.

    callgrind-diff.py BEFORE.out[.gz] AFTER.out[.gz] HITS

Reads each profile's function summary (callgrind_annotate --auto=no, threshold 100 %) and
prints, per hit, (1) self cost by function, the largest rises and falls, and (2) inclusive
cost of the gateway's own functions. Names of the middleware that moved from api::layers to
api::middleware::{edge,compress,deadline} are folded to api::mw so the two builds line up.
Inclusive figures overlap (a caller includes its callees), so they are read, not summed.
"""
import gzip
import re
import shutil
import subprocess
import sys
import tempfile


def plain(path):
    """A gzipped profile is unpacked to a temporary file for callgrind_annotate."""
    if not path.endswith(".gz"):
        return path
    tmp = tempfile.NamedTemporaryFile(suffix=".out", delete=False)
    with gzip.open(path, "rb") as src:
        shutil.copyfileobj(src, tmp)
    tmp.close()
    return tmp.name


def load(path, inclusive):
    args = ["callgrind_annotate", "--auto=no", "--threshold=100"]
    if inclusive:
        args.append("--inclusive=yes")
    out = subprocess.run(args + [path], capture_output=True, text=True).stdout
    d = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[[^]]*\])?$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = m.group(2)
        fn = name.split(":", 1)[1] if re.match(r"^[^:]*\.(rs|c|S|h):", name) else name
        fn = re.sub(r"api::(layers|middleware::(edge|compress|deadline))::", "api::mw::", fn)
        n = int(m.group(1).replace(",", ""))
        if inclusive:
            if "kore_gateway::" not in fn or "drop_in_place" in fn:
                continue
            d[fn] = max(d.get(fn, 0), n)  # the same function under several files
        else:
            d[fn] = d.get(fn, 0) + n  # inlined code is charged to several files
    return d


def row(b, a, k, hits):
    return "%8.0f %8.0f %+8.0f  %s" % (b.get(k, 0) / hits, a.get(k, 0) / hits,
                                      (a.get(k, 0) - b.get(k, 0)) / hits, k[:150])


before, after, hits = plain(sys.argv[1]), plain(sys.argv[2]), int(sys.argv[3])
b, a = load(before, False), load(after, False)
keys = sorted(set(a) | set(b), key=lambda k: -(a.get(k, 0) - b.get(k, 0)))
print("== self, per hit: before, after, change (largest rises)")
for k in keys[:20]:
    print(row(b, a, k, hits))
print("== self, per hit: largest falls")
for k in keys[-10:]:
    print(row(b, a, k, hits))
b, a = load(before, True), load(after, True)
print("== inclusive, the gateway's own functions over 100 instructions per hit")
for k in sorted(set(a) | set(b), key=lambda k: -max(a.get(k, 0), b.get(k, 0))):
    if max(a.get(k, 0), b.get(k, 0)) >= 100 * hits:
        print(row(b, a, k, hits))
