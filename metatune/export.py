"""Saved runs: a directory transformers loads on its own, plus metatune.json.

A run is written under a temporary name and renamed when complete, so a directory named like the
output only ever holds a finished run. A LoRA run holds the adapter in `adapter/` and, unless
model.lora.merge is false, the merged full model at the top of the run directory, which loads with
plain `from_pretrained`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from metatune.config import ModelSettings, preset_file
from metatune.errors import MetatuneError
from metatune.files import temp_dir_beside, usual_modes
from metatune.run_info import RUN_FILE, LoraInfo, RunInfo

ADAPTER_DIR = "adapter"


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse to write over a directory holding anything, unless told to."""
    if output.exists() and not output.is_dir():
        raise MetatuneError(f"{output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        what = "a different run" if (output / RUN_FILE).is_file() else "other files"
        raise MetatuneError(f"{output}: already holds {what}; pass --overwrite to replace it")


def save_run(
    model,
    tokenizer,
    info: RunInfo,
    output: Path,
    card,
    extra: dict[str, Path] | None = None,
    config_keys: dict | None = None,
) -> Path:
    """Writes model, tokenizer, generation config, metatune.json and the model card (`card`: a
    card.Describe), then renames into place. `config_keys`: written into config.json
    over what transformers saved (keys it does not save itself, such as `attn_implementation`).

    A LoRA model (peft) is saved as its adapter in `adapter/` plus, unless model.lora.merge is false
    in the run's config, the merged full model (see save_lora).
    """
    from metatune.card import fix_tokenizer_class, write_card
    from metatune.models import is_peft

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(output)
    try:
        if is_peft(model):
            settings = ModelSettings.model_validate(info.config.get("model", {}))
            info = info.model_copy(update={"lora": save_lora(model, tmp, settings, merge=settings.lora.merge)})
        else:
            model.save_pretrained(tmp)  # safetensors
        if config_keys:
            config_path = tmp / "config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config_path.write_text(json.dumps({**config, **config_keys}, indent=2) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(tmp)
        fix_tokenizer_class(tmp)
        for name, src in (extra or {}).items():
            src = Path(src)
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        info.write(tmp)
        write_card(tmp, card, info, name=output.name)
        usual_modes(tmp)  # safetensors files come out 0600
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def read_run_info(run_dir: str | Path) -> RunInfo:
    """The run's metatune.json, checked (one-line errors for anything that is not a complete run)."""
    return RunInfo.read(run_dir)


def load_run(
    run_dir: str | Path, device: str | None = None, trust_remote_code: bool = False, head=None, **model_kwargs
):
    """(model, tokenizer, info) of a saved run, in eval mode; `head`: the transformers Auto class of
    the run's model (default: its language model); `model_kwargs` go to its `from_pretrained`.

    Python code in the run, or in the base model it names, runs only with `trust_remote_code` (the
    caller's choice; metatune.json's model.trust_remote_code is ignored): a run is data, not a program.
    """
    from metatune.models import load_error

    try:
        return _load_run(run_dir, device, trust_remote_code, head, model_kwargs)
    except (OSError, ValueError) as e:
        raise load_error(str(run_dir), e) from None


def _load_run(run_dir: str | Path, device: str | None, trust_remote_code: bool, head, model_kwargs: dict):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from metatune.models import default_device

    info = read_run_info(run_dir)
    if info.lora is not None and not info.lora.merged:  # only the adapter was saved: base + adapter via peft
        model = load_adapter_run(run_dir, info, trust_remote_code)
    else:
        cls = head or (AutoModelForSeq2SeqLM if info.seq2seq else AutoModelForCausalLM)
        model = cls.from_pretrained(run_dir, trust_remote_code=trust_remote_code, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=trust_remote_code)
    device = device or default_device()
    model.to(device).eval()
    return model, tokenizer, info


def save_lora(model, directory: Path, settings: ModelSettings, merge: bool) -> LoraInfo:
    """Writes the adapter to `directory/adapter` and, if `merge`, the merged model to `directory`.

    Returns what metatune.json records under "lora". A 4-bit model is merged into a fresh full-precision copy
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
    return LoraInfo(
        adapter=ADAPTER_DIR,
        merged=merge,
        base=base_reference(settings),
        r=settings.lora.r,
        alpha=settings.lora.alpha,
        target_modules=sorted({t.rsplit(".", 1)[-1] for t in targets}) if isinstance(targets, set) else targets,
    )


def base_reference(settings: ModelSettings) -> str:
    """The base model as a later load can find it: a preset or Hub id as is, a local path made absolute."""
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


def load_adapter_run(run_dir: Path, info: RunInfo, trust_remote_code: bool = False):
    """Base + adapter of a run saved with model.lora.merge=false, merged in memory for fast generation.

    The base may run Python code of its own only with `trust_remote_code` (the caller's, not the run's)."""
    from peft import PeftModel
    from transformers import GenerationConfig

    run_dir = Path(run_dir)
    settings = ModelSettings.model_validate(info.config["model"])
    settings = settings.model_copy(update={"trust_remote_code": trust_remote_code})
    base = load_base_for_adapter(settings, info.lora.base)
    model = PeftModel.from_pretrained(base, run_dir / info.lora.adapter).merge_and_unload()
    if (run_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(run_dir)
    return model
