"""Produce the README's evaluation table from a real run, with the command that made it.

    .venv/bin/python scripts/evaluation_table.py RUN_DIR --data DATASET [--split test] [--out FILE]
        [--baseline] [--limit N] [--batch-size N] [--num-beams N]

Runs `metatune evaluate` (report in RUN_DIR/eval-SPLIT), then writes a Markdown section: what was
evaluated (base model, training data and steps, split, documents), the per-field F1 table (strict,
soft, Levenshtein, Ratcliff/Obershelp), the zero-shot comparison when --baseline is given, parse
failures and generation speed, and the exact commands to reproduce it.

Example, the run the Makefile's `quality` target trains on the GROBID header corpus:

    .venv/bin/python scripts/evaluation_table.py runs/grobid-headers \\
        --data ../shared/data/grobid-headers/dataset.json --split validation --baseline \\
        --out docs/results-grobid-headers.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from metatune.errors import MetatuneError
from metatune.files import write_atomic


def describe(run_dir: Path) -> str:
    info = json.loads((run_dir / "metatune.json").read_text(encoding="utf-8"))
    config, training = info.get("config", {}), info.get("training", {})
    data = config.get("data", {})
    parts = [
        f"base model `{info.get('base_model')}` ({info.get('architecture')})",
        f"trained on `{data.get('path')}`" + (f" for {training['steps']} steps" if "steps" in training else ""),
        f"{training.get('train_examples', '?')} training examples",
        f"input style `{info['input']['style']}`",
        f"{info['limits']['max_input_tokens']} input / {info['limits']['max_target_tokens']} output tokens",
    ]
    if config.get("model", {}).get("lora", {}).get("enabled"):
        parts.append(f"LoRA r={config['model']['lora']['r']}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, help="Markdown file to write (default: print only)")
    parser.add_argument("--baseline", action="store_true", help="also evaluate the base model zero-shot")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-beams", type=int, default=1)
    args = parser.parse_args(argv)

    from metatune.config import ExtractionSettings
    from metatune.evaluate import comparison_table, run_evaluate, summary_line
    from metatune.report import markdown_table

    report = args.run_dir / f"eval-{args.split}"
    try:
        settings = ExtractionSettings(num_beams=args.num_beams, batch_size=args.batch_size)
        metrics = run_evaluate(
            args.run_dir,
            args.data,
            split=args.split,
            report=report,
            settings=settings,
            baseline="zero-shot" if args.baseline else None,
            limit=args.limit,
        )
    except MetatuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    command = [
        "metatune",
        "evaluate",
        str(args.run_dir),
        "--data",
        str(args.data),
        "--split",
        args.split,
        "--batch-size",
        str(args.batch_size),
        "--num-beams",
        str(args.num_beams),
    ]
    command += ["--baseline", "zero-shot"] if args.baseline else []
    command += ["--limit", str(args.limit)] if args.limit else []
    lines = [
        f"### Evaluation: {args.data.name}, split `{args.split}` ({metrics['documents']} documents)",
        "",
        f"Run `{args.run_dir}`: {describe(args.run_dir)}. Field-level F1 (%), "
        "GROBID-style matchings; `first_author` is derived from `creator` and left out of the averages.",
        "",
        markdown_table(metrics).rstrip(),
        "",
        summary_line(metrics) + f" on {metrics['run']['device']} ({platform.processor() or platform.machine()}).",
    ]
    if args.baseline:
        baseline = json.loads((report / "baseline" / "metrics.json").read_text(encoding="utf-8"))
        lines += [
            "",
            "What fine-tuning bought, against the base model prompted the same way (zero-shot):",
            "",
            comparison_table(metrics, baseline).rstrip(),
        ]
    lines += [
        "",
        "Reproduce:",
        "",
        "```bash",
        shlex.join(command),
        "```",
        "",
        f"_Generated {time.strftime('%Y-%m-%d')} by `scripts/evaluation_table.py`._",
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, text)
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
