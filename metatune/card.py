"""A saved run explains itself: its model card (README.md, as the Hugging Face Hub shows it) and
tokenizer files that other tools load.

The card is rendered from metatune.json (base model, data, training settings, prompts) and, once
`metatune evaluate` has run, from the metrics it recorded in the run (evaluation.json).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from metatune.files import write_atomic
from metatune.run_info import RunInfo

CARD_FILE = "README.md"
EVALUATION_FILE = "evaluation.json"
GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "", None}
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # known to transformers 4.x and 5.x and to llama.cpp's converter

TRAINING_KEYS = (
    "mode",
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "weight_decay",
    "lr_scheduler_type",
    "bf16",
    "seed",
)


@dataclass(frozen=True)
class CardParts:
    """What the card says about how the run writes the metadata (filled in by metatune.objectives.card)."""

    pipeline_tag: str  # the Hub's task for the run
    how: str = ""  # ends the card's first sentence: how the run writes the metadata
    limits: str = ""  # the Data section's line on what the run reads and writes at most (default: the input limit)
    settings: list[tuple[str, str]] = field(default_factory=list)  # (key, value): the Training table's first rows
    use: list[str] = field(default_factory=list)  # lines of a "with transformers alone" section
    note: str = ""  # anything else a user of the run must know, shown under "Use"
    sections: list[str] = field(
        default_factory=list
    )  # lines of sections only runs of its kind have, before "Evaluation"


Describe = Callable[[RunInfo, str], CardParts]  # (the run's description, its name) -> CardParts


def fix_tokenizer_class(directory: Path) -> None:
    """transformers 5 saves `"tokenizer_class": "TokenizersBackend"`, a name transformers 4.x and
    llama.cpp's converter reject; the class it stands for is PreTrainedTokenizerFast."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES:
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        write_atomic(path, json.dumps(config, ensure_ascii=False, indent=2) + "\n")


def record_evaluation(run_dir: Path, metrics: dict, describe: Describe) -> None:
    """Keeps the summary of the last `metatune evaluate` in the run and renders the card again."""
    summary = {
        key: metrics[key]
        for key in ("documents", "parse_failures", "micro", "macro", "fields", "run")
        if key in metrics
    }
    try:
        write_atomic(Path(run_dir) / EVALUATION_FILE, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
        write_card(run_dir, describe)
    except OSError as e:  # a run on read-only storage: the report is written, only the card is not updated
        print(f"warning: {run_dir}: model card not updated: {e.strerror or e}", file=sys.stderr)


def write_card(run_dir: Path, describe: Describe, info: RunInfo | None = None, name: str | None = None) -> None:
    """README.md in `run_dir`; `describe`: the run's CardParts; `name`: the run's name when
    `run_dir` is still its temporary directory."""
    run_dir = Path(run_dir)
    if info is None:
        info = RunInfo.read(run_dir)
    evaluation_path = run_dir / EVALUATION_FILE
    evaluation = json.loads(evaluation_path.read_text(encoding="utf-8")) if evaluation_path.is_file() else None
    name = name or run_dir.name
    write_atomic(run_dir / CARD_FILE, model_card(info, name, describe(info, name), evaluation))


def model_card(info: RunInfo, name: str, parts: CardParts, evaluation: dict | None = None) -> str:
    config = info.config
    data, training, model = config.get("data", {}), config.get("training", {}), config.get("model", {})
    base = info.base_model or "unknown"
    front = {
        "library_name": "transformers",
        "pipeline_tag": parts.pipeline_tag,
        "tags": ["metatune", "metadata-extraction", "bibliographic-metadata"],
    }
    if "/" in base and not Path(base).exists():  # a Hub id, not a local path
        front["base_model"] = base
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"`{base}` fine-tuned with metatune {info.metatune_version} to read the text "
        "of an academic document and write its bibliographic metadata as JSON"
        + (f" ({parts.how})." if parts.how else "."),
        "",
    ]

    lines += ["## Data", ""]
    source = data.get("hub_dataset") or data.get("path") or "unknown"
    stats = info.training
    lines.append(f"* dataset: `{source}`")
    if "train_examples" in stats:
        lines.append(
            f"* training examples: {stats['train_examples']}"
            + (f", validation examples: {stats['validation_examples']}" if "validation_examples" in stats else "")
        )
    for type_name, spec in info.types.items():
        lines.append(f"* `{type_name}`: {', '.join(spec.get('fields', {}))}")
    lines += [f"* {parts.limits or f'input limit {info.limits.max_input_tokens} tokens'}", ""]

    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in parts.settings]
    lines += [f"| `training.{k}` | {training[k]} |" for k in TRAINING_KEYS if k in training]
    lora = model.get("lora") or {}
    if lora.get("enabled"):
        lines.append(f"| `model.lora` | r={lora.get('r')}, alpha={lora.get('alpha')}, merged={lora.get('merge')} |")
    if model.get("load_in_4bit"):
        lines.append("| `model.load_in_4bit` | true |")
    for key in ("train_runtime", "train_loss", "global_step", "steps"):
        if key in stats:
            lines.append(f"| {key} | {stats[key]} |")
    lines.append("")

    lines += parts.sections
    lines += ["## Evaluation", ""]
    if evaluation:
        run = evaluation.get("run", {})
        lines += [
            f"The last `metatune evaluate`: {evaluation.get('documents')} documents of the `{run.get('split')}` "
            f"split of `{run.get('data')}`; {evaluation.get('parse_failures', 0)} outputs unreadable. F1 (%):",
            "",
        ]
        matchings = list(evaluation.get("micro", {}))
        lines += ["| field | " + " | ".join(matchings) + " |", "|---|" + "---:|" * len(matchings)]
        rows = list(evaluation.get("fields", {}).items()) + [
            ("**micro**", evaluation["micro"]),
            ("**macro**", evaluation.get("macro", {})),
        ]
        for field, scores in rows:
            lines.append(
                f"| {field} | "
                + " | ".join(f"{scores[m]['f1'] * 100:.1f}" if m in scores else "" for m in matchings)
                + " |"
            )
        lines.append("")
    else:
        lines += ["Not evaluated yet: `metatune evaluate RUN_DIR --data DATASET` writes its metrics here.", ""]

    lines += [
        "## Use",
        "",
        "With metatune (builds the input exactly as in training, checks the output's schema):",
        "",
        "```bash",
        f"metatune extract {name} tesis.pdf --type Tesis",
        f"metatune serve {name}",
        "```",
        "",
        "```python",
        "from metatune.inference import open_run",
        "",
        f'extractor = open_run("{name}")',
        'result = extractor.extract([text], ["Tesis"])[0]',
        "print(result.data)",
        "```",
        "",
    ]
    if parts.note:
        lines += [parts.note, ""]
    lines += parts.use
    return "\n".join(lines)
