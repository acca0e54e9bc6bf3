"""Runs saved by metatune before the objectives moved into metatune/objectives/ (commit b061406,
tests/fixtures/make_runs.py) load and extract exactly what they extracted then, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
INPUTS = ["inputs/holdout.txt", "inputs/synthetic-0.txt", "inputs/synthetic-1.txt"]


@pytest.mark.parametrize("objective", ["generate", "tag"])
def test_a_run_saved_before_the_objective_seam_extracts_the_same_bytes(objective, tmp_path):
    out = tmp_path / "out.jsonl"
    command = ["extract", f"{objective}-run", *INPUTS, "--dtype", "float32", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "metatune", *command], cwd=FIXTURES, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (FIXTURES / f"{objective}-extract.jsonl").read_bytes()


def test_the_import_model_cards_name_still_opens_both_runs():
    from metatune.inference import open_run

    assert "from metatune.inference import open_run" in (FIXTURES / "tag-run" / "README.md").read_text()
    for objective in ("generate", "tag"):
        extractor = open_run(FIXTURES / f"{objective}-run")
        assert extractor.info.objective == objective
        result = extractor.extract([(FIXTURES / INPUTS[1]).read_text(encoding="utf-8")])[0]
        assert result.data and result.doc_type in extractor.registry.types
