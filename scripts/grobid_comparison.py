"""Soft-matching F1 per field of an evaluated run, next to GROBID 0.8.2's published figures.

    .venv/bin/python scripts/grobid_comparison.py RUN_DIR [--report DIR] [--out FILE]

Reads RUN_DIR/metatune.json (what was trained, for how long) and the report `metatune evaluate`
wrote (default RUN_DIR/eval), and writes a Markdown table: metatune's soft F1 for title, authors
(`creator`), first author, keywords, abstract and the micro average, GROBID's figures for the same
fields, and the training time and machine. `make quality` and `make quality-generate` run it after training and evaluating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

# GROBID 0.8.2's end-to-end header benchmark (1943 PubMed Central PDFs), soft matching, F1 in %;
# as quoted in ../shared/data/grobid-headers/README.md. Its micro average pools all its header fields.
GROBID = {"title": 91.9, "creator": 94.7, "first_author": 97.1, "keywords": 73.3, "abstract": 63.3}
GROBID_MICRO = 84.8
LABELS = {"creator": "authors", "first_author": "first author"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def comparison(run_dir: Path, report: Path) -> str:
    info = json.loads((run_dir / "metatune.json").read_text(encoding="utf-8"))
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    training = info.get("training", {})
    soft = {field: scores["soft"]["f1"] * 100 for field, scores in metrics["fields"].items()}
    rows = ["| field | metatune soft F1 | GROBID 0.8.2 soft F1 | support |", "|---|---:|---:|---:|"]
    for field, grobid in GROBID.items():
        ours = f"{soft[field]:.1f}" if field in soft else "—"
        support = metrics["fields"].get(field, {}).get("soft", {}).get("support", 0)
        rows.append(f"| {LABELS.get(field, field)} | {ours} | {grobid:.1f} | {support} |")
    for field in sorted(set(soft) - set(GROBID)):  # fields GROBID's benchmark does not report
        rows.append(f"| {field} | {soft[field]:.1f} | — | {metrics['fields'][field]['soft']['support']} |")
    rows.append(f"| **micro average** | **{metrics['micro']['soft']['f1'] * 100:.1f}** | **{GROBID_MICRO:.1f}** | |")
    minutes = training.get("seconds", 0) / 60
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"Model `{info.get('base_model')}` fine-tuned for {training.get('steps', '?')} steps "
        f"({training.get('epochs', 0):.2f} epochs) in {minutes:.0f} minutes on {cores} cores of an {cpu_name()}; "
        f"evaluated on {metrics['documents']} documents of split `{metrics['run'].get('split', '?')}` "
        f"({metrics['parse_failures']} unreadable outputs, extraction {metrics['seconds'] / 60:.0f} minutes).",
        "",
        *rows,
        "",
        "GROBID's figures are its own end-to-end benchmark on 1943 PubMed Central PDFs, not this split;"
        " its micro average pools all its header fields.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--report", type=Path, help="the evaluation report (default RUN_DIR/eval)")
    parser.add_argument("--out", type=Path, help="Markdown file to write (default: print only)")
    args = parser.parse_args(argv)
    report = args.report or args.run_dir / "eval"
    for needed in (args.run_dir / "metatune.json", report / "metrics.json"):
        if not needed.is_file():
            print(
                f"error: {needed} not found (train with `metatune train`, then run `metatune evaluate`)",
                file=sys.stderr,
            )
            return 2
    text = comparison(args.run_dir, report)
    print(text, end="")
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
