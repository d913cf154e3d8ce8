#!/usr/bin/env python3
"""Ranks the kernels of `neuroal bench --matmul ... --json` output (one JSON object a line;
other lines are skipped), each on both right-hand-side layouts: total milliseconds over the
products every kernel of the ranking ran, each product's TFLOP/s beside it. A kernel that declined a product, or whose product is
off burn's by more than --max-err (relative), is left out of the ranking.

    python3 scripts/matmul_summary.py LOG [--top N] [--max-err E]
    python3 scripts/matmul_summary.py LOG --fastest   # prints only the fastest kernel's name
    python3 scripts/matmul_summary.py LOG --rules     # NEUROAL_MATMUL rules: the fastest
                                                      # kernel per weight shape KxN
"""
import argparse
import json
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--max-err", type=float, default=1e-2)
    ap.add_argument("--fastest", action="store_true")
    ap.add_argument("--rules", action="store_true")
    a = ap.parse_args()
    rows = []
    for line in open(a.log, encoding="utf-8", errors="replace"):
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    # A run stopped early (the device tool's time limit) leaves its last product part-timed:
    # rank over the products every kernel was tried on.
    tried = defaultdict(int)
    for r in rows:
        tried[tuple(r["shape"])] += 1
    most = max(tried.values(), default=0)
    shapes = sorted((s for s, n in tried.items() if n == most), key=lambda s: -s[0] * s[1] * s[2])
    # A kernel on the linears' own layout (the weight's transposed view) is named as it is; on a
    # row-major [k, n] copy with " [k_by_n]" after it. --fastest picks among the former, the
    # layout NEUROAL_MATMUL runs.
    label = lambda r: r["kernel"] if r.get("layout", "weight_t") == "weight_t" else f"{r['kernel']} [{r['layout']}]"
    by_kernel = defaultdict(dict)
    for r in rows:
        if r.get("ms") is not None and (r.get("rel_err") or 0.0) <= a.max_err:
            by_kernel[label(r)][tuple(r["shape"])] = r
    ranked = sorted(
        ((sum(v[s]["ms"] for s in shapes), k) for k, v in by_kernel.items() if all(s in v for s in shapes)),
    )
    own = [k for _, k in ranked if not k.endswith("]")]
    if a.fastest:
        if own:
            print(own[0])
        return
    if a.rules:
        # Per weight shape [K, N] (over every M timed with it), the fastest kernel on the linears'
        # own layout; the overall fastest for the other products.
        rules = []
        for kn in sorted({(s[1], s[2]) for s in shapes}):
            timed = [(sum(v[s]["ms"] for s in shapes if (s[1], s[2]) == kn), k) for k, v in by_kernel.items()
                     if not k.endswith("]") and all(s in v for s in shapes if (s[1], s[2]) == kn)]
            if timed:
                rules.append(f"{kn[0]}x{kn[1]}={min(timed)[1]}")
        if own:
            rules.append(own[0])
        print(",".join(rules))
        return
    head = "  ".join(f"{'x'.join(map(str, s)):>16}" for s in shapes)
    print(f"{'kernel (TFLOP/s per product)':<66} {'total ms':>9}  {head}")
    burn = by_kernel.get("burn", {})
    for total, k in ranked[: a.top]:
        cells = "  ".join(f"{by_kernel[k][s]['tflops']:>16.1f}" for s in shapes)
        speedup = sum(burn[s]["ms"] for s in shapes) / total if all(s in burn for s in shapes) else float("nan")
        print(f"{k:<66} {total:>9.2f}  {cells}   ({speedup:.2f}x burn)")


if __name__ == "__main__":
    main()
