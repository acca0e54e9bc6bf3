"""metatune.json: what a saved run is and how its inputs were built, as one typed object.

Training builds a RunInfo (metatune.objectives.base.describe, plus the sections its objective
adds), saving writes it beside the weights, and every reader gets its
settings from the attributes. The file's format is unchanged (format_version 1); keys a later version adds are kept
as they are, and keys added since the first runs have defaults, so older runs still read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from metatune.doctypes import FieldSelection, TypeRegistry
from metatune.errors import MetatuneError

RUN_FILE = "metatune.json"
FORMAT_VERSION = 1


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputSpec(_Part):
    """How a document becomes the model's input (formatting.InputFormat, plus the rendered prompts)."""

    style: Literal["prompt", "schema"] = "prompt"
    include_fields: list[str] | None = None
    exclude_fields: list[str] = []
    chat_template: bool = False
    prompts: dict[str, dict[str, str]] = {}  # type -> {"prefix", "suffix"}, rendered once at training
    anchor_min_words: int = 0  # runs saved before anchored targets had none
    anchor_words: int = 5
    prompt_example: bool = True


class TokenLimits(_Part):
    max_input_tokens: int
    max_target_tokens: int


class LoraInfo(_Part):
    adapter: str  # the adapter's directory inside the run
    merged: bool  # whether the merged full model is saved at the top of the run
    base: str  # the base model as a later load finds it
    r: int
    alpha: float
    target_modules: list[str] | str


class RunInfo(_Part):
    format_version: int = FORMAT_VERSION
    metatune_version: str = ""
    created: str = ""
    base_model: str | None = None
    architecture: Literal["causal", "seq2seq"]
    objective: str = "generate"  # a name of metatune.objectives' registry
    input: InputSpec
    limits: TokenLimits
    fallback_type: str | None = None
    types: dict[str, dict[str, Any]]  # doctypes.TypeRegistry.to_dict()
    config: dict[str, Any] = {}  # the training config, as dumped (older runs may hold keys no longer known)
    training: dict[str, Any] = {}  # the training summary
    lora: LoraInfo | None = None  # LoRA runs
    type_classifier: str | None = None  # runs whose objective fits one: the document-type classifier's file

    @property
    def seq2seq(self) -> bool:
        return self.architecture == "seq2seq"

    def setting(self, section: str, key: str, default=None):
        """A value of the training config (config.<section>.<key>), or `default` for runs without it."""
        return (self.config.get(section) or {}).get(key, default)

    def registry(self, source: str = RUN_FILE) -> TypeRegistry:
        return TypeRegistry.from_dict(self.types, source=source)

    @property
    def selection(self) -> FieldSelection:
        """Which fields the run was trained to write for each type."""
        return FieldSelection.of(self.input.include_fields, self.input.exclude_fields)

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json")
        for key in ("lora", "type_classifier"):  # sections only some runs have
            if data[key] is None:
                del data[key]
        return data

    def write(self, directory: Path) -> None:
        (Path(directory) / RUN_FILE).write_text(
            json.dumps(self.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8"
        )

    @classmethod
    def read(cls, run_dir: str | Path) -> RunInfo:
        run_dir = Path(run_dir)
        path = run_dir / RUN_FILE
        if not run_dir.is_dir():
            raise MetatuneError(f"{run_dir}: run directory not found")
        if not path.is_file():
            raise MetatuneError(f"{run_dir}: not a metatune run (no {RUN_FILE})")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise MetatuneError(f"{path}: invalid JSON: {e.msg}") from None
        if not isinstance(raw, dict):
            raise MetatuneError(f"{path}: expected a JSON object")
        if raw.get("format_version") != FORMAT_VERSION:
            raise MetatuneError(f"{path}: unsupported format_version {raw.get('format_version')!r}")
        missing = [key for key in ("architecture", "input", "limits", "types") if key not in raw]
        if missing:
            raise MetatuneError(f"{run_dir}: not a complete metatune run: {RUN_FILE} has no '{missing[0]}'")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            error = e.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise MetatuneError(f"{path}: '{where}': {error['msg']}") from None
