#!/usr/bin/env python3
"""Loads pruned checkpoints written by `neuroal prune --eval` with transformers and compares the
perplexity transformers computes on the same text and windows with the one in report.json, and
the zero fraction of the prunable weights with the report's overall sparsity.

    python3 scripts/check_with_transformers.py OUT [OUT ...]

A 5.x-style config (rope_parameters, dtype) is rewritten to 4.x fields in a temporary copy,
since transformers 4.x does not read rope_parameters.
"""
import json
import math
import os
import shutil
import sys
import tempfile

import torch
import transformers
from tokenizers import Tokenizer


def as_v4(folder):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    if "rope_parameters" not in cfg:
        return folder
    tmp = tempfile.mkdtemp()
    for f in os.listdir(folder):
        if os.path.isfile(os.path.join(folder, f)):
            shutil.copy(os.path.join(folder, f), tmp)
    rope = cfg.pop("rope_parameters")
    for k, v in rope.items():
        if k != "rope_type":
            cfg[k] = v
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"))
    return tmp


def main():
    for out in sys.argv[1:]:
        report = json.load(open(os.path.join(out, "report.json")))
        folder = as_v4(out)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
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
