"""`metatune extract` over many documents, made to be left running overnight.

Documents are read a batch at a time, and each result is written as soon as it is done: a line
appended to a JSON Lines file (`--out FILE.jsonl`), or one file per input (`--out-dir DIR`), each
written whole. A rerun skips what is already there (`--force` redoes it). A document that cannot be
read, or whose batch fails in the model, is reported, the others go on, and all failures are listed
at the end; they are not recorded as done, so a rerun tries them again.
"""

from __future__ import annotations

import json
import sys
from itertools import islice
from pathlib import Path

import typer

from metatune.documents import Item, read_ahead
from metatune.errors import MetatuneError
from metatune.files import write_atomic
from metatune.formats import SUFFIXES, document_record, render
from metatune.pdf import MAX_CHARS


class JsonLinesOut:
    """One JSON line per document, appended and flushed as each is done."""

    def __init__(self, path: Path, force: bool):
        self.path, self.file = path, None
        self.done: set[str] = set()
        if path.exists() and not force:
            self.done = self._complete_sources()
        elif path.exists():
            path.unlink()

    def _complete_sources(self) -> set[str]:
        """Sources of the complete lines; a line cut off by a crash is removed, to be redone."""
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            with self.path.open("r+b") as f:
                f.truncate(keep)
        done = set()
        for number, line in enumerate(data[:keep].decode("utf-8").splitlines(), 1):
            try:
                done.add(json.loads(line)["source"])
            except (ValueError, KeyError, TypeError):
                raise MetatuneError(
                    f"{self.path}: line {number} is not a metatune JSON Lines record; "
                    "pass --force to replace the file, or choose another --out"
                ) from None
        return done

    def is_done(self, item: Item) -> bool:
        return item.name in self.done and item.path is not None

    def write(self, record: dict) -> bool:
        if self.file is None:
            self.file = self.path.open("a", encoding="utf-8")
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        return True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class DirectoryOut:
    """One file per input under `directory`, named after the input (`a.pdf` -> `a.pdf.json`)."""

    def __init__(self, directory: Path, fmt: str, force: bool):
        self.directory, self.fmt, self.force, self.suffix = directory, fmt, force, SUFFIXES[fmt]

    def target(self, item: Item) -> Path:
        return self.directory / item.relative.with_name(item.relative.name + self.suffix)

    def is_done(self, item: Item) -> bool:
        return not self.force and item.path is not None and self.target(item).exists()

    def write(self, record: dict, item: Item) -> bool:
        """False when the format cannot hold the record (its output was not JSON): then it is not done."""
        if self.fmt != "json" and record["metadata"] is None:
            return False
        target = self.target(item)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, render([record], self.fmt, single=True))
        return True

    def close(self) -> None:
        pass


def extract_batch(extractor, texts: list[str], doc_type: str | None, batch_size: int) -> list:
    """One Extraction, or the MetatuneError that stopped it, per text. A batch whose model call fails
    is tried again one document at a time, so that one poison document fails alone."""
    try:
        return extractor.extract(texts, [doc_type] * len(texts), batch_size)
    except Exception as e:  # noqa: BLE001 - the model failed on this batch; its documents may not
        if len(texts) == 1:
            return [e if isinstance(e, MetatuneError) else model_failure(e)]
    return [extract_batch(extractor, [text], doc_type, 1)[0] for text in texts]


def model_failure(error: Exception) -> MetatuneError:
    return MetatuneError(f"extraction failed: {type(error).__name__}: {error}".splitlines()[0])


READ_WORKERS = 2  # documents read at once ahead of the model (a PDF each in its own child process)


def run_many(
    run_dir: Path,
    items: list[Item],
    problems: list[str],
    doc_type: str | None,
    out: Path | None,
    out_dir: Path | None,
    fmt: str,
    force: bool,
    batch_size: int,
    open_extractor,
    max_chars: int = MAX_CHARS,
) -> int:
    """Extract `items` a batch at a time, writing each result when done. Returns the exit status."""
    from tqdm.auto import tqdm

    sink = DirectoryOut(out_dir, fmt, force) if out_dir is not None else JsonLinesOut(out, force)
    pending = [item for item in items if not sink.is_done(item)]
    skipped = len(items) - len(pending)
    if skipped:
        typer.echo(f"{skipped} of {len(items)} document(s) already done (--force redoes them)", err=True)
    failures = list(problems)
    for p in problems:
        typer.echo(f"error: {p} (skipped)", err=True)
    written = unparsed = 0
    extractor = None
    bar = tqdm(total=len(pending), unit="doc", disable=len(pending) < 2, file=sys.stderr)
    # the next batch parses while this one runs
    texts_ahead = read_ahead(pending, READ_WORKERS, 2 * batch_size, max_chars)
    try:
        while chunk := list(islice(texts_ahead, batch_size)):
            batch, texts = [], []
            for item, text in chunk:
                if isinstance(text, MetatuneError):
                    failures.append(str(text))
                    bar.write(f"error: {text} (skipped)", file=sys.stderr)
                    bar.update(1)
                    continue
                texts.append(text)
                batch.append(item)
            if not batch:
                continue
            extractor = extractor or open_extractor()  # loaded once the first document is readable
            results = extract_batch(extractor, texts, doc_type, batch_size)
            for item, result in zip(batch, results):
                bar.update(1)
                if isinstance(result, Exception):
                    failures.append(f"{item.name}: {result}")
                    bar.write(f"error: {item.name}: {result} (skipped)", file=sys.stderr)
                    continue
                record = document_record(item.name, result, extractor)
                unparsed += record["metadata"] is None
                if isinstance(sink, DirectoryOut):
                    if not sink.write(record, item):
                        failures.append(
                            f"{item.name}: the output was not JSON ({record.get('error')}), nothing to write as {fmt}"
                        )
                        continue
                else:
                    sink.write(record)
                written += 1
    finally:
        texts_ahead.close()
        bar.close()
        sink.close()
    if not written and not skipped and failures:
        more = f" (and {len(failures) - 1} more failed inputs)" if len(failures) > 1 else ""
        raise MetatuneError(failures[0] + more)
    return report_end(out_dir if out_dir is not None else out, written, unparsed, failures)


def report_end(where: Path | None, written: int, unparsed: int, failures: list[str]) -> int:
    """The end of a run over many documents, on stderr; the exit status (1 when an input failed)."""
    typer.echo(f"Wrote {written} document(s) to {where}", err=True)
    if unparsed:
        typer.echo(f"warning: {unparsed} output(s) could not be parsed as JSON", err=True)
    if failures:
        typer.echo(f"error: {len(failures)} input(s) failed (a rerun tries them again):", err=True)
        for failure in failures:
            typer.echo(f"  {failure}", err=True)
        return 1
    return 0


def check_outputs(out: Path | None, out_dir: Path | None) -> None:
    if out is not None and out_dir is not None:
        raise MetatuneError("--out and --out-dir: give one of them")
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise MetatuneError(f"{out_dir}: is a file; --out-dir takes a folder")
        if not out_dir.parent.is_dir():
            raise MetatuneError(f"{out_dir}: cannot write there (no such directory)")
