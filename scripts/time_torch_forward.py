#!/usr/bin/env python3
"""Forward throughput of a checkpoint in PyTorch through transformers, measured the way
`neuroal bench` measures its own: the same pseudo-random ids (i · 2654435761 mod vocab), `--batch`
windows of `--seqlen` tokens per pass, the LM head's logits summed and read back to end each pass,
one warm-up pass, then `--iters` timed passes. The reference for issue 8's forward goal on the
card at hand (the issue's 137,216 tokens/s in f16 was an H100's).

    python3 scripts/time_torch_forward.py MODEL_DIR [--batch 4] [--seqlen 512] [--iters 5] [--dtype float16] [--device cuda]

Prints one JSON line: tokens/s, ms per pass, the device and the library versions.
"""
import argparse
import json
import time

import torch

import torch_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    model = torch_model.load(a.model_dir, a.dtype, dev)
    vocab = model.config.vocab_size
    n = a.batch * a.seqlen
    ids = torch.tensor([(i * 2_654_435_761) % (1 << 32) % vocab for i in range(n)], device=dev).view(a.batch, a.seqlen)

    def forward():
        with torch.no_grad():
            # Reading one value back waits for the device to finish the whole pass.
            return float(model(ids, use_cache=False).logits.sum())

    forward()
    start = time.time()
    for _ in range(a.iters):
        forward()
    secs = time.time() - start
    print(json.dumps({**torch_model.versions(dev), "dtype": a.dtype,
                      "attention": model.config._attn_implementation, "batch": a.batch, "seqlen": a.seqlen,
                      "tokens_per_s": round(a.iters * n / secs, 1), "ms_per_forward": round(secs * 1000 / a.iters, 2)}))


if __name__ == "__main__":
    main()
