"""What both training modes share: data to encoded examples, the model, the run's description."""

from __future__ import annotations

import inspect
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from metatune import __version__
from metatune.config import Config
from metatune.data import load_for_training, record_type
from metatune.encoding import IGNORE_INDEX, PromptEncoder
from metatune.errors import MetatuneError
from metatune.export import check_output
from metatune.formatting import InputFormat
from metatune.peft_setup import load_trainable
from metatune.run_info import InputSpec, RunInfo, TokenLimits
from metatune.tagging import NOT_TAGGED, TagScheme, encode_tagged
from metatune.type_classifier import TypeClassifier, accuracy


@dataclass
class Prepared:
    config: Config
    model: object
    tokenizer: object
    seq2seq: bool
    train: list[dict]
    validation: list[dict]
    info: RunInfo  # what goes into metatune.json
    skipped: int = 0  # examples whose target did not fit max_target_tokens
    stats: dict = field(default_factory=dict)
    type_classifier: TypeClassifier | None = None  # saved with a generate run (type_classifier.json)


def micro_batches(config: Config, seq2seq: bool) -> tuple[int, int]:
    """(examples per forward pass, gradient accumulation steps) for `training.padding_free`.

    Padding-free, each example is its own micro-batch: nothing padded, and no attention mask, so
    attention takes its causal fast path. The optimizer still steps once per
    per_device_train_batch_size x gradient_accumulation_steps examples, on the same loss (summed
    over the target tokens of them all, divided by their count). On CPUs this is faster than padded
    batches; GPUs keep batches, which they run in parallel. Seq2seq losses are per-batch means, so
    seq2seq models keep their batches too.
    """
    t = config.training
    if padding_free(config, seq2seq):
        return 1, t.per_device_train_batch_size * t.gradient_accumulation_steps
    return t.per_device_train_batch_size, t.gradient_accumulation_steps


def padding_free(config: Config, seq2seq: bool) -> bool:
    setting = config.training.padding_free
    return not seq2seq and ((not torch.cuda.is_available()) if setting == "auto" else setting)


def target_logits_supported(model, seq2seq: bool) -> bool:
    """Whether the model can compute logits at target positions only (see encoding.target_positions).

    Causal models of transformers 5 take a boolean `logits_to_keep` mask (`slice_logits_to_keep`);
    seq2seq models compute logits for the decoder's positions only, which are all targets already.
    """
    if seq2seq:
        return False
    import transformers.modeling_utils

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it on
    return hasattr(transformers.modeling_utils, "slice_logits_to_keep") and (
        "logits_to_keep" in inspect.signature(base.forward).parameters
    )


def target_only_loss(outputs, labels, num_items_in_batch=None):
    """The causal LM loss from logits computed at target positions only (`compute_loss_func` of the Trainer).

    Equal to the model's own shifted cross-entropy: the logits arrive flattened, row by row, at the
    positions `target_positions` marked, and the targets are the labels one position later.
    """
    logits = outputs["logits"]
    if logits.dim() != 2:
        raise MetatuneError("the model ignored logits_to_keep; train it with its full logits")
    shifted = labels[:, 1:]
    targets = shifted[shifted != IGNORE_INDEX].to(logits.device)
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else targets.numel())


def work_dir(output: Path) -> Path:
    """Checkpoints and logs live here until the run is complete."""
    return output.with_name(output.name + ".partial")


def start_output(config: Config, resume: bool, overwrite: bool) -> tuple[Path, Path]:
    output = Path(config.training.output_dir)
    check_output(output, overwrite)
    work = work_dir(output)
    if resume:
        if not work.is_dir():
            raise MetatuneError(f"{work}: nothing to resume (no unfinished run for {output})")
    elif work.exists():
        if not overwrite:
            raise MetatuneError(
                f"{work}: an unfinished run is there; pass --resume to continue it or --overwrite to start again"
            )
        shutil.rmtree(work)
    return output, work  # prepare() creates `work` once the data and the model have loaded


def describe(config: Config, registry, fmt: InputFormat, seq2seq: bool, chat: bool, prompts: dict) -> RunInfo:
    """The run's description for metatune.json: how its inputs were built, from what."""
    d = config.data
    return RunInfo(
        metatune_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        base_model=config.model.name,
        architecture="seq2seq" if seq2seq else "causal",
        objective=config.training.objective,
        input=InputSpec(
            style=fmt.style,
            include_fields=fmt.include_fields,
            exclude_fields=list(fmt.exclude_fields),
            chat_template=chat,
            prompts=prompts,
            anchor_min_words=fmt.anchor_min_words,
            anchor_words=fmt.anchor_words,
            prompt_example=fmt.prompt_example,
        ),
        limits=TokenLimits(max_input_tokens=d.max_input_tokens, max_target_tokens=d.max_target_tokens),
        fallback_type=d.fallback_type,
        types=registry.to_dict(),
        config=json.loads(config.model_dump_json()),
    )


def fit_type_classifier(train_records, val_records, registry, fallback_type, stats: dict) -> TypeClassifier:
    """The classifier that picks a document's type (and so its prompt) when extraction is not told it."""

    def types(records):
        return [(registry.find(record_type(r)) or registry.find(fallback_type)).name for r in records]

    classifier = TypeClassifier.fit([r["original_text"] for r in train_records], types(train_records))
    if len(classifier.types) == 1:
        print(f"Type classifier: every training document is {classifier.types[0]!r}, so it always answers that")
    elif val_records:
        result = accuracy(classifier, [r["original_text"] for r in val_records], types(val_records))["overall"]
        stats["type_classifier_validation_accuracy"] = round(result["accuracy"], 4)
        print(
            f"Type classifier ({len(classifier.types)} types): validation accuracy "
            f"{result['correct']}/{result['n']} ({result['accuracy'] * 100:.1f}%)"
        )
    return classifier


def tag_scheme(records, registry, fallback_type, fmt: InputFormat) -> TagScheme:
    """The fields to tag (every field some type of the records is trained on) and the types to tell apart."""
    types = sorted({(registry.find(record_type(r)) or registry.find(fallback_type)).name for r in records})
    fields = dict.fromkeys(f for t in types for f in fmt.fields(registry.types[t]) if f not in NOT_TAGGED)
    lists = tuple(f for f in fields if any(isinstance(r.get(f), list) for r in records))
    repeats = any(len(set(v)) < len(v) for r in records for f in lists if isinstance(v := r.get(f), list))
    return TagScheme(tuple(fields), tuple(types), lists, repeats)


def encode_tag_split(records, registry, fallback_type, fmt, scheme, tokenizer, max_input_tokens, coverage):
    """Token-label features per record; `coverage` (field -> [values, aligned]) is updated."""
    encoded = []
    for record in records:
        doc_type = registry.find(record_type(record)) or registry.find(fallback_type)
        if doc_type.name not in scheme.types:  # a type only the validation split has: nothing to learn from
            continue
        features, counts = encode_tagged(
            record, record["original_text"], doc_type.name, fmt.fields(doc_type), scheme, tokenizer, max_input_tokens
        )
        encoded.append(features)
        for name, (total, aligned) in counts.items():
            c = coverage.setdefault(name, [0, 0])
            c[0] += total
            c[1] += aligned
    return encoded


def prepare_tagging(config: Config, registry, train_records, val_records, fmt: InputFormat):
    """(model, tokenizer, seq2seq, train, validation, description) for training.objective=tag."""
    d = config.data
    if config.training.mode != "trainer":
        raise MetatuneError("training.objective=tag trains with training.mode=trainer")
    scheme = tag_scheme(train_records, registry, d.fallback_type, fmt)
    model, tokenizer, seq2seq = load_trainable(config.model, labels=scheme.labels)
    coverage: dict[str, list[int]] = {}
    args = (registry, d.fallback_type, fmt, scheme, tokenizer, d.max_input_tokens)
    train = encode_tag_split(train_records, *args, coverage)
    validation = encode_tag_split(val_records, *args, {})
    print(
        "Aligned values (training split): "
        + ", ".join(f"{f} {a}/{t}" for f, (t, a) in coverage.items())
        + " (values not found in the text are left unlabelled)"
    )
    description = {
        "scheme": scheme.to_dict(),
        "bidirectional": not seq2seq and config.training.tag_attention == "bidirectional",
        "alignment": {f: {"values": t, "aligned": a} for f, (t, a) in coverage.items()},
        "not_tagged": {"language": "detected from the text (py3langid)"},
    }
    return model, tokenizer, seq2seq, train, validation, description


def prepare(config: Config, need_validation: bool = True) -> Prepared:
    d = config.data
    registry, dataset = load_for_training(d, need_validation)
    path = dataset.path
    train_records = dataset.split("training")
    val_records = dataset.split("validation") if need_validation else []
    fmt = InputFormat.from_settings(d, anchors=config.training.objective == "generate")
    if config.training.objective == "tag":
        model, tokenizer, seq2seq, train, validation, tagging = prepare_tagging(
            config, registry, train_records, val_records, fmt
        )
        info = describe(config, registry, fmt, seq2seq, chat=False, prompts={}).model_copy(update={"tagging": tagging})
        stats = {
            "train_examples": len(train),
            "validation_examples": len(validation),
            "train_tokens": sum(len(x["input_ids"]) for x in train),
            "train_labelled_tokens": sum(sum(1 for t in x["labels"] if t > 0) for x in train),
        }
        work_dir(Path(config.training.output_dir)).mkdir(parents=True, exist_ok=True)
        return Prepared(config, model, tokenizer, seq2seq, train, validation, info, 0, stats)

    model, tokenizer, seq2seq = load_trainable(config.model)
    encoder = PromptEncoder.for_training(d, fmt, registry, tokenizer, seq2seq)
    train, skipped_train = encoder.encode_records(train_records, d.general_examples)
    validation, skipped_val = encoder.encode_records(val_records, d.general_examples)
    if not train:
        raise MetatuneError(f"{path}: no training example fits data.max_target_tokens={d.max_target_tokens}")
    if skipped_train or skipped_val:
        print(
            f"Skipped {skipped_train + skipped_val} examples whose target is longer than "
            f"data.max_target_tokens={d.max_target_tokens} (targets are never truncated)"
        )

    info = describe(config, registry, fmt, seq2seq, encoder.chat, encoder.prompts)
    stats = {
        "train_examples": len(train),
        "validation_examples": len(validation),
        "train_tokens": sum(len(x["input_ids"]) for x in train),
        "train_target_tokens": sum(sum(1 for t in x["labels"] if t != -100) for x in train),
    }
    classifier = fit_type_classifier(
        train_records, dataset.splits.get("validation") or [], registry, d.fallback_type, stats
    )
    # Only now, with every input checked, does anything appear on disk: a mistake leaves nothing behind.
    work_dir(Path(config.training.output_dir)).mkdir(parents=True, exist_ok=True)
    return Prepared(
        config, model, tokenizer, seq2seq, train, validation, info, skipped_train + skipped_val, stats, classifier
    )
