#!/usr/bin/env python3
"""The golden of CI's real-model check (issue 43, `.ci/run`): transformers' perplexity of
SmolLM2-135M-Instruct (built by scripts/smollm2_gguf.py) and of neuroal's Wanda + NeuroAL 70%
prune of it, on the first windows of WikiText-2 test, with the prune's λs and settings.

    V/bin/python scripts/smollm2_golden.py MODEL PRUNED assets/golden/smollm2.json

PRUNED is the output of the prune command the golden records (its report.json names the
settings); needs torch and transformers.
"""
import json
import math
import os
import sys

import torch
import transformers
from tokenizers import Tokenizer

SEQLEN, WINDOWS = 256, 8
TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "wikitext-2", "test.txt")


def perplexity(folder):
    """exp of the mean over windows of each window's mean next-token loss, as neuroal eval does."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    ids = tok.encode(open(TEXT, encoding="utf-8").read()).ids
    losses = []
    with torch.no_grad():
        for w in range(WINDOWS):
            x = torch.tensor([ids[w * SEQLEN:(w + 1) * SEQLEN]])
            losses.append(float(model(x, labels=x).loss))
    return math.exp(sum(losses) / len(losses))


def main():
    model, pruned, out = sys.argv[1:4]
    report = json.load(open(os.path.join(pruned, "report.json")))
    golden = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "eval": {"text": "../shared/data/wikitext-2/test.txt", "seqlen": SEQLEN, "windows": WINDOWS},
        "dense_ppl": perplexity(model),
        "prune": {"command_line": report["provenance"]["command_line"],
                  "lambda_block": report["topup"]["lambda_block"], "lambda_row": report["topup"]["lambda_row"],
                  "sparsity": report["sparsity"]["overall"]},
        "pruned_ppl": perplexity(pruned),
    }
    json.dump(golden, open(out, "w"), indent=1)
    print(json.dumps(golden))


if __name__ == "__main__":
    main()
