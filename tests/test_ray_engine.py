"""`metatune extract --engine ray` on a local Ray (2 CPUs, no network), with the tiny runs of
tests/fixtures: the same records as the local engine, resume, poison documents, a dead actor."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'metatune[ray]')")

from conftest import run_main  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    shutil.copytree(FIXTURES / "inputs", folder)
    return folder


def records(path: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    by_source = {r["source"]: r for r in lines}
    assert len(by_source) == len(lines), "a document was written twice"
    return by_source


@pytest.mark.parametrize("objective", ["generate", "tag"])
def test_ray_writes_the_records_the_local_engine_writes(objective, local_ray, docs, tmp_path, monkeypatch, capsys):
    run = FIXTURES / f"{objective}-run"
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    code, _, err = run_main(monkeypatch, capsys, "extract", run, docs, "--dtype", "float32", "--out", local)
    assert code == 0, err
    code, _, err = run_main(
        monkeypatch, capsys, "extract", run, docs, "--dtype", "float32", "--out", on_ray, "--engine", "ray",
        "--workers", "2",
    )  # fmt: skip
    assert code == 0, err
    assert records(on_ray) == records(local) and len(records(local)) == 3


def test_a_rerun_after_a_kill_does_only_what_is_left(local_ray, docs, tmp_path, monkeypatch, capsys):
    run, out = FIXTURES / "tag-run", tmp_path / "out.jsonl"
    code, _, err = run_main(monkeypatch, capsys, "extract", run, docs / "holdout.txt", "--out", out, "--engine", "ray")
    assert code == 0, err
    with out.open("a", encoding="utf-8") as f:
        f.write('{"source": "cut by the ki')  # the line a kill cut off
    code, _, err = run_main(monkeypatch, capsys, "extract", run, docs, "--out", out, "--engine", "ray")
    assert code == 0, err
    assert "1 of 3 document(s) already done" in err
    assert sorted(records(out)) == sorted(str(p) for p in docs.iterdir())


def test_a_poison_pdf_is_listed_as_failed_and_the_rest_is_written(local_ray, docs, tmp_path, monkeypatch, capsys):
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF")
    out = tmp_path / "out.jsonl"
    code, _, err = run_main(monkeypatch, capsys, "extract", FIXTURES / "tag-run", docs, "--out", out, "--engine", "ray")
    assert code == 1
    assert len(records(out)) == 3 and str(docs / "broken.pdf") not in records(out)
    assert f"  {docs / 'broken.pdf'}: cannot read the PDF" in err


def test_the_actor_tries_a_failing_batch_one_document_at_a_time():
    """What each Ray actor does with a batch: a text that makes the model raise fails alone."""
    from metatune.doctypes import TypeRegistry
    from metatune.extraction import Extraction
    from metatune.ray_engine import ExtractActor

    class Stub:
        registry = TypeRegistry.load()

        def fields(self, name):
            return ["date"]

        def extract(self, texts, types, batch_size):
            if any("poison" in t for t in texts):
                raise RuntimeError("the model choked")
            return [Extraction("general", {"date": "2019"}, "{}") for _ in texts]

    actor = ExtractActor.__new__(ExtractActor)
    actor.extractor, actor.doc_type = Stub(), None
    actor.settings = type("S", (), {"batch_size": 8})()
    out = actor(
        {"name": ["a", "b", "c", "d"], "text": ["x", "poison", "y", ""], "error": ["", "", "", "d: unreadable"]}
    )
    assert out["error"] == ["", "b: extraction failed: RuntimeError: the model choked", "", "d: unreadable"]
    assert json.loads(out["record"][0])["metadata"] == {"date": "2019"} and out["record"][1] == ""


def actor_pids() -> list[int]:
    """The processes of live ExtractActor actors (Ray names them ray::...ExtractActor...)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ExtractActor" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor's process in /proc")
def test_a_killed_actor_s_documents_are_redone_and_written_once(local_ray, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "many"
    folder.mkdir()
    text = (FIXTURES / "inputs" / "synthetic-0.txt").read_text(encoding="utf-8")
    for i in range(150):
        (folder / f"doc-{i:02d}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = {}

    def extract():
        args = ["extract", FIXTURES / "tag-run", folder, "--out", out, "--engine", "ray", "--batch-size", "1"]
        result["code"] = run_main(monkeypatch, capsys, *args)[0]

    worker = threading.Thread(target=extract)
    worker.start()
    killed_at = None
    deadline = time.monotonic() + 240
    while worker.is_alive() and killed_at is None and time.monotonic() < deadline:
        done = len(out.read_text(encoding="utf-8").splitlines()) if out.exists() else 0
        pids = actor_pids()
        if done >= 3 and pids:
            os.kill(pids[0], 9)
            killed_at = done
        time.sleep(0.05)
    worker.join(timeout=300)
    assert killed_at is not None and killed_at < 150, "the actor was not killed while the run was going"
    assert result["code"] == 0
    assert sorted(records(out)) == sorted(str(p) for p in folder.iterdir())
