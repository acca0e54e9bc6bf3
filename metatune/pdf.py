"""Text of a PDF, via pypdf. A PDF without extractable text (scanned, image-only) is an error, never ''."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from metatune.errors import MetatuneError

# Bibliographic metadata sits on the first pages, and the model reads only max_input_tokens of text:
# pages after this many characters are not read.
MAX_CHARS = 100_000


def pdf_text(source: str | Path | bytes, name: str | None = None, max_chars: int = MAX_CHARS) -> str:
    """The text of a PDF file (path) or upload (bytes), page after page."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    name = name or str(source)
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # pypdf warns about every small defect
    try:
        reader = PdfReader(io.BytesIO(source) if isinstance(source, bytes) else source)
        if reader.is_encrypted and not reader.decrypt(""):
            raise MetatuneError(f"{name}: the PDF is encrypted with a password")
        parts, size = [], 0
        for page in reader.pages:
            text = page.extract_text() or ""
            parts.append(text)
            size += len(text)
            if size >= max_chars:
                break
    except MetatuneError:
        raise
    except (PyPdfError, OSError, ValueError, KeyError, TypeError) as e:
        raise MetatuneError(f"{name}: cannot read the PDF: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    text = "\n".join(parts).strip()
    if not text:
        raise MetatuneError(f"{name}: no extractable text in the PDF (scanned or image-only? run OCR first)")
    return text
