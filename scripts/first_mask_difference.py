#!/usr/bin/env python3
"""Where two uniform Wanda prunes of one model part ways, and why: the first pruned linear (in
block order) whose zeros differ between two outputs (e.g. neuroal's and the authors' code's, both
from the same report's windows), the entries that differ there, and their Wanda scores
|W_ij|·‖X_j‖₂ computed in f64 by transformers on the same calibration windows, with the earlier
blocks as pruned (equal in both up to there) and the block itself dense (Wanda calibrates a block
on its dense forward). A pair whose scores lie a few f32 ulps apart straddling the cut is a
rounding tie, not a difference of method.

    python3 scripts/first_mask_difference.py MODEL_DIR OURS_DIR THEIRS_DIR REPORT_JSON CALIB_TXT

Needs torch, transformers, safetensors and tokenizers (the authors' venv of
scripts/time_authors_code.py). Prints one JSON object.
"""
import json
import sys

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

import torch_model


def block_of(name):
    return int(name.split(".layers.")[1].split(".")[0])


def main():
    model_dir, ours_dir, theirs_dir, report, calib = sys.argv[1:6]
    ours = load_file(f"{ours_dir}/model.safetensors")
    theirs = load_file(f"{theirs_dir}/model.safetensors")
    dense = load_file(f"{model_dir}/model.safetensors")
    linears = sorted((n for n in ours if ".layers." in n and ours[n].dim() == 2 and n in theirs),
                     key=lambda n: (block_of(n), n))
    differing = [n for n in linears if not torch.equal(ours[n] == 0, theirs[n] == 0)]
    if not differing:
        print(json.dumps({"first_difference": None, "linears": len(linears)}))
        return
    block = min(block_of(n) for n in differing)
    first = [n for n in differing if block_of(n) == block]
    # Blocks before `block` as pruned (equal in both), the rest dense.
    model = torch_model.load(model_dir, "float32", torch.device("cpu"))
    state = {k: (ours[k] if k in ours and ".layers." in k and block_of(k) < block else v) for k, v in dense.items()}
    model.load_state_dict(state, strict=False)
    cal = json.load(open(report))["calibration"]
    ids = Tokenizer.from_file(f"{model_dir}/tokenizer.json").encode(open(calib, encoding="utf-8").read()).ids
    modules = dict(model.named_modules())
    sumsq = {}

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            sumsq[name] = sumsq.get(name, 0) + (x * x).sum(0)
        return record

    for n in first:
        modules[n.removesuffix(".weight")].register_forward_hook(hook(n))
    with torch.no_grad():
        for s in cal["windows"]:
            model(torch.tensor([ids[s:s + cal["seqlen"]]]))
    out = []
    for n in first:
        w = dense[n].double()
        diff = torch.nonzero((ours[n] == 0) != (theirs[n] == 0))
        for row in sorted({int(r) for r in diff[:, 0]}):
            score = w[row].abs() * sumsq[n].sqrt()
            rank = torch.argsort(torch.argsort(score, stable=True))
            cols = [int(c) for r, c in diff.tolist() if r == row]
            out.append({
                "linear": n, "row": row,
                "entries": [{"column": c, "score_f64": float(score[c]), "rank": int(rank[c]),
                             "pruned_by_ours": bool(ours[n][row, c] == 0),
                             "pruned_by_theirs": bool(theirs[n][row, c] == 0)} for c in cols],
                "kept_from_rank": int((ours[n][row] == 0).sum()),
                "relative_gap": float((score[cols].max() - score[cols].min()) / score[cols].max()),
            })
    total = sum(int(((ours[n] == 0) != (theirs[n] == 0)).sum()) for n in linears)
    weights = sum(ours[n].numel() for n in linears)
    print(json.dumps({"first_block": block, "rows": out, "differing_entries": total,
                      "differing_fraction": total / weights}, indent=1))


if __name__ == "__main__":
    main()
