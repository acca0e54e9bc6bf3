"""What extraction returns for one document, whatever the run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Extraction:
    """One document's extracted record and how it was made."""

    doc_type: str
    data: dict | None  # the record, None when the model's output could not be read into one
    raw: str  # what the model wrote
    error: str | None = None  # why `data` is None
    type_source: str | None = None  # how doc_type was decided ("given", "default", or how the run predicted it)
    # what the run says of this document, written beside its record (JSON values)
    notes: dict = field(default_factory=dict)
    # what the run counts per document, summed by its extractor's `statistics`
    counts: dict[str, int] = field(default_factory=dict)
