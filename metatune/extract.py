"""`metatune extract`: documents in, one JSON object per document out.

Inputs are PDF files (text via pdfplumber, metatune/pdf.py), text files, folders of them, or '-' for
standard input. Every text goes through metatune.text.clean_text, as training text does.
Every output is checked against the JSON schema of its document type (DocType.json_schema): a
single string where a list is expected becomes a one-element list, a number where text is
expected becomes text, and any other violation (a field the type does not have, a value of the
wrong shape) is dropped and named in `schema_fixes`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from metatune.errors import MetatuneError
from metatune.files import write_atomic
from metatune.formatting import has_value

TEXT_SUFFIXES = {".txt", ".text", ".md"}
PDF_SUFFIX = ".pdf"


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES | {PDF_SUFFIX})
    return [path]


def read_document(path: Path) -> str:
    """The cleaned text of one file: a PDF through pdfplumber, anything else as text. Raises when there is none."""
    from metatune.data import read_text
    from metatune.pdf import pdf_text
    from metatune.text import clean_text

    if path.suffix.lower() == PDF_SUFFIX:
        return pdf_text(path)  # cleaned already
    try:
        text = read_text(path)
    except OSError as e:
        raise MetatuneError(f"{path}: cannot read: {e.strerror or e}") from None
    if not text.strip():
        raise MetatuneError(f"{path}: no text to extract from")
    return clean_text(text)


def read_inputs(inputs: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, text) of every readable document, and a one-line message for every unreadable one."""
    from metatune.folder_run import list_inputs, read_item
    from metatune.text import clean_text

    items, problems = list_inputs(inputs)
    docs = []
    for item in items:
        try:
            docs.append((item.name, clean_text(read_item(item))))  # standard input too
        except MetatuneError as e:
            problems.append(str(e))
    return docs, problems


def conform(data: dict, schema: dict) -> tuple[dict, dict[str, str]]:
    """The metadata made valid under `schema`, and what was changed, field by field.

    Empty values are left out (as in the training targets). A string where a list of strings is
    expected is wrapped in a list; a number where a string is expected becomes a string, and a list
    of strings is joined with "; " (affiliations written as a list); anything else that does not
    validate is dropped.
    """
    from jsonschema import Draft202012Validator

    properties = schema["properties"]
    clean, fixes = {}, {}
    for key, value in data.items():
        if isinstance(value, list):
            value = [v for v in value if has_value(v)]
        if not has_value(value):
            continue
        if key not in properties:
            fixes[key] = f"dropped: not a field of type '{schema['title']}'"
            continue
        expected = properties[key].get("type")
        if expected == "array" and isinstance(value, str):
            value, fixes[key] = [value], "converted: a single string to a list"
        elif expected == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value, fixes[key] = str(value), "converted: a number to text"
        elif expected == "string" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value, fixes[key] = "; ".join(value), "converted: a list of texts joined with '; '"
        error = next(Draft202012Validator(properties[key]).iter_errors(value), None)
        if error is not None:
            fixes[key] = f"dropped: {error.message}"
            continue
        clean[key] = value
    return clean, fixes


def document_record(name: str, extraction, extractor) -> dict:
    """The output object of one document: source, type, schema-valid metadata and what was fixed."""
    doc_type = extractor.registry.types[extraction.doc_type]
    record = {"source": name, "type": doc_type.name, "metadata": None}
    if extraction.data is None:
        record["error"] = extraction.error
        record["raw"] = extraction.raw
        return record
    data = dict(extraction.data)
    if extractor.registry.find(data.get("type")) is doc_type:
        data.pop("type")  # the type the model named is the record's type
    record["metadata"], fixes = conform(data, doc_type.json_schema(extractor.fields(doc_type.name)))
    if fixes:
        record["schema_fixes"] = fixes
    if extraction.repaired:
        record["repaired"] = True
    return record


def run_extract(run_dir: Path, inputs: list[str], doc_type: str | None, out: Path | None, batch_size: int = 8,
                num_beams: int = 1, max_new_tokens: int | None = None, dtype: str = "auto",
                trust_remote_code: bool = False, snap: bool | None = None, fmt: str = "json",
                out_dir: Path | None = None, force: bool = False) -> int:
    """Extract and write; returns the exit status (1 when some inputs were unreadable and skipped).

    With `out_dir`, or several inputs and a JSON Lines `out`, each result is written when done and a
    rerun skips what is there (metatune/folder_run.py)."""
    from metatune.doctypes import TypeRegistry
    from metatune.export import read_run_info
    from metatune.folder_run import check_outputs, list_inputs, run_many
    from metatune.formats import FORMATS, render
    from metatune.inference import open_run

    if batch_size < 1:
        raise MetatuneError(f"--batch-size must be at least 1, got {batch_size}")
    if fmt not in FORMATS:
        raise MetatuneError(f"--format: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    info = read_run_info(run_dir)
    if doc_type is not None and TypeRegistry.from_dict(info["types"]).find(doc_type) is None:
        raise MetatuneError(f"--type: unknown document type {doc_type!r} (known: {', '.join(info['types'])})")
    if out is not None and out.is_dir():
        raise MetatuneError(f"{out}: is a directory; --out takes a file name")
    if out is not None and not out.parent.is_dir():
        raise MetatuneError(f"{out}: cannot write there (no such directory)")
    check_outputs(out, out_dir)
    single = len(inputs) == 1 and (inputs[0] == "-" or not Path(inputs[0]).is_dir())
    if out_dir is not None or (not single and out is not None and fmt == "json"):
        items, problems = list_inputs(inputs)
        if not items:
            more = f" (and {len(problems) - 1} more unreadable inputs)" if len(problems) > 1 else ""
            raise MetatuneError((problems[0] if problems else "no input documents") + more)
        return run_many(run_dir, items, problems, doc_type, out, out_dir, fmt, force, batch_size, lambda: open_run(
            run_dir, num_beams=num_beams, max_new_tokens=max_new_tokens, dtype=dtype,
            trust_remote_code=trust_remote_code, snap=snap))
    docs, problems = read_inputs(inputs)
    if not docs:
        more = f" (and {len(problems) - 1} more unreadable inputs)" if len(problems) > 1 else ""
        raise MetatuneError((problems[0] if problems else "no input documents") + more)
    for p in problems:
        typer.echo(f"error: {p} (skipped)", err=True)

    extractor = open_run(run_dir, num_beams=num_beams, max_new_tokens=max_new_tokens, dtype=dtype,
                         trust_remote_code=trust_remote_code, snap=snap)
    results = extractor.extract([text for _, text in docs], [doc_type] * len(docs), batch_size, progress=len(docs) > 1)
    records = [document_record(name, r, extractor) for (name, _), r in zip(docs, results)]
    text = render(records, fmt, single)
    if out:
        write_atomic(out, text)
        typer.echo(f"Wrote {len(records)} document(s) to {out}", err=True)
    else:
        typer.echo(text, nl=False)
    failed = sum(r["metadata"] is None for r in records)
    if failed:
        typer.echo(f"warning: {failed} of {len(records)} outputs could not be parsed as JSON (see 'error')", err=True)
    return 1 if problems else 0
