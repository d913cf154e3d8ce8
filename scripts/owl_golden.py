#!/usr/bin/env python3
"""Makes the OWL golden (assets/golden/wt2-llama-owl.json) with the authors' code: the OWL
baseline of their NeuroAL repository (github.com/eliacunegatti/NeuroAL, which follows OWL's own
code), run unmodified on the real model of ../shared over windows drawn here, so the Rust test
(tests/topup.rs) checks neuroal's outlier ratios and block sparsities against an
implementation that is not ours.

    python3 scripts/owl_golden.py CHECKOUT [--nsamples 16] [--seqlen 256] [--seed 0]

Their run_activation is wrapped to keep the outlier ratios it computes (their
get_owl_sparsity_distribution returns only the sparsities). The windows are drawn with Python's
random, seeded, and written into the golden: the test replays them as they are. f32 on the CPU.
"""
import argparse
import json
import os
import random
import types

import numpy
import torch
import transformers  # noqa: F401  (imported before the `datasets` stand-in)
from tokenizers import Tokenizer

import authors_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkout")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "assets", "golden", "wt2-llama-owl.json"))
    a = ap.parse_args()
    model_dir = os.path.join(SHARED, "models", "wt2-llama")
    calib = "data/wikitext-2/valid.txt"
    ids = Tokenizer.from_file(f"{model_dir}/tokenizer.json").encode(open(os.path.join(SHARED, calib)).read()).ids
    rng = random.Random(a.seed)
    starts = [rng.randrange(0, len(ids) - a.seqlen) for _ in range(a.nsamples)]

    authors_code.import_checkout(a.checkout)
    import sparsity_distribution as sd

    ratios = {}
    run_activation = sd.run_activation

    def kept(*args, **kw):
        activations, owl_values = run_activation(*args, **kw)
        ratios.update(owl_values)
        return activations, owl_values

    sd.run_activation = kept
    torch.manual_seed(0)
    model = authors_code.load_model(model_dir, "float32", torch.device("cpu"), a.seqlen)
    blocks = len(model.model.layers)
    cases = []
    # Their defaults (M 5, λ 0.08) at two targets, and a wider λ at a high one, where the clamp
    # to [0.01, 0.99] can bite.
    for sparsity, m, lam in [(0.5, 5.0, 0.08), (0.7, 5.0, 0.08), (0.9, 3.0, 0.2)]:
        args = types.SimpleNamespace(seed=a.seed, nsamples=a.nsamples, sparsity_ratio=sparsity, M=m, lam=lam,
                                     model_type=authors_code.model_type(model_dir))
        ratios.clear()
        with torch.no_grad():
            dist, _ = sd.get_owl_sparsity_distribution(args, model, None, torch.device("cpu"),
                                                       authors_code.windows(ids, starts, a.seqlen))
        # Every linear of a block gets its block's sparsity: one per block.
        per_block = [sorted({v for k, v in dist.items() if k.endswith(f"-{b}")}) for b in range(blocks)]
        assert all(len(v) == 1 for v in per_block), per_block
        cases.append({"sparsity": sparsity, "owl_m": m, "owl_lambda": lam,
                      "outlier_ratios": [float(ratios[str(b)]) for b in range(blocks)],
                      "block_sparsities": [float(v[0]) for v in per_block]})
    golden = {
        "model": "wt2-llama",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": numpy.__version__,
                     "authors_commit": "e30b6cc"},
        "calib": calib,
        "seqlen": a.seqlen,
        "windows": starts,
        "cases": cases,
    }
    with open(a.out, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    for c in cases:
        print(c)


if __name__ == "__main__":
    main()
