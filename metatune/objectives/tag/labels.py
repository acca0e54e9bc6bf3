"""The tag objective: label each token of the document with the field it belongs to (BIO), then read
the labelled spans back as the same JSON the generative path writes.

Labels come from aligning each record's values to its text (metatune.alignment); a value that does
not align is left out and counted. One extra position before the document (the tokenizer's BOS, or
EOS when it has none) carries the document type as its label, so type and fields come from one
forward pass. The model reads the document with bidirectional attention (models.read_both_ways: a
causal model that sees only the left context cannot tell that the line starting here is the title). Decoding is Viterbi over valid BIO transitions (no I- without its B-).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from metatune.alignment import (
    DATE_FIELDS,
    PERSON_FIELDS,
    WORD,
    Source,
    Span,
    abbreviates,
    align_record,
    fold,
    normalise_date,
)
from metatune.encoding import IGNORE_INDEX
from metatune.objectives.tag.lines import LineHead, line_targets, pack_labels

OUTSIDE = "O"
TYPE_PREFIX = "TYPE="
SURNAME = "~surname"  # suffix of the labels of a name's surname words
CHARS_PER_TOKEN_BOUND = 16  # no tokenizer spends fewer than 1 token per 16 characters of prose
FOOTNOTE_MARKS = re.compile(r"(?<=[^\W\d_])[\d*∗†‡§¶#]+(?:[\s,]*[\d*∗†‡§¶#]+)*[\s,]*$")  # "Smith†", "Pérez1,2"
LEADING_MARKS = re.compile(r"^[\d*∗†‡§¶#,\s]+(?=[^\W\d_])")  # "42 T. Aushev", "2 Ana Ruiz"
NAME_WORD = re.compile(r"[^\W\d_]{2,}")
INITIALS = re.compile(r"(?:[^\W\d_]\.[\s-]*)+")  # "H.", "A. M.", "I.-S."
INITIAL = re.compile(r"[^\W\d_]\.?-?")  # one word of a name that is only an initial: "T.", "T"
# initials are spelled out from the training names alone (no one with that surname) only when at least
# this many training people have exactly those initials and all spell them one way
GIVEN_NAME_MIN_PEOPLE = 10


def person_name(value: str) -> str:
    """A name span without footnote markers before or after it; "" for a span with no word of two
    letters or more (a lone initial is a fragment of a name, not a name)."""
    value = LEADING_MARKS.sub("", FOOTNOTE_MARKS.sub("", value))
    return value if NAME_WORD.search(value) else ""


NOT_TAGGED = ("language",)  # not a span of the text: detected (metatune.language), never tagged


@dataclass(frozen=True)
class TagScheme:
    """The fields a run tags and the document types it tells apart, as token labels.

    Labels, in order: O; B-/I- per tagged field; B-/I- with SURNAME per person field the training data
    writes "Surname, Given" (a name's surname words carry those); one TYPE= label per type; one
    `field=value` label per value of a closed-list field (`classes`), `field=` for no value.

    A date the page writes only inside another field's span (a conference paper's year inside its
    event line) cannot have a span of its own; `date_hosts` names, per date field, the fields whose
    span the training data's dates sit in that way, and the date is read from that span.
    """

    fields: tuple[str, ...]
    types: tuple[str, ...]
    lists: tuple[str, ...] = ()  # fields the training data gives as lists (whatever the type table says)
    repeats: bool = False  # the training lists name a value again where the text repeats it
    surnames: tuple[str, ...] = ()  # person fields whose training values are "Surname, Given"
    classes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # closed-list fields and their training values
    date_form: tuple[str, str] = ("/", "")  # the training dates' separator, and their one precision or ""
    date_hosts: tuple[tuple[str, str], ...] = ()  # (date field, the field whose span holds it) pairs
    one_span: bool = False  # a one-value field's spans with only whitespace between are one (False: runs saved before)
    # the training split's catalogued names with a given name spelled out ("Echeverry, Julieta"), once for each
    # time the split names them: a name the page prints with initials is written as the one of these it
    # abbreviates, as a cataloguer's authority file would have it (runs saved before list each name once)
    names: tuple[str, ...] = ()
    # span fields whose values the page writes short or inflected, and their training values (most
    # frequent first): a tagged "Lic. en Física" is written "Licenciado en Física"
    mapped: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # span fields whose training spans, where the text has line breaks, fill whole lines (a title), each
    # with the longest line such a span covered: a predicted span is widened to its lines' ends
    # over words the model left unlabelled (`whole_lines`)
    whole_lines: tuple[tuple[str, int], ...] = ()
    # span fields whose training spans end a sentence (an abstract): a predicted span that does not is
    # continued to its sentence's end over words the model left unlabelled (`to_sentence_end`)
    sentences: tuple[str, ...] = ()
    # a prose field's two spans (`sentences`) with a short gap of words the model left unlabelled between
    # are one (`bridged`; False: runs saved before)
    bridges: bool = False
    # the pairs of list fields whose items the training split writes side by side on one line with only
    # a separator between; items of other list fields written that way share one field (`one_field_lines`;
    # None: runs saved before)
    mixed_lists: tuple[tuple[str, str], ...] | None = None
    # a prose field's span (`sentences`) that runs past its last sentence end into a line of its own or a
    # few words that end none (a notice, a copyright or the journal's name after an abstract) ends at
    # that sentence end (`without_trailing_notice`; False: runs saved before)
    trailing_notices: bool = False

    @property
    def span_labels(self) -> list[str]:
        spans = [f"{p}-{f}" for f in self.fields for p in ("B", "I")]
        spans += [f"{p}-{f}{SURNAME}" for f in self.surnames for p in ("B", "I")]
        return [OUTSIDE, *spans]

    @property
    def labels(self) -> list[str]:
        classes = [f"{field}={value}" for field, values in self.classes for value in ("", *values)]
        return [*self.span_labels, *(TYPE_PREFIX + t for t in self.types), *classes]

    @property
    def first_type_label(self) -> int:
        return len(self.span_labels)

    def first_class_label(self, field: str) -> int:
        """The label id of `field=` (no value); its values follow in order."""
        at = self.first_type_label + len(self.types)
        for name, values in self.classes:
            if name == field:
                return at
            at += 1 + len(values)
        raise KeyError(field)

    def begin(self, field: str, surname: bool = False) -> int:
        if surname:
            return 1 + 2 * len(self.fields) + 2 * self.surnames.index(field)
        return 1 + 2 * self.fields.index(field)

    def span_label(self, label: int) -> tuple[str, bool, bool]:
        """(field, inside, surname) of a span label id (not O)."""
        k, inside = divmod(label - 1, 2)
        if k < len(self.fields):
            return self.fields[k], bool(inside), False
        return self.surnames[k - len(self.fields)], bool(inside), True

    def to_dict(self) -> dict:
        return {
            "fields": list(self.fields),
            "types": list(self.types),
            "lists": list(self.lists),
            "repeats": self.repeats,
            "surnames": list(self.surnames),
            "classes": {field: list(values) for field, values in self.classes},
            "date_form": list(self.date_form),
            "date_hosts": [list(pair) for pair in self.date_hosts],
            "one_span": self.one_span,
            "names": list(self.names),
            "mapped": {field: list(values) for field, values in self.mapped},
            "whole_lines": dict(self.whole_lines),
            "sentences": list(self.sentences),
            "bridges": self.bridges,
            "mixed_lists": None if self.mixed_lists is None else [list(pair) for pair in self.mixed_lists],
            "trailing_notices": self.trailing_notices,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> TagScheme:
        return cls(
            tuple(raw["fields"]),
            tuple(raw["types"]),
            tuple(raw.get("lists", ())),
            raw.get("repeats", False),
            tuple(raw.get("surnames", ())),
            tuple((field, tuple(values)) for field, values in raw.get("classes", {}).items()),
            tuple(raw.get("date_form", ("/", ""))),
            tuple(tuple(pair) for pair in raw.get("date_hosts", ())),
            raw.get("one_span", False),
            tuple(raw.get("names", ())),
            tuple((field, tuple(values)) for field, values in raw.get("mapped", {}).items()),
            tuple(raw.get("whole_lines", {}).items()),
            tuple(raw.get("sentences", ())),
            raw.get("bridges", False),
            None if raw.get("mixed_lists") is None else tuple(tuple(pair) for pair in raw["mixed_lists"]),
            raw.get("trailing_notices", False),
        )

    def written_as(self, field: str, phrase: str) -> str:
        """A mapped field's tagged phrase as the first (most frequent) training value it abbreviates
        word for word; the phrase itself when none does (a value the training split never had). Lower-case
        words that end the phrase and end no training value ("Doctorado en Ingeniería de", the span run
        on into "de la Facultad") are left out first."""
        values = dict(self.mapped).get(field, ())
        found = Source(phrase).words
        endings = {fold(WORD.findall(v)[-1])[0] for v in values if WORD.findall(v)}
        while len(found) > 1 and found[-1][2].islower() and fold(found[-1][2])[0] not in endings:
            found.pop()
            phrase = phrase[: found[-1][1]]
        words = [w for _, _, w in found]
        for value in values:
            wanted = WORD.findall(value)
            if len(wanted) == len(words) and all(abbreviates(w, v) for w, v in zip(words, wanted)):
                return value
        return phrase

    @cached_property
    def _names_by_surname(self) -> dict[str, list[tuple[str, str]]]:
        index: dict[str, list[tuple[str, str]]] = {}
        for name in self.names:
            surname, given = name.split(", ", 1)
            index.setdefault(fold(surname)[0], []).append((initials(given), name))
        return index

    def known_name(self, name: str) -> str:
        """`name` ("Echeverry, J.", "J. Echeverry") written as the one training name it abbreviates
        (same surname, given names that begin with those initials: "Echeverry, Julieta"); of several, those
        with exactly those initials (a page that prints initials prints one per given name), and of those the
        one the training split names most often, when no other is named as often. When no training
        name has its surname and initials, its initials are spelled out only where the training split spells
        them one way for every one of at least GIVEN_NAME_MIN_PEOPLE people ("Olmedo, T." -> "Olmedo, Tomás").
        Unchanged when its given names are spelled out, or when no training name fits or several fit equally."""
        words = re.findall(r"[^\W\d_]+", name.replace(", ", " "))
        if not self.names or not words:
            return name
        given = [w for w in words if len(w) == 1]
        surname = [w for w in words if len(w) > 1]
        if not given or not surname:
            return name
        letters = fold("".join(given))[0]
        known = self._names_by_surname.get(fold(" ".join(surname))[0], [])
        fits = Counter(n for i, n in known if i.startswith(letters))
        exact = Counter(n for i, n in known if i == letters)  # "J." is Julieta before Juan Pablo ("J. P.")
        ranked = (exact or fits).most_common(2)
        if len(ranked) == 1 or (ranked and ranked[0][1] > ranked[1][1]):
            return ranked[0][0]
        if not fits and (spelled := self._one_spelling.get(letters)):
            written = (
                name.split(", ", 1)[0]
                if ", " in name
                else " ".join(t for t in name.split() if not INITIAL.fullmatch(t))
            )
            return f"{written}, {spelled}"
        return name

    @cached_property
    def particles(self) -> tuple[tuple[str, ...], ...]:
        """The lower-case words that begin at least two training surnames (("de", "la"), ("del",)), longest
        first: the words a surname can begin with that the model may leave outside a name's span."""
        seen: Counter = Counter()
        for name in set(self.names):
            words = name.split(", ", 1)[0].split()
            lead = tuple(itertools.takewhile(str.islower, words))
            if lead and len(lead) < len(words):
                seen[lead] += 1
        return tuple(sorted((p for p, n in seen.items() if n >= 2), key=lambda p: (-len(p), p)))

    @cached_property
    def _one_spelling(self) -> dict[str, str]:
        """Initials ("t") that every training name with exactly those initials spells one way ("Tomás"),
        over at least GIVEN_NAME_MIN_PEOPLE distinct names."""
        spellings: dict[str, Counter] = {}
        for name in set(self.names):
            given = name.split(", ", 1)[1]
            spellings.setdefault(initials(given), Counter())[given] += 1
        return {
            letters: next(iter(seen))
            for letters, seen in spellings.items()
            if len(seen) == 1 and sum(seen.values()) >= GIVEN_NAME_MIN_PEOPLE
        }


def initials(given: str) -> str:
    """The folded first letters of a given name's words ("María Laura" -> "ml")."""
    return fold("".join(w[0] for w in re.findall(r"[^\W\d_]+", given)))[0]


def spelled_out(name: str) -> bool:
    """A catalogued name "Surname, Given" whose given names include a whole word, not only initials."""
    surname, comma, given = name.partition(", ")
    return bool(comma and surname.strip() and re.search(r"[^\W\d_]{2,}", given))


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


def window_stride(size: int) -> int:
    """Windows of `size` tokens start this far apart: each overlaps the next by a quarter."""
    return max(1, size - size // 4)


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Where the windows over a text of `length` tokens start: every `stride` tokens, the last one
    ending with the text."""
    if length <= size:
        return [0]
    return [*range(0, length - size, stride), length - size]


def stitch_windows(windows: dict[int, torch.Tensor], length: int, size: int) -> torch.Tensor:
    """One document's logits from its windows' (start -> rows: type position, the window's text
    tokens, the closed-list prompts): each text token's row from the window in which it has the most
    context on both sides, so a span that crosses a window edge is read where it is whole; the type
    and the closed-list fields from the first window."""
    first = windows[0]
    tail = first.shape[0] - 1 - min(length, size)  # the closed-list prompts' rows
    rows = [first[0]]
    for t in range(length):
        start = max((s for s in windows if s <= t < s + size), key=lambda s: min(t - s, s + size - 1 - t))
        rows.append(windows[start][1 + t - start])
    return torch.stack(rows + list(first[first.shape[0] - tail :]) if tail else rows)


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


def surname_within(text: str, span: Span, value: str) -> Span | None:
    """Where the surname of a catalogued name ("Surname, Given") sits inside its aligned `span`."""
    surname, comma, given = value.partition(",")
    if not comma or not given.strip():
        return None
    found = Source(text[span.start : span.end]).occurrences(surname.strip())
    return Span(span.start + found[0].start, span.start + found[0].end) if found else None


def bio_labels(
    offsets: list[tuple[int, int]], spans: list[tuple[Span, str, Span | None]], scheme: TagScheme
) -> list[int]:
    """BIO label ids for tokens at `offsets`, given (span, field, its surname or None) that do not overlap."""
    labels = [0] * len(offsets)
    for span, field, surname in spans:
        # a token of only whitespace (trimmed to an empty offset) belongs to a span it sits inside: a line
        # break within a title continues the title
        inside = [
            i
            for i, (s, e) in enumerate(offsets)
            if (s < e and s < span.end and e > span.start) or (s == e and span.start < s < span.end)
        ]
        for k, i in enumerate(inside):
            s, e = offsets[i]
            in_surname = surname is not None and s < e and s < surname.end and e > surname.start
            labels[i] = scheme.begin(field, in_surname) + (0 if k == 0 else 1)
    return labels


def class_prompts(tokenizer, scheme: TagScheme) -> list[list[int]]:
    """The tokens read after the document for each closed-list field ("\\nrights:"); the last one carries
    the field's value label."""
    return [tokenizer(f"\n{field}:", add_special_tokens=False)["input_ids"] for field, _ in scheme.classes]


def filler_id(tokenizer) -> int:
    """The token read after the text by a run with delayed labels (`tag.label_delay`)."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id


def tagger_input(tokenizer, ids: list[int], prompts: list[list[int]] = (), delay: int = 0) -> list[int]:
    """The model's input for a text's tokens, in training as at extraction: the type position, the
    text, `delay` fillers (`tag.label_delay`), each closed-list field's prompt."""
    after = [t for prompt in prompts for t in prompt]
    return [first_token_id(tokenizer), *ids, *[filler_id(tokenizer)] * delay, *after]


def encode_tagged(
    record: dict,
    text: str,
    doc_type: str,
    fields: list[str],
    scheme: TagScheme,
    tokenizer,
    max_input_tokens: int,
    prompts: list[list[int]] = (),
    delay: int = 0,
    line_starts: list[int] | None = None,
) -> tuple[dict, dict[str, list[int]]]:
    """Training features for one record, and per field [values, aligned] counts. With a `delay` of k,
    each text token's label sits k positions later (k filler tokens follow the text): a model that
    reads forward sees k tokens past the token it labels. `line_starts` (character offsets where the
    lines of the page started, for a copy without line breaks) adds each text token's line target
    (`lines`: 1 where a line starts in it, 0 where none does, -1 for the other positions)."""
    ids, offsets = token_offsets(tokenizer, text, max_input_tokens - 1 - delay - sum(map(len, prompts)))
    tagged = [f for f in fields if f in scheme.fields]
    aligned = align_record(text, record, tagged, abbreviated=tuple(f for f, _ in scheme.mapped))
    counts: dict[str, list[int]] = {}
    spans = []
    for (field, i), span in aligned.items():
        c = counts.setdefault(field, [0, 0])
        c[0] += 1
        if span is not None:
            c[1] += 1
            value = record[field][i] if isinstance(record[field], list) else record[field]
            spans.append((span, field, surname_within(text, span, value) if field in scheme.surnames else None))
    type_label = scheme.first_type_label + scheme.types.index(doc_type)
    labels = [type_label] + [IGNORE_INDEX] * delay + bio_labels(offsets, spans, scheme)
    for (field, values), prompt in zip(scheme.classes, prompts):
        value = record.get(field)
        known = field in fields and (value in values or not value)  # a value only validation has: no label
        label = scheme.first_class_label(field) + (values.index(value) + 1 if value else 0) if known else IGNORE_INDEX
        labels += [IGNORE_INDEX] * (len(prompt) - 1) + [label]
    features = {"input_ids": tagger_input(tokenizer, ids, prompts, delay), "labels": labels}
    if line_starts is not None:
        text_from = 1 + delay
        features["lines"] = [-1] * text_from + line_targets(offsets, line_starts)
        features["lines"] += [-1] * (len(labels) - len(features["lines"]))
    return features, counts


class TagCollator:
    """Pads a batch on the right (labels with -100). The attention mask covers padding only, and a
    batch with nothing padded (one document, as padding-free training and extraction on CPUs give)
    gets none; which way the model attends is the model's (models.read_both_ways). With a
    `label_count`, features' line targets (`lines`, tag.line_starts) are packed into the labels
    (metatune.objectives.tag.lines)."""

    def __init__(self, pad_token_id: int, label_count: int = 0):
        self.pad = pad_token_id
        self.label_count = label_count

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
            if self.label_count and any("lines" in f for f in features):
                lines = [f.get("lines", []) for f in features]
                targets = torch.tensor([t + [-1] * (width - len(t)) for t in lines])
                batch["labels"] = pack_labels(batch["labels"], targets, self.label_count)
        return batch


def allowed_transitions(scheme: TagScheme) -> torch.Tensor:
    """(span labels, span labels) boolean: may label j follow label i? An I- label only after a B- or
    I- label of its field (surname or not); type and class labels are not part of the sequence."""
    n = scheme.first_type_label
    allowed = torch.ones(n, n, dtype=torch.bool)
    for j in range(1, n):
        field, inside, _ = scheme.span_label(j)
        if inside:
            for i in range(n):
                allowed[i, j] = i > 0 and scheme.span_label(i)[0] == field
    return allowed


def transition_counts(features: list[dict], scheme: TagScheme) -> list[list[int]]:
    """How often each span label follows each other in the training documents (the start of a
    document counts as following O)."""
    n = scheme.first_type_label
    counts = [[0] * n for _ in range(n)]
    for feature in features:
        previous = 0
        for label in feature["labels"]:
            if 0 <= label < n:  # the text's tokens (the type and class positions have other labels)
                counts[previous][label] += 1
                previous = label
    return counts


def learned_transitions(counts: list[list[int]], allowed: torch.Tensor, scores: bool = True) -> torch.Tensor:
    """Transition scores from the training labels: a transition they never show is forbidden; with
    `scores`, the others add their log-frequency (label j after label i), else 0. A label never seen
    keeps the allowed transitions."""
    counts = torch.tensor(counts, dtype=torch.float)
    seen = counts.sum(1, keepdim=True) > 0
    frequency = (counts / counts.sum(1, keepdim=True).clamp(min=1)).log() if scores else torch.zeros_like(counts)
    learned = torch.where(counts > 0, frequency, float("-inf"))
    return torch.where(seen, learned, torch.where(allowed, 0.0, float("-inf")))


def viterbi(log_probs: torch.Tensor, transitions: torch.Tensor) -> list[int]:
    """The best label sequence: `transitions` is a boolean matrix of allowed label pairs, or a matrix of
    scores added for each pair (-inf: forbidden); the sequence starts as if after O."""
    length, n = log_probs.shape
    if length == 0:
        return []
    if transitions.dtype == torch.bool:
        transitions = torch.where(transitions, 0.0, float("-inf"))
    # NumPy: ~500 small steps per header cost 4.7 ms as PyTorch operations, 1.3 ms here (same paths)
    log_probs, transitions = (x.detach().float().cpu().numpy() for x in (log_probs, transitions))
    labels = np.arange(n)
    score = log_probs[0] + transitions[0]
    back = np.empty((length, n), dtype=np.int64)
    for t in range(1, length):
        total = score[:, None] + transitions  # (from, to)
        back[t] = total.argmax(axis=0)  # the first of equal scores, as torch.max picks
        score = total[back[t], labels] + log_probs[t]
    best = [int(score.argmax())]
    for t in range(length - 1, 0, -1):
        best.append(int(back[t, best[-1]]))
    return best[::-1]


PRECISIONS = ("year", "month", "day")


def date_in_form(normalised: str, form: tuple[str, str]) -> str:
    """A yyyy/mm/dd (or shorter) date written with the training dates' separator, cut to their precision."""
    separator, precision = form
    parts = normalised.split("/")
    if precision:
        parts = parts[: PRECISIONS.index(precision) + 1]
    return separator.join(parts)


def name_words(text: str, span: Span) -> list[tuple[int, str]]:
    """The words of a name span as written, each with the offset of its first letter within the span."""
    return [
        (m.start() + next((k for k, c in enumerate(m[0]) if c.isalnum()), 0), m[0])
        for m in re.finditer(r"\S+", text[span.start : span.end])
    ]


def catalogue_name(text: str, span: Span, surname: list[tuple[int, int]], particles=()) -> str:
    """A name span written "Surname, Given". A page that writes it that way already ("Pérez Esquivel,
    Julieta": one comma, words on both sides) is read by its comma; otherwise the words whose first
    letter lies in a token labelled surname, with the training surnames' particles written right before
    them ("de la"), then the others; the page's text when none or all of its words are surname words."""
    words = name_words(text, span)
    commas = [k for k, (_, w) in enumerate(words) if w.endswith(",")]
    if len(commas) == 1 and commas[0] < len(words) - 1:
        is_surname = [k <= commas[0] for k in range(len(words))]
    else:
        is_surname = [any(s <= span.start + at < e for s, e in surname) for at, _ in words]
        first = is_surname.index(True) if True in is_surname else 0
        for particle in particles:
            if first >= len(particle) and tuple(w for _, w in words[first - len(particle) : first]) == particle:
                is_surname[first - len(particle) : first] = [True] * len(particle)
                break
    family = [w.strip(",;") for (_, w), sur in zip(words, is_surname) if sur and w.strip(",;")]
    given = [w.strip(",;") for (_, w), sur in zip(words, is_surname) if not sur and w.strip(",;")]
    if not family or not given:
        return " ".join(text[span.start : span.end].split())
    return f"{' '.join(family)}, {' '.join(given)}"


def with_particle(text: str, start: int, particles) -> int:
    """The start of a name span that begins at its surname, moved back over a surname particle written
    right before it on its line ("Autor: de la| Fuente, Julieta")."""
    first = len(text) - len(text[start:].lstrip(" \t")) if text[start:].strip() else start
    for particle in particles:
        pattern = r"(?<![^\W\d_])" + r"[ \t]+".join(map(re.escape, particle)) + r"[ \t]+\Z"
        if match := re.compile(pattern).search(text, max(0, first - 40), first):
            return match.start()
    return start


def bridged(spans: list[tuple], text: str, fields: tuple[str, ...]) -> list[tuple]:
    """A span of a prose field (`fields`: those whose training spans end a sentence) that holds a
    sentence end but stops inside a sentence, followed by another span of the same field that holds
    one too, no other field's span between and fewer characters between than either span holds,
    continues into it: an abstract whose citation the model left unlabelled ("... by Gittins" |
    "Gittins & Jones, " | "1974]. Gittins' approach ...") is one abstract, not its longest piece. A
    running head (no sentence end) or a cited title that ends its sentence stays apart."""
    joined: list[tuple] = []
    for span in spans:
        field, start, end, surname = span
        before = joined[-1] if joined else None
        if (
            before
            and before[0] == field
            and field in fields
            and start - before[2] < min(end - start, before[2] - before[1])
            and SENTENCE_END.search(text, before[1], before[2])
            and not ends_a_sentence(text[before[1] : before[2]])
            and SENTENCE_END.search(text, start, end)
        ):
            joined[-1] = (field, before[1], end, before[3] + surname)
        else:
            joined.append(span)
    return joined


LIST_SEPARATOR = re.compile(r"[ \t]*[;,][ \t]*")  # between two items of a list written on one line


def side_by_side(text: str, before: tuple, after: tuple) -> bool:
    """Whether two spans (field, start, end, ...) have only a list separator between them on one line."""
    return LIST_SEPARATOR.fullmatch(text[before[2] : after[1]]) is not None


def list_neighbours(text: str, spans) -> list[tuple[str, str]]:
    """The fields of each two spans (in text order) with only a list separator between them on one line."""
    return [(a[0], b[0]) for a, b in zip(spans, spans[1:]) if side_by_side(text, a, b)]


def one_field_lines(spans: list[tuple], text: str, lists: tuple[str, ...], mixed, score) -> list[tuple]:
    """Items of a list written on one line with only separators between ("Director: Benavídez,
    Florencia; Echeverry, Micaela") that the model gave two list fields share one field, where the
    training split never writes items of those two fields side by side that way (`mixed`, sorted
    pairs): the one under which the items' tokens are most likely (`score(field, start, end)`, the
    summed log-probability of the field's labels)."""
    runs: list[list[tuple]] = []
    for span in spans:
        before = runs[-1][-1] if runs else None
        if (
            before
            and before[0] in lists
            and span[0] in lists
            and tuple(sorted((before[0], span[0]))) not in mixed
            and side_by_side(text, before, span)
        ):
            runs[-1].append(span)
        else:
            runs.append([span])
    out: list[tuple] = []
    for run in runs:
        fields = {span[0] for span in run}
        if len(fields) > 1:
            best = max(sorted(fields), key=lambda f: sum(score(f, span[1], span[2]) for span in run))
            run = [(best, *span[1:]) for span in run]
        out.extend(run)
    return out


def joined_at_commas(spans: list[tuple], text: str, fields: tuple[str, ...]) -> list[tuple]:
    """A name the page writes "Surname, Given" that the model split at its comma ("Pérez Esquivel" |
    "Julieta"): a span of a catalogued person field with no surname word of its own (no word whose first
    letter lies in a surname token), right after a span of the same field with only a comma between on
    one line, continues that span."""
    joined: list[tuple] = []
    for span in spans:
        field, start, end, surname = span
        before = joined[-1] if joined else None
        if (
            before
            and field in fields
            and not any(s <= start + at < e for at, _ in name_words(text, Span(start, end)) for s, e in surname)
            and before[0] == field
            and "," not in text[before[1] : before[2]]
            and re.fullmatch(r"[ \t]*,[ \t]*", text[before[2] : start])
        ):
            joined[-1] = (field, before[1], span[2], before[3])
        else:
            joined.append(span)
    return joined


_HYPHEN_BEFORE = re.compile(r"(?<![^\W\d_])[^\W\d_A-Z]+-[ \t]*\n[ \t]*$")  # a whole lower-case piece
_HYPHEN_AFTER = re.compile(r"-?[ \t]*\n[ \t]*[^\W\d_]+")
# the rest of a hyphenated word after a span that ends at one of its hyphens ("Fon-" + "Der-Flaass"), or
# the word after a line-end hyphen in text without line breaks ("Carrasco-" + " Casado")
_WORD_AFTER = re.compile(r"[ \t]*[^\W\d_]+(?:-[^\W\d_]+)*")


_LETTERS = re.compile(r"[^\W\d_]*")


def whole_words(text: str, start: int, end: int, name: bool = False) -> tuple[int, int]:
    """The span widened to whole words, as the aligned labels were: a span that begins or ends inside a
    word (a sub-word token left out) takes the whole word, and a word broken by a line-end hyphen
    ("regu-\\nlation", lower case on both sides when the span starts after the break) is one word;
    a span that ends at a hyphen glued to its word takes the rest of the word, or the next word where
    the line break became a space.
    In a name, digits glued to it ("Pérez1") are a footnote marker; before a span that begins at a
    capital letter, a number or a lower-case word glued to its first word ("1373High-Bandwidth",
    "190A Neural Net", "manuscriptDesign": a page number, a stamp's date or a stamp's last word that a
    PDF tool ran into the line) stays out, unless digits follow the letters too (a code: "05B20");
    a capital after a capital and lower case ("McDonald") is inside one word."""
    glued = start
    while 0 < glued and text[glued - 1].isdigit():
        glued -= 1
    if glued == start:
        while 0 < glued and text[glued - 1].islower():
            glued -= 1
    rest = _LETTERS.match(text, start)[0]  # the letters from the span's start on
    glued_word = (
        glued < start < len(text)
        and text[start].isupper()
        and not text[glued - 1 : glued].isalnum()
        and not text[start + len(rest) : start + len(rest) + 1].isdigit()  # a code such as "05B20" is one word
    )
    while not glued_word and 0 < start < len(text) and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    # only a lower-case piece before a lower-case one: "Abstract-\nWe" and "Keywords-\nrobots" are a label
    # and its value, which the model rightly splits
    if start < len(text) and text[start].islower() and (m := _HYPHEN_BEFORE.search(text, max(0, start - 80), start)):
        start = m.start()
    while end < len(text) and text[end].isalnum() and text[end - 1].isalnum():
        if name and text[end].isdigit() and text[end - 1].isalpha():
            break
        end += 1
    ends_a_word = end > 1 and (text[end - 1].isalpha() or (text[end - 1] == "-" and text[end - 2].isalpha()))
    if ends_a_word and (m := _HYPHEN_AFTER.match(text, end)) and (text[end - 1] == "-" or m[0].startswith("-")):
        end = m.end()
    elif ends_a_word and text[end - 1] == "-" and (m := _WORD_AFTER.match(text, end)):
        end = m.end()
    return start, end


def line_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """The start of the line where `start` is and the end of the line where `end` is."""
    line_end = text.find("\n", end)
    return text.rfind("\n", 0, start) + 1, len(text) if line_end < 0 else line_end


def on_whole_lines(text: str, start: int, end: int) -> bool:
    """Whether the span begins its line and ends its line (whitespace aside)."""
    first, last = line_bounds(text, start, end)
    return not text[first:start].strip() and not text[end:last].strip()


def whole_lines(text: str, start: int, end: int, longest: int, others: list[tuple[int, int]]) -> tuple[int, int]:
    """The span widened to the start of its first line and the end of its last, when the words added
    carry no other span and its first and last lines are no longer than `longest` (text without line
    breaks is one long line: left as it is)."""
    first, last = line_bounds(text, start, end)
    head_line = text[first : text.find("\n", first) if "\n" in text[first:end] else last]
    tail_line = text[max(text.rfind("\n", first, end) + 1, first) : last]
    if max(len(head_line), len(tail_line)) > longest:
        return start, end
    if any(s < start and e > first or s < last and e > end for s, e in others):
        return start, end
    first += len(text[first:start]) - len(text[first:start].lstrip())
    last -= len(text[end:last]) - len(text[end:last].rstrip())
    return min(first, start), max(last, end)


SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
SENTENCE_MAX_CHARS = 400  # the farthest a span is continued to reach its sentence's end
# the longest words after an abstract's last sentence end taken for a notice (about a printed line)
# where the text has no line breaks to tell
NOTICE_MAX_CHARS = 80


def ends_a_sentence(value: str) -> bool:
    return value.rstrip()[-1:] in (".", "!", "?")


def to_sentence_end(text: str, start: int, end: int, others: list[tuple[int, int]]) -> tuple[int, int]:
    """The span continued to the end of its sentence on its line, when it does not end one and the
    words added carry no other span (within SENTENCE_MAX_CHARS). In text with line breaks a
    whole-lines field has already taken the rest of its line, so this continues spans in text without
    them (`... can be requested` + ` via email.`)."""
    found = SENTENCE_END.search(text, end, end + SENTENCE_MAX_CHARS + 1)  # the scan goes no farther
    if ends_a_sentence(text[start:end]) or not found:
        return start, end
    stop = found.end()
    if "\n" in text[end:stop] or stop - end > SENTENCE_MAX_CHARS or any(s < stop and e > end for s, e in others):
        return start, end
    return start, stop


def without_trailing_notice(text: str, start: int, end: int) -> tuple[int, int]:
    """The span cut back to its last sentence end when it does not end a sentence and all it holds after
    that end is one line of its own ("... the DINA code.\n(Some figures in this article are in colour
    only)") or, in a span without line breaks, at most NOTICE_MAX_CHARS ("... the DINA code. The
    Oncologist 2011;16:1292"): a notice, a copyright or the journal's name after an abstract."""
    if ends_a_sentence(text[start:end]):
        return start, end
    ends = [found.end() for found in SENTENCE_END.finditer(text, start, end)]
    if not ends:
        return start, end
    tail = text[ends[-1] : end]
    before, line_break, rest = tail.partition("\n")
    own_line = line_break and not before.strip() and "\n" not in rest.strip()
    short = "\n" not in text[start:end] and len(tail.strip()) <= NOTICE_MAX_CHARS
    return (start, ends[-1]) if own_line or short else (start, end)


def field_scorer(log_probs: torch.Tensor, offsets: list[tuple[int, int]], scheme: TagScheme):
    """score(field, start, end): the summed log-probability that the tokens inside the characters
    start..end belong to `field` (any of its B-/I- labels, surname ones included)."""
    probs = log_probs.exp()
    starts = [s for s, _ in offsets]

    def score(field: str, start: int, end: int) -> float:
        ids = [scheme.begin(field), scheme.begin(field) + 1]
        if field in scheme.surnames:
            ids += [scheme.begin(field, True), scheme.begin(field, True) + 1]
        first, last = bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)
        return float(probs[first:last, ids].sum(-1).clamp_min(1e-12).log().sum())

    return score


def decode(
    logits: torch.Tensor,
    offsets: list[tuple[int, int]],
    text: str,
    scheme: TagScheme,
    transitions: torch.Tensor,
    prompt_lengths: list[int] = (),
) -> tuple[str, dict[str, list[str]]]:
    """(document type, field -> values in text order) from one document's logits (type position first,
    then the text's tokens, then each closed-list field's prompt of `prompt_lengths` tokens).

    With `scheme.one_span`, a field the training data gives one value (not a list) has one span: a
    span of it that begins right after its own, only whitespace between, continues it. A value
    found again is listed again only when the training lists did so (`scheme.repeats`); a one-word
    value that begins another value of the field (a name cut short) is dropped. A date field with
    no span takes the first date written in its host's span (`scheme.date_hosts`). A span of a field
    whose training spans fill whole lines takes the rest of its lines (`scheme.whole_lines`), and one
    of a field whose training spans end a sentence the rest of its sentence (`scheme.sentences`) and, with
    `scheme.trailing_notices`, no notice after its last sentence end (`without_trailing_notice`). With
    `scheme.bridges`, a prose field's spans with a short unlabelled gap between are one (`bridged`).
    """
    logits = logits.float()
    types = logits[0, scheme.first_type_label : scheme.first_type_label + len(scheme.types)]
    doc_type = scheme.types[int(types.argmax())] if scheme.types else ""
    tokens = torch.log_softmax(logits[1 : 1 + len(offsets), : scheme.first_type_label], dim=-1)
    path = viterbi(tokens, transitions)
    spans: list[tuple[str, int, int, list]] = []  # field, start, end, the character ranges of surname tokens
    for i, label in enumerate(path):
        if label == 0:
            continue
        field, inside, surname = scheme.span_label(label)
        start, end = offsets[i]
        # a field with one value has one span: a B- right after its own span, only whitespace between
        # (a title broken across lines), continues it
        resumes = scheme.one_span and spans and spans[-1][0] == field and field not in scheme.lists
        # initials alone ("H.") right before a name of their field begin that name ("H. Aihara"), even
        # where the model began the name again at its surname
        before = text[spans[-1][1] : spans[-1][2]].strip() if spans and spans[-1][0] == field else ""
        resumes = resumes or bool(field in PERSON_FIELDS and INITIALS.fullmatch(before) and before[0].isupper())
        resumes = resumes and not text[spans[-1][2] : start].strip()
        if not (inside or resumes) or not spans:
            spans.append((field, start, end, []))
        else:
            spans[-1] = (field, spans[-1][1], max(end, spans[-1][2]), spans[-1][3])
        if surname:
            spans[-1][3].append((start, end))
    if scheme.bridges:
        spans = bridged(spans, text, scheme.sentences)
    if scheme.mixed_lists is not None:
        spans = one_field_lines(
            spans, text, scheme.lists, set(scheme.mixed_lists), field_scorer(tokens, offsets, scheme)
        )
    spans = joined_at_commas(spans, text, scheme.surnames)
    source = Source(text)
    mapped, lines = dict(scheme.mapped), dict(scheme.whole_lines)
    values: dict[str, list[str]] = {}
    for k, (field, start, end, surname) in enumerate(spans):
        start, end = whole_words(text, start, end, field in PERSON_FIELDS)
        if field in lines or field in scheme.sentences:
            others = [(s, e) for j, (_, s, e, _) in enumerate(spans) if j != k]
            if field in lines:
                start, end = whole_lines(text, start, end, lines[field], others)
            if field in scheme.sentences:
                start, end = to_sentence_end(text, start, end, others)
                if scheme.trailing_notices:
                    start, end = without_trailing_notice(text, start, end)
        value = source.snippet(Span(start, end))
        if field in scheme.surnames:
            if any(s <= start < e for s, e in surname):  # written surname first: "de la| Fuente, Julieta"
                begins = with_particle(text, start, scheme.particles)
                surname, start = [*surname, (begins, start)], begins
            value = scheme.known_name(catalogue_name(text, Span(start, end), surname, scheme.particles))
        if field in PERSON_FIELDS:
            value = person_name(value)
        if value and field in mapped:
            value = scheme.written_as(field, value)
        if field in DATE_FIELDS and (normalised := normalise_date(value)):
            value = date_in_form(normalised, scheme.date_form)
        if value and (scheme.repeats or value not in values.get(field, [])):
            values.setdefault(field, []).append(value)
    for field, found in values.items():
        values[field] = [v for v in found if " " in v or not any(o != v and o.startswith(v + " ") for o in found)]
    for field, host in scheme.date_hosts:
        inside = [d for v in values.get(host, []) if (d := normalise_date(v))]
        if field not in values and inside:
            values[field] = [date_in_form(inside[0], scheme.date_form)]
    at = 1 + len(offsets)
    for (field, choices), length in zip(scheme.classes, prompt_lengths):
        at += length
        first = scheme.first_class_label(field)
        if k := int(logits[at - 1, first : first + 1 + len(choices)].argmax()):
            values[field] = [choices[k - 1]]
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


def label_weight_table(
    scheme: TagScheme, class_weight: float, field_weights: dict[str, float] | None = None
) -> torch.Tensor | None:
    """Each label's weight in the loss: `class_weight` for a closed-list field's labels, a span
    field's `field_weights` entry (1 when absent) for its B-/I- labels, 1 for the rest; None when
    every weight is 1."""
    table = torch.ones(len(scheme.labels))
    table[scheme.first_type_label + len(scheme.types) :] = class_weight
    for label in range(1, scheme.first_type_label):
        table[label] = (field_weights or {}).get(scheme.span_label(label)[0], 1.0)
    return None if bool((table == 1).all()) else table


def weighted(losses: torch.Tensor, labels: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
    """Per-position losses times their label's weight (an ignored position's loss is 0 already)."""
    return losses if table is None else losses * table.to(losses.device)[labels.clamp(min=0)]


def tag_loss_for(
    scheme: TagScheme, class_weight: float, field_weights: dict[str, float] | None = None, lines: LineHead | None = None
):
    """The `compute_loss_func` of the tag path: cross-entropy summed over labelled tokens (weighted by
    `label_weight_table`), divided by the labelled tokens of the whole accumulated batch.

    transformers' own token-classification loss averages each micro-batch, which the Trainer would
    then add up across padding-free micro-batches. A document's closed-list fields are one label each
    among hundreds of its tokens' labels: unweighted, they barely move the model (on the catalogued
    sample every licence came out as the most frequent one). `lines`: the training-only line-start
    head (tag.line_starts), whose loss is added, divided the same way.
    """
    table = label_weight_table(scheme, class_weight, field_weights)

    def tag_loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        labels = labels.to(logits.device)
        line_losses = 0
        if lines is not None:
            labels, line_losses = lines.loss(labels)
            line_losses = line_losses.sum()
        losses = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        )
        losses = weighted(losses, labels.flatten(), table)
        count = num_items_in_batch if num_items_in_batch is not None else labels.ne(IGNORE_INDEX).sum()
        return (losses.sum() + line_losses) / count

    return tag_loss
