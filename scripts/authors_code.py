"""What the scripts that run the authors' NeuroAL code (github.com/eliacunegatti/NeuroAL) share:
importing a local checkout of it with the stand-ins its imports need, the calibration windows
in the form their loaders give, and a transformers model their layer-by-layer loops can call.
Nothing of theirs is in this repository; their `lib/` and `sparsity_distribution.py` run
unmodified.

Three things are stood in for: `weightwatcher` (only their AlphaPruning baseline uses it),
`datasets` (the windows come from the caller instead), and their CUDA mask op (a compiled
extension), replaced by the same rule in torch (per row, keep the first top_k entries of the
descending sort, prune the rest). Without a CUDA device, `torch.cuda.synchronize` (which their
SparseGPT calls after each linear) does nothing instead of failing."""
import inspect
import json
import sys
import types

import torch
import transformers

import torch_model


def import_checkout(checkout):
    """Puts the checkout on the import path, its missing imports stood in for."""
    sys.path.insert(0, checkout)
    sys.modules["weightwatcher"] = types.ModuleType("weightwatcher")
    datasets = types.ModuleType("datasets")
    datasets.load_dataset = None
    sys.modules["datasets"] = datasets
    mask_op = types.ModuleType("mask_gen_cuda")

    def mask_gen_forward(mask, sort_index, top_k):
        keep = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) < top_k.to(mask.device).unsqueeze(1)
        mask.scatter_(1, sort_index, (~keep).to(mask.dtype))
        return [mask]

    mask_op.mask_gen_forward = mask_gen_forward
    sys.modules["mask_gen_cuda"] = mask_op
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *args, **kw: None


def model_type(model_dir, name="auto"):
    """Their name for the family. auto names an OPT model opt (their OPT loops), a Phi model
    phi (their routing of Phi's rows), and a
    LLaMA-architecture model with grouped-query attention mistral: their row step keeps q, k
    and v at the block sparsity only under that name, as neuroal does under GQA."""
    if name != "auto":
        return name
    config = json.load(open(f"{model_dir}/config.json"))
    if config.get("model_type") == "gemma3":  # a multimodal folder: its text model's
        config = config["text_config"]
    if config.get("model_type") in ("opt", "phi"):
        return config["model_type"]
    heads = config["num_attention_heads"]
    return "mistral" if config.get("num_key_value_heads", heads) < heads else "llama"


def windows(ids, starts, seqlen):
    """(input, target) pairs of `seqlen` tokens from each start, as their loaders make them."""
    out = []
    for s in starts:
        inp = torch.tensor([ids[s : s + seqlen]])
        tar = inp.clone()
        tar[:, :-1] = -100
        out.append((inp, tar))
    return out


# transformers 4.48 and later: decoder layers take the rotary cos and sin from the model.
ROTARY_FROM_MODEL = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 48)


class SplitLinear(torch.nn.Module):
    """A fused linear (Phi-3's qkv_proj, gate_up_proj) as the separate linears it stacks, in
    order, so that their code, which finds a block's linears and routes their rows by position
    (q, k, v, o, gate, up, down), sees the LLaMA layout. The output is the parts' outputs
    concatenated: the fused product, row for row."""

    def __init__(self, fused, names, sizes):
        super().__init__()
        rows = fused.weight.split(sizes, dim=0)
        for name, w in zip(names, rows):
            part = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype, device=w.device)
            part.weight.data.copy_(w)
            self.add_module(name, part)

    def forward(self, x):
        return torch.cat([m(x) for m in self.children()], dim=-1)

    def weight_cat(self):
        return torch.cat([m.weight for m in self.children()], dim=0)


def split_fused(model):
    """Phi-3's fused linears split in place, o_proj moved after them (find_layers' order)."""
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = SplitLinear(attn.qkv_proj, ["q_proj", "k_proj", "v_proj"], [q, kv, kv])
        attn._modules["o_proj"] = attn._modules.pop("o_proj")
        f = cfg.intermediate_size
        mlp.gate_up_proj = SplitLinear(mlp.gate_up_proj, ["gate_proj", "up_proj"], [f, f])
        mlp._modules["down_proj"] = mlp._modules.pop("down_proj")


def load_model(model_dir, dtype, dev, seqlen):
    """The checkpoint as their loops expect it. Their code calls each decoder layer with
    position_ids alone, as transformers up to 4.47 allowed; under later versions, whose layers
    take the rotary cos and sin from the model, each layer is handed the model's own, made from
    those position_ids. Later versions also read each layer's `attention_type` (full or
    sliding) from the layer list, where their Catcher stands in for the first layer: it is
    given the layer's own."""
    model = torch_model.load(model_dir, dtype, dev)
    model.seqlen = seqlen
    if model.config.model_type == "phi3":
        split_fused(model)
    # OPT's blocks are under model.decoder.
    layers = model.model.decoder.layers if hasattr(model.model, "decoder") else model.model.layers
    first = layers[0]
    if hasattr(first, "attention_type"):
        kind = first.attention_type
        # A property on every module, so their Catcher has one: a layer's own value (in its
        # __dict__, which a property would otherwise hide) wins.
        torch.nn.Module.attention_type = property(
            lambda m: m.__dict__["attention_type"] if "attention_type" in m.__dict__
            else m.module.attention_type if "module" in m._modules else kind)
    rotary = getattr(model.model, "rotary_emb", None)
    if (torch_model.V5 or ROTARY_FROM_MODEL) and rotary is not None:
        local = getattr(model.model, "rotary_emb_local", None)
        window = getattr(model.config, "sliding_window", None)
        for layer in layers:
            kind = getattr(layer, "attention_type", None)
            two_ropes = "position_embeddings_global" in inspect.signature(layer.forward).parameters

            def forward(hidden_states, *args, _forward=layer.forward, _kind=kind, _two=two_ropes, **kw):
                ids = kw.get("position_ids")
                if _two and ids is not None:
                    # Gemma 3: each layer picks the global or the local rotation itself.
                    kw.setdefault("position_embeddings_global", rotary(hidden_states, ids))
                    kw.setdefault("position_embeddings_local", local(hidden_states, ids))
                    kw.pop("position_embeddings", None)
                elif kw.get("position_embeddings") is None and ids is not None:
                    kw["position_embeddings"] = rotary(hidden_states, ids)
                # Their loop hands every layer the mask the first layer got; a model whose
                # layers differ (Gemma's local and global ones) gets each layer's own.
                if _kind is not None and kw.get("attention_mask") is not None and window is not None:
                    kw["attention_mask"] = layer_mask(hidden_states, _kind == "sliding_attention", window)
                return _forward(hidden_states, *args, **kw)
            layer.forward = forward
    return model


def layer_mask(hidden_states, sliding, window):
    """transformers' additive mask [1, 1, t, t] for one layer: key j seen from query i when j <= i
    and, in a sliding layer, i - window < j."""
    t = hidden_states.shape[1]
    i = torch.arange(t).unsqueeze(1)
    j = torch.arange(t).unsqueeze(0)
    seen = (j <= i) & ((i - j < window) if sliding else torch.ones_like(j <= i))
    mask = torch.full((t, t), torch.finfo(hidden_states.dtype).min, dtype=hidden_states.dtype)
    mask[seen] = 0
    return mask.to(hidden_states.device)[None, None]
