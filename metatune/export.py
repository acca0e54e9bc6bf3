"""Saved runs: a directory transformers loads on its own, plus metatune.json.

A run is written under a temporary name and renamed when complete, so a directory named like the
output only ever holds a finished run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from metatune.errors import MetatuneError
from metatune.files import temp_dir_beside, usual_modes

RUN_FILE = "metatune.json"
FORMAT_VERSION = 1


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse to write over a directory holding anything, unless told to."""
    if output.exists() and not output.is_dir():
        raise MetatuneError(f"{output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        what = "a different run" if (output / RUN_FILE).is_file() else "other files"
        raise MetatuneError(f"{output}: already holds {what}; pass --overwrite to replace it")


def save_run(model, tokenizer, info: dict, output: Path, extra: dict[str, Path] | None = None) -> Path:
    """Writes model, tokenizer, generation config and metatune.json, then renames into place.

    A LoRA model (peft) is saved as its adapter in `adapter/` plus, unless model.lora.merge is false
    in info["config"], the merged full model (see metatune.peft_setup.save_lora).
    """
    from metatune.card import fix_tokenizer_class, write_card
    from metatune.peft_setup import is_peft, save_lora

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(output)
    try:
        if is_peft(model):
            from metatune.config import ModelSettings

            settings = ModelSettings.model_validate(info.get("config", {}).get("model", {}))
            info = {**info, "lora": save_lora(model, tmp, settings, merge=settings.lora.merge)}
        else:
            model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        fix_tokenizer_class(tmp)
        for name, src in (extra or {}).items():
            src = Path(src)
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        info = {"format_version": FORMAT_VERSION, **info}
        (tmp / RUN_FILE).write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
        write_card(tmp, info, name=output.name)
        usual_modes(tmp)  # safetensors files come out 0600
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def read_run_info(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise MetatuneError(f"{run_dir}: run directory not found")
    if not path.is_file():
        raise MetatuneError(f"{run_dir}: not a metatune run (no {RUN_FILE})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MetatuneError(f"{path}: invalid JSON: {e.msg}") from None
    if not isinstance(info, dict):
        raise MetatuneError(f"{path}: expected a JSON object")
    if info.get("format_version") != FORMAT_VERSION:
        raise MetatuneError(f"{path}: unsupported format_version {info.get('format_version')!r}")
    missing = [key for key in ("architecture", "input", "limits", "types") if key not in info]
    if missing:
        raise MetatuneError(f"{run_dir}: not a complete metatune run: {RUN_FILE} has no '{missing[0]}'")
    return info


def load_run(run_dir: str | Path, device: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer, info) of a saved run, ready for generation.

    Python code in the run, or in the base model it names, runs only with `trust_remote_code` (the
    caller's choice; metatune.json's model.trust_remote_code is ignored): a run is data, not a program.
    """
    from metatune.models import load_error

    try:
        return _load_run(run_dir, device, trust_remote_code)
    except (OSError, ValueError) as e:
        raise load_error(str(run_dir), e) from None


def _load_run(run_dir: str | Path, device: str | None, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    info = read_run_info(run_dir)
    if info.get("lora", {}).get("merged") is False:  # only the adapter was saved: base + adapter via peft
        from metatune.peft_setup import load_adapter_run

        model = load_adapter_run(run_dir, info, trust_remote_code)
    else:
        cls = AutoModelForSeq2SeqLM if info["architecture"] == "seq2seq" else AutoModelForCausalLM
        if info.get("objective") == "tag":
            from transformers import AutoModelForTokenClassification as cls
        model = cls.from_pretrained(run_dir, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=trust_remote_code)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return model, tokenizer, info
