"""What extraction returns for one document, whatever the run's objective."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Extraction:
    """One document's extracted record and how it was made."""

    doc_type: str
    data: dict | None  # the record, None when the model's output could not be read into one
    raw: str  # what the model wrote
    error: str | None = None  # why `data` is None
    repaired: bool = False  # the output was malformed or cut off and was mended to read it
    tokens: int = 0  # tokens the model wrote (0: the objective writes none)
    looped: bool = False  # the output repeated itself and the repeats were cut
    type_source: str | None = None  # how doc_type was decided: given, classifier, model (its "type" field), default
