"""The scripts that turn a run's reports into the published tables."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_script(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "grobid_comparison.py"), *map(str, args)],
        capture_output=True,
        text=True,
    )


def scores(f1, support):
    return {
        m: {"precision": f1, "recall": f1, "f1": f1, "support": support}
        for m in ("strict", "soft", "levenshtein", "ratcliff")
    }


def test_grobid_comparison_puts_soft_f1_next_to_grobid(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "metatune.json").write_text(
        json.dumps({"base_model": "smollm2-135m", "training": {"steps": 60, "epochs": 0.48, "seconds": 3000}})
    )
    metrics = {
        "fields": {
            "title": scores(0.875, 100),
            "creator": scores(0.5, 98),
            "first_author": scores(0.6, 98),
            "doi": scores(0.25, 20),
        },
        "micro": scores(0.7125, 0),
        "documents": 100,
        "parse_failures": 2,
        "seconds": 600,
        "run": {"split": "validation"},
    }
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "table.md"
    result = run_script(tmp_path, "--out", out)
    assert result.returncode == 0, result.stderr
    table = out.read_text()
    assert "| title | 87.5 | 91.9 | 100 |" in table
    assert "| authors | 50.0 | 94.7 | 98 |" in table
    assert "| first author | 60.0 | 97.1 | 98 |" in table
    assert "| keywords | — | 73.3 | 0 |" in table  # not trained: no figure of ours
    assert "| doi | 25.0 | — | 20 |" in table
    assert "| **micro average** | **71.2** | **84.8** | |" in table
    assert "60 steps (0.48 epochs) in 50 minutes" in table and "2 unparseable" in table


def test_grobid_comparison_without_a_report_says_what_to_run(tmp_path):
    (tmp_path / "metatune.json").write_text("{}")
    result = run_script(tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "metrics.json not found" in result.stderr
    assert "Traceback" not in result.stderr
