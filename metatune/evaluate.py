"""`metatune evaluate`: extract every document of a split, score field by field, report.

The reference for a document is exactly the target training built for it: the fields of its type
under the run's include/exclude settings (metatune.json), via formatting.target_json. Scoring
(strict, soft, Levenshtein, Ratcliff/Obershelp) is metrics.score_documents.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from metatune.config import ExtractionSettings
from metatune.data import load_dataset, record_type
from metatune.errors import MetatuneError
from metatune.extraction import Extraction
from metatune.faults import warning_on_fault, writing
from metatune.files import temp_dir_beside
from metatune.formatting import target_json
from metatune.metrics import MATCHINGS, score_documents
from metatune.noise import noisy_text
from metatune.report import bar_chart, catalogue_form_lines, markdown_table
from metatune.run_info import RunInfo
from metatune.text import collapse_whitespace

BASELINES = ("zero-shot",)
CHART_MATCHING = "soft"


@dataclass
class Item:
    """One document of the evaluated split."""

    index: int
    id: str | None
    doc_type: str
    text: str
    reference: dict
    fields: list[str]  # the fields the run writes for this type


def load_items(info: RunInfo, data: str | Path, split: str, limit: int | None = None) -> list[Item]:
    """The split's documents with their references, built as training built its targets."""
    registry = info.registry()
    fallback = info.fallback_type
    seed = info.setting("data", "split_seed", 42)  # a flat list splits as in training
    records = load_dataset(data, registry, fallback, seed).split(split)
    if limit is not None:
        if limit < 1:
            raise MetatuneError(f"--limit must be at least 1, got {limit}")
        records = records[:limit]
    items = []
    for i, record in enumerate(records):
        doc_type = registry.find(record_type(record)) or registry.find(fallback)
        fields = info.selection.fields(doc_type)
        rid = record.get("id")
        items.append(
            Item(
                i,
                None if rid is None else str(rid),
                doc_type.name,
                record["original_text"],
                target_json(record, fields),
                fields,
            )
        )
    return items


def scored_fields(items: list[Item], predictions: list[dict | None]) -> list[str]:
    """Every field some type of the split is trained to write, less those nobody wrote or expected."""
    union = list(dict.fromkeys(f for item in items for f in item.fields))
    present = {f for item in items for f in item.reference}
    present |= {f for p in predictions if p for f in p}
    return [f for f in union if f in present]


def score_predictions(items: list[Item], predictions: list[dict | None], chosen: list[str] | None = None) -> dict:
    """metrics.score_documents over (prediction, reference, type); a None prediction misses every field."""
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} documents but {len(predictions)} predictions")
    triples = [(p, item.reference, item.doc_type) for item, p in zip(items, predictions)]
    return score_documents(triples, scored_fields(items, predictions), chosen)


def evaluate_outputs(
    items: list[Item], results: list[Extraction], seconds: float = 0.0, chosen: list[str] | None = None
) -> tuple[dict, list[dict]]:
    """Score what an extractor returned; returns (metrics, one row per document for predictions.jsonl).

    The values scored are the extractor's final ones, as the run makes them; each row
    also keeps what the model wrote (`raw`).
    """
    predictions = [r.data for r in results]
    metrics = score_predictions(items, predictions, chosen)
    metrics["parse_failures"] = sum(r.data is None for r in results)
    metrics["seconds"] = round(seconds, 3)
    rows = [
        {
            "index": item.index,
            "id": item.id,
            "type": item.doc_type,
            "prediction": r.data,
            "reference": item.reference,
            "raw": r.raw,
            "parse_error": r.error,
            **r.notes,
        }
        for item, r in zip(items, results)
    ]
    return metrics, rows


def extract_outputs(extractor, items: list[Item], batch_size: int, progress: bool = True):
    """(one Extraction per item, seconds) of the extractor on the items' texts and types."""
    start = time.perf_counter()
    results = extractor.extract(
        [item.text for item in items], [item.doc_type for item in items], batch_size, progress=progress
    )
    return results, time.perf_counter() - start


def type_table(scores: dict) -> str:
    lines = ["| true type | n | correct | accuracy |", "|---|---:|---:|---:|"]
    for name, row in [*scores["by_type"].items(), ("**overall**", scores["overall"])]:
        lines.append(f"| {name} | {row['n']} | {row['correct']} | {row['accuracy'] * 100:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(directory: Path, metrics: dict, rows: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    with (directory / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    table = markdown_table(metrics)
    if form := catalogue_form_lines(metrics):
        table += f"\n{form}"
    if metrics.get("type_accuracy"):
        table += f"\n## Document type (the run's classifier, accuracy %)\n\n{type_table(metrics['type_accuracy'])}"
    (directory / "metrics.md").write_text(table, encoding="utf-8")
    bar_chart(metrics, directory / "f1.png", matching=CHART_MATCHING)


def comparison_table(tuned: dict, baseline: dict, matching: str = CHART_MATCHING) -> str:
    """F1 per field, fine-tuned next to the zero-shot base model, under one matching."""
    fields = list(dict.fromkeys([*tuned["fields"], *baseline["fields"]]))
    fields = [f for f in fields if f != "first_author"] + (["first_author"] if "first_author" in fields else [])

    def f1(m: dict, field: str | None) -> str:
        scores = m["fields"].get(field) if field else None
        return f"{scores[matching]['f1'] * 100:.1f}" if scores else "–"

    lines = [f"| field ({matching} F1) | fine-tuned | zero-shot |", "|---|---:|---:|"]
    lines += [f"| {f} | {f1(tuned, f)} | {f1(baseline, f)} |" for f in fields]
    for avg in ("micro", "macro"):
        lines.append(
            f"| **{avg}** | {tuned[avg][matching]['f1'] * 100:.1f} | {baseline[avg][matching]['f1'] * 100:.1f} |"
        )
    return "\n".join(lines) + "\n"


def check_report_dir(report: Path) -> None:
    """Only a previous report (or an empty folder) may be replaced: never an unrelated directory."""
    if report.exists() and not report.is_dir():
        raise MetatuneError(f"{report}: exists and is not a directory")
    if report.is_dir() and any(report.iterdir()) and not (report / "metrics.json").is_file():
        raise MetatuneError(f"{report}: holds files that are not an evaluation report; choose another --report")


def run_evaluate(
    run_dir: Path,
    data: Path,
    *,
    split: str = "test",
    report: Path | None = None,
    settings: ExtractionSettings = ExtractionSettings(),
    baseline: str | None = None,
    limit: int | None = None,
    micro_fields: list[str] | None = None,
    collapse: bool = False,
    noise: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate a run (and optionally the zero-shot base model), write the report, print the table."""
    if baseline is not None and baseline not in BASELINES:
        raise MetatuneError(f"--baseline: unknown baseline {baseline!r} (choose from {', '.join(BASELINES)})")
    info = RunInfo.read(run_dir)
    from metatune.objectives import card, open_run, type_accuracy  # imports torch: seconds

    items = load_items(info, data, split, limit)
    if micro_fields:
        known = {f for item in items for f in item.fields} | {"first_author"}
        if unknown := [f for f in micro_fields if f not in known]:
            raise MetatuneError(f"--micro-fields: {unknown[0]!r} is not a field this run writes")
    if noise:  # as tools without line structure give them: margin stamps, glued line ends, seeded per document
        items = [
            replace(item, text=noisy_text(dict(item.reference, original_text=item.text), random.Random(item.index)))
            for item in items
        ]
    elif collapse:  # the same documents with every run of whitespace made one space
        items = [replace(item, text=collapse_whitespace(item.text)) for item in items]
    report = Path(report) if report else Path(run_dir) / f"eval-{split}"
    check_report_dir(report)
    # the field scores are extracted with the true types; this is the type extraction without one
    # would have chosen for the same texts (None: the run predicts no type apart from extraction)
    types = type_accuracy(Path(run_dir), info, [i.text for i in items], [i.doc_type for i in items])

    runs = {"fine-tuned": False} | ({"zero-shot": True} if baseline else {})
    results = {}
    for name, base in runs.items():
        extractor = open_run(run_dir, settings, baseline=base)
        print(f"Evaluating {name} model on {len(items)} '{split}' documents of {data}")
        outputs, seconds = extract_outputs(extractor, items, settings.batch_size, progress)
        metrics, rows = evaluate_outputs(items, outputs, seconds, micro_fields)
        metrics["run"] = {
            "run_dir": str(run_dir),
            "model": info.base_model if base else str(run_dir),
            "baseline": name if base else None,
            "data": str(data),
            "split": split,
            "collapsed_whitespace": collapse or noise,
            "pdf_noise": noise,
            **extractor.statistics(outputs),
            "device": str(extractor.device),
            "dtype": str(extractor.model.dtype).removeprefix("torch."),
        }
        if types and not base:
            metrics["type_accuracy"] = types
        results[name] = (metrics, rows)
        del extractor

    with writing(report, "the evaluation report", then="run it again"):
        report.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir_beside(report)
        try:
            write_report(tmp, *results["fine-tuned"])
            if baseline:
                write_report(tmp / "baseline", *results["zero-shot"])
                (tmp / "comparison.md").write_text(
                    comparison_table(results["fine-tuned"][0], results["zero-shot"][0]), encoding="utf-8"
                )
            if report.exists():
                shutil.rmtree(report)
            tmp.rename(report)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    for name, (metrics, _) in results.items():
        print(f"\n## {name} ({metrics['documents']} documents, F1 %)\n")
        print(markdown_table(metrics), end="")
        print(catalogue_form_lines(metrics), end="")
        print(summary_line(metrics))
    if types:
        print("\n## document type: the run's classifier on the same texts (accuracy %)\n")
        print(type_table(types), end="")
    if baseline:
        print("\n## fine-tuned vs zero-shot\n")
        print((report / "comparison.md").read_text(encoding="utf-8"), end="")
    print(f"\nReport written to {report}")
    from metatune.card import record_evaluation

    with warning_on_fault(run_dir, "the evaluation into the run's model card"):
        record_evaluation(run_dir, results["fine-tuned"][0], card)  # the card shows the last evaluation
    return results["fine-tuned"][0]


def summary_line(metrics: dict) -> str:
    docs, secs = metrics["documents"], metrics["seconds"]
    rate = f", {docs / secs:.2f} documents/s" if secs else ""
    micro = ", ".join(f"{m} {metrics['micro'][m]['f1'] * 100:.1f}" for m in MATCHINGS)
    return f"micro F1: {micro}; {metrics['parse_failures']} of {docs} outputs unreadable; extraction {secs:.1f} s{rate}"
