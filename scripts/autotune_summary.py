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
"""
import json
import sys

DEFAULT = "matmul_simple_cyclic_cmma"


def seconds(t):
    return t["secs"] + t["nanos"] / 1e9


def dtype(e):
    return next(iter(e.values())) if isinstance(e, dict) else str(e)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: autotune_summary.py DECISIONS.jsonl [ROWS]")
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    seen = 0
    with open(sys.argv[1]) as f:
        for line in f:
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = d.get("key", {})
            shape = key.get("definition")
            if not isinstance(shape, dict) or "m" not in shape:
                continue
            seen += 1
            m, n, k = shape["m"], shape["n"], shape["k"]
            ran = []
            for r in d.get("results", []):
                ok = r.get("outcome", {}).get("Ok")
                if ok:
                    ran.append((seconds(ok["computation"]["median"]), ok["name"]))
            ran.sort()
            elems = "/".join(dtype(shape.get(e, "?")) for e in ("elem_lhs", "elem_rhs", "elem_out"))
            if rows == 0:
                default = [t for t, name in ran if name == DEFAULT]
                versus = f"default {default[0] * 1e3:.3f} ms ({default[0] / ran[0][0]:.2f}x)" if default else "default not run"
                best = f"{ran[0][1]} {ran[0][0] * 1e3:.3f} ms" if ran else "nothing ran"
                print(f"matmul key m={m} n={n} k={k} {elems}: {best}; {versus}")
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
