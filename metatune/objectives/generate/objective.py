"""The generate objective's training side: prompt + target examples, the language-model head, the
loss on target tokens, the document-type classifier saved with the run; and its model card."""

from __future__ import annotations

import inspect
import json
import sys

import torch

from metatune.card import CardParts
from metatune.config import Config, ExtractionSettings
from metatune.data import record_type
from metatune.encoding import IGNORE_INDEX, PromptEncoder, collator
from metatune.errors import MetatuneError
from metatune.formatting import InputFormat
from metatune.models import make_greedy, unwritable_characters
from metatune.objectives.base import Objective, describe
from metatune.objectives.generate.type_classifier import FILE as TYPE_CLASSIFIER_FILE
from metatune.objectives.generate.type_classifier import TypeClassifier, accuracy
from metatune.peft_setup import load_trainable
from metatune.run_info import RunInfo
from metatune.training.common import LoopParts, Prepared, TrainerParts

PIPELINES = {"seq2seq": "text2text-generation", "causal": "text-generation"}


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


def loop_parts(tokenizer, seq2seq: bool) -> LoopParts:
    """Causal models predict token t+1 at position t; seq2seq models need `labels` to build their
    decoder inputs and predict them in place."""
    shift = not seq2seq

    def count_targets(batch: dict) -> torch.Tensor:
        labels = batch["labels"][:, 1:] if shift else batch["labels"]
        return labels.ne(IGNORE_INDEX).sum()

    def example_losses(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"} if shift else batch
        logits = model(**inputs, use_cache=False).logits
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        )
        return ce.view(labels.shape).sum(1), labels.ne(IGNORE_INDEX).sum(1)

    return LoopParts(collator(tokenizer), example_losses, count_targets)


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


def load_generator(settings):
    """(model, tokenizer, seq2seq): the base model with its language-model head, ready to train."""
    model, tokenizer, seq2seq = load_trainable(settings)
    if missing := unwritable_characters(tokenizer):
        # Adding them as tokens does not help: T5's pre-tokenizer then puts a space before the text after each.
        print(
            f"warning: the tokenizer of '{settings.name}' cannot write {' '.join(missing)}; "
            "the model will not produce parseable JSON",
            file=sys.stderr,
        )
    if model.config.model_type == "led" and "global_attention_mask" not in tokenizer.model_input_names:
        # encoding.collator reads this and adds global attention on the first token to every batch
        tokenizer.model_input_names = [*tokenizer.model_input_names, "global_attention_mask"]
    return model, tokenizer, seq2seq


class GenerateObjective(Objective):
    name = "generate"
    # anchored targets and the short instruction, as `make quality-generate` trains (docs/tagging.md)
    bench_sets = ("generate.anchor_min_words=20", "generate.prompt_example=false")

    def prepare(self, config: Config, registry, dataset, need_validation: bool) -> Prepared:
        d = config.data
        train_records = dataset.split("training")
        val_records = dataset.split("validation") if need_validation else []
        fmt = InputFormat.from_settings(d, config.generate)
        model, tokenizer, seq2seq = load_generator(config.model)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            make_greedy(generation, d.max_target_tokens, tokenizer.pad_token_id)
        encoder = PromptEncoder.for_training(d, fmt, registry, tokenizer, seq2seq)
        train, skipped_train = encoder.encode_records(train_records, d.general_examples)
        validation, skipped_val = encoder.encode_records(val_records, d.general_examples)
        if not train:
            raise MetatuneError(
                f"{dataset.path}: no training example fits data.max_target_tokens={d.max_target_tokens}"
            )
        if skipped_train or skipped_val:
            print(
                f"Skipped {skipped_train + skipped_val} examples whose target is longer than "
                f"data.max_target_tokens={d.max_target_tokens} (targets are never truncated)"
            )
        stats = {
            "train_examples": len(train),
            "validation_examples": len(validation),
            "train_tokens": sum(len(x["input_ids"]) for x in train),
            "train_target_tokens": sum(sum(1 for t in x["labels"] if t != IGNORE_INDEX) for x in train),
        }
        classifier = fit_type_classifier(
            train_records, dataset.splits.get("validation") or [], registry, d.fallback_type, stats
        )
        info = describe(config, registry, fmt, seq2seq, encoder.chat, encoder.prompts)
        info.type_classifier = TYPE_CLASSIFIER_FILE
        target_logits = target_logits_supported(model, seq2seq)
        trainer = TrainerParts(
            collator(tokenizer, target_logits=target_logits),
            target_only_loss if target_logits else None,
            # transformers' seq2seq losses (T5, LED, BART) ignore `num_items_in_batch`
            mean_loss=seq2seq,
        )
        return Prepared(
            config,
            model,
            tokenizer,
            seq2seq,
            train,
            validation,
            info,
            trainer,
            loop_parts(tokenizer, seq2seq),
            skipped=skipped_train + skipped_val,
            stats=stats,
            files={TYPE_CLASSIFIER_FILE: classifier.save},
        )

    def extractor(self, run_dir, settings: ExtractionSettings, device: str | None = None):
        from metatune.objectives.generate.extractor import Extractor

        return Extractor.from_run(run_dir, settings, device)

    def zero_shot(self, run_dir, settings: ExtractionSettings, device: str | None = None):
        from metatune.objectives.generate.extractor import Extractor

        return Extractor.zero_shot(run_dir, settings, device)

    def type_accuracy(self, run_dir, info: RunInfo, texts: list[str], types: list[str]) -> dict | None:
        if not info.type_classifier:  # runs saved before it had none
            return None
        return accuracy(TypeClassifier.load(run_dir, info.type_classifier), texts, types)

    def card(self, info, name: str) -> CardParts:
        auto = "AutoModelForSeq2SeqLM" if info.seq2seq else "AutoModelForCausalLM"
        first = next(iter(info.input.prompts.values()), {"prefix": "", "suffix": ""})
        use = [
            "With transformers alone (the prompt above around the document, greedy decoding):",
            "",
            "```python",
            "import json",
            f"from transformers import {auto}, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            f'model = {auto}.from_pretrained("{name}")',
            f"prefix, suffix = {json.dumps(first['prefix'], ensure_ascii=False)}, "
            f"{json.dumps(first['suffix'], ensure_ascii=False)}",
            'inputs = tokenizer(prefix + text + suffix, return_tensors="pt")',
            f"output = model.generate(**inputs, max_new_tokens={info.limits.max_target_tokens})",
            "answer = tokenizer.decode(output[0]"
            + ("" if info.seq2seq else "[inputs.input_ids.shape[1]:]")
            + ", skip_special_tokens=True)",
            "print(json.loads(answer[: answer.rindex('}') + 1]))",
            "```",
            "",
        ]
        limits = (
            f"input limit {info.limits.max_input_tokens} tokens (the document is truncated, never the "
            f"instruction), output limit {info.limits.max_target_tokens} tokens"
        )
        return CardParts(
            pipeline_tag=PIPELINES.get(info.architecture, "text-generation"),
            limits=limits,
            use=use,
            sections=prompt_lines(info),
        )


def prompt_lines(info) -> list[str]:
    """The card's "The prompt" section: each type's instruction around the document."""
    if not info.input.prompts:
        return []
    lines = [
        "## The prompt",
        "",
        f"Input style `{info.input.style}`. Each type's instruction comes before the "
        "document's text (shown as `{document}`), and the model answers with one JSON object:",
        "",
    ]
    for type_name, prompt in info.input.prompts.items():
        lines += [f"**{type_name}**", "", "```text", prompt["prefix"] + "{document}" + prompt["suffix"], "```", ""]
    return lines
