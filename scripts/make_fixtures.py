#!/usr/bin/env python3
"""Builds the test fixtures in assets/ with transformers, and the golden values the Rust tests
compare against. Run from the repository root:

    python3 scripts/make_fixtures.py            # tiny models, tokenizer, text, goldens
    python3 scripts/make_fixtures.py --shared   # also the real-model golden (../shared)
    python3 scripts/make_fixtures.py --only tiny-opt,tiny-phi   # just these fixtures
    python3 scripts/make_fixtures.py --zeroshot # only the task file and its log-likelihoods
    python3 scripts/make_fixtures.py --rope     # only tiny-llama under other rope scalings

Versions used for the committed fixtures: torch 2.5.1 (CPU), transformers 4.46.3,
tokenizers 0.20.3, safetensors 0.8.0, numpy 2.4.6. The newer fixtures (tiny-qwen3, tiny-mistral-swa, tiny-gemma2, tiny-gemma3, tiny-phi3) need a
transformers that has them: made with torch 2.15.0, transformers 4.57.1 and accelerate 1.16.0 in a
venv of their own (`python3 -m venv V && V/bin/pip install torch==2.15.0 transformers==4.57.1
accelerate==1.16.0 gguf==0.19.0`, then
`V/bin/python scripts/make_fixtures.py --only tiny-qwen3,tiny-mistral-swa,tiny-gemma2,tiny-gemma3,tiny-phi3,tiny-qwen2-swa,tiny-qwen3-swa,tiny-gemma3-mm`); each golden records its versions. Everything here is generated from seeds:
the text is synthetic, the tokenizer is trained on it, the models are random.
"""
import argparse
import json
import math
import os
import random
import shutil

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import torch_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "assets")
GOLDEN = os.path.join(ASSETS, "golden")
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
VOCAB = 384
EVAL_SEQLEN = 64


def synthetic_text(seed=7, words=6000):
    """A deterministic pseudo-language: a Zipf-ish vocabulary of syllable words in sentences."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "ta", "se", "vo", "pi", "da", "go", "fe", "zu", "ha"]
    lexicon = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    weights = [1.0 / (i + 1) for i in range(len(lexicon))]
    lines, line = [], []
    for _ in range(words):
        w = rng.choices(lexicon, weights)[0]
        line.append(w)
        if rng.random() < 0.08:
            line[-1] += " ."
        if rng.random() < 0.02:
            lines.append(" " + " ".join(line) + " ")
            line = []
    lines.append(" " + " ".join(line) + " ")
    return "\n".join(lines) + "\n"


def train_tokenizer(text, path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tok.save(path)
    return tok


def spread_weights(model, seed):
    """Random init with larger scales than the HF default so attention and the MLP do real work."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and not name.endswith("bias"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(fan_in)))


def to_v5_config(folder):
    """Rewrite config.json the way transformers 5.x writes it (rope_parameters, dtype)."""
    path = os.path.join(folder, "config.json")
    cfg = json.load(open(path))
    rope = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    scaling = cfg.pop("rope_scaling", None)
    if scaling:
        rope.update(scaling)
    if "partial_rotary_factor" in cfg:  # Phi: 5.x keeps it with the other rope parameters
        rope["partial_rotary_factor"] = cfg.pop("partial_rotary_factor")
    cfg["rope_parameters"] = rope
    cfg["dtype"] = cfg.pop("torch_dtype")
    json.dump(cfg, open(path, "w"), indent=2, sort_keys=True)


def logits_golden(model, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 16), generator=g)
    with torch.no_grad():
        logits = model(ids).logits
    return ids, logits


def assert_softcaps_active(model, ids):
    """Gemma's soft caps must change the result: the logits before the final cap, and some
    attention scores before theirs, exceed the caps."""
    cfg = model.config
    final, attn = cfg.final_logit_softcapping, cfg.attn_logit_softcapping
    cfg.final_logit_softcapping = None
    with torch.no_grad():
        raw = model(ids).logits
    cfg.final_logit_softcapping = final
    assert raw.abs().max() > final, f"logits {raw.abs().max():.2f} never reach the cap {final}"
    seen = []
    layer = model.model.layers[1].self_attn
    hook = layer.q_proj.register_forward_hook(lambda m, i, o: seen.append(o))
    khook = layer.k_proj.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(ids)
    hook.remove()
    khook.remove()
    q, k = seen[0], seen[1]
    hd = cfg.head_dim
    q = q.view(*q.shape[:2], -1, hd)[:, :, :1]
    k = k.view(*k.shape[:2], -1, hd)[:, :, :1]
    scores = torch.einsum("bihd,bjhd->bij", q, k) * cfg.query_pre_attn_scalar ** -0.5
    assert scores.abs().max() > attn, f"attention scores {scores.abs().max():.2f} never reach the cap {attn}"


def assert_window_active(model, ids):
    """The sliding window must change the result: the 64-token windows' losses differ from
    those of the same weights under a window longer than the text."""
    cfg = model.config
    assert cfg.layer_types == ["full_attention", "sliding_attention"], cfg.layer_types
    windowed = window_losses(model, ids, EVAL_SEQLEN, max_windows=2)
    window = cfg.sliding_window
    set_window(model, 10 ** 6)
    full = window_losses(model, ids, EVAL_SEQLEN, max_windows=2)
    set_window(model, window)
    assert window_losses(model, ids, EVAL_SEQLEN, max_windows=2) == windowed
    assert all(abs(a - b) > 1e-4 for a, b in zip(windowed, full)), (windowed, full)


def assert_clip_active(model, ids):
    """OLMoE's clip_qkv must change the result: the losses differ without it."""
    clipped = window_losses(model, ids, EVAL_SEQLEN, max_windows=2)
    clip, model.config.clip_qkv = model.config.clip_qkv, None
    free = window_losses(model, ids, EVAL_SEQLEN, max_windows=2)
    model.config.clip_qkv = clip
    assert all(abs(a - b) > 1e-4 for a, b in zip(clipped, free)), (clipped, free)


def expert_stats(model, ids):
    """Block 0's per-expert calibration statistics as transformers routes `ids` [windows, tokens]:
    for each expert, the tokens sent to it and the per-channel Σx² of its gate's and its down's
    inputs (hooks on the expert's own linears, which see only its rows), and the same sums over
    every token (the router's input, and each expert's down input computed on all of them)."""
    mlp = model.model.layers[0].mlp if hasattr(model.model.layers[0], "mlp") else None
    mlp = getattr(model.model.layers[0], "block_sparse_moe", mlp)
    names = ("w1", "w3", "w2") if hasattr(mlp.experts[0], "w1") else ("gate_proj", "up_proj", "down_proj")
    seen, hooks = {}, []
    def keep(key):
        return lambda m, i, o: seen.setdefault(key, []).append(i[0].reshape(-1, i[0].shape[-1]).double())
    hooks.append(mlp.gate.register_forward_hook(keep("router")))
    for e, expert in enumerate(mlp.experts):
        hooks.append(getattr(expert, names[0]).register_forward_hook(keep(("gate", e))))
        hooks.append(getattr(expert, names[2]).register_forward_hook(keep(("down", e))))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    x = seen["router"][0]
    out = {"router_sumsq": (x ** 2).sum(0).tolist(), "experts": []}
    with torch.no_grad():
        for e, expert in enumerate(mlp.experts):
            gate, up, down = (getattr(expert, n) for n in names)
            rows = torch.cat(seen.get(("gate", e), [torch.zeros(0, x.shape[1], dtype=x.dtype)]))
            downs = torch.cat(seen.get(("down", e), [torch.zeros(0, down.in_features, dtype=x.dtype)]))
            xf = x.float()
            every = (F.silu(gate(xf)) * up(xf)).double()
            out["experts"].append({"tokens": int(rows.shape[0]), "gate_sumsq": (rows ** 2).sum(0).tolist(),
                                   "down_sumsq": (downs ** 2).sum(0).tolist(),
                                   "down_sumsq_every_token": (every ** 2).sum(0).tolist()})
    return out


def set_window(model, window):
    model.config.sliding_window = window
    for layer, t in zip(model.model.layers, model.config.layer_types):
        if t == "sliding_attention":
            layer.self_attn.sliding_window = window


def window_losses(model, ids, seqlen, max_windows=None):
    """The papers' protocol: non-overlapping windows, mean CE of tokens 2..seqlen per window."""
    n = ids.shape[1] // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    losses = []
    with torch.no_grad():
        for w in range(n):
            x = ids[:, w * seqlen:(w + 1) * seqlen]
            losses.append(float(model(x, labels=x).loss))
    return losses


def build_model(name, cls, cfg, dtype, seed, shard=False, v5=False):
    folder = os.path.join(ASSETS, name)
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    spread_weights(model, seed)
    model = model.to(dtype)
    model.save_pretrained(folder, safe_serialization=True,
                          max_shard_size="100KB" if shard else "5GB")
    if cfg.tie_word_embeddings and name in STORED_TIED_HEAD:
        store_tied_head(folder, model, seed)
    if shard:
        # save_pretrained names shards by size; keep exactly two shards, as the tests expect.
        merge_into_two_shards(folder)
    gen = os.path.join(folder, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    shutil.copy(os.path.join(ASSETS, "tokenizer.json"), folder)
    # Goldens come from the checkpoint as stored (rounded to its dtype), computed in f32, and
    # loaded before the config is rewritten: transformers 4.x does not read rope_parameters.
    # Gemma's soft-capped attention is exact only in transformers' eager attention.
    extra = {"attn_implementation": "eager"} if name.startswith("tiny-gemma") else {}
    ref = cls.from_pretrained(folder, torch_dtype=torch.float32, **extra).eval()
    if v5:
        to_v5_config(folder)
    return folder, ref


# Tied fixtures whose checkpoint stores an lm_head.weight anyway, unlike the embedding table (as
# some exporters write them): transformers ties the head to the table after loading, so the
# stored one must not be what a tool computes with.
STORED_TIED_HEAD = {"tiny-llama-bias"}


def store_tied_head(folder, model, seed):
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    assert "lm_head.weight" not in tensors
    g = torch.Generator().manual_seed(seed + 1000)
    table = model.get_input_embeddings().weight
    tensors["lm_head.weight"] = (torch.randn(table.shape, generator=g) * table.float().std()).to(table.dtype)
    save_file(tensors, path, metadata={"format": "pt"})


def merge_into_two_shards(folder):
    index_path = os.path.join(folder, "model.safetensors.index.json")
    index = json.load(open(index_path))
    names = sorted(index["weight_map"])
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(os.path.join(folder, shard)))
        os.remove(os.path.join(folder, shard))
    half = len(names) // 2
    parts = [names[:half], names[half:]]
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, os.path.join(folder, fname),
                  metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(index_path, "w"), indent=2, sort_keys=True)


ZEROSHOT_MAX_LEN = 48


def make_tasks(text, path, seed=5):
    """A small multiple-choice task file from the synthetic text: which sentence comes next
    (4 choices), a few contexts too long for ZEROSHOT_MAX_LEN tokens (left truncation), one with
    trailing spaces, and WinoGrande-style examples (choices complete the context, a shared
    suffix is scored)."""
    rng = random.Random(seed)
    sentences = [x.strip() + " ." for x in text.replace("\n", " ").split(" .") if len(x.split()) >= 4]
    examples = []
    for k in range(0, 60, 6):
        ctx, right = sentences[k], sentences[k + 1]
        wrong = rng.sample([x for x in sentences[100:] if x != right], 3)
        choices = [right] + wrong
        rng.shuffle(choices)
        examples.append({"context": ctx, "choices": [" " + c for c in choices],
                         "label": choices.index(right), "task": "next_sentence"})
    long_ctx = " ".join(sentences[200:212])
    examples.append({"context": long_ctx, "choices": [" " + sentences[212], " " + sentences[300]],
                     "label": 0, "task": "next_sentence"})
    examples.append({"context": sentences[220] + "  ", "choices": [sentences[221], sentences[330]],
                     "label": 0, "task": "next_sentence"})
    for k in (240, 250, 260):
        words = sentences[k].split()
        half = len(words) // 2
        examples.append({"context": " ".join(words[:half - 1]) + " ",
                         "choices": [words[half - 1], rng.choice(sentences[340].split())],
                         "suffix": " " + " ".join(words[half:]), "label": 0, "task": "fill_blank"})
    with open(path, "w") as f:
        for e in examples:
            f.write(json.dumps(e) + "\n")
    return examples


def request_logliks(model, tok, examples, max_len):
    """The harness's log-likelihoods: trailing context whitespace moves to the continuation;
    context encoded with the post-processor, continuation without; cut on the left."""
    out = []
    for e in examples:
        reqs = ([(e["context"] + c, e["suffix"]) for c in e["choices"]] if "suffix" in e
                else [(e["context"], c) for c in e["choices"]])
        lls = []
        for ctx, cont in reqs:
            trimmed = ctx.rstrip()
            cont = ctx[len(trimmed):] + cont
            c_ids = tok.encode(trimmed).ids
            k_ids = tok.encode(cont, add_special_tokens=False).ids
            seq = (c_ids + k_ids)[-(max_len + 1):]
            inp = torch.tensor([seq[:-1]])
            with torch.no_grad():
                logp = torch.log_softmax(model(inp).logits[0].float(), -1)
            n = min(len(k_ids), len(seq) - 1)
            tgt = seq[-n:]
            first = len(seq) - 1 - n
            lls.append(float(sum(logp[first + j, tgt[j]] for j in range(n))))
        out.append(lls)
    return out


def zeroshot_goldens(text, versions):
    tok = Tokenizer.from_file(os.path.join(ASSETS, "tokenizer.json"))
    examples = make_tasks(text, os.path.join(ASSETS, "tasks.jsonl"))
    models = {}
    for name in ["tiny-llama", "tiny-mistral-gqa", "tiny-opt", "tiny-phi"]:
        # In f32, a 5.x config read as transformers 4.x would not (see torch_model.load).
        model = torch_model.load(os.path.join(ASSETS, name), "float32", torch.device("cpu"))
        models[name] = request_logliks(model, tok, examples, ZEROSHOT_MAX_LEN)
    json.dump({"max_len": ZEROSHOT_MAX_LEN, "versions": versions, "tasks": "tasks.jsonl", "models": models},
              open(os.path.join(GOLDEN, "zeroshot.json"), "w"), indent=1)
    print(f"zeroshot: {len(examples)} examples")


ROPE_VARIANTS = [
    {"rope_type": "linear", "factor": 2.0},
    {"type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 2.0},
]


def rope_goldens(text_ids, versions):
    """tiny-llama's weights under other rope scalings (its config's rope_scaling replaced): the
    first two windows' losses at EVAL_SEQLEN per variant."""
    folder = os.path.join(ASSETS, "tiny-llama")
    variants = []
    for scaling in ROPE_VARIANTS:
        cfg = transformers.LlamaConfig.from_pretrained(folder)
        cfg.rope_scaling = dict(scaling)
        model = transformers.LlamaForCausalLM.from_pretrained(
            folder, config=cfg, torch_dtype=torch.float32).eval()
        variants.append({"rope_scaling": scaling,
                         "window_losses": window_losses(model, text_ids, EVAL_SEQLEN, 2)})
    json.dump({"model": "tiny-llama", "versions": versions, "text": "sample.txt",
               "seqlen": EVAL_SEQLEN, "variants": variants},
              open(os.path.join(GOLDEN, "tiny-llama-rope.json"), "w"), indent=1)
    print(f"rope variants: {len(variants)}")


def f32_list(t):
    return [float(x) for x in np.asarray(t, dtype=np.float32).reshape(-1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", action="store_true", help="also compute the wt2-llama golden")
    ap.add_argument("--only", default="", help="comma-separated fixture names to rebuild")
    ap.add_argument("--zeroshot", action="store_true", help="only the task file and its goldens")
    ap.add_argument("--rope", action="store_true",
                    help="only tiny-llama's losses under other rope scalings")
    args = ap.parse_args()
    only = [n for n in args.only.split(",") if n]
    os.makedirs(GOLDEN, exist_ok=True)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "numpy": np.__version__}

    text = synthetic_text()
    if args.zeroshot:
        zeroshot_goldens(text, versions)
        return
    if only or args.rope:
        tok = Tokenizer.from_file(os.path.join(ASSETS, "tokenizer.json"))
        assert open(os.path.join(ASSETS, "sample.txt")).read() == text
    else:
        open(os.path.join(ASSETS, "sample.txt"), "w").write(text)
        tok = train_tokenizer(text, os.path.join(ASSETS, "tokenizer.json"))
    text_ids = torch.tensor([tok.encode(text).ids])
    if args.rope:
        rope_goldens(text_ids, versions)
        return

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
                  bos_token_id=0, eos_token_id=1)
    # Both OPT fixtures: ReLU MLP, biases, the head tied to the token embeddings.
    opt_common = dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=172, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=256,
                      activation_function="relu", enable_bias=True, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=1, pad_token_id=1)
    specs = [
        # LLaMA, multi-head attention, llama3 rope scaling, f32, one file, 4.x config.
        ("tiny-llama", transformers.LlamaForCausalLM, transformers.LlamaConfig(
            num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
            **common), torch.float32, 1, False, False),
        # Mistral, grouped-query attention, f16, two shards, 5.x config.
        ("tiny-mistral-gqa", transformers.MistralForCausalLM, transformers.MistralConfig(
            num_key_value_heads=2, rope_theta=50000.0, sliding_window=4096,
            tie_word_embeddings=False, **common), torch.float16, 2, True, True),
        # Qwen2: q/k/v biases, tied embeddings, GQA, bf16.
        ("tiny-qwen2", transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
            num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True,
            use_sliding_window=False, **common), torch.bfloat16, 3, False, False),
        # OPT: learned positions (offset 2), pre-LayerNorm with biases, ReLU MLP, tied head, f16.
        ("tiny-opt", transformers.OPTForCausalLM, transformers.OPTConfig(
            do_layer_norm_before=True, word_embed_proj_dim=64, **opt_common),
         torch.float16, 4, False, False),
        # OPT as OPT-350m is built: post-LayerNorm blocks (do_layer_norm_before false, so no
        # decoder-level final LayerNorm) and token embeddings narrower than the blocks, projected
        # in before the first block and out before the tied head (word_embed_proj_dim), f16.
        ("tiny-opt-post-ln", transformers.OPTForCausalLM, transformers.OPTConfig(
            do_layer_norm_before=False, word_embed_proj_dim=32, **opt_common),
         torch.float16, 7, False, False),
        # Phi: parallel attention and MLP on one LayerNorm, partial rotary (half of each head),
        # biases everywhere, gelu_new, lm_head with bias, 5.x config (rope_parameters).
        ("tiny-phi", transformers.PhiForCausalLM, transformers.PhiConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
            partial_rotary_factor=0.5, rope_theta=10000.0, layer_norm_eps=1e-5,
            hidden_act="gelu_new", qk_layernorm=False, tie_word_embeddings=False,
            bos_token_id=0, eos_token_id=1), torch.float32, 5, False, True),
        # LLaMA with every bias its modeling code offers (attention_bias: q, k, v and o;
        # mlp_bias: gate, up and down), GQA, and a tied head that the checkpoint also stores
        # (differently; see STORED_TIED_HEAD), f32.
        ("tiny-llama-bias", transformers.LlamaForCausalLM, transformers.LlamaConfig(
            num_key_value_heads=2, rope_theta=500000.0, attention_bias=True, mlp_bias=True,
            tie_word_embeddings=True, **common), torch.float32, 6, False, False),
    ]
    # The families of issue 42 need a newer transformers than the fixtures above (Qwen3: 4.51).
    if hasattr(transformers, "Qwen3ForCausalLM"):
        specs += [
            # Qwen3: per-head q/k RMSNorm before the rotation, an explicit head_dim (24, not
            # 64 / 4), GQA, tied head, f32.
            ("tiny-qwen3", transformers.Qwen3ForCausalLM, transformers.Qwen3Config(
                num_key_value_heads=2, head_dim=24, rope_theta=1000000.0, attention_bias=False,
                tie_word_embeddings=True, use_sliding_window=False, **common),
             torch.float32, 8, False, False),
            # Mistral with a sliding window (24 tokens) shorter than the 64-token evaluation
            # windows, as transformers 4.53+ applies it (key j seen from query i when
            # i - 24 < j <= i), GQA, bf16.
            ("tiny-mistral-swa", transformers.MistralForCausalLM, transformers.MistralConfig(
                num_key_value_heads=2, rope_theta=10000.0, sliding_window=24,
                tie_word_embeddings=False, **common), torch.bfloat16, 9, False, False),
            # Gemma 2: four norms a block (1 + w), embeddings × √64, GeGLU (gelu tanh),
            # query_pre_attn_scalar 24 (not head_dim 16), soft caps low enough to be active
            # (checked below), the even layer over a 24-token window, GQA, tied head, f32.
            ("tiny-gemma2", transformers.Gemma2ForCausalLM, transformers.Gemma2Config(
                num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                attn_logit_softcapping=5.0, final_logit_softcapping=3.0, sliding_window=24,
                hidden_activation="gelu_pytorch_tanh", rope_theta=10000.0,
                tie_word_embeddings=True, **common), torch.float32, 10, False, False),
            # Gemma 3 (text): Gemma 2's block with per-head q/k norms (1 + w), no soft caps, a
            # sliding first layer rotated with its own base (rope_local_base_freq 10,000) and a
            # global second one with rope_theta 1e6 under linear scaling by 8, GQA, tied, f32.
            ("tiny-gemma3", transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig(
                num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=24,
                layer_types=["sliding_attention", "full_attention"], rope_theta=1000000.0,
                rope_local_base_freq=10000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
                attn_logit_softcapping=None, final_logit_softcapping=None,
                hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, **common),
             torch.float32, 11, False, False),
            # Phi-3 / Phi-4-mini: fused qkv_proj and gate_up_proj, partial rotary (0.75 of each
            # 16-wide head, as Phi-4-mini), longrope over original_max_position_embeddings 32:
            # the 16-token logits take the short factors, the 64-token windows the long ones,
            # both with the attention factor √(1 + ln 8 / ln 32); multi-head attention, f32.
            ("tiny-phi3", transformers.Phi3ForCausalLM, transformers.Phi3Config(
                num_key_value_heads=4, partial_rotary_factor=0.75, rope_theta=10000.0,
                original_max_position_embeddings=32,
                rope_scaling={"type": "longrope",
                              "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
                              "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0]},
                hidden_act="silu", tie_word_embeddings=False, pad_token_id=1, **common),
             torch.float32, 12, False, False),
            # Qwen2 and Qwen3 with use_sliding_window: only the layers from max_window_layers (1)
            # on attend over the 24-token window, the first sees everything (checked below: the
            # window changes the 64-token losses). Qwen2 in f32 with an untied head, Qwen3 in bf16.
            ("tiny-qwen2-swa", transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
                num_key_value_heads=2, rope_theta=1000000.0, use_sliding_window=True,
                sliding_window=24, max_window_layers=1, tie_word_embeddings=False, **common),
             torch.float32, 13, False, False),
            ("tiny-qwen3-swa", transformers.Qwen3ForCausalLM, transformers.Qwen3Config(
                num_key_value_heads=2, head_dim=24, rope_theta=1000000.0, attention_bias=False,
                use_sliding_window=True, sliding_window=24, max_window_layers=1,
                tie_word_embeddings=True, **common), torch.bfloat16, 14, False, False),
        ]
    if hasattr(transformers, "Gemma3ForConditionalGeneration"):
        # A multimodal Gemma 3 folder (Gemma3ForConditionalGeneration) as transformers writes
        # it: the text model of tiny-gemma3's shape under language_model.*, a one-layer SigLIP
        # vision tower and the projector beside it, which a prune must leave untouched.
        text = transformers.Gemma3TextConfig(
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=24,
            layer_types=["sliding_attention", "full_attention"], rope_theta=1000000.0,
            rope_local_base_freq=10000.0, hidden_activation="gelu_pytorch_tanh", **common)
        vision = transformers.SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=28, patch_size=14)
        specs += [
            ("tiny-gemma3-mm", transformers.Gemma3ForConditionalGeneration, transformers.Gemma3Config(
                text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4),
             torch.float32, 15, False, False),
        ]
    if hasattr(transformers, "Qwen3MoeForCausalLM"):
        # Mixtures of experts (issue 44): routers over 4 or 8 experts, top-2, experts narrower
        # than the dense MLPs above.
        moe = {**common, "intermediate_size": 48}
        specs += [
            # Mixtral: w1/w3/w2 experts, softmax, top-2 renormalised, GQA, f32.
            ("tiny-mixtral", transformers.MixtralForCausalLM, transformers.MixtralConfig(
                num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
                rope_theta=1000000.0, tie_word_embeddings=False, **moe), torch.float32, 16, False, False),
            # Qwen2-MoE: q/k/v biases, a shared expert with its sigmoid gate, top-2 of 4 not
            # renormalised, f32; its second layer dense (mlp_only_layers), a SwiGLU MLP of
            # intermediate_size.
            ("tiny-qwen2-moe", transformers.Qwen2MoeForCausalLM, transformers.Qwen2MoeConfig(
                num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                shared_expert_intermediate_size=96, norm_topk_prob=False, decoder_sparse_step=1,
                mlp_only_layers=[1], use_sliding_window=False, rope_theta=1000000.0,
                tie_word_embeddings=False, **common), torch.float32, 17, False, False),
            # Qwen3-MoE: per-head q/k norms, head_dim 24, top-2 of 8 renormalised, tied, bf16.
            ("tiny-qwen3-moe", transformers.Qwen3MoeForCausalLM, transformers.Qwen3MoeConfig(
                num_key_value_heads=2, head_dim=24, num_experts=8, num_experts_per_tok=2,
                moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                use_sliding_window=False, rope_theta=1000000.0, tie_word_embeddings=True, **common),
             torch.bfloat16, 18, False, False),
            # OLMoE: q/k norms over the whole projections, q, k and v clipped at 3 (active: the
            # spread weights give larger values), top-2 of 4 not renormalised, f32.
            ("tiny-olmoe", transformers.OlmoeForCausalLM, transformers.OlmoeConfig(
                num_key_value_heads=4, num_experts=4, num_experts_per_tok=2, clip_qkv=3.0,
                norm_topk_prob=False, rope_theta=10000.0, tie_word_embeddings=False, **moe),
             torch.float32, 19, False, False),
        ]
    if only:
        specs = [sp for sp in specs if sp[0] in only]
    for name, cls, cfg, dtype, seed, shard, v5 in specs:
        folder, ref = build_model(name, cls, cfg, dtype, seed, shard, v5)
        if name in STORED_TIED_HEAD:
            assert torch.equal(ref.lm_head.weight, ref.get_input_embeddings().weight)
        ids, logits = logits_golden(ref, seed + 100)
        if name == "tiny-gemma2":
            assert_softcaps_active(ref, ids)
        if name.endswith("-swa") and name.startswith("tiny-qwen"):
            assert_window_active(ref, text_ids)
        if name == "tiny-olmoe":
            assert_clip_active(ref, text_ids)
        losses = window_losses(ref, text_ids, EVAL_SEQLEN)
        golden = {
            "model": name, "versions": versions,
            "ids_shape": list(ids.shape), "ids": ids.reshape(-1).tolist(),
            "logits_shape": list(logits.shape), "logits": f32_list(logits),
            "text": "sample.txt", "text_tokens": int(text_ids.shape[1]),
            "seqlen": EVAL_SEQLEN, "window_losses": losses,
            "ppl": math.exp(sum(losses) / len(losses)),
        }
        if name in ("tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe"):
            # Two 64-token windows, and 3 tokens, so few that some expert gets none.
            golden["expert_stats"] = {"windows": expert_stats(ref, text_ids[0, :128].reshape(2, 64)),
                                      "three_tokens": expert_stats(ref, text_ids[:, :3])}
        json.dump(golden, open(os.path.join(GOLDEN, f"{name}.json"), "w"))
        print(f"{name}: {len(losses)} windows, ppl {golden['ppl']:.4f}")
    if not only or "tiny-llama" in only:
        rope_goldens(text_ids, versions)

    if args.shared:
        folder = os.path.join(SHARED, "models", "wt2-llama")
        model = transformers.LlamaForCausalLM.from_pretrained(
            folder, torch_dtype=torch.float32).eval()
        wt_tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        test = open(os.path.join(SHARED, "data", "wikitext-2", "test.txt"),
                    encoding="utf-8").read()
        ids = torch.tensor([wt_tok.encode(test).ids])
        losses = window_losses(model, ids, 256)
        golden = {"model": "wt2-llama", "versions": versions, "text": "test.txt",
                  "seqlen": 256, "tokens": int(ids.shape[1]), "windows": len(losses),
                  "ppl": math.exp(sum(losses) / len(losses)),
                  "ppl_first4": math.exp(sum(losses[:4]) / 4),
                  "window_losses": losses}
        json.dump(golden, open(os.path.join(GOLDEN, "wt2-llama.json"), "w"), indent=1)
        print(f"wt2-llama: {len(losses)} windows, ppl {golden['ppl']:.4f}")


if __name__ == "__main__":
    main()
