#!/usr/bin/env python3
"""Summarises cubecl's autotune decisions for matrix products, one block per shape.

An autotune build run with a cubecl.toml holding

    [autotune.decisions]
    file = "decisions.jsonl"

writes one JSON line per tuning decision (scripts/device_bench.sh does this for its autotune
runs). For each matrix-product key (cubecl buckets m, n and k, so these are not the exact
shapes) this prints the kernels that ran, fastest first, with their median times relative to the
fastest, and marks `matmul_simple_cyclic_cmma`: the kernel a build without
autotune launches where the adapter has cooperative matrices (cubek's `Strategy::Auto`). The
question it answers: how much faster than that default the best fixed kernel is, shape by shape.

    python3 scripts/autotune_summary.py decisions.jsonl [ROWS]

ROWS kernels per key (default 6); ROWS = 0 prints one line per key: the fastest kernel and how
much slower the default is.

    python3 scripts/autotune_summary.py --best DECISIONS.jsonl [...]

prints the one kernel to fix (for NEUROAL_MATMUL): among the kernels that name accepts, the one
fastest on the most large keys (m, n and k at least 1024), ties to the least total time over
those keys; nothing when no large key was tuned.
"""
import json
import sys

DEFAULT = "matmul_simple_cyclic_cmma"


def seconds(t):
    return t["secs"] + t["nanos"] / 1e9


def dtype(e):
    return next(iter(e.values())) if isinstance(e, dict) else str(e)


def decisions(path):
    with open(path) as f:
        for line in f:
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            shape = d.get("key", {}).get("definition")
            if isinstance(shape, dict) and "m" in shape:
                ran = []
                for r in d.get("results", []):
                    ok = r.get("outcome", {}).get("Ok")
                    if ok:
                        ran.append((seconds(ok["computation"]["median"]), ok["name"]))
                yield shape, sorted(ran)


def fixable(name):
    """The multi-level kernels src/gpu/matmul.rs can launch by name."""
    return name.startswith("matmul_") and not any(w in name for w in ("tma", "naive", "vecmat"))


def best_kernel(paths):
    wins, total = {}, {}
    for path in paths:
        for shape, ran in decisions(path):
            if min(shape["m"], shape["n"], shape["k"]) < 1024:
                continue
            ran = [(t, n) for t, n in ran if fixable(n)]
            if not ran:
                continue
            wins[ran[0][1]] = wins.get(ran[0][1], 0) + 1
            for t, n in ran:
                total[n] = total.get(n, 0.0) + t
    if wins:
        print(max(wins, key=lambda n: (wins[n], -total.get(n, 0.0))))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--best":
        best_kernel(sys.argv[2:])
        return
    if len(sys.argv) < 2:
        sys.exit("usage: autotune_summary.py DECISIONS.jsonl [ROWS]")
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    seen = 0
    for shape, ran in decisions(sys.argv[1]):
        seen += 1
        m, n, k = shape["m"], shape["n"], shape["k"]
        elems = "/".join(dtype(shape.get(e, "?")) for e in ("elem_lhs", "elem_rhs", "elem_out"))
        if rows == 0:
            default = [t for t, name in ran if name == DEFAULT]
            versus = f"default {default[0] * 1e3:.3f} ms ({default[0] / ran[0][0]:.2f}x)" if default else "default not run"
            fastest = f"{ran[0][1]} {ran[0][0] * 1e3:.3f} ms" if ran else "nothing ran"
            print(f"matmul key m={m} n={n} k={k} {elems}: {fastest}; {versus}")
            continue
        print(f"matmul key m={m} n={n} k={k} {elems}: {len(ran)} kernels ran")
        for i, (t, name) in enumerate(ran):
            if i < rows or name == DEFAULT:
                mark = "  <- default without autotune" if name == DEFAULT else ""
                print(f"  {t * 1e3:9.3f} ms {t / ran[0][0]:6.2f}x  {name}{mark}")
    if seen == 0:
        print("no matrix-product decisions in", sys.argv[1])


if __name__ == "__main__":
    main()
