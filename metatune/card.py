"""A saved run explains itself: its model card (README.md, as the Hugging Face Hub shows it) and
tokenizer files that other tools load.

The card is rendered from metatune.json (base model, data, training settings, prompts) and, once
`metatune evaluate` has run, from the metrics it recorded in the run (evaluation.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from metatune.files import write_atomic
from metatune.run_info import RunInfo

CARD_FILE = "README.md"
EVALUATION_FILE = "evaluation.json"
GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "", None}
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # known to transformers 4.x and 5.x and to llama.cpp's converter

TRAINING_KEYS = (
    "objective",
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
PIPELINES = {"seq2seq": "text2text-generation", "causal": "text-generation"}


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


def record_evaluation(run_dir: Path, metrics: dict) -> None:
    """Keeps the summary of the last `metatune evaluate` in the run and renders the card again."""
    summary = {
        key: metrics[key]
        for key in ("documents", "parse_failures", "repaired", "micro", "macro", "fields", "run")
        if key in metrics
    }
    try:
        write_atomic(Path(run_dir) / EVALUATION_FILE, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
        write_card(run_dir)
    except OSError as e:  # a run on read-only storage: the report is written, only the card is not updated
        print(f"warning: {run_dir}: model card not updated: {e.strerror or e}", file=sys.stderr)


def write_card(run_dir: Path, info: RunInfo | None = None, name: str | None = None) -> None:
    """README.md in `run_dir`; `name`: the run's name when `run_dir` is still its temporary directory."""
    run_dir = Path(run_dir)
    if info is None:
        info = RunInfo.read(run_dir)
    evaluation_path = run_dir / EVALUATION_FILE
    evaluation = json.loads(evaluation_path.read_text(encoding="utf-8")) if evaluation_path.is_file() else None
    write_atomic(run_dir / CARD_FILE, model_card(info, name or run_dir.name, evaluation))


def model_card(info: RunInfo, name: str, evaluation: dict | None = None) -> str:
    config = info.config
    data, training, model = config.get("data", {}), config.get("training", {}), config.get("model", {})
    base = info.base_model or "unknown"
    tagger = info.objective == "tag"
    front = {
        "library_name": "transformers",
        "pipeline_tag": "token-classification" if tagger else PIPELINES.get(info.architecture, "text-generation"),
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
        + (" (by labelling the tokens of the text that hold each value)." if tagger else "."),
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
    limits = info.limits
    lines += [
        f"* input limit {limits.max_input_tokens} tokens (the document is truncated, never the "
        f"instruction), output limit {limits.max_target_tokens} tokens",
        "",
    ]

    lines += ["## Training", "", "| setting | value |", "|---|---|"]
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

    prompts = info.input.prompts
    if prompts:
        lines += [
            "## The prompt",
            "",
            f"Input style `{info.input.style}`. Each type's instruction comes before the "
            "document's text (shown as `{document}`), and the model answers with one JSON object:",
            "",
        ]
        for type_name, parts in prompts.items():
            lines += [f"**{type_name}**", "", "```text", parts["prefix"] + "{document}" + parts["suffix"], "```", ""]

    lines += ["## Evaluation", ""]
    if evaluation:
        run = evaluation.get("run", {})
        lines += [
            f"The last `metatune evaluate`: {evaluation.get('documents')} documents of the `{run.get('split')}` "
            f"split of `{run.get('data')}`; {evaluation.get('parse_failures', 0)} outputs not JSON. F1 (%):",
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

    auto = (
        "AutoModelForTokenClassification"
        if tagger
        else "AutoModelForSeq2SeqLM"
        if info.seq2seq
        else "AutoModelForCausalLM"
    )
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
    if not tagger:
        first = next(iter(prompts.values()), {"prefix": "", "suffix": ""})
        lines += [
            "With transformers alone (the prompt above around the document, greedy decoding):",
            "",
            "```python",
            "import json",
            f"from transformers import {auto}, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            f'model = {auto}.from_pretrained("{name}")',
            f"prefix, suffix = {json.dumps(first['prefix'], ensure_ascii=False)}, {json.dumps(first['suffix'], ensure_ascii=False)}",
            'inputs = tokenizer(prefix + text + suffix, return_tensors="pt")',
            f"output = model.generate(**inputs, max_new_tokens={limits.max_target_tokens})",
            "answer = tokenizer.decode(output[0]"
            + ("" if info.seq2seq else "[inputs.input_ids.shape[1]:]")
            + ", skip_special_tokens=True)",
            "print(json.loads(answer[: answer.rindex('}') + 1]))",
            "```",
            "",
        ]
    return "\n".join(lines)
