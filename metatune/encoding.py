"""Examples to token ids.

Only the document text is truncated. Seq2seq models get `labels`; causal models get
prompt + target + EOS as one sequence with the prompt masked (-100) out of the loss. Nothing is
padded here: the collator pads each batch to its own longest sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from transformers import DataCollatorForSeq2Seq

from metatune.data import record_type
from metatune.doctypes import DocType, TypeRegistry
from metatune.errors import MetatuneError
from metatune.formatting import Example, InputFormat, build_prompts, make_examples
from metatune.run_info import RunInfo

IGNORE_INDEX = -100
# Only this many characters per token of the budget are tokenised at first: far more than any real
# text needs (3-5), so a 50 MB document costs no more than one that just fills the input.
CHARS_PER_TOKEN = 16
MAX_CHARS_PER_TOKEN = 256  # and never more, whatever the text


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int = 2048
    max_target_tokens: int = 512


@lru_cache(maxsize=8)
def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. BOS / EOS)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return [], []


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _first_ids(tokenizer, text: str, budget: int) -> list[int]:
    """The first `budget` tokens of `text`, tokenising only a prefix of it.

    The prefix grows until it yields a few tokens more than the budget (the tokens at a cut may
    differ from those of the whole text), up to MAX_CHARS_PER_TOKEN characters per token.
    """
    size = budget * CHARS_PER_TOKEN
    while True:
        ids = _ids(tokenizer, text[:size])
        if size >= len(text) or len(ids) > budget + 8 or size >= budget * MAX_CHARS_PER_TOKEN:
            return ids[:budget]
        size *= 4


def encode_prompt(example: Example, tokenizer, max_input_tokens: int, seq2seq: bool, chat: bool) -> list[int]:
    """The model's input ids, with the document cut to fit `max_input_tokens`."""
    head, tail = special_tokens(tokenizer)
    if chat:  # the chat template already wrote its own special tokens into prefix and suffix
        head, tail = [], []
    elif not seq2seq:
        tail = []  # a causal model's answer follows the prompt directly
    prefix, suffix = _ids(tokenizer, example.prefix), _ids(tokenizer, example.suffix)
    budget = max_input_tokens - len(head) - len(prefix) - len(suffix) - len(tail)
    if budget <= 0:
        raise MetatuneError(
            f"the instruction for type '{example.doc_type}' alone takes {max_input_tokens - budget} tokens, "
            f"more than data.max_input_tokens={max_input_tokens}"
        )
    document = _first_ids(tokenizer, example.document, budget)
    return head + prefix + document + suffix + tail


def encode_target(example: Example, tokenizer, seq2seq: bool) -> list[int]:
    head, tail = special_tokens(tokenizer)
    ids = _ids(tokenizer, example.target)
    if seq2seq:
        return head + ids + (tail or [tokenizer.eos_token_id])
    return ids + [tokenizer.eos_token_id]


def encode_example(example: Example, tokenizer, limits: Limits, seq2seq: bool, chat: bool) -> dict | None:
    """Training features, or None when the target does not fit `max_target_tokens` (never truncated)."""
    prompt = encode_prompt(example, tokenizer, limits.max_input_tokens, seq2seq, chat)
    target = encode_target(example, tokenizer, seq2seq)
    if len(target) > limits.max_target_tokens:
        return None
    if seq2seq:
        return {"input_ids": prompt, "attention_mask": [1] * len(prompt), "labels": target}
    ids = prompt + target
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * len(prompt) + target}


@dataclass
class PromptEncoder:
    """Records (training) or texts (inference) to model inputs, one way for both: built from the
    data settings when training, from metatune.json when a run extracts."""

    registry: TypeRegistry
    fmt: InputFormat
    prompts: dict[str, dict[str, str]]  # type -> rendered {"prefix", "suffix"}
    tokenizer: object
    limits: Limits
    seq2seq: bool
    chat: bool  # prompts are wrapped in the tokenizer's chat template
    fallback_type: str | None = None

    @classmethod
    def for_training(cls, data, fmt: InputFormat, registry: TypeRegistry, tokenizer, seq2seq: bool) -> PromptEncoder:
        """From config.DataSettings; the prompts are rendered here, once, and saved with the run."""
        chat = data.input_style == "prompt" and data.chat_template and bool(getattr(tokenizer, "chat_template", None))
        prompts = build_prompts(registry, fmt, tokenizer if chat else None)
        return cls(
            registry,
            fmt,
            prompts,
            tokenizer,
            Limits(data.max_input_tokens, data.max_target_tokens),
            seq2seq,
            chat,
            data.fallback_type,
        )

    @classmethod
    def for_run(cls, info: RunInfo, registry: TypeRegistry, tokenizer) -> PromptEncoder:
        spec = info.input
        fmt = InputFormat(
            spec.style,
            spec.include_fields,
            tuple(spec.exclude_fields),
            spec.chat_template,
            spec.anchor_min_words,
            spec.anchor_words,
            spec.prompt_example,
        )
        limits = Limits(info.limits.max_input_tokens, info.limits.max_target_tokens)
        return cls(registry, fmt, spec.prompts, tokenizer, limits, info.seq2seq, spec.chat_template, info.fallback_type)

    def doc_type(self, name: str | None) -> DocType:
        """A record's type, else the fallback type (data.load_dataset has checked that one exists)."""
        return self.registry.find(name) or self.registry.find(self.fallback_type)

    def encode_records(self, records: list[dict], general_examples: bool = False) -> tuple[list[dict], int]:
        """(training features, examples skipped because their target does not fit max_target_tokens)."""
        encoded, skipped = [], 0
        for record in records:
            doc_type = self.doc_type(record_type(record))
            for example in make_examples(record, doc_type, self.registry, self.fmt, self.prompts, general_examples):
                features = encode_example(example, self.tokenizer, self.limits, self.seq2seq, self.chat)
                if features is None:
                    skipped += 1
                else:
                    encoded.append(features)
        return encoded, skipped

    def prompt_ids(self, text: str, doc_type: str) -> list[int]:
        """The input ids of one document of this type, as in training (the document cut to fit)."""
        parts = self.prompts[doc_type]
        example = Example(parts["prefix"], text, parts["suffix"], "", doc_type)
        return encode_prompt(example, self.tokenizer, self.limits.max_input_tokens, self.seq2seq, self.chat)


def global_attention_mask(attention_mask):
    """LED's global attention: 1 on each row's first real token (right or left padding), 0 elsewhere."""
    import torch

    mask = torch.zeros_like(attention_mask)
    mask[torch.arange(mask.shape[0]), attention_mask.argmax(dim=1)] = 1
    return mask


def target_positions(labels):
    """The positions whose next token is a target: the only ones whose logits a causal LM's loss needs.

    A boolean (batch, length) mask, which transformers models take as `logits_to_keep`: they then
    project onto the vocabulary only there (the prompt, often two thirds of the tokens, is masked
    out of the loss anyway), saving that compute and the memory of the prompt's logits.
    """
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


@dataclass
class Collator(DataCollatorForSeq2Seq):
    """DataCollatorForSeq2Seq, plus `global_attention_mask` when the tokenizer lists it as a model input.

    metatune.models.load_base lists it for LED models, which need it in every batch. With
    `target_logits`, batches also carry `logits_to_keep` (see `target_positions`).
    """

    target_logits: bool = False

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        if "global_attention_mask" in self.tokenizer.model_input_names:
            batch["global_attention_mask"] = global_attention_mask(batch["attention_mask"])
        if self.target_logits:
            batch["logits_to_keep"] = target_positions(batch["labels"])
        return batch


def collator(tokenizer, pad_to_multiple_of: int | None = None, target_logits: bool = False) -> Collator:
    """Pads each batch to its longest member; labels are padded with -100."""
    return Collator(
        tokenizer,
        label_pad_token_id=IGNORE_INDEX,
        padding="longest",
        pad_to_multiple_of=pad_to_multiple_of,
        target_logits=target_logits,
    )
