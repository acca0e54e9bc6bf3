"""`metatune extract --engine ray`: a whole collection on a Ray cluster (or a local Ray).

Ray Data reads the documents in parallel tasks (documents.read_item: the same parsing, PDF limits
included, as the local engine), runs the run's extractor in a pool of actors that each load it once
(`map_batches` with a callable class, --workers, --cpus-per-worker, --batch-size), and streams the
results back to this process, which writes each one as it arrives, with the same outputs and the
same resume rules as the local folder run (folder_run.py): a rerun skips the documents already
written (keyed by source), failed documents are listed at the end and not marked done, a batch whose
model call raises is tried one document at a time. Ray retries failed tasks and restarts dead
actors; a document is written once however often it was computed.

Without --address a local Ray starts with the command and stops with it; with one, the command
joins that cluster (the run directory must then be readable at the same path on every node).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from metatune.config import ExtractionSettings
from metatune.documents import Item, read_item
from metatune.errors import MetatuneError
from metatune.folder_run import DirectoryOut, JsonLinesOut, extract_batch, report_end
from metatune.formats import document_record
from metatune.pdf import MAX_CHARS

RESTARTS = 3  # times Ray restarts a dead actor (its batches are redone)
READ_CPUS = 0.25


def read_row(row: dict) -> dict:
    """One document's text, or the one-line error that stopped reading it (a Ray Data map task)."""
    item = Item(row["name"], Path(row["path"]), Path(row["relative"]))
    try:
        return {**row, "text": read_item(item, row["max_chars"]), "error": ""}
    except MetatuneError as e:
        return {**row, "text": "", "error": str(e)}


class ExtractActor:
    """A Ray actor: loads the run once, then turns batches of read documents into output records."""

    def __init__(self, run_dir: str, settings: dict, doc_type: str | None, threads: int):
        import torch

        from metatune.objectives import open_run

        torch.set_num_threads(threads)
        self.settings = ExtractionSettings(**settings)
        self.extractor = open_run(run_dir, self.settings)
        self.doc_type = doc_type

    def __call__(self, batch: dict) -> dict:
        names, texts, errors = list(batch["name"]), list(batch["text"]), list(batch["error"])
        readable = [i for i, error in enumerate(errors) if not error]
        results = extract_batch(self.extractor, [texts[i] for i in readable], self.doc_type, self.settings.batch_size)
        records = [""] * len(names)
        for i, result in zip(readable, results):
            if isinstance(result, Exception):
                errors[i] = f"{names[i]}: {result}"
            else:
                records[i] = json.dumps(document_record(names[i], result, self.extractor), ensure_ascii=False)
        return {"name": names, "record": records, "error": errors}


def check_ray():
    try:
        import ray
    except ImportError:
        raise MetatuneError("--engine ray needs Ray: pip install 'metatune[ray]'") from None
    return ray


def run_on_ray(
    run_dir: Path,
    items: list[Item],
    problems: list[str],
    *,
    doc_type: str | None,
    out: Path | None,
    out_dir: Path | None,
    fmt: str,
    force: bool,
    settings: ExtractionSettings,
    workers: int,
    cpus_per_worker: float,
    address: str | None,
    max_chars: int = MAX_CHARS,
) -> int:
    """Extract `items` on Ray, writing each result as it arrives. Returns the exit status."""
    from tqdm.auto import tqdm

    ray = check_ray()
    if workers < 1 or cpus_per_worker <= 0:
        raise MetatuneError("--workers must be at least 1 and --cpus-per-worker more than 0")
    if any(item.path is None for item in items):
        raise MetatuneError("--engine ray reads files and folders, not standard input")
    sink = DirectoryOut(out_dir, fmt, force) if out_dir is not None else JsonLinesOut(out, force)
    pending = {item.name: item for item in items if not sink.is_done(item)}
    skipped = len(items) - len(pending)
    if skipped:
        typer.echo(f"{skipped} of {len(items)} document(s) already done (--force redoes them)", err=True)
    failures = list(problems)
    for p in problems:
        typer.echo(f"error: {p} (skipped)", err=True)
    written = unparsed = 0
    if pending:
        started_here = not ray.is_initialized()
        if started_here:
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            # a local Ray: the actors' CPUs, and one more logical CPU for the reads that feed them (a
            # read is mostly waiting on its PDF child process), else actors holding every CPU starve them
            cpus = max(os.cpu_count() or 1, int(workers * cpus_per_worker + 0.999))
            kwargs = {"address": address} if address else {"num_cpus": cpus + 1}
            ray.init(**kwargs, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            rows = [
                {"name": i.name, "path": str(i.path.resolve()), "relative": str(i.relative), "max_chars": max_chars}
                for i in pending.values()
            ]
            dataset = (
                ray.data.from_items(rows)
                .map(read_row)
                .map_batches(
                    ExtractActor,
                    fn_constructor_kwargs={
                        "run_dir": str(Path(run_dir).resolve()),
                        "settings": settings.__dict__,
                        "doc_type": doc_type,
                        "threads": max(int(cpus_per_worker), 1),
                    },
                    batch_size=settings.batch_size,
                    concurrency=(1, workers),  # starts with one actor: reads need CPU too
                    num_cpus=cpus_per_worker,
                    max_restarts=RESTARTS,
                    max_task_retries=RESTARTS,
                )
            )
            bar = tqdm(total=len(pending), unit="doc", file=sys.stderr, disable=len(pending) < 2)
            try:
                for row in dataset.iter_rows():
                    item = pending.pop(row["name"], None)
                    if item is None:  # computed again after a worker died: written already
                        continue
                    bar.update(1)
                    if row["error"]:
                        failures.append(row["error"])
                        bar.write(f"error: {row['error']} (skipped)", file=sys.stderr)
                        continue
                    record = json.loads(row["record"])
                    unparsed += record["metadata"] is None
                    if isinstance(sink, DirectoryOut):
                        if not sink.write(record, item):
                            failures.append(f"{item.name}: the output was not JSON, nothing to write as {fmt}")
                            continue
                    else:
                        sink.write(record)
                    written += 1
            finally:
                bar.close()
        finally:
            sink.close()
            if started_here:
                ray.shutdown()
    return report_end(out_dir if out_dir is not None else out, written, unparsed, failures)
