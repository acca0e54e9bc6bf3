"""Input documents: the files, folders and standard input `metatune extract` reads, and their text.

PDFs are read through pdfplumber (metatune/pdf.py), anything else as text; every text goes through
metatune.text.clean_text, as training text does.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from metatune.data import read_text
from metatune.errors import MetatuneError
from metatune.pdf import MAX_CHARS
from metatune.text import clean_text

TEXT_SUFFIXES = {".txt", ".text", ".md"}
PDF_SUFFIX = ".pdf"


@dataclass
class Item:
    name: str  # as given or found ("docs/a.pdf", "-"); the record's `source`
    path: Path | None  # None: standard input
    relative: Path  # the output's name under --out-dir


def find_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES | {PDF_SUFFIX})
    return [path]


def list_inputs(inputs: list[str]) -> tuple[list[Item], list[str]]:
    """Every document the inputs name (folders searched), without reading them; and missing inputs."""
    items, problems = [], []
    for given in inputs:
        if given == "-":
            items.append(Item("-", None, Path("stdin")))
            continue
        path = Path(given)
        if not path.exists():
            problems.append(f"{path}: input not found")
            continue
        files = find_files(path)
        if not files:
            problems.append(
                f"{path}: no PDF or text files ({', '.join(sorted(TEXT_SUFFIXES | {PDF_SUFFIX}))}) in this folder"
            )
        for f in files:
            items.append(Item(str(f), f, f.relative_to(path) if path.is_dir() else Path(f.name)))
    return items, problems


def read_document(path: Path, max_chars: int = MAX_CHARS) -> str:
    """The cleaned text of one file: a PDF through pdfplumber (its pages up to `max_chars` characters,
    metatune/pdf.py), anything else as text. Raises when there is none."""
    from metatune.pdf import pdf_text

    if path.suffix.lower() == PDF_SUFFIX:
        return pdf_text(path, max_chars=max_chars)  # cleaned already
    try:
        text = read_text(path)
    except OSError as e:
        raise MetatuneError(f"{path}: cannot read: {e.strerror or e}") from None
    if not text.strip():
        raise MetatuneError(f"{path}: no text to extract from")
    return clean_text(text)


def read_item(item: Item, max_chars: int = MAX_CHARS) -> str:
    if item.path is None:
        text = sys.stdin.read()
        if not text.strip():
            raise MetatuneError("-: no text on standard input")
        return clean_text(text)
    return read_document(item.path, max_chars)


def read_ahead(
    items: Iterable[Item], workers: int, window: int, max_chars: int = MAX_CHARS
) -> Iterator[tuple[Item, str | MetatuneError]]:
    """(item, its text or the error that stopped reading it), in input order, while up to `window`
    items further on are read by `workers` threads: PDFs parse (each in its own limited child
    process, metatune/pdf.py) while the caller runs the model on what came before. At most `window`
    texts are held at once."""
    pending = iter(items)

    def attempt(item: Item) -> str | MetatuneError:
        try:
            return read_item(item, max_chars)
        except MetatuneError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="read-ahead") as pool:
        queue = deque((item, pool.submit(attempt, item)) for item in islice(pending, max(window, 1)))
        try:
            while queue:
                item, future = queue.popleft()
                for following in islice(pending, 1):
                    queue.append((following, pool.submit(attempt, following)))
                yield item, future.result()
        finally:  # the caller stopped (an error, ^C): what has not started is not read
            for _, future in queue:
                future.cancel()


def read_inputs(inputs: list[str], max_chars: int = MAX_CHARS) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, text) of every readable document, and a one-line message for every unreadable one."""
    items, problems = list_inputs(inputs)
    docs = []
    for item in items:
        try:
            docs.append((item.name, read_item(item, max_chars)))
        except MetatuneError as e:
            problems.append(str(e))
    return docs, problems
