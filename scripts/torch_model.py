"""What the PyTorch timing scripts (time_authors_code.py, time_torch_forward.py) share: loading a
checkpoint with transformers onto a device, and naming that device in their JSON line."""
import torch
import transformers
from transformers import AutoModelForCausalLM

# transformers 5 renamed from_pretrained's torch_dtype to dtype.
V5 = int(transformers.__version__.split(".")[0]) >= 5


def load(model_dir, dtype, dev):
    """The checkpoint in `dtype` (a torch dtype's name, e.g. float16), wholly on `dev`. A config
    written as transformers 5 writes it (rope settings inside `rope_parameters`) is read by
    transformers 4.x with its fields moved to the top level, where 4.x reads them: otherwise 4.x
    would silently use its default rope_theta."""
    kw = {"dtype" if V5 else "torch_dtype": getattr(torch, dtype)}
    if not V5:
        config = transformers.AutoConfig.from_pretrained(model_dir)
        rope = getattr(config, "rope_parameters", None)
        if isinstance(rope, dict):
            for k, v in rope.items():
                if k == "rope_type":
                    continue
                setattr(config, k, v)
            kw["config"] = config
    # Gemma's soft-capped attention is exact only in transformers' eager attention.
    config = kw.get("config") or transformers.AutoConfig.from_pretrained(model_dir)
    if config.model_type.startswith("gemma"):
        kw["attn_implementation"] = "eager"
    if config.model_type == "gemma3":
        return text_of_multimodal(model_dir, config, kw).to(dev).eval()
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    return model.to(dev).eval()


def text_of_multimodal(model_dir, config, kw):
    """A multimodal Gemma 3 folder's language model as the Gemma3ForCausalLM it is (the loops
    that replay a pruner look for model.layers): the full model loaded as transformers loads it,
    its text model's modules moved into a causal LM of its text config, the head tied."""
    full = transformers.Gemma3ForConditionalGeneration.from_pretrained(model_dir, **kw)
    text = transformers.Gemma3ForCausalLM(full.config.text_config).to(full.dtype)
    text.model = full.model.language_model
    text.lm_head = full.lm_head
    text.config._attn_implementation = kw.get("attn_implementation", "eager")
    return text


def versions(dev):
    """The device and library versions a timing was made with."""
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    return {"device": where, "torch": torch.__version__, "transformers": transformers.__version__}
