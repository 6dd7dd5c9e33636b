#!/usr/bin/env python3
"""Folds `perf script` output into flamegraph stacks and prints where the time goes.

    perf script -i perf.data | bench/fold.py [folded-out.txt]

Prints the top frames by self time and by inclusive time (frames of the runtime's own
scaffolding left out), and writes the folded stacks ("root;...;leaf count", the input of
flamegraph.pl / inferno-flamegraph) when a path is given.
"""
import collections
import re
import sys

SCAFFOLD = re.compile(
    r"^(tokio::runtime|std::|core::|alloc::|<alloc::|<core::|__rust|start_thread|clone3|"
    r"call_once|catch_unwind|do_call|poll_future|poll_inner|with_mut|with<|try_with|set<|"
    r"set_scheduler|enter_runtime|run_worker|run<|run \(|run_task|budget<|with_budget|"
    r"\{closure|<F as axum::handler|<std::|<tokio::runtime|poll<|\[unknown\])"
)


def samples(lines):
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        if line[0] not in " \t":
            continue  # the sample's header line (comm, pid, time, event)
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        sym = parts[1]
        sym = re.sub(r"\+0x[0-9a-f]+", "", sym)
        sym = re.sub(r" \(.*\)$", "", sym)
        stack.append(sym)
    if stack:
        yield stack


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    folded = collections.Counter()
    self_t = collections.Counter()
    incl = collections.Counter()
    total = 0
    for stack in samples(sys.stdin):
        total += 1
        leaf_first = stack
        folded[";".join(reversed(leaf_first))] += 1
        self_t[leaf_first[0]] += 1
        for sym in set(leaf_first):
            incl[sym] += 1
    if out:
        with open(out, "w") as f:
            for k, v in folded.most_common():
                f.write(f"{k} {v}\n")
    print(f"{total} samples")
    print("-- self time")
    for sym, n in self_t.most_common(20):
        print(f"{100 * n / total:6.1f}%  {sym[:150]}")
    print("-- inclusive time (runtime scaffolding left out)")
    shown = 0
    for sym, n in incl.most_common():
        if SCAFFOLD.search(sym):
            continue
        print(f"{100 * n / total:6.1f}%  {sym[:150]}")
        shown += 1
        if shown == 40:
            break


if __name__ == "__main__":
    main()
