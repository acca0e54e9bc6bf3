"""One config object, read from YAML and overridable from the command line.

Layering, lowest first: built-in defaults < the model preset's YAML < the user's YAML <
command-line flags (--model, --data, --output) < --set section.key=value.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from metatune.errors import MetatuneError
from metatune.paths import PRESET_DIR

DEFAULT_MODEL = "smollm2-135m"


class Section(BaseModel):
    # coerce numbers: `--set model.revision=2024` gives the text "2024", not a type error
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), coerce_numbers_to_str=True)


class LoraSettings(Section):
    enabled: bool = False
    r: int = 128
    alpha: int = 64
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"  # every linear layer except the output head
    merge: bool = True  # also save the merged full model next to the adapter


class ModelSettings(Section):
    name: str = DEFAULT_MODEL  # preset, Hub id or local path
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    quantization: Literal["none", "4bit"] = "none"
    gradient_checkpointing: bool = False
    lora: LoraSettings = LoraSettings()


class DataSettings(Section):
    path: str = "data/sample/sample.json"
    hub_dataset: str | None = None  # Hub dataset repo to download when `path` does not exist
    hub_filename: str | None = None  # file inside that repo (default: the name of `path`)
    split_seed: int = 42
    types_file: str | None = None  # YAML adding or replacing document types
    fallback_type: str | None = None  # used for records whose type is unknown (else: error)
    input_style: Literal["prompt", "schema"] = "prompt"
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template when it has one
    include_fields: list[str] | None = None  # None: the type's own fields
    exclude_fields: list[str] = ["keywords", "abstract", "subject", "uri", "identifier.uri", "isRelatedWith"]
    general_examples: bool = False  # also one example per document asking only the general fields
    max_input_tokens: PositiveInt = 2048
    max_target_tokens: PositiveInt = 512

    @model_validator(mode="after")
    def _fields_not_both_included_and_excluded(self):
        both = [f for f in self.include_fields or [] if f in self.exclude_fields]
        if both:
            raise ValueError(f"'{both[0]}' is in include_fields and in exclude_fields; remove it from one of them")
        return self


# transformers.SchedulerType's names, listed here so that reading a config does not import transformers
SchedulerName = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
]


class GenerateSettings(Section):
    """The generate objective's settings (the model writes the JSON)."""

    # a text value of at least this many words found in the document is written as its first and last
    # words ("The nuclear genome of every [...] sequences remain unbound."), and extraction expands it
    # back from the document (0: off)
    anchor_min_words: NonNegativeInt = 0
    anchor_words: PositiveInt = 5  # words at each end of an anchor (more where an end repeats in the text)
    # the instruction shows one example JSON of the output; a model fine-tuned on the targets learns their
    # shape without it, and off saves about 100 tokens per example (the zero-shot baseline needs it)
    prompt_example: bool = True
    snap_to_source: bool = True  # at extraction, values that (nearly) occur in the text become the text's own words


class TagSettings(Section):
    """The tag objective's settings (the model labels the tokens of the text that hold each value)."""

    # with a decoder: let every token see the whole document (bidirectional) or only what precedes it
    # (causal, as the model was pretrained)
    attention: Literal["bidirectional", "causal"] = "bidirectional"
    # with causal attention: each token's label is read this many tokens later (that many filler tokens
    # follow the text), so the model sees that far past the token it labels (0: at the token itself)
    label_delay: int = Field(default=0, ge=0, le=64)
    # the attention kernel a decoder trains with: "sdpa" (PyTorch's fused kernels) or "matmul"
    # (metatune.attention: the score matrix in memory; on a CPU, glibc's allocator keeps freed memory
    # while it trains)
    attention_kernel: Literal["sdpa", "matmul"] = "sdpa"
    # this fraction of the training documents is also trained on with every run of whitespace made one
    # space (line breaks gone, as the original SEDICI orchestrator and some PDF tools send text); seeded
    augment_collapsed: float = Field(default=0.0, ge=0.0, le=1.0)
    # this seeded share of those copies also gets what other PDF tools add: a margin stamp or running head
    # (arXiv's, a journal's, a page number) and line ends glued without a space (metatune.noise)
    augment_noise: float = Field(default=0.0, ge=0.0, le=1.0)
    # in those copies, also learn where the page's lines started: a training-only head on the last
    # hidden state predicts per token whether a line of the original starts there, its loss weighted
    # by this (0: off); dropped when the run is saved (metatune.objectives.tag.lines)
    line_starts: float = Field(default=0.0, ge=0.0, le=10.0)
    # after training, fit a probe on the model's last hidden states that finds where the lines of a page
    # started in text without line breaks; extraction puts them back in such text before tagging it
    # (metatune.objectives.tag.restore)
    restore_lines: bool = False
    # keep only the first this many transformer layers of a decoder (0: all): fewer layers, less time per
    # training step and per document; the saved run has that depth
    layers: NonNegativeInt = 0
    # train neither the token embeddings nor the first this many transformer layers of a decoder (0:
    # train all): the backward pass stops above them, so each frozen layer saves most of its share of
    # a training step; extraction is unchanged
    frozen_layers: NonNegativeInt = 0
    # how decoding chains labels: "seen" (only the label pairs the training split shows), "learned"
    # (those, scored by their frequency) or "allowed" (any label but I-x after something other than x)
    transitions: Literal["allowed", "seen", "learned"] = "seen"
    # at extraction, read a document longer than data.max_input_tokens in up to this many overlapping
    # windows of that size (1: the text is cut, as in training)
    windows: int = Field(default=1, ge=1, le=64)
    # in the loss, the label a closed-list field is read from (one per field and document, against
    # hundreds of token labels) counts as this many tokens' labels
    class_weight: float = Field(default=32.0, ge=1.0, le=1000.0)
    # in the loss, a span field's labels weigh (most aligned values of any span field / its own) to
    # this power: a rare field (a codirector among directors) is not drowned by its frequent
    # neighbour; 0: every span label weighs 1, 0.5: a field with a quarter as many values weighs 2
    field_balance: float = Field(default=0.0, ge=0.0, le=1.0)
    # before tagging, this many epochs of masked next-token prediction over the training texts read both
    # ways (LLM2Vec's adaptation of a decoder to bidirectional attention; 0: none): a decoder with tied
    # input and output embeddings, tag.attention=bidirectional
    adaptation_epochs: float = Field(default=0.0, ge=0.0, le=10.0)
    adaptation_learning_rate: PositiveFloat = 1e-4

    @model_validator(mode="after")
    def _delay_only_reading_forward(self):
        if self.label_delay and self.attention != "causal":
            raise ValueError("tag.label_delay gives a model that reads forward a look ahead: set tag.attention=causal")
        if self.line_starts and not self.augment_collapsed:
            raise ValueError(
                "tag.line_starts learns where lines started in the copies without line breaks: set tag.augment_collapsed"
            )
        return self


class TrainingSettings(Section):
    # what the model learns: a name of metatune.objectives' registry (generate: write the JSON; tag:
    # label the tokens of the text that hold each value); checked when training starts
    objective: str = "generate"
    mode: Literal["trainer", "loop"] = "trainer"
    output_dir: str = "runs/latest"
    num_train_epochs: PositiveFloat = 3
    max_steps: int = -1
    learning_rate: PositiveFloat = 5e-5
    per_device_train_batch_size: PositiveInt = 4
    per_device_eval_batch_size: PositiveInt = 8
    gradient_accumulation_steps: PositiveInt = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler_type: SchedulerName = "linear"
    bf16: Literal["auto"] | bool = "auto"  # auto: where the hardware has bf16 matrix units
    fp16: bool = False  # float16 autocast with loss scaling, for GPUs without bfloat16 (V100, T4)
    group_by_length: bool = True  # batches of similar length: less padding
    # Causal models: every example its own micro-batch, gradients accumulated over the batch (same
    # optimizer steps and loss): no padding, no attention mask. auto: on CPUs (docs/performance.md).
    padding_free: Literal["auto"] | bool = "auto"
    eval_each_epoch: bool = True
    save_steps: NonNegativeInt = 0  # also save a checkpoint every N optimizer steps (0: only at each epoch's end)
    save_total_limit: int = 2
    early_stopping_patience: int = 0  # epochs without validation improvement (0: off)
    logging_steps: PositiveInt = 5
    # where the Trainer also logs (metrics.jsonl is always written): tensorboard (skipped when not
    # installed), wandb, mlflow or none
    report_to: Literal["tensorboard", "wandb", "mlflow", "none"] = "tensorboard"
    seed: int = 42

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("must be -1 (train num_train_epochs epochs) or at least 1")
        return value


class Config(Section):
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    training: TrainingSettings = TrainingSettings()
    generate: GenerateSettings = GenerateSettings()
    tag: TagSettings = TagSettings()


# Keys that moved into an objective's own section, as configs written before the move name them.
MOVED_KEYS = {
    ("data", "anchor_min_words"): ("generate", "anchor_min_words"),
    ("data", "anchor_words"): ("generate", "anchor_words"),
    ("data", "prompt_example"): ("generate", "prompt_example"),
    ("data", "snap_to_source"): ("generate", "snap_to_source"),
    ("training", "tag_attention"): ("tag", "attention"),
}


def move_old_keys(raw: dict, source: str = "config", note=None) -> dict:
    """`raw` with keys of MOVED_KEYS under their new names; `note` (default: print to stderr) hears one
    line per key moved. A key given under both names keeps the new one's value."""
    import sys

    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for (old_section, old_key), (new_section, new_key) in MOVED_KEYS.items():
        section = out.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = out.setdefault(new_section, {})
        if isinstance(target, dict):
            target.setdefault(new_key, value)
        message = f"note: {source}: {old_section}.{old_key} is now {new_section}.{new_key}; read as that"
        (note or (lambda line: print(line, file=sys.stderr)))(message)
    return out


DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")  # auto: as the weights were saved


@dataclass(frozen=True)
class ExtractionSettings:
    """How a saved run extracts: the options `evaluate`, `extract` and `serve` share, checked once."""

    num_beams: int = 1  # 1: greedy
    max_new_tokens: int | None = None  # None: the run's data.max_target_tokens
    dtype: str = "auto"
    batch_size: int = 8  # documents generated together
    snap: bool | None = None  # None: the run's data.snap_to_source
    prompt_lookup: int = 0  # tokens proposed per prompt-lookup step (inference.Extractor); 0: off
    trust_remote_code: bool = False  # the caller's choice, never the run's

    def __post_init__(self):
        for name in ("num_beams", "batch_size"):
            if getattr(self, name) < 1:
                raise MetatuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise MetatuneError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.dtype not in DTYPE_NAMES:
            raise MetatuneError(f"unknown dtype {self.dtype!r} (choose from {', '.join(DTYPE_NAMES)})")
        if self.prompt_lookup < 0:
            raise MetatuneError(f"prompt_lookup must be 0 (off) or more, got {self.prompt_lookup}")
        if self.prompt_lookup and self.num_beams > 1:
            raise MetatuneError("prompt-lookup decoding is greedy: it needs num_beams 1")


def parse_set(items: list[str]) -> dict:
    """`["training.learning_rate=1e-4"]` -> `{"training": {"learning_rate": 1e-4}}` (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MetatuneError(f"--set {item!r}: expected section.key=value")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise MetatuneError(f"--set {item!r}: invalid value: {' '.join(str(e).split())}") from None
    return out


def merge(base: dict, top: dict, where: str = "") -> dict:
    """`top` over `base`, section by section. Settings for a section that `base` gives as a single
    value (`training: 5`) are an error: replacing that value would hide the mistake."""
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        if isinstance(v, dict) and old is not None and not isinstance(old, dict):
            raise MetatuneError(f"{where}{k}: expected a mapping of settings, got {old!r}")
        out[k] = merge(old, v, f"{where}{k}.") if isinstance(v, dict) and isinstance(old, dict) else v
    return out


def read_yaml(path: str | Path, what: str = "config file", expected: str = "a mapping at the top level") -> dict:
    """A YAML file holding a mapping; every problem is a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MetatuneError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise MetatuneError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise MetatuneError(f"{path}: expected {expected}")
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_file(name: str) -> Path | None:
    path = PRESET_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def load_preset(name: str) -> dict:
    """The preset's config layer (empty for a Hub id or a path), with `model.name` resolved."""
    path = preset_file(name)
    if path is None:
        return {}
    layer = read_yaml(path)
    layer.pop("description", None)
    layer.pop("source", None)  # where the weights come from: read by models.resolve_source
    return layer


def load_config(
    config_file: str | Path | None = None,
    sets: list[str] = (),
    model: str | None = None,
    data: str | None = None,
    output: str | None = None,
) -> Config:
    user = read_yaml(config_file) if config_file else {}
    flags: dict = {}
    if model:
        flags.setdefault("model", {})["name"] = model
    if data:
        flags.setdefault("data", {})["path"] = data
    if output:
        flags.setdefault("training", {})["output_dir"] = output
    top = merge(merge(user, flags), parse_set(list(sets)))
    model_name = (
        top.get("model", {}).get("name", DEFAULT_MODEL) if isinstance(top.get("model"), dict) else DEFAULT_MODEL
    )
    layers = merge(load_preset(str(model_name)), top)
    return validate(layers, source=str(config_file or "config"))


def validate(raw: dict, source: str = "config") -> Config:
    raw = move_old_keys(raw, source)
    _check_keys(raw, Config, [], source)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise MetatuneError(f"{source}: {where}: {err['msg']}") from None


def _check_keys(raw: dict, model: type[BaseModel], prefix: list[str], source: str) -> None:
    """Reject unknown keys with the nearest valid name, before pydantic's longer message."""
    if not isinstance(raw, dict):
        return
    known = model.model_fields
    for key, value in raw.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.5)
            if close:
                hint = f"; did you mean '{'.'.join(prefix + [close[0]])}'?"
            else:  # perhaps a key of another section ("training.max_input_tokens")
                paths = _key_paths(Config)
                close = difflib.get_close_matches(str(key), [p.rsplit(".", 1)[-1] for p in paths], n=1, cutoff=0.8)
                hint = (
                    f"; did you mean '{next(p for p in paths if p.rsplit('.', 1)[-1] == close[0])}'?" if close else ""
                )
            raise MetatuneError(f"{source}: unknown key '{'.'.join(prefix + [str(key)])}'{hint}")
        annotation = known[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_keys(value, annotation, prefix + [key], source)


def _key_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every settable key as a dotted path: "data.max_input_tokens", "model.lora.r"..."""
    paths = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _key_paths(annotation, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths
