"""The tag objective: label each token of the document with the field it belongs to (BIO), then read
the labelled spans back as the same JSON the generative path writes.

Labels come from aligning each record's values to its text (metatune.alignment); a value that does
not align is left out and counted. One extra position before the document (the tokenizer's BOS, or
EOS when it has none) carries the document type as its label, so type and fields come from one
forward pass. The model reads the document with bidirectional attention (models.read_both_ways: a
causal model that sees only the left context cannot tell that the line starting here is the title). Decoding is Viterbi over valid BIO transitions (no I- without its B-).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metatune.alignment import DATE_FIELDS, Source, Span, align_record, normalise_date
from metatune.encoding import IGNORE_INDEX

OUTSIDE = "O"
TYPE_PREFIX = "TYPE="
CHARS_PER_TOKEN_BOUND = 16  # no tokenizer spends fewer than 1 token per 16 characters of prose
NOT_TAGGED = ("language",)  # not a span of the text: detected (metatune.language), never tagged


@dataclass(frozen=True)
class TagScheme:
    """The fields a run tags and the document types it tells apart, as token labels."""

    fields: tuple[str, ...]
    types: tuple[str, ...]
    lists: tuple[str, ...] = ()  # fields the training data gives as lists (whatever the type table says)
    repeats: bool = False  # the training lists name a value again where the text repeats it

    @property
    def labels(self) -> list[str]:
        spans = [f"{p}-{f}" for f in self.fields for p in ("B", "I")]
        return [OUTSIDE, *spans, *(TYPE_PREFIX + t for t in self.types)]

    @property
    def first_type_label(self) -> int:
        return 1 + 2 * len(self.fields)

    def begin(self, field: str) -> int:
        return 1 + 2 * self.fields.index(field)

    def to_dict(self) -> dict:
        return {
            "fields": list(self.fields),
            "types": list(self.types),
            "lists": list(self.lists),
            "repeats": self.repeats,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> TagScheme:
        return cls(tuple(raw["fields"]), tuple(raw["types"]), tuple(raw.get("lists", ())), raw.get("repeats", False))


def token_offsets(tokenizer, text: str, max_tokens: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of the text's first `max_tokens` tokens.

    The text is cut by characters first (a bound no tokenizer exceeds), so a huge input costs no more
    than the part the model reads.
    """
    text = text[: max_tokens * CHARS_PER_TOKEN_BOUND]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"][:max_tokens], encoded["offset_mapping"][:max_tokens]
    # byte-level tokens carry the space before a word: a token starts at its first visible character
    trimmed = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        trimmed.append((start, end))
    return ids, trimmed


def first_token_id(tokenizer) -> int:
    """The position that carries the document type: BOS, or EOS for tokenizers without one."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def start_with_the_type_position(tokenizer) -> None:
    """Makes a plain tokenizer call (`add_special_tokens=True`, what a transformers pipeline does)
    put the type position first, as metatune's Tagger does, on a fast tokenizer that does not
    already: a token-classification pipeline then reads the run's inputs as the Tagger does."""
    first = first_token_id(tokenizer)
    if tokenizer("x")["input_ids"][:1] == [first] or not hasattr(tokenizer, "backend_tokenizer"):
        return
    from tokenizers import processors

    token = tokenizer.convert_ids_to_tokens(first)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{token} $A", pair=f"{token} $A $B", special_tokens=[(token, first)]
    )


def span_labels(offsets: list[tuple[int, int]], spans: list[tuple[Span, str]], scheme: TagScheme) -> list[int]:
    """BIO label ids for tokens at `offsets`, given (span, field) pairs that do not overlap."""
    labels = [0] * len(offsets)
    for span, field in spans:
        # a token of only whitespace (trimmed to an empty offset) belongs to a span it sits inside: a line
        # break within a title continues the title
        inside = [
            i
            for i, (s, e) in enumerate(offsets)
            if (s < e and s < span.end and e > span.start) or (s == e and span.start < s < span.end)
        ]
        for k, i in enumerate(inside):
            labels[i] = scheme.begin(field) + (0 if k == 0 else 1)
    return labels


def encode_tagged(
    record: dict, text: str, doc_type: str, fields: list[str], scheme: TagScheme, tokenizer, max_input_tokens: int
) -> tuple[dict, dict[str, list[int]]]:
    """Training features for one record, and per field [values, aligned] counts."""
    ids, offsets = token_offsets(tokenizer, text, max_input_tokens - 1)
    tagged = [f for f in fields if f in scheme.fields]
    aligned = align_record(text, record, tagged)
    counts: dict[str, list[int]] = {}
    spans = []
    for (field, _), span in aligned.items():
        c = counts.setdefault(field, [0, 0])
        c[0] += 1
        if span is not None:
            c[1] += 1
            spans.append((span, field))
    labels = [scheme.first_type_label + scheme.types.index(doc_type)] + span_labels(offsets, spans, scheme)
    return {"input_ids": [first_token_id(tokenizer), *ids], "labels": labels}, counts


class TagCollator:
    """Pads a batch on the right (labels with -100). The attention mask covers padding only, and a
    batch with nothing padded (one document, as padding-free training and extraction on CPUs give)
    gets none; which way the model attends is the model's (models.read_both_ways)."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        batch = {
            "input_ids": torch.tensor([f["input_ids"] + [self.pad] * (width - len(f["input_ids"])) for f in features])
        }
        if min(lengths) < width:
            batch["attention_mask"] = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        if "labels" in features[0]:
            batch["labels"] = torch.tensor(
                [f["labels"] + [IGNORE_INDEX] * (width - len(f["labels"])) for f in features]
            )
        return batch


def allowed_transitions(scheme: TagScheme) -> torch.Tensor:
    """(labels, labels) boolean: may label j follow label i? I-x only after B-x or I-x; no type labels."""
    n = len(scheme.labels)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    spans = range(0, scheme.first_type_label)
    for i in spans:
        for j in spans:
            inside = j > 0 and (j - 1) % 2 == 1  # an I- label
            allowed[i, j] = not inside or (i > 0 and (i - 1) // 2 == (j - 1) // 2)
    return allowed


def viterbi(log_probs: torch.Tensor, allowed: torch.Tensor) -> list[int]:
    """The best label sequence under the transition constraints (start: anything but I-)."""
    length, n = log_probs.shape
    if length == 0:
        return []
    forbidden = torch.where(allowed, 0.0, float("-inf"))
    start_ok = allowed[0]  # what may follow O may start a sequence
    score = log_probs[0] + torch.where(start_ok, 0.0, float("-inf"))
    back = torch.empty(length, n, dtype=torch.long)
    for t in range(1, length):
        total = score[:, None] + forbidden  # (from, to)
        score, back[t] = total.max(dim=0)
        score = score + log_probs[t]
    best = [int(score.argmax())]
    for t in range(length - 1, 0, -1):
        best.append(int(back[t, best[-1]]))
    return best[::-1]


def decode(
    logits: torch.Tensor, offsets: list[tuple[int, int]], text: str, scheme: TagScheme, allowed: torch.Tensor
) -> tuple[str, dict[str, list[str]]]:
    """(document type, field -> values in text order) from one document's logits (type position first).

    A value found again is listed again only when the training lists did so (`scheme.repeats`); a
    one-word value that begins another value of the field (a name cut short) is dropped.
    """
    logits = logits.float()
    types = logits[0, scheme.first_type_label :]
    doc_type = scheme.types[int(types.argmax())] if scheme.types else ""
    tokens = torch.log_softmax(logits[1 : 1 + len(offsets), : scheme.first_type_label], dim=-1)
    path = viterbi(tokens, allowed[: scheme.first_type_label, : scheme.first_type_label])
    spans: list[tuple[str, int, int]] = []
    for i, label in enumerate(path):
        if label == 0:
            continue
        field = scheme.fields[(label - 1) // 2]
        start, end = offsets[i]
        if (label - 1) % 2 == 0 or not spans:  # B-
            spans.append((field, start, end))
        else:
            spans[-1] = (field, spans[-1][1], max(end, spans[-1][2]))
    source = Source(text)
    values: dict[str, list[str]] = {}
    for field, start, end in spans:
        # spans start and end on word boundaries, as the aligned labels did: a span that begins or ends
        # inside a word (a sub-word token left out) takes the whole word
        while 0 < start < len(text) and text[start - 1].isalnum() and text[start].isalnum():
            start -= 1
        while end < len(text) and text[end].isalnum() and text[end - 1].isalnum():
            end += 1
        value = source.snippet(Span(start, end))
        if field in DATE_FIELDS:
            value = normalise_date(value) or value
        if value and (scheme.repeats or value not in values.get(field, [])):
            values.setdefault(field, []).append(value)
    for field, found in values.items():
        values[field] = [v for v in found if " " in v or not any(o != v and o.startswith(v + " ") for o in found)]
    return doc_type, values


def to_record(values: dict[str, list[str]], fields: dict[str, str], lists: tuple[str, ...] = ()) -> dict:
    """Field values shaped as the type declares them (or as the training data had them, `lists`): lists
    stay lists, a text field takes its longest span (a stray token labelled B- must not win over the
    whole title)."""
    out = {}
    for field, kind in fields.items():
        if field in values:
            out[field] = values[field] if kind == "array" or field in lists else max(values[field], key=len)
    return out


def tag_loss(outputs, labels, num_items_in_batch=None):
    """Cross-entropy summed over labelled tokens, divided by their count in the whole accumulated batch.

    transformers' own token-classification loss averages each micro-batch, which the Trainer would
    then add up across padding-free micro-batches; this is the `compute_loss_func` of the tag path.
    """
    logits = outputs["logits"]
    labels = labels.to(logits.device)
    loss = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss / (num_items_in_batch if num_items_in_batch is not None else labels.ne(IGNORE_INDEX).sum())
