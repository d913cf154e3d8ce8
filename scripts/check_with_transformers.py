#!/usr/bin/env python3
"""Loads pruned checkpoints written by `neuroal prune --eval` with transformers and compares the
perplexity transformers computes on the same text and windows with the one in report.json, and
the zero fraction of the prunable weights with the report's overall sparsity.

    python3 scripts/check_with_transformers.py OUT [OUT ...]

A 5.x-style config (rope_parameters, dtype) is read as torch_model.load reads it.
"""
import json
import math
import os
import sys

import torch
from tokenizers import Tokenizer

import torch_model


def main():
    for out in sys.argv[1:]:
        report = json.load(open(os.path.join(out, "report.json")))
        model = torch_model.load(out, "float32", torch.device("cpu"))
        tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        seqlen = report["eval"]["seqlen"]
        ids = torch.tensor([tok.encode(open(report["eval"]["file"], encoding="utf-8").read()).ids])
        losses = []
        with torch.no_grad():
            for w in range(ids.shape[1] // seqlen):
                x = ids[:, w * seqlen:(w + 1) * seqlen]
                losses.append(float(model(x, labels=x).loss))
        ppl = math.exp(sum(losses) / len(losses))
        params = dict(model.named_parameters())
        layers = report["sparsity"]["layers"]
        zeros = sum(int((params[n] == 0).sum()) for n in layers)
        total = sum(params[n].numel() for n in layers)
        print(f"{out}: {type(model).__name__}: ppl {ppl:.6f} (report {report['eval']['ppl_pruned']:.6f}), "
              f"sparsity {zeros / total:.6f} (report {report['sparsity']['overall']:.6f})")


if __name__ == "__main__":
    main()
