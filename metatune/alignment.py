"""Source alignment: where a metadata value sits in the document text.

A value is searched in a folded copy of the text that keeps only letters and digits, lower-cased and
without accents, with a map back to the original characters. Line breaks, hyphenation at line ends
(`methylation--\\nregulated`), repeated spaces, case, accents and punctuation therefore do not
prevent a match; a match must start and end at word boundaries of the original text. When the
value is not there verbatim, rapidfuzz finds the closest stretch of the folded text and accepts it
above a similarity threshold. Everything runs in C-level string search: no Python loop over
characters of the text other than the one pass that folds it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from rapidfuzz import fuzz

FUZZY_MIN_SCORE = 90.0  # rapidfuzz partial_ratio (0-100) for a value that is not verbatim in the text
FUZZY_MIN_CHARS = 12  # shorter values must be there verbatim: a near match of a short name is a guess


@dataclass(frozen=True)
class Span:
    start: int  # character offsets in the original text, end exclusive
    end: int
    exact: bool = True

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


def fold(text: str) -> tuple[str, list[int]]:
    """The text's letters and digits, lower-cased, accents removed; and each one's index in `text`."""
    chars: list[str] = []
    where: list[int] = []
    for i, c in enumerate(text):
        if c.isascii():
            if c.isalnum():
                chars.append(c.lower())
                where.append(i)
            continue
        for d in unicodedata.normalize("NFKD", c):  # ligatures (ﬁ -> fi) and accents (é -> e + mark)
            if d.isalnum():
                chars.append(d.lower())
                where.append(i)
    return "".join(chars), where


class Source:
    """A document text, folded once, in which values are located."""

    def __init__(self, text: str):
        self.text = text
        self.folded, self.where = fold(text)

    def _is_word_start(self, i: int) -> bool:
        return i == 0 or not self.text[i - 1].isalnum()

    def _is_word_end(self, i: int) -> bool:
        return i >= len(self.text) or not self.text[i].isalnum()

    def _span(self, a: int, b: int, exact: bool) -> Span:
        """The original-text span of folded characters a..b (end exclusive)."""
        return Span(self.where[a], self.where[b - 1] + 1, exact)

    def occurrences(self, value: str) -> list[Span]:
        """Every verbatim (folded) occurrence of `value` that starts and ends on word boundaries."""
        needle, _ = fold(value)
        if not needle:
            return []
        found, i = [], self.folded.find(needle)
        while i >= 0:
            span = self._span(i, i + len(needle), True)
            if self._is_word_start(span.start) and self._is_word_end(span.end):
                found.append(span)
            i = self.folded.find(needle, i + 1)
        return found

    def nearest(self, value: str, min_score: float = FUZZY_MIN_SCORE) -> Span | None:
        """The stretch of text most like `value` (rapidfuzz partial ratio), widened to whole words."""
        needle, _ = fold(value)
        if len(needle) < FUZZY_MIN_CHARS or not self.folded:
            return None
        hit = fuzz.partial_ratio_alignment(needle, self.folded, score_cutoff=min_score)
        if hit is None or hit.dest_end <= hit.dest_start:
            return None
        start, end = self.where[hit.dest_start], self.where[hit.dest_end - 1] + 1
        while start > 0 and self.text[start - 1].isalnum():
            start -= 1
        while end < len(self.text) and self.text[end].isalnum():
            end += 1
        return Span(start, end, exact=False)

    def locate(self, value: str, taken: list[Span] = (), fuzzy: bool = True) -> Span | None:
        """The first occurrence of `value` that overlaps no span in `taken`; else a near match, or None."""
        for span in self.occurrences(value):
            if not any(span.overlaps(t) for t in taken):
                return span
        if fuzzy:
            span = self.nearest(value)
            if span is not None and not any(span.overlaps(t) for t in taken):
                return span
        return None

    def abbreviated(self, value: str, taken: list[Span] = ()) -> Span | None:
        """The first run of words that writes `value` short or inflected, word for word ("Lic. en
        Física", "Doctorado en Ingeniería" for "Licenciado en Física", "Doctor en Ingeniería"; see
        `abbreviates`) and overlaps no span in `taken`."""
        wanted = WORD.findall(value)
        words = self.words
        for i in range(len(words) - len(wanted) + 1):
            run = words[i : i + len(wanted)]
            if all(abbreviates(w, v) for (_, _, w), v in zip(run, wanted)):
                span = Span(run[0][0], run[-1][1], exact=False)
                if not any(span.overlaps(t) for t in taken):
                    return span
        return None

    @property
    def words(self) -> list[tuple[int, int, str]]:
        """(start, end, word) of each word of the text, with the period that may follow it ("Lic.")."""
        return [(m.start(), m.end(), m[0]) for m in re.finditer(r"[^\W_]+\.?", self.text)]

    def snippet(self, span: Span) -> str:
        """The span's text with its whitespace folded to single spaces (how metadata values are written)."""
        return " ".join(self.text[span.start : span.end].split())


WORD = re.compile(r"[^\W_]+")
ABBREVIATION_STEM = 6  # two words that begin with this many letters in common are one word inflected


def abbreviates(page_word: str, word: str) -> bool:
    """Whether `page_word` ("Lic.", "Dr.", "Doctorado", "Especialización") writes `word` ("Licenciado",
    "Doctor", "Doctor", "Especialista"): the same word folded, its beginning cut at a period or of at
    least 4 letters, a contraction ending in a period (its letters in order, the first one first:
    "Dr."), or the same stem (at least ABBREVIATION_STEM letters in common at the start)."""
    short, full = fold(page_word)[0], fold(word)[0]
    if not short or not full or short == full:
        return bool(short) and short == full
    cut = page_word.endswith(".")
    if full.startswith(short) and (len(short) >= 4 or cut and len(short) >= 2):
        return True
    if len(short) >= ABBREVIATION_STEM and short[:ABBREVIATION_STEM] == full[:ABBREVIATION_STEM]:
        return True
    letters = iter(full[1:])
    return cut and len(short) >= 2 and short[0] == full[0] and all(c in letters for c in short[1:])


def values_of(record: dict, fields: list[str]) -> list[tuple[str, int, str]]:
    """(field, item index, text) for every non-empty string value or list item of the fields."""
    out = []
    for field in fields:
        value = record.get(field)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, str) and item.strip():
                out.append((field, i, item))
    return out


DATE_FIELDS = {"date", "date.issued", "date.created"}
PERSON_FIELDS = {"creator", "director", "codirector", "compiler"}


def name_forms(value: str) -> list[str]:
    """A person's name as catalogues write it ("Pérez, Juan"), as documents do ("Juan Pérez"), and
    with the given names as the initials a page may print instead ("J. Pérez", "Pérez, J.")."""
    surname, comma, given = value.partition(",")
    surname, given = surname.strip(), given.strip()
    if not comma or not given:
        return [value]
    forms = [value, f"{given} {surname}"]
    initials = " ".join(f"{word[0]}." for word in given.split())
    if initials != given:
        forms += [f"{initials} {surname}", f"{surname}, {initials}"]
    return forms


def align_record(
    text: str, record: dict, fields: list[str], fuzzy: bool = True, abbreviated: tuple[str, ...] = ()
) -> dict[tuple[str, int], Span | None]:
    """Each value's span in `text`, or None where it does not align; no two spans overlap. A value of a
    field in `abbreviated` that is not there as written is searched written short (Source.abbreviated).

    Longer values claim their place first: an abstract or a title takes its words before a keyword
    that also occurs in them is searched, so the keyword lands in the keywords line. Dates are
    matched by their normalised form, after the other fields. A span takes the punctuation its value
    begins or ends with where the text has it too (a title's "?", an abstract's last period, the
    bracket that closes an affiliation): matching itself reads letters and digits only.
    """
    source = Source(text)
    wanted = sorted(values_of(record, fields), key=lambda v: (v[0] in DATE_FIELDS, -len(v[2])))
    taken: list[Span] = []
    spans: dict[tuple[str, int], Span | None] = {}
    for field, i, value in wanted:
        if field in DATE_FIELDS:
            span = locate_date(text, value, taken)
        else:
            forms = name_forms(value) if field in PERSON_FIELDS else [value]
            # every form verbatim before any near match: "de la Fuente, M. L." nearly matches "de la
            # Fuente\nLa" before its page form "M. L. de la Fuente" is found as written
            tries = [(form, False) for form in forms] + ([(form, True) for form in forms] if fuzzy else [])
            for form, near in tries:
                if (span := source.locate(form, taken, near)) is not None:
                    span = with_edges(text, span, form)
                    break
            if span is None and field in abbreviated:
                span = source.abbreviated(value, taken)
        spans[(field, i)] = span
        if span is not None:
            taken.append(span)
    return spans


_LEADING, _TRAILING = re.compile(r"^[^\w\s]+"), re.compile(r"[^\w\s]+$")


def with_edges(text: str, span: Span, value: str) -> Span:
    """`span` widened by the punctuation `value` begins and ends with, where the text has it right there."""
    value = value.strip()
    start, end = span.start, span.end
    if (lead := _LEADING.search(value)) and text[:start].endswith(lead[0]):
        start -= len(lead[0])
    if (tail := _TRAILING.search(value)) and text.startswith(tail[0], end):
        end += len(tail[0])
    return Span(start, end, span.exact)


# --- dates: values are normalised (yyyy/mm/dd, yyyy/mm, yyyy), the text writes them in many ways ---

_MONTH_NAMES = (
    "january february march april may june july august september october november december",
    "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
)
MONTHS = {name: i + 1 for names in _MONTH_NAMES for i, name in enumerate(names.split())}
MONTHS.update({name[:3]: n for name, n in list(MONTHS.items())})
MONTHS.update({"sept": 9, "setiembre": 9, "set": 9})
_MONTH = r"(?P<month>" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_ORDINAL = r"(?:st|nd|rd|th|º|°|o\b)?"
_TO_DAY = rf"(?:\s*(?:-|–|al|a|to|y|and)\s*\d{{1,2}}{_ORDINAL})?"  # a range of days: its first day is the date
_DATE_PATTERNS = [
    re.compile(r"\b(?P<year>(?:1[89]|20)\d\d)[-/.](?P<mm>\d{1,2})(?:[-/.](?P<day>\d{1,2}))?\b"),
    re.compile(r"\b(?P<day>\d{1,2})[-/.](?P<mm>\d{1,2})[-/.](?P<year>(?:1[89]|20)\d\d)\b"),
    re.compile(  # "1 de marzo de 2019", "1º al 3 de marzo de 2019", "March 1st-3rd, 2019", "1st of March 2019"
        rf"\b(?:(?P<day>\d{{1,2}}){_ORDINAL}{_TO_DAY}\s+(?:de\s+|of\s+)?)?{_MONTH},?\s+"
        rf"(?:(?P<day2>\d{{1,2}}){_ORDINAL}{_TO_DAY},?\s+)?(?:de\s+|del\s+)?(?P<year>(?:1[89]|20)\d\d)\b",
        re.IGNORECASE,
    ),
    re.compile(r"\b(?P<year>(?:1[89]|20)\d\d)\b"),
]


def date_spans(text: str) -> list[tuple[Span, str]]:
    """Date expressions in the text, in order, each with its normalised form; none overlap."""
    found: list[tuple[Span, str]] = []
    for pattern in _DATE_PATTERNS:  # most specific first: a full date wins over the year inside it
        for m in pattern.finditer(text):
            span = Span(m.start(), m.end())
            if any(span.overlaps(s) for s, _ in found):
                continue
            if normalised := _normalise_match(m):
                found.append((span, normalised))
    return sorted(found, key=lambda x: x[0].start)


def _normalise_match(m: re.Match) -> str | None:
    groups = m.groupdict()
    month = groups.get("mm") or (MONTHS.get(groups["month"].lower().rstrip(".")) if groups.get("month") else None)
    day = groups.get("day") or groups.get("day2")
    month, day = int(month) if month else None, int(day) if day else None
    if month is not None and not 1 <= month <= 12 or day is not None and not 1 <= day <= 31:
        return None
    parts = [groups["year"]] + ([f"{month:02d}"] if month else []) + ([f"{day:02d}"] if month and day else [])
    return "/".join(parts)


def normalise_date(text: str) -> str | None:
    """The first date in `text` as yyyy/mm/dd, yyyy/mm or yyyy; None when there is none."""
    spans = date_spans(text)
    return spans[0][1] if spans else None


def locate_date(text: str, value: str, taken: list[Span] = ()) -> Span | None:
    """The first date expression of the text whose normalised form is `value` (also yyyy/mm/dd form)."""
    want = normalise_date(value) or value
    for span, normalised in date_spans(text):
        if normalised == want and not any(span.overlaps(t) for t in taken):
            return span
    return None


NOT_SNAPPED = DATE_FIELDS | {"language", "type", "rights", "rightsurl"}  # normalised values, not text to copy


def snap_record(text: str, data: dict) -> dict:
    """A predicted record with every text value that (nearly) occurs in `text` replaced by the text's
    own words: the source's spelling, hyphens and accents instead of the model's retyping. List items
    are snapped one by one; a name written "Surname, Name" keeps the catalogue's form; a value the text
    does not hold stays as predicted. Snapped values are always text of the source."""
    source = Source(text)
    out = {}
    for field, value in data.items():
        if field in NOT_SNAPPED:
            out[field] = value
        elif isinstance(value, list):
            out[field] = [_snap(source, field, v) for v in value]
        else:
            out[field] = _snap(source, field, value)
    return out


def _snap(source: Source, field: str, value):
    if not isinstance(value, str) or (field in PERSON_FIELDS and "," in value):
        return value
    span = source.locate(value)
    return source.snippet(span) if span is not None else value


# --- anchors: a long verbatim value written as its first and last words, expanded from the source ---

ANCHOR_MARK = " [...] "


def anchor(text: str, value: str, min_words: int, words: int) -> str:
    """`value` as "first words [...] last words" when it has at least `min_words` words and is found
    in `text`; otherwise `value` unchanged. The words are the source's own, and as many as it takes
    (from `words` up to three times that) for `expand` to give back exactly the value's source span:
    an ending that also occurs earlier in the text gets more words."""
    if min_words <= 0 or len(value.split()) < min_words or ANCHOR_MARK.strip() in value:
        return value
    source = Source(text)
    span = source.locate(value)
    if span is None:
        return value
    wanted = source.snippet(span)
    found = wanted.split()
    for n in range(words, 3 * words + 1):
        if 2 * n + 1 > len(found):
            break
        candidate = " ".join(found[:n]) + ANCHOR_MARK + " ".join(found[-n:])
        if expand(text, candidate, source) == wanted:
            return candidate
    return value


ANCHOR_END_MIN_WORDS = 3  # an end shortened to find it keeps at least this many words


def expand(text: str, value: str, source: Source | None = None) -> str:
    """The source text an anchored value stands for: the shortest stretch from an occurrence of its
    head to an occurrence of its tail. An end the text does not have (a word of it misremembered)
    is shortened from the inside, the head from its end and the tail from its start, down to
    ANCHOR_END_MIN_WORDS words, until both are found in order. A value without the mark, or whose
    ends are still not found, comes back with the mark replaced by a space."""
    if ANCHOR_MARK.strip() not in value:
        return value
    head, _, tail = value.partition(ANCHOR_MARK.strip())
    source = source or Source(text)
    head_words, tail_words = head.split(), tail.split()
    for cut in range(max(len(head_words), len(tail_words))):
        h_words = head_words[: max(len(head_words) - cut, min(len(head_words), ANCHOR_END_MIN_WORDS))]
        t_words = tail_words[min(cut, max(len(tail_words) - ANCHOR_END_MIN_WORDS, 0)) :]
        heads, tails = source.occurrences(" ".join(h_words)), source.occurrences(" ".join(t_words))
        pairs = [(t.end - h.start, h, t) for h in heads for t in tails if t.end > h.start and t.start >= h.start]
        if pairs:
            _, h, t = min(pairs, key=lambda p: p[0])
            return source.snippet(Span(h.start, t.end))
        if len(h_words) <= ANCHOR_END_MIN_WORDS and len(t_words) <= ANCHOR_END_MIN_WORDS:
            break
    return " ".join(f"{head} {tail}".split())


def expand_record(text: str, data: dict) -> dict:
    """Every anchored text value of a predicted record expanded from the document (see `expand`)."""
    source = Source(text)
    return {f: expand(text, v, source) if isinstance(v, str) else v for f, v in data.items()}
