"""`metatune extract`: documents in, one record per document out.

Inputs are PDF files, text files, folders of them, or '-' for standard input (metatune/documents.py).
Every output is checked against the JSON schema of its document type (formats.document_record): a
single string where a list is expected becomes a one-element list, a number where text is
expected becomes text, and any other violation (a field the type does not have, a value of the
wrong shape) is dropped and named in `schema_fixes`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from metatune.config import ExtractionSettings
from metatune.documents import list_inputs, read_inputs
from metatune.errors import MetatuneError
from metatune.faults import writing
from metatune.files import write_atomic
from metatune.formats import FORMATS, document_record, render

ENGINES = ("local", "ray")  # where documents are extracted: this process, or a Ray cluster


def run_extract(
    run_dir: Path,
    inputs: list[str],
    *,
    doc_type: str | None = None,
    out: Path | None = None,
    settings: ExtractionSettings = ExtractionSettings(),
    fmt: str = "json",
    out_dir: Path | None = None,
    force: bool = False,
    engine: str = "local",
    ray_options: dict | None = None,
) -> int:
    """Extract and write; returns the exit status (1 when some inputs were unreadable and skipped).

    With `out_dir`, or several inputs and a JSON Lines `out`, each result is written when done and a
    rerun skips what is there (metatune/folder_run.py). `engine` "ray" runs them on Ray
    (metatune/ray_engine.py; `ray_options`: workers, cpus_per_worker, address)."""
    from metatune.export import read_run_info
    from metatune.folder_run import check_outputs, run_many
    from metatune.objectives import input_tokens, open_run
    from metatune.pdf import chars_for

    if fmt not in FORMATS:
        raise MetatuneError(f"--format: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if engine not in ENGINES:
        raise MetatuneError(f"--engine: unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    if engine == "ray":
        from metatune.ray_engine import check_ray

        check_ray()
        if out is None and out_dir is None:
            raise MetatuneError("--engine ray writes results as they complete: give --out FILE.jsonl or --out-dir DIR")
    info = read_run_info(run_dir)
    if doc_type is not None and info.registry().find(doc_type) is None:
        raise MetatuneError(f"--type: unknown document type {doc_type!r} (known: {', '.join(info.types)})")
    if out is not None and out.is_dir():
        raise MetatuneError(f"{out}: is a directory; --out takes a file name")
    if out is not None and not out.parent.is_dir():
        raise MetatuneError(f"{out}: cannot write there (no such directory)")
    check_outputs(out, out_dir)
    max_chars = chars_for(input_tokens(info))  # a PDF's pages after the text the model reads are not parsed
    single = len(inputs) == 1 and (inputs[0] == "-" or not Path(inputs[0]).is_dir())
    if engine == "ray" or out_dir is not None or (not single and out is not None and fmt == "json"):
        items, problems = list_inputs(inputs)
        if not items:
            more = f" (and {len(problems) - 1} more unreadable inputs)" if len(problems) > 1 else ""
            raise MetatuneError((problems[0] if problems else "no input documents") + more)
        with writing(out_dir or out, "the results", then="rerun: it continues where it stopped"):
            if engine == "ray":
                from metatune.ray_engine import run_on_ray

                return run_on_ray(
                    run_dir,
                    items,
                    problems,
                    doc_type=doc_type,
                    out=out,
                    out_dir=out_dir,
                    fmt=fmt,
                    force=force,
                    settings=settings,
                    max_chars=max_chars,
                    **(ray_options or {}),
                )
            return run_many(
                run_dir,
                items,
                problems,
                doc_type,
                out,
                out_dir,
                fmt,
                force,
                settings.batch_size,
                lambda: open_run(run_dir, settings),
                max_chars,
            )
    docs, problems = read_inputs(inputs, max_chars)
    if not docs:
        more = f" (and {len(problems) - 1} more unreadable inputs)" if len(problems) > 1 else ""
        raise MetatuneError((problems[0] if problems else "no input documents") + more)
    for p in problems:
        typer.echo(f"error: {p} (skipped)", err=True)

    extractor = open_run(run_dir, settings)
    results = extractor.extract(
        [text for _, text in docs], [doc_type] * len(docs), settings.batch_size, progress=len(docs) > 1
    )
    records = [document_record(name, r, extractor) for (name, _), r in zip(docs, results)]
    text = render(records, fmt, single)
    if out:
        with writing(out, "the results", then="run it again"):
            write_atomic(out, text)
        typer.echo(f"Wrote {len(records)} document(s) to {out}", err=True)
    else:
        typer.echo(text, nl=False)
    failed = sum(r["metadata"] is None for r in records)
    if failed:
        typer.echo(f"warning: {failed} of {len(records)} outputs could not be parsed as JSON (see 'error')", err=True)
    return 1 if problems else 0
