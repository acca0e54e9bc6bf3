"""The scripts: the one that turns a run's reports into the published tables, and the sample generator."""

import json
import re
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
    assert "60 steps (0.48 epochs) in 50 minutes" in table and "2 unreadable" in table


def test_grobid_comparison_without_a_report_says_what_to_run(tmp_path):
    (tmp_path / "metatune.json").write_text("{}")
    result = run_script(tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "metrics.json not found" in result.stderr
    assert "Traceback" not in result.stderr


def make_sample(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_sample.py"), *map(str, args)],
        capture_output=True,
        text=True,
    )


def test_make_sample_rewrites_data_sample_byte_for_byte(tmp_path):
    result = make_sample("--out", tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("sample.json", "holdout.txt"):
        assert (tmp_path / name).read_bytes() == (REPO / "data" / "sample" / name).read_bytes()


def test_make_sample_catalogued_is_seeded_and_differs_from_the_page_as_a_catalogue_does(tmp_path):
    for run in ("a", "b"):
        result = make_sample("--catalogued", "--per-type", 6, "--seed", 13, "--out", tmp_path / run)
        assert result.returncode == 0, result.stderr
    for name in ("sample.json", "holdout.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    dataset = json.loads((tmp_path / "a" / "sample.json").read_text(encoding="utf-8"))
    assert {split: len(records) for split, records in dataset.items()} == {"training": 24, "validation": 4, "test": 4}
    records = [r for split in dataset.values() for r in split]

    creators = [c for r in records for c in r["creator"]]
    assert all(re.fullmatch(r"[^,]+, [^,]+", c) for c in creators)  # "Surname, Given"
    assert any(" " in c.split(", ")[0] for c in creators)  # "de la Fuente, María Laura", "García Márquez, ..."

    def given_first(value, text):  # not verbatim, but "Given Surname" or "G. Surname"
        surname, given = value.split(", ")
        initials = " ".join(f"{g[0]}." for g in given.split())
        return value not in text and (f"{given} {surname}" in text or f"{initials} {surname}" in text)

    reworded = [r for r in records if all(given_first(c, r["original_text"]) for c in r["creator"])]
    assert len(reworded) >= 0.8 * len(records)
    assert all(re.fullmatch(r"\d{4}(-\d\d){0,2}", r["date"]) for r in records)
    assert all(r["rights"] and r["rightsurl"] for r in records)
    for field in ("rights", "rightsurl"):
        assert sum(r[field] not in r["original_text"] for r in records) >= len(records) / 2
    assert all(r["degree.name"] not in r["original_text"] for r in records if r["type"] == "Tesis")


def seed_report(path, run_dir, title, keywords, collapsed=False):
    """A metrics.json as `metatune evaluate --report` writes it, with two fields and the chosen micro."""
    path.parent.mkdir(parents=True)
    report = {
        "fields": {"title": scores(title, 10), "keywords": scores(keywords, 10)},
        "micro": scores((title + keywords) / 2, 20),
        "micro_chosen": {"fields": ["title"], **scores(title, 10)},
        "run": {"run_dir": str(run_dir), "data": "d.json", "split": "validation", "collapsed_whitespace": collapsed},
    }
    path.write_text(json.dumps(report))
    return path


def seed_table(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "seed_table.py"), *map(str, args)], capture_output=True, text=True
    )


def test_seed_table_gives_each_seed_and_the_mean_with_half_the_range(tmp_path):
    a = seed_report(tmp_path / "s42" / "eval" / "metrics.json", tmp_path / "s42", 0.90, 0.70)
    b = seed_report(tmp_path / "s7" / "eval" / "metrics.json", tmp_path / "s7", 0.94, 0.80)
    result = seed_table(a, b)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "| soft F1 (%) | s42 | s7 | **2 runs** |"
    assert "| title | 90.0 | 94.0 | **92.0 ± 2.0** |" in lines
    assert "| keywords | 70.0 | 80.0 | **75.0 ± 5.0** |" in lines
    assert "| micro over title | 90.0 | 94.0 | **92.0 ± 2.0** |" in lines
    assert "| micro, all fields | 80.0 | 87.0 | **83.5 ± 3.5** |" in lines


def test_seed_table_refuses_to_average_text_as_it_is_with_collapsed_text(tmp_path):
    a = seed_report(tmp_path / "s42" / "eval" / "metrics.json", tmp_path / "s42", 0.90, 0.70)
    b = seed_report(tmp_path / "s7" / "eval" / "metrics.json", tmp_path / "s7", 0.84, 0.72, collapsed=True)
    result = seed_table(a, b)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {b} differs from {a} in whitespace: one evaluation per table"
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    result = seed_table(broken)
    assert result.returncode == 1 and result.stderr.startswith(f"error: {broken}: not a readable metrics.json")
