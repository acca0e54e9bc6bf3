#!/usr/bin/env python3
"""One config's evaluations over several seeds as a Markdown table: each seed, and the mean ± half the range.

    python scripts/seed_table.py RUN_42/eval-validation/metrics.json RUN_7/eval-validation/metrics.json ...
        [--metric soft|strict|levenshtein|ratcliff]

Reads the `metrics.json` that `metatune evaluate --report` writes, one per seed of the same config
(reports of different data, split, whitespace or `--micro-fields` are refused). Rows: every field
any of them scored, then the micro over the fields chosen with `--micro-fields` (when they chose
them) and the micro over all fields; a field a run did not score shows `–` and is left out of that
row's mean. Columns are named by each report's run directory.
The spread is half the range, as docs/benchmarks.md reports it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = ("soft", "strict", "levenshtein", "ratcliff")


def read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: {path}: not a readable metrics.json ({error})") from None
    if not isinstance(report, dict) or not isinstance(report.get("fields"), dict) or "micro" not in report:
        raise SystemExit(f"error: {path}: not a metatune evaluate report (no fields and micro)")
    return report


def column_name(path: Path, report: dict) -> str:
    return Path(str((report.get("run") or {}).get("run_dir") or path.parent.parent)).name


def same_evaluation(paths: list[Path], reports: list[dict]) -> None:
    """Refuses reports of different data, split, whitespace, PDF noise or chosen micro fields: their mean would mean nothing."""

    def settings(report: dict) -> dict:
        run = report.get("run") or {}
        return {
            "data": run.get("data"),
            "split": run.get("split"),
            "whitespace": run.get("collapsed_whitespace"),
            "PDF noise": run.get("pdf_noise", False),
            "micro fields": (report.get("micro_chosen") or {}).get("fields"),
        }

    first = settings(reports[0])
    for path, report in zip(paths[1:], reports[1:]):
        differ = [k for k, v in settings(report).items() if v != first[k]]
        if differ:
            raise SystemExit(f"error: {path} differs from {paths[0]} in {', '.join(differ)}: one evaluation per table")


def f1(block: dict | None, metric: str) -> float | None:
    value = ((block or {}).get(metric) or {}).get("f1")
    return 100 * value if isinstance(value, (int, float)) else None


def rows(reports: list[dict], metric: str) -> list[tuple[str, list[float | None]]]:
    fields: list[str] = []
    for report in reports:
        fields += [f for f in report["fields"] if f not in fields]
    table = [(field, [f1(r["fields"].get(field), metric) for r in reports]) for field in fields]
    chosen = [r.get("micro_chosen") for r in reports]
    if any(chosen):
        names = next(c["fields"] for c in chosen if c)
        table.append((f"micro over {', '.join(names)}", [f1(c, metric) for c in chosen]))
    table.append(("micro, all fields", [f1(r["micro"], metric) for r in reports]))
    return table


def mean_and_spread(values: list[float | None]) -> str:
    scored = [v for v in values if v is not None]
    if not scored:
        return "–"
    mean = sum(scored) / len(scored)
    return f"{mean:.1f}" if len(scored) == 1 else f"{mean:.1f} ± {(max(scored) - min(scored)) / 2:.1f}"


def markdown(paths: list[Path], metric: str) -> str:
    reports = [read_report(p) for p in paths]
    same_evaluation(paths, reports)
    names = [column_name(p, r) for p, r in zip(paths, reports)]
    lines = [
        f"| {metric} F1 (%) | " + " | ".join(names) + f" | **{len(reports)} runs** |",
        "|---|" + "---:|" * (len(reports) + 1),
    ]
    for label, values in rows(reports, metric):
        cells = ["–" if v is None else f"{v:.1f}" for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{mean_and_spread(values)}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="metrics.json of `metatune evaluate --report`")
    parser.add_argument("--metric", choices=METRICS, default="soft")
    args = parser.parse_args(argv)
    print(markdown(args.reports, args.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
