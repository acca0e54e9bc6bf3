"""4-bit loading for QLoRA: BitsAndBytes NF4, double quantization, bfloat16 compute.

Whether this machine can run it is checked before any weights load: CUDA with bitsandbytes, or
bitsandbytes' CPU backend (0.48+ ships one) verified by quantizing and multiplying a small matrix.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch

from metatune.errors import MetatuneError

INSTEAD = "set model.quantization=none (full precision), or train on a CUDA machine"


def four_bit_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


@lru_cache(maxsize=1)
def four_bit_backend() -> str:
    """'cuda' or 'cpu': where 4-bit NF4 runs here; MetatuneError (one line: why, what to do) if nowhere."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MetatuneError(f"model.quantization=4bit needs bitsandbytes (pip install bitsandbytes); or {INSTEAD}")
    if torch.cuda.is_available():
        return "cuda"
    try:
        _cpu_probe()
    except Exception as e:  # whatever the backend raises: missing kernels, unsupported device...
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise MetatuneError(
            f"model.quantization=4bit cannot run here: no CUDA, and bitsandbytes has no working CPU backend ({why}); "
            f"{INSTEAD}"
        ) from None
    return "cpu"


def _cpu_probe() -> None:
    """NF4-quantizes a small matrix and runs a bf16 matmul forward and backward through it on the CPU."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    packed, state = F.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).requires_grad_()
    y = bnb.matmul_4bit(x, packed.t(), quant_state=state)
    y.float().sum().backward()
    reference = x.detach().float() @ weight.t()
    error = (y.detach().float() - reference).norm() / reference.norm()
    if not (error < 0.25 and torch.isfinite(x.grad.float()).all()):
        raise RuntimeError(f"the CPU NF4 matmul gives wrong results (relative error {error:.2f})")


def prepare_four_bit(model, gradient_checkpointing: bool):
    """peft's k-bit preparation: freezes the base, keeps norms and head in float32, optional checkpointing."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
