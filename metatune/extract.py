"""`metatune extract`: documents in, one JSON object per document out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metatune.errors import MetatuneError

TEXT_SUFFIXES = {".txt", ".text", ".md"}


def read_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """(name, text) for every input: text files, folders of them, or '-' for standard input."""
    docs = []
    for item in inputs:
        if item == "-":
            docs.append(("-", sys.stdin.read()))
            continue
        path = Path(item)
        if not path.exists():
            raise MetatuneError(f"{path}: input not found")
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES) if path.is_dir() else [path]
        for f in files:
            docs.append((str(f), f.read_text(encoding="utf-8", errors="replace")))
    for name, text in docs:
        if not text.strip():
            raise MetatuneError(f"{name}: no text to extract from")
    return docs


def run_extract(run_dir: Path, inputs: list[str], doc_type: str | None, out: Path | None, batch_size: int) -> None:
    from metatune.inference import Extractor

    docs = read_inputs(inputs)
    extractor = Extractor(run_dir)
    results = extractor.extract([text for _, text in docs], [doc_type] * len(docs), batch_size)
    lines = []
    for (name, _), r in zip(docs, results):
        record = {"source": name, "type": r.doc_type, "metadata": r.data}
        if r.error:
            record["error"] = r.error
        lines.append(json.dumps(record, ensure_ascii=False))
    text = json.dumps(json.loads(lines[0]), ensure_ascii=False, indent=2) if len(lines) == 1 else "\n".join(lines)
    if out:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(out)
    else:
        print(text)
