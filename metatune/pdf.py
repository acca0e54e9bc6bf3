"""Text of a PDF, via pdfplumber (pdfminer.six), the extractor the SEDICI dataset's `original_text` was
made with, then metatune.text.clean_text, as training text is. A PDF without a text layer (scanned,
image-only) is an error, never ''. docs/pdf.md has the measurements behind these choices.

pdfminer.six is pure Python: a crafted PDF of a few kilobytes can make it parse millions of operators
(minutes of CPU) while it holds the interpreter lock of whatever process runs it. So the PDF is read
in a child process, at low priority, with a time and a memory limit, and only its first pages: a
server's event loop and model keep running meanwhile. The child reads one PDF after another (starting
Python and importing pdfplumber took 0.1 s of CPU per PDF, a third of parsing a paper's first pages);
one that runs out of time is killed and the next PDF gets a fresh one.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
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
    reader = _take_reader()
    try:
        result = reader.read(data, name, max_chars, timeout)
    except BaseException:
        reader.close()  # out of time, stopped, or interrupted half-way: the next PDF gets a fresh one
        raise
    if result.pop("last", False):  # the child ends after this answer (it ran out of memory)
        reader.close()
    else:
        _give_back(reader)
    if "error" in result:
        raise MetatuneError(result["error"])
    return result["text"]


class _Reader:
    """A child process (`python -m metatune.pdf --serve`) that reads the PDFs sent to it one after
    another: a JSON line {"name", "max_chars", "bytes"} and the PDF's bytes in, a JSON line out."""

    def __init__(self):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.errors = tempfile.TemporaryFile()  # the child's last words, should it die
        self.process = subprocess.Popen(
            [sys.executable, "-m", "metatune.pdf", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            env=env,
        )

    def read(self, data: bytes, name: str, max_chars: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        try:
            header = json.dumps({"name": name, "max_chars": max_chars, "bytes": len(data)})
            self.process.stdin.write(header.encode() + b"\n" + data)
            self.process.stdin.flush()
        except OSError:  # the child is gone
            return {"error": f"{name}: cannot read the PDF: {self.why_it_stopped()}"}
        out = self.process.stdout
        if not select.select([out], [], [], max(deadline - time.monotonic(), 0))[0]:
            raise MetatuneError(f"{name}: cannot read the PDF: gave up after {timeout:g} s")
        line = out.readline()
        try:
            return json.loads(line)
        except ValueError:  # it died before its whole answer
            return {"error": f"{name}: cannot read the PDF: {self.why_it_stopped()}"}

    def why_it_stopped(self) -> str:
        self.process.kill()
        code = self.process.wait()
        self.errors.seek(0)
        lines = self.errors.read().decode(errors="replace").strip().splitlines()
        if lines and "MemoryError" in lines[-1]:
            return "it needs too much memory"
        return lines[-1] if lines else f"exit status {code}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.errors):
            stream.close()


# Readers waiting for the next PDF; a thread that finds none starts one. At most MAX_IDLE are kept.
_IDLE: list[_Reader] = []
_IDLE_LOCK = threading.Lock()
MAX_IDLE = 2


def _take_reader() -> _Reader:
    with _IDLE_LOCK:
        while _IDLE:
            reader = _IDLE.pop()
            if reader.alive():
                return reader
            reader.close()
    return _Reader()


def _give_back(reader: _Reader) -> None:
    with _IDLE_LOCK:
        if reader.alive() and len(_IDLE) < MAX_IDLE:
            _IDLE.append(reader)
            return
    reader.close()


@atexit.register
def _close_readers() -> None:
    with _IDLE_LOCK:
        while _IDLE:
            _IDLE.pop().close()


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


def _serve() -> None:
    """`python -m metatune.pdf --serve`: for each request on standard input (a JSON line naming the
    PDF, how many characters to read and its size in bytes, then its bytes), {"text": ...} or
    {"error": ...} as one line on standard output, until standard input closes."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
        os.nice(10)  # the model's work comes first
    except (ImportError, OSError, ValueError):  # not on every system
        pass
    import pdfplumber  # noqa: F401  imported once, before the first PDF

    requests = sys.stdin.buffer
    replies = open(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")  # kept for the process's life
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what a library prints goes to the errors, not the replies
    while header := requests.readline():
        request = json.loads(header)
        name = request["name"]
        data = requests.read(request["bytes"])
        try:
            result = {"text": read_pdf(data, name, request["max_chars"])}
        except MetatuneError as e:
            result = {"error": str(e)}
        except MemoryError:  # what the failed PDF left behind is not the next one's problem: the child ends
            result = {
                "error": f"{name}: cannot read the PDF: it needs more than {MEMORY_BYTES >> 30} GB of memory",
                "last": True,
            }
        replies.write(json.dumps(result) + "\n")
        replies.flush()
        if result.get("last"):
            return


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
