"""The language of a text, for a field an extractor cannot copy from the document (ISO 639-1 codes)."""

from __future__ import annotations

SAMPLE_CHARS = 4000  # the first pages say enough; classification time grows with the text


def detect_language(text: str) -> str | None:
    """The text's language as an ISO 639-1 code ("es", "en", "pt"...), None for a text without words."""
    if not any(c.isalpha() for c in text[:SAMPLE_CHARS]):
        return None
    import py3langid

    return py3langid.classify(text[:SAMPLE_CHARS])[0]
