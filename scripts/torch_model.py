"""What the PyTorch timing scripts (time_authors_code.py, time_torch_forward.py) share: loading a
checkpoint with transformers onto a device, and naming that device in their JSON line."""
import torch
import transformers
from transformers import AutoModelForCausalLM

# transformers 5 renamed from_pretrained's torch_dtype to dtype.
V5 = int(transformers.__version__.split(".")[0]) >= 5


def load(model_dir, dtype, dev):
    """The checkpoint in `dtype` (a torch dtype's name, e.g. float16), wholly on `dev`."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, **{"dtype" if V5 else "torch_dtype": getattr(torch, dtype)})
    return model.to(dev).eval()


def versions(dev):
    """The device and library versions a timing was made with."""
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    return {"device": where, "torch": torch.__version__, "transformers": transformers.__version__}
