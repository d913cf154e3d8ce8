#!/usr/bin/env python3
"""Compares neuroal's numbers on the real model with the committed golden (standard library
only; scripts/check_real_model.sh runs it):

    python3 scripts/check_real_model.py GOLDEN DENSE_EVAL.json PRUNE_REPORT.json PRUNED_EVAL.json

The perplexities within 1e-4 (relative) of transformers', the λs equal, the overall sparsity
equal to 1e-9. Exit 1 with what differs.
"""
import json
import sys


def main():
    golden, dense, report, pruned = (json.load(open(p)) for p in sys.argv[1:5])
    failures = []

    def close(what, ours, theirs, tol):
        ok = abs(ours - theirs) <= tol * abs(theirs)
        print(f"{what}: neuroal {ours!r}, golden {theirs!r}{'' if ok else '  <- differs'}")
        if not ok:
            failures.append(what)

    close("dense perplexity (transformers)", dense["ppl"], golden["dense_ppl"], 1e-4)
    for key in ("lambda_block", "lambda_row"):
        close(key, report["topup"][key], golden["prune"][key], 0.0)
    close("overall sparsity", report["sparsity"]["overall"], golden["prune"]["sparsity"], 1e-9)
    close("pruned perplexity (transformers)", pruned["ppl"], golden["pruned_ppl"], 1e-4)
    if dense["windows"] != golden["eval"]["windows"] or pruned["windows"] != golden["eval"]["windows"]:
        failures.append("window count")
    if failures:
        sys.exit("the real model's check failed: " + ", ".join(failures))
    print("the real model's check passed")


if __name__ == "__main__":
    main()
