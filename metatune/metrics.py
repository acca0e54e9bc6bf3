"""Field-level evaluation of extracted metadata, in the style GROBID publishes.

Every field is scored under four matchings (strict, soft, levenshtein, ratcliff).
Lists are scored by Jaccard overlap, person names ignore token order and dates
are normalised to yyyy/mm/dd before the non-strict matchings.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from difflib import SequenceMatcher

from rapidfuzz.distance import Levenshtein

MATCHINGS = ("strict", "soft", "levenshtein", "ratcliff")
PERSON_FIELDS = {"creator", "director", "codirector", "compiler", "first_author"}
DATE_FIELDS = {"date"}
IGNORED_FIELDS = {"original_text", "type", "dc.type", "id"}

_MONTHS = {
    name: i + 1
    for names in (
        "january february march april may june july august september october november december",
        "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
    )
    for i, name in enumerate(names.split())
}
_MONTHS["setiembre"] = 9


# --- normalisation ---------------------------------------------------------


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def normalize(text: str) -> str:
    """Lower case, accents removed, whitespace folded."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(text.lower().split())


def normalize_person(text: str) -> str:
    """Sorted name tokens, so "Pérez, Juan" and "Juan Pérez" coincide."""
    return " ".join(sorted(re.findall(r"[^\W_]+", normalize(text))))


def normalize_date(text: str) -> str:
    """yyyy/mm/dd, yyyy/mm or yyyy when the date is recognised, else normalize(text)."""
    t = normalize(text)
    if m := re.match(r"(\d{4})[-/.](\d{1,2})(?:[-/.](\d{1,2}))?(?!\d)", t):  # ISO-like, maybe with a time
        parts = m.groups()
    elif m := re.fullmatch(r"(?:(\d{1,2})[-/.])?(\d{1,2})[-/.](\d{4})", t):  # day first
        parts = (m[3], m[2], m[1])
    elif (year := re.search(r"\b(\d{4})\b", t)) and (
        month := next((n for w, n in _MONTHS.items() if re.search(rf"\b{w}\b", t)), None)
    ):
        day = re.search(r"\b(\d{1,2})\b", t)
        parts = (year[1], str(month), day[1] if day else None)
    elif re.fullmatch(r"\d{4}", t):
        parts = (t, None, None)
    else:
        return t
    return "/".join(p.zfill(2) for p in parts if p)


def _key(field: str, value) -> str:
    text = _text(value)
    if field in PERSON_FIELDS:
        return normalize_person(text)
    if field in DATE_FIELDS:
        return normalize_date(text)
    return normalize(text)


def match(field: str, pred, ref, matching: str) -> bool:
    """Whether two scalar values match under `matching`."""
    if matching == "strict":
        return _text(pred) == _text(ref)
    a, b = _key(field, pred), _key(field, ref)
    if matching == "soft":
        return re.sub(r"[\W_]+", "", a) == re.sub(r"[\W_]+", "", b)
    if matching == "levenshtein":
        return Levenshtein.normalized_similarity(a, b) >= 0.8
    if matching == "ratcliff":
        return SequenceMatcher(None, a, b).ratio() >= 0.95
    raise ValueError(f"unknown matching {matching!r}")


# --- per-document scores ---------------------------------------------------


def _absent(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def _items(value) -> list:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if not _absent(v)]


def _value(doc: dict | None, field: str):
    """The field's value, or None when absent. first_author is derived from creator."""
    if not doc:
        return None
    if field == "first_author":
        creators = _items(doc.get("creator"))
        return creators[0] if creators else None
    value = doc.get(field)
    if isinstance(value, list):
        value = _items(value)
    return None if _absent(value) else value


def jaccard(field: str, pred, ref, matching: str) -> float:
    """Greedy one-to-one pairing of items; matched / (|pred| + |ref| - matched)."""
    pred, ref = _items(pred), _items(ref)
    free = list(ref)
    matched = 0
    for p in pred:
        hit = next((i for i, r in enumerate(free) if match(field, p, r, matching)), None)
        if hit is not None:
            free.pop(hit)
            matched += 1
    union = len(pred) + len(ref) - matched
    return matched / union if union else 0.0


def _doc_score(field: str, pred, ref, matching: str) -> float:
    if isinstance(pred, list) or isinstance(ref, list):
        return jaccard(field, pred, ref, matching)
    return float(match(field, pred, ref, matching))


# --- aggregation -----------------------------------------------------------


def _prf(tp: float, fp: float, fn: float, support: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "support": support}


def _score(items: list[tuple[dict | None, dict, str]], fields: list[str], chosen: list[str] | None = None) -> dict:
    scored = list(fields) + (["first_author"] if "creator" in fields and "first_author" not in fields else [])
    # counts[field][matching] = [tp, fp, fn]; support does not depend on the matching
    counts = {f: {m: [0.0, 0.0, 0.0] for m in MATCHINGS} for f in scored}
    support = dict.fromkeys(scored, 0)
    for pred, ref, _ in items:
        for field in scored:
            p, r = _value(pred, field), _value(ref, field)
            support[field] += r is not None
            for m in MATCHINGS:
                c = counts[field][m]
                if p is not None and r is not None:
                    s = _doc_score(field, p, r, m)
                    c[0] += s
                    c[1] += 1 - s
                    c[2] += 1 - s
                elif p is not None:
                    c[1] += 1
                elif r is not None:
                    c[2] += 1

    per_field = {f: {m: _prf(*counts[f][m], support[f]) for m in MATCHINGS} for f in scored}
    # first_author duplicates creator, so it stays out of the averages
    pooled = [f for f in scored if f != "first_author"]
    total = sum(support[f] for f in pooled)
    micro, macro = {}, {}
    for m in MATCHINGS:
        tp, fp, fn = (sum(counts[f][m][i] for f in pooled) for i in range(3))
        micro[m] = _prf(tp, fp, fn, total)
        rows = [per_field[f][m] for f in pooled if support[f] > 0]
        macro[m] = {
            k: (sum(row[k] for row in rows) / len(rows) if rows else 0.0) for k in ("precision", "recall", "f1")
        } | {"support": total}
    out = {"fields": per_field, "micro": micro, "macro": macro}
    if chosen:  # a micro average over these fields only (first_author may be one: GROBID's five fields)
        picked = [f for f in chosen if f in counts]
        out["micro_chosen"] = {"fields": picked} | {
            m: _prf(*(sum(counts[f][m][i] for f in picked) for i in range(3)), sum(support[f] for f in picked))
            for m in MATCHINGS
        }
    return out


def _folded(value) -> str:
    return " ".join(_text(value).lower().split())


def catalogue_form(items: list[tuple[dict | None, dict, str]], fields: list[str]) -> dict:
    """Of the predicted names and dates that soft-match a reference (which ignores name order and date
    format), how many are written as the reference writes them (case and whitespace folded): whether
    "Pérez, Juan" came out as the catalogue's "Pérez, Juan" and not as the page's "Juan Pérez"."""
    out = {}
    for kind, group in (("names", PERSON_FIELDS - {"first_author"}), ("dates", DATE_FIELDS)):
        matched = same = 0
        for pred, ref, _ in items:
            for field in (f for f in fields if f in group):
                free = _items(_value(ref, field))
                for p in _items(_value(pred, field)):
                    hit = next((i for i, r in enumerate(free) if match(field, p, r, "soft")), None)
                    if hit is not None:
                        matched += 1
                        same += _folded(p) == _folded(free.pop(hit))
        if matched:
            out[kind] = {"matched": matched, "same_form": same, "rate": same / matched}
    return out


def score_documents(
    items: list[tuple[dict | None, dict, str]], fields: list[str] | None = None, chosen: list[str] | None = None
) -> dict:
    """Score (prediction or None, reference, document type) triples field by field; `chosen`: fields
    of an extra micro average (`micro_chosen`)."""
    if fields is None:
        fields = list(dict.fromkeys(f for _, ref, _ in items for f in ref if f not in IGNORED_FIELDS))
    by_type = defaultdict(list)
    for item in items:
        by_type[item[2]].append(item)
    return {
        **_score(items, fields, chosen),
        "catalogue_form": catalogue_form(items, fields),
        # the same field list for every type, so fields predicted where they do not apply count as FP
        "by_type": {t: _score(group, fields) for t, group in by_type.items()},
        "documents": len(items),
    }
