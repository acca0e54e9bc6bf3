"""LoRA through peft: wrapping a model for training, saving the adapter and the merged model, loading back.

A LoRA run holds the adapter in `adapter/` and, unless model.lora.merge is false, the merged full
model at the top of the run directory, which loads with plain `from_pretrained`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from metatune.config import LoraSettings, ModelSettings
from metatune.errors import MetatuneError

ADAPTER_DIR = "adapter"


def lora_config(settings: LoraSettings, seq2seq: bool):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,  # "all-linear": every linear layer but the output head
    )


def is_peft(model) -> bool:
    if "peft" not in sys.modules:  # nothing wrapped a model, and importing peft takes seconds
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total), counting 4-bit weights by the parameters they stand for."""
    if is_peft(model):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def prepare_for_training(model, settings: ModelSettings, seq2seq: bool):
    """4-bit preparation, gradient checkpointing and LoRA, as `settings` ask; prints what is trained."""
    if settings.quantization == "4bit":
        from metatune.quantization import prepare_four_bit

        model = prepare_four_bit(model, settings.gradient_checkpointing)
    elif settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.lora.enabled:
        from peft import get_peft_model

        try:
            model = get_peft_model(model, lora_config(settings.lora, seq2seq))
        except ValueError as e:  # target modules that match nothing
            raise MetatuneError(f"model.lora.target_modules: {str(e).splitlines()[0]}") from None
    trainable, total = parameter_counts(model)
    what = f"LoRA r={settings.lora.r}" if settings.lora.enabled else "full fine-tuning"
    if int(os.environ.get("RANK", "0")) == 0:  # once per launch, not once per process
        print(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%, {what})")
    return model


def save_lora(model, directory: Path, settings: ModelSettings, merge: bool) -> dict:
    """Writes the adapter to `directory/adapter` and, if `merge`, the merged model to `directory`.

    What metatune.json records under "lora". A 4-bit model is merged into a fresh full-precision copy
    of its base (merging into 4-bit weights would round them again); otherwise the LoRA weights are
    merged in place, so `model` is no longer a peft model afterwards.
    """
    from peft import PeftModel

    directory = Path(directory)
    targets = model.peft_config["default"].target_modules
    model.save_pretrained(directory / ADAPTER_DIR)
    if merge:
        if getattr(model, "is_loaded_in_4bit", False):
            base = load_base_for_adapter(settings)
            merged = PeftModel.from_pretrained(base, directory / ADAPTER_DIR).merge_and_unload()
            merged.generation_config = model.generation_config
        else:
            merged = model.merge_and_unload()
        merged.save_pretrained(directory)
    else:
        model.generation_config.save_pretrained(directory)
    return {
        "adapter": ADAPTER_DIR,
        "merged": merge,
        "base": base_reference(settings),
        "r": settings.lora.r,
        "alpha": settings.lora.alpha,
        "target_modules": sorted({t.rsplit(".", 1)[-1] for t in targets}) if isinstance(targets, set) else targets,
    }


def base_reference(settings: ModelSettings) -> str:
    """The base model as a later load can find it: a preset or Hub id as is, a local path made absolute."""
    from metatune.config import preset_file

    path = Path(settings.name).expanduser()
    if preset_file(settings.name) is None and path.exists():
        return str(path.resolve())
    return settings.name


def load_base_for_adapter(settings: ModelSettings, base: str | None = None):
    """The base model in full precision (never 4-bit), on the CPU, to put an adapter on."""
    from metatune.models import load_pretrained

    plain = settings.model_copy(update={"name": base or settings.name, "quantization": "none"})
    model, _, _ = load_pretrained(plain)
    return model


def load_adapter_run(run_dir: Path, info: dict, trust_remote_code: bool = False):
    """Base + adapter of a run saved with model.lora.merge=false, merged in memory for fast generation.

    The base may run Python code of its own only with `trust_remote_code` (the caller's, not the run's)."""
    from peft import PeftModel
    from transformers import GenerationConfig

    run_dir = Path(run_dir)
    settings = ModelSettings.model_validate(info["config"]["model"])
    settings = settings.model_copy(update={"trust_remote_code": trust_remote_code})
    base = load_base_for_adapter(settings, info["lora"]["base"])
    model = PeftModel.from_pretrained(base, run_dir / info["lora"]["adapter"]).merge_and_unload()
    if (run_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(run_dir)
    return model
