"""Text of a PDF, via pdfplumber (pdfminer.six), the extractor the SEDICI dataset's `original_text` was
made with, then metatune.text.clean_text, as training text is. A PDF without a text layer (scanned,
image-only) is an error, never ''. docs/pdf.md has the measurements behind these choices.

pdfminer.six is pure Python: a crafted PDF of a few kilobytes can make it parse millions of operators
(minutes of CPU) while it holds the interpreter lock of whatever process runs it. So the PDF is read
in a child process, at low priority, with a time and a memory limit, and only its first pages: a
server's event loop and model keep running meanwhile.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from metatune.errors import MetatuneError

# Bibliographic metadata sits on the first pages, and the model reads only max_input_tokens of text
# (2048 by default, some 6,000-8,000 characters): pages after this many characters, or after
# MAX_PAGES pages, are not read. Each page costs pdfminer 0.1-0.5 s.
MAX_CHARS = 16_000
MAX_PAGES = 10
# For a model that reads N tokens, a PDF is read to N x CHARS_PER_TOKEN characters (the page that
# reaches them included): real papers measure 2.0-4.7 characters per token with SmolLM2's tokenizer
# (docs/pdf.md), so the model sees the same text and the pages after it are not parsed.
CHARS_PER_TOKEN = 6
# Content-stream bytes parsed per PDF: a page of text takes 2-50 KB; pages that would go over are skipped.
MAX_CONTENT_BYTES = 2_000_000
TIMEOUT_S = 20.0
MEMORY_BYTES = 1 << 30
# A space between two letters when the gap is over 0.15 of the font size. pdfplumber's default, a
# fixed 3 points, glues the words of most LaTeX PDFs together ("UltralightbosonicdarkmatterandCMB");
# on PDFs that write their spaces (Word) both give the same text.
X_TOLERANCE_RATIO = 0.15
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def chars_for(tokens: int) -> int:
    """How much of a PDF's text to read for a model that reads `tokens` tokens of it (at most MAX_CHARS)."""
    return min(MAX_CHARS, tokens * CHARS_PER_TOKEN)


def pdf_text(
    source: str | Path | bytes, name: str | None = None, max_chars: int = MAX_CHARS, timeout: float | None = None
) -> str:
    """The text of a PDF file (path) or upload (bytes), page after page, read in a child process
    that gets `timeout` seconds (default TIMEOUT_S)."""
    name = name or str(source)
    timeout = TIMEOUT_S if timeout is None else timeout
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise MetatuneError(f"{name}: cannot read: {e.strerror or e}") from None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "metatune.pdf", name, str(max_chars)],
            input=data,
            capture_output=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise MetatuneError(f"{name}: cannot read the PDF: gave up after {timeout:g} s") from None
    try:
        result = json.loads(done.stdout)
    except ValueError:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        why = (
            "it needs too much memory"
            if lines and "MemoryError" in lines[-1]
            else (lines[-1] if lines else f"exit status {done.returncode}")
        )
        raise MetatuneError(f"{name}: cannot read the PDF: {why}") from None
    if "error" in result:
        raise MetatuneError(result["error"])
    return result["text"]


def read_pdf(data: bytes, name: str, max_chars: int = MAX_CHARS) -> str:
    """pdf_text's work, in this process: the cleaned text of the first pages, within MAX_CONTENT_BYTES."""
    import pdfplumber
    from pdfminer.pdfdocument import PDFPasswordIncorrect
    from pdfminer.pdftypes import resolve1
    from pdfminer.psexceptions import PSException
    from pdfplumber.utils.exceptions import PdfminerException

    from metatune.text import clean_text

    logging.getLogger("pdfminer").setLevel(logging.ERROR)  # pdfminer warns about every small defect
    budget, skipped = MAX_CONTENT_BYTES, 0
    parts, size = [], 0
    try:
        with pdfplumber.open(io.BytesIO(data), pages=range(1, MAX_PAGES + 1)) as pdf:
            for page in pdf.pages:
                cost = sum(len(resolve1(stream).get_data()) for stream in page.page_obj.contents)
                if cost > budget:
                    skipped += 1
                    continue
                budget -= cost
                text = page.extract_text(x_tolerance_ratio=X_TOLERANCE_RATIO) or ""
                page.close()
                parts.append(text)
                size += len(text)
                if size >= max_chars:
                    break
    except PdfminerException as e:
        cause = e.args[0] if e.args else e
        if isinstance(cause, PDFPasswordIncorrect):
            raise MetatuneError(f"{name}: the PDF is encrypted with a password") from None
        raise MetatuneError(f"{name}: cannot read the PDF: {_why(cause)}") from None
    except (PSException, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise MetatuneError(f"{name}: cannot read the PDF: {_why(e)}") from None
    text = clean_text("\n".join(parts).strip())
    if not text and skipped:
        raise MetatuneError(
            f"{name}: no text read from the PDF: the content of its first pages is too large "
            f"(over {MAX_CONTENT_BYTES // 1_000_000} MB)"
        )
    if not text:
        raise MetatuneError(f"{name}: has no text layer (scanned or image-only PDF); OCR is not supported")
    return text


def _why(error: object) -> str:
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def _child() -> None:
    """`python -m metatune.pdf NAME MAX_CHARS` < PDF: {"text": ...} or {"error": ...} on standard output."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
        os.nice(10)  # the model's work comes first
    except (ImportError, OSError, ValueError):  # not on every system
        pass
    name, max_chars = sys.argv[1], int(sys.argv[2])
    try:
        result = {"text": read_pdf(sys.stdin.buffer.read(), name, max_chars)}
    except MetatuneError as e:
        result = {"error": str(e)}
    except MemoryError:
        result = {"error": f"{name}: cannot read the PDF: it needs more than {MEMORY_BYTES >> 30} GB of memory"}
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    _child()
