"""The `metatune` command on bad input: one line `error: ...`, exit status 2, no traceback, nothing on disk.

Commands run as `python -m metatune` in a subprocess, the way a user runs them; the few that go on to
train run in this process (through metatune.cli.main, which does the error handling) to spare the
import of torch in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from metatune.config import preset_names

from conftest import SAMPLE

TYPES = ("Tesis", "Articulo", "Libro", "Objeto de conferencia")


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "metatune", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def assert_one_line_error(result: subprocess.CompletedProcess, *parts: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def sample() -> dict:
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def broken(tmp_path: Path, field: str | None, value=None, drop=False, split="training", index=2) -> Path:
    data = sample()
    record = data[split][index]
    if drop:
        del record[field]
    elif field:
        record[field] = value
    return write_json(tmp_path / "data.json", data)


# --- metatune train -------------------------------------------------------------------------------


def bad_train_input(tmp_path: Path, case: str) -> tuple[list, list[str]]:
    """(arguments, parts of the expected message) for one mistake; writes the file it needs."""
    if case == "missing file":
        return ["--data", tmp_path / "missing.json"], [f"{tmp_path / 'missing.json'}: dataset file not found"]
    if case == "invalid JSON":
        invalid = tmp_path / "invalid.json"
        invalid.write_text('{"training": [{"type": "Tesis", "original_text": "x"},]}', encoding="utf-8")
        return ["--data", invalid], [f"{invalid}: invalid JSON at line 1, column"]
    if case == "no original_text":
        return (
            ["--data", broken(tmp_path, "original_text", drop=True)],
            ["data.json: record training[2]: field 'original_text': missing"],
        )
    if case == "empty text":
        return (
            ["--data", broken(tmp_path, "original_text", "  \n ", split="validation", index=1)],
            ["data.json: record validation[1]: field 'original_text': empty text"],
        )
    if case == "text not a string":
        return (
            ["--data", broken(tmp_path, "original_text", ["a", "b"])],
            ["data.json: record training[2]: field 'original_text': expected text, got list"],
        )
    assert case == "unknown type"
    return (
        ["--data", broken(tmp_path, "type", "Revista", split="test", index=0)],
        ["data.json: record test[0]: field 'type': unknown document type 'Revista'", "data.fallback_type"],
    )


@pytest.mark.parametrize(
    "case", ["missing file", "invalid JSON", "no original_text", "empty text", "text not a string", "unknown type"]
)
def test_train_bad_data(tmp_path, case):
    args, parts = bad_train_input(tmp_path, case)
    before = snapshot(tmp_path)
    result = run_cli("train", *args, "--output", tmp_path / "run", cwd=tmp_path)
    assert_one_line_error(result, *parts)
    assert snapshot(tmp_path) == before


def test_train_empty_split(tmp_path):
    data = sample()
    data["validation"] = []
    path = write_json(tmp_path / "data.json", data)
    before = snapshot(tmp_path)
    result = run_cli("train", "--data", path, "--output", tmp_path / "run", cwd=tmp_path)
    assert_one_line_error(result, f"{path}: split 'validation' is empty")
    assert snapshot(tmp_path) == before


def test_train_output_holds_a_different_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metatune.json").write_text('{"format_version": 1, "base_model": "other"}', encoding="utf-8")
    before = snapshot(tmp_path)
    result = run_cli("train", "--data", SAMPLE, "--output", out, cwd=tmp_path)
    assert_one_line_error(result, f"{out}: already holds a different run; pass --overwrite to replace it")
    assert snapshot(tmp_path) == before


def test_train_unknown_yaml_key(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  path: data.json\ntraining:\n  learnig_rate: 1.0e-4\n", encoding="utf-8")
    before = snapshot(tmp_path)
    result = run_cli("train", "--config", config, cwd=tmp_path)
    assert_one_line_error(
        result, f"{config}: unknown key 'training.learnig_rate'; did you mean 'training.learning_rate'?"
    )
    result = run_cli("train", "--set", "data.max_input_token=256", cwd=tmp_path)
    assert_one_line_error(result, "unknown key 'data.max_input_token'; did you mean 'data.max_input_tokens'?")
    result = run_cli("train", "--set", "training.max_steps=many", cwd=tmp_path)
    assert_one_line_error(result, "training.max_steps")
    assert snapshot(tmp_path) == before


def test_train_bad_set_value_and_bad_models_are_one_line_errors(tmp_path):
    before = snapshot(tmp_path)
    result = run_cli("train", "--set", "training.max_steps=[1", cwd=tmp_path)
    assert_one_line_error(result, "--set 'training.max_steps=[1': invalid value: ")

    result = run_cli("train", "--model", "smollm2-13m", "--data", SAMPLE, "--output", tmp_path / "run", cwd=tmp_path)
    assert_one_line_error(result, "unknown model preset 'smollm2-13m'; did you mean 'smollm2-135m'?", "owner/name")
    assert snapshot(tmp_path) == before

    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "config.json").write_text("{}", encoding="utf-8")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a GGUF file", encoding="utf-8")
    before = snapshot(tmp_path)
    result = run_cli("train", "--model", empty, "--data", SAMPLE, "--output", tmp_path / "run", cwd=tmp_path)
    assert_one_line_error(result, f"cannot load model '{empty}': Unrecognized model in {empty}")
    result = run_cli("train", "--model", not_gguf, "--data", SAMPLE, "--output", tmp_path / "run", cwd=tmp_path)
    assert_one_line_error(result, f"{not_gguf}: not a GGUF file")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "content, message",
    [
        (
            {"format_version": 1, "base_model": "other"},
            "not a complete metatune run: metatune.json has no 'architecture'",
        ),
        ([1, 2], "metatune.json: expected a JSON object"),
    ],
)
def test_serve_a_directory_that_is_not_a_run(tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metatune.json").write_text(json.dumps(content), encoding="utf-8")
    assert_one_line_error(run_cli("serve", run, "--port", "1", cwd=tmp_path), message)


# --- runs that train (in this process) ----------------------------------------------------------------


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def main(monkeypatch, *args) -> None:
    """metatune.cli.main with these arguments; fails the test on a non-zero exit."""
    from metatune.cli import main as cli_main

    monkeypatch.setattr(sys, "argv", ["metatune", *map(str, args)])
    try:
        cli_main()
    except SystemExit as e:
        assert e.code in (0, None), e.code


def tiny_run_args(model: Path, data: Path, out: Path) -> list:
    return [
        "train",
        "--model",
        model,
        "--data",
        data,
        "--output",
        out,
        "--set",
        "training.max_steps=2",
        "--set",
        "training.eval_each_epoch=false",
        "--set",
        "data.include_fields=[title, date]",
        "--set",
        "data.max_input_tokens=200",
        "--set",
        "training.per_device_train_batch_size=8",
        "--set",
        "training.logging_steps=1",
    ]


def test_fallback_type_then_overwrite(tmp_path, tiny_llama, monkeypatch, capsys, one_thread):
    data = sample()
    for record in data["training"][:3]:
        record["type"] = "Revista"
    path = write_json(tmp_path / "data.json", data)
    out = tmp_path / "run"
    main(monkeypatch, *tiny_run_args(tiny_llama, path, out), "--set", "data.fallback_type=general")
    first = json.loads((out / "metatune.json").read_text(encoding="utf-8"))
    assert first["fallback_type"] == "general" and first["training"]["steps"] == 2

    # the same output again: refused, untouched
    before = snapshot(tmp_path)
    result = run_cli(*tiny_run_args(tiny_llama, SAMPLE, out), cwd=tmp_path)
    assert_one_line_error(result, "already holds a different run; pass --overwrite")
    assert snapshot(tmp_path) == before

    capsys.readouterr()
    main(monkeypatch, *tiny_run_args(tiny_llama, SAMPLE, out), "--overwrite")
    second = json.loads((out / "metatune.json").read_text(encoding="utf-8"))
    assert second["fallback_type"] is None and second["created"] >= first["created"]
    assert second["config"]["data"]["path"] == str(SAMPLE)
    assert f"Saved the run to {out}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "run"]  # no leftovers


# --- metatune data validate / split, metatune models -----------------------------------------------------


def test_data_validate_reports_every_problem(tmp_path):
    data = sample()
    del data["training"][0]["original_text"]
    data["training"][4]["original_text"] = 7
    data["test"][1]["type"] = "Revista"
    path = write_json(tmp_path / "data.json", data)
    before = snapshot(tmp_path)
    result = run_cli("data", "validate", path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[:-1] == [
        f"{path}: record training[0]: field 'original_text': missing",
        f"{path}: record training[4]: field 'original_text': expected text, got int",
        f"{path}: record test[1]: field 'type': unknown document type 'Revista' "
        "(known: general, Tesis, Libro, Articulo, Objeto de conferencia; or set data.fallback_type)",
    ]
    assert lines[-1] == f"error: {path}: 3 problem(s) found"
    assert snapshot(tmp_path) == before


def test_data_validate_good_files(tmp_path):
    result = run_cli("data", "validate", SAMPLE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training: 24 records (Articulo: 6, Libro: 6, Objeto de conferencia: 6, Tesis: 6)" in result.stdout
    assert result.stdout.strip().endswith(f"{SAMPLE}: OK")

    data = sample()
    data["test"][1]["type"] = "Revista"
    path = write_json(tmp_path / "data.json", data)
    assert run_cli("data", "validate", path, cwd=tmp_path).returncode == 2
    assert run_cli("data", "validate", path, "--fallback-type", "general", cwd=tmp_path).returncode == 0

    assert_one_line_error(
        run_cli("data", "validate", tmp_path / "nope.json", cwd=tmp_path), "nope.json: dataset file not found"
    )


def flat_file(tmp_path: Path) -> Path:
    data = sample()
    return write_json(tmp_path / "flat.json", [r for s in ("training", "validation", "test") for r in data[s]])


def test_data_split(tmp_path):
    flat = flat_file(tmp_path)
    result = run_cli("data", "split", flat, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "flat.split.json"
    assert result.stdout.strip() == f"{out}: training 24, validation 4, test 4"
    splits = json.loads(out.read_text(encoding="utf-8"))
    assert {k: len(v) for k, v in splits.items()} == {"training": 24, "validation": 4, "test": 4}
    for name, records in splits.items():
        assert Counter(r["type"] for r in records) == {t: 6 if name == "training" else 1 for t in TYPES}
    everything = sorted(r["id"] for s in splits.values() for r in s)
    assert everything == sorted(r["id"] for r in json.loads(flat.read_text(encoding="utf-8")))

    first = out.read_bytes()
    assert_one_line_error(run_cli("data", "split", flat, cwd=tmp_path), f"{out}: already exists; pass --overwrite")
    assert out.read_bytes() == first
    assert run_cli("data", "split", flat, "--overwrite", cwd=tmp_path).returncode == 0
    assert out.read_bytes() == first  # same seed, same split
    other = tmp_path / "other.json"
    assert run_cli("data", "split", flat, "--seed", "7", "--out", other, cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path)
    assert_one_line_error(
        run_cli("data", "split", flat, "--out", tmp_path / "no" / "x.json", cwd=tmp_path),
        "x.json: cannot write there (no such directory)",
    )
    assert snapshot(tmp_path) == before
    reseeded = json.loads(other.read_text(encoding="utf-8"))
    assert [r["id"] for r in reseeded["test"]] != [r["id"] for r in splits["test"]]
    assert {k: len(v) for k, v in reseeded.items()} == {"training": 24, "validation": 4, "test": 4}


def test_data_split_screen_holds_out_part_of_the_training_split(tmp_path):
    path = write_json(tmp_path / "data.json", sample())
    training_ids = {r["id"] for r in sample()["training"]}
    result = run_cli("data", "split", path, "--screen", "0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "data.screen.json"
    assert result.stdout.strip() == f"{out}: training 20, validation 4, test 0"
    screen = json.loads(out.read_text(encoding="utf-8"))
    # every record comes from the training split, each type gives one of its six, the real validation is left out
    assert {r["id"] for s in screen.values() for r in s} == training_ids
    assert Counter(r["type"] for r in screen["validation"]) == {t: 1 for t in TYPES}
    other = run_cli(
        "data", "split", path, "--screen", "0.2", "--seed", "7", "--out", tmp_path / "s7.json", cwd=tmp_path
    )
    assert other.returncode == 0, other.stderr
    reseeded = json.loads((tmp_path / "s7.json").read_text(encoding="utf-8"))
    assert {r["id"] for r in reseeded["validation"]} != {r["id"] for r in screen["validation"]}
    before = snapshot(tmp_path)
    assert_one_line_error(
        run_cli("data", "split", path, "--screen", "1.5", "--overwrite", cwd=tmp_path),
        "--screen must be a fraction between 0 and 1, got 1.5",
    )
    assert snapshot(tmp_path) == before


def test_data_split_bad_file_writes_nothing(tmp_path):
    data = json.loads(flat_file(tmp_path).read_text(encoding="utf-8"))
    data[5]["original_text"] = ""
    path = write_json(tmp_path / "flat.json", data)
    before = snapshot(tmp_path)
    assert_one_line_error(
        run_cli("data", "split", path, cwd=tmp_path), f"{path}: record all[5]: field 'original_text': empty text"
    )
    assert snapshot(tmp_path) == before


def test_data_validate_and_split_refuse_what_training_refuses(tmp_path):
    empty = write_json(tmp_path / "empty.json", [])
    assert_one_line_error(run_cli("data", "validate", empty, cwd=tmp_path), f"{empty}: no records")
    data = json.loads(flat_file(tmp_path).read_text(encoding="utf-8"))
    data[3]["type"] = "Revista"
    path = write_json(tmp_path / "flat.json", data)
    before = snapshot(tmp_path)
    assert_one_line_error(
        run_cli("data", "split", path, cwd=tmp_path),
        f"{path}: record all[3]: field 'type': unknown document type 'Revista'",
    )
    assert snapshot(tmp_path) == before
    result = run_cli("data", "split", path, "--fallback-type", "general", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_models_lists_the_presets(tmp_path):
    result = run_cli("models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.strip().splitlines()]
    assert names == preset_names() and "smollm2-135m" in names and "nuextract" in names
    assert "meta-llama/Llama-3.2-1B" in result.stdout
