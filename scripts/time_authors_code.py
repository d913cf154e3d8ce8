#!/usr/bin/env python3
"""Times the authors' NeuroAL code (Wanda + NeuroAL, both steps) on the CPU or a CUDA GPU on the
same windows as a neuroal run, for the speed comparison of issue 8. Nothing of theirs is in this
repository: pass the path of a local checkout of their repository
(github.com/eliacunegatti/NeuroAL); their `lib/` and `sparsity_distribution.py` run unmodified.
The stand-ins its imports need, the windows and the model are made as `authors_code.py` says.

    python3 scripts/time_authors_code.py CHECKOUT MODEL_DIR CALIB_TXT REPORT_JSON [--model-type auto] [--dtype float32] [--device cpu|cuda] [--method wanda|magnitude|sparsegpt|multiflow] [--top-up neuroal|uniform|owl|dsnot|alpha] [--golden OUT] [--save DIR]

REPORT_JSON is a neuroal report.json; its calibration.windows and calibration.search_windows are
the window starts (token offsets into the tokenized CALIB_TXT). --model-type is their name for
the family; auto (the default) names an OPT model opt (their OPT loops) and a LLaMA-architecture
model with grouped-query attention mistral: their code keeps q, k and v at the block sparsity in the row step only under that name,
as neuroal does under GQA. Prints λ, the search and prune seconds, and every candidate's score.
--method sparsegpt runs their NeuroAL over SparseGPT (the block step only, as theirs does) and
their SparseGPT prune; compare with a neuroal report of `--method sparsegpt`.
--save DIR writes their pruned model, whose zeros a neuroal output's can be compared with.
--golden also writes those scores and λs with the search windows and settings to OUT (and the
SHA-256 of each pruned weight's zero pattern, for the masks' comparison), for the
test that compares neuroal's search with theirs (assets/golden/wt2-llama-neuroal.json, made from
the report of `neuroal prune --model ../shared/models/wt2-llama --calib
../shared/data/wikitext-2/valid.txt --seqlen 256 --sparsity 0.7 --top-up neuroal --nsamples 4`).
"""
import argparse
import hashlib
import json
import os
import tempfile
import time
import types

import numpy

import torch
import transformers  # noqa: F401  (imported before the `datasets` stand-in)
from tokenizers import Tokenizer

import authors_code
import torch_model


def mask_hashes(model):
    """Per prunable weight of the pruned model, the SHA-256 of its zero pattern: one byte per
    entry (1 where the weight is 0), row-major."""
    digest = lambda p: hashlib.sha256((p == 0).to(torch.uint8).cpu().numpy().tobytes()).hexdigest()  # noqa: E731
    # A fused linear split for their code (authors_code.SplitLinear) is hashed fused, as stored.
    split = {n: m for n, m in model.named_modules() if isinstance(m, authors_code.SplitLinear)}
    out = {name: digest(p) for name, p in model.named_parameters()
           if ".layers." in name and p.dim() == 2 and not any(name.startswith(s + ".") for s in split)}
    out.update({f"{n}.weight": digest(m.weight_cat()) for n, m in split.items()})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkout")
    ap.add_argument("model_dir")
    ap.add_argument("calib_txt")
    ap.add_argument("report")
    ap.add_argument("--model-type", default="auto", help="their name for the family; auto: mistral under grouped-query attention, else llama")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (the whole model on the GPU, as their main.py loads it)")
    ap.add_argument("--method", default="wanda", choices=["wanda", "magnitude", "sparsegpt", "multiflow"], help="the base pruner under NeuroAL")
    ap.add_argument("--top-up", default="neuroal", choices=["neuroal", "uniform", "owl", "dsnot", "alpha"],
                    help="their top-up: NeuroAL's search (the default), none (uniform), OWL (M 5, λ 0.08, their defaults), "
                         "their DSnoT over the uniform prune, or AlphaPruning")
    ap.add_argument("--alpha-epsilon", type=float, default=0.3, help="their epsilon for --top-up alpha")
    ap.add_argument("--dsnot-cycles", type=int, default=50, help="their max_cycle_time for --top-up dsnot")
    ap.add_argument("--golden", help="also write the search's scores, λs, windows and settings to this JSON file")
    ap.add_argument("--save", help="also write their pruned model to this folder (safetensors), to compare masks")
    a = ap.parse_args()
    dev = torch.device(a.device)
    a.model_type = authors_code.model_type(a.model_dir, a.model_type)

    authors_code.import_checkout(a.checkout)
    import sparsity_distribution as sd
    if a.model_type == "opt":
        from lib.prune_opt import prune_sparsegpt_opt as prune_sparsegpt, prune_wanda_opt as prune_wanda
        from lib.prune_opt import prune_magnitude_opt as prune_magnitude, prune_multiflow_opt as prune_multiflow
        from lib.utils import check_sparsity_opt as check_sparsity
        from lib.prune_opt import prune_DSnoT_opt as prune_DSnoT
    else:
        from lib.prune import prune_sparsegpt, prune_wanda, prune_magnitude, prune_multiflow, check_sparsity
        from lib.prune import prune_DSnoT

    report = json.load(open(a.report))
    cal = report["calibration"]
    seqlen = cal["seqlen"]
    ids = Tokenizer.from_file(f"{a.model_dir}/tokenizer.json").encode(open(a.calib_txt).read()).ids

    calib = authors_code.windows(ids, cal["windows"], seqlen)
    search = authors_code.windows(ids, cal.get("search_windows") or [], seqlen)
    sd.get_loaders = lambda *args, **kw: (search, None)
    scores = {"block": [], "row": []}

    def logged(name, step):
        run = getattr(sd, name)

        def wrapper(*args, **kw):
            r = run(*args, **kw)
            scores[step].append(float(r[0]))
            return r

        setattr(sd, name, wrapper)

    for name, step in [("get_neuroal_block", "block"), ("get_neuroal_block_sparsegpt", "block"), ("get_neuroal_row", "row")]:
        logged(name, step)

    model = authors_code.load_model(a.model_dir, a.dtype, dev, seqlen)
    args = types.SimpleNamespace(seed=0, nsamples=len(calib), sparsity_ratio=report["settings"]["sparsity"],
                                 prune_method=a.method, top_up=a.top_up, neuroal_step="both", model_type=a.model_type,
                                 # DSnoT's, as their main.py sets them (skip_layer: the MLP's linears
                                 # of every family, named as their loops see them).
                                 max_cycle_time=a.dsnot_cycles, update_threshold=0.1, pow_of_var_regrowing=1.0,
                                 skip_layer="fc" if a.model_type == "opt" else "mlp", skip_sub_layer="no_skip",
                                 without_DSnoT=False, without_same_sign=True,
                                 # OWL's, their main.py's defaults.
                                 M=5, lam=0.08)
    # A GPU runs queued work: wait for it before each clock reading.
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.time()
    alpha_report = {}
    with torch.no_grad():
        layers = model.model.decoder.layers if a.model_type == "opt" else model.model.layers
        if a.top_up == "neuroal":
            dist, gran, lb, lr = sd.get_neuroal_sparsity_distribution(args, model, None, dev, layers)
        elif a.top_up == "alpha":
            # Their spectra are saved to (and read back from) alpha_data/ under the working
            # folder: a fresh one each run.
            args.model, args.epsilon = a.model_dir, a.alpha_epsilon
            work = tempfile.mkdtemp()
            os.makedirs(f"{work}/alpha_data")
            cwd = os.getcwd()
            os.chdir(work)
            try:
                dist, gran = sd.get_alpha_sparsity_distribution(args, model, dev, "m", layers)
                per_linear = numpy.load("alpha_data/m-alpha_peak.npy").tolist()
            finally:
                os.chdir(cwd)
            lb = lr = None
            k = len(per_linear) // len(layers)
            alpha_report = {"linear_alphas": per_linear,
                            "alphas": [float(numpy.mean(per_linear[i:i + k])) for i in range(0, len(per_linear), k)],
                            "block_sparsities": [float(dist[next(n for n in dist if n.endswith(f"-{b}"))]) for b in range(len(layers))]}
        elif a.top_up == "owl":
            # Their OWL reads the outliers on the calibration windows (main.py's calib_data).
            dist, gran = sd.get_owl_sparsity_distribution(args, model, None, dev, calib)
            lb = lr = None
        else:
            dist, gran, lb, lr = None, "row", None, None
    sync()
    t1 = time.time()
    args.nsamples = len(calib)
    with torch.no_grad():
        if a.top_up == "dsnot":
            prune_DSnoT(args, model, None, dev, calib)
        elif a.method == "sparsegpt":
            # Their SparseGPT reads the placement accelerate records when loading with a
            # device_map; the whole model is on `dev`, which an empty map says.
            model.hf_device_map = {}
            prune_sparsegpt(args, model, None, dev, calib, dist=dist)
        elif a.method == "magnitude":
            prune_magnitude(args, model, None, dev, dist=dist, granularity=gran)
        elif a.method == "multiflow":
            prune_multiflow(args, model, None, dev, calib, dist=dist, granularity=gran)
        else:
            prune_wanda(args, model, None, dev, calib, dist=dist, granularity=gran)
    sync()
    t2 = time.time()
    print(json.dumps({**torch_model.versions(dev), "dtype": a.dtype, "lambda_block": lb, "lambda_row": lr,
                      "search_s": round(t1 - t0, 2), "prune_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
                      "sparsity": round(float(check_sparsity(model)), 4), "block_scores": scores["block"], "row_scores": scores["row"],
                      **alpha_report}))
    if a.save:
        model.save_pretrained(a.save, safe_serialization=True)
    if a.golden:
        golden = {"model": a.model_dir.rstrip("/").split("/")[-1], "versions": torch_model.versions(dev), "dtype": a.dtype,
                  "model_type": a.model_type, "method": a.method, "sparsity": args.sparsity_ratio, "seqlen": seqlen,
                  "search_windows": cal.get("search_windows"), "lambda_block": lb, "lambda_row": lr,
                  "block_scores": scores["block"], "row_scores": scores["row"],
                  "mask_sha256": mask_hashes(model), **alpha_report}
        with open(a.golden, "w") as f:
            json.dump(golden, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
