"""A folder run left overnight: results written as done, reruns skip them, failures listed at the
end, and the service answers 503 with Retry-After when its queue is full."""

import json
import threading
import time

import pytest

from metatune.extraction import Extraction


def cli(monkeypatch, capsys, *args):
    from conftest import run_main

    return run_main(monkeypatch, capsys, *args)


@pytest.fixture
def folder(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        (docs / name).write_text(f"Documento {name}. La Plata, 2019.", encoding="utf-8")
    (docs / "empty.txt").write_text("  ", encoding="utf-8")
    return docs


class StubExtractor:
    """A run's Extractor without a model: answers from the text, and remembers every call."""

    default_type, device, info, run_dir = "general", "cpu", {}, None

    def __init__(self, seen):
        from metatune.doctypes import TypeRegistry

        self.registry, self.seen = TypeRegistry.load(), seen

    def fields(self, name):
        return ["date"]

    def extract(self, texts, types=None, *args, **kwargs):
        self.seen.append(list(texts))
        if any("fail" in t for t in texts):
            raise RuntimeError("simulated device failure")
        if any("stop" in t for t in texts):
            raise KeyboardInterrupt
        return [
            Extraction(
                "general",
                {"date": "2019"} if "nojson" not in t else None,
                "{}",
                None if "nojson" not in t else "no JSON object in the output",
            )
            for t in texts
        ]


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr("metatune.objectives.open_run", lambda *a, **k: StubExtractor(seen))
    return seen


@pytest.fixture
def tiny_run(tmp_path):
    """A run directory as `metatune extract` checks it (its model is the stub above)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metatune.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "architecture": "causal",
                "input": {},
                "limits": {"max_input_tokens": 512, "max_target_tokens": 64},
                "types": {},
            }
        ),
        encoding="utf-8",
    )
    return run


def lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_json_lines_are_appended_as_done_and_a_rerun_skips_them(tiny_run, folder, tmp_path, monkeypatch, capsys, calls):
    out = tmp_path / "out.jsonl"
    status, _, err = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out", out, "--batch-size", "1")
    assert status == 1
    assert sorted(r["source"] for r in lines(out)) == sorted(str(folder / n) for n in ("a.txt", "b.txt", "sub/c.txt"))
    assert all(r["metadata"] == {"date": "2019"} for r in lines(out))
    assert len(calls) == 3  # one batch each
    tail = err[err.index("error: 1 input(s) failed") :].splitlines()
    assert tail == [
        "error: 1 input(s) failed (a rerun tries them again):",
        f"  {folder / 'empty.txt'}: no text to extract from",
    ]
    assert "4/4" in err and "doc/s" in err  # the progress bar (tqdm: count, elapsed<remaining ETA, rate)

    (folder / "d.txt").write_text("Documento nuevo", encoding="utf-8")
    status, _, err = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out", out)
    assert "3 of 5 document(s) already done (--force redoes them)" in err
    assert calls[-1] == ["Documento nuevo"] and len(lines(out)) == 4 and status == 1

    status, _, _ = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out", out, "--force")
    assert len(lines(out)) == 4 and calls[-1] == [
        (folder / n).read_text() for n in ("a.txt", "b.txt", "d.txt", "sub/c.txt")
    ]


def test_an_interrupted_run_keeps_what_was_done_and_the_rerun_finishes(
    tiny_run, folder, tmp_path, monkeypatch, capsys, calls
):
    (folder / "b.txt").write_text("stop here", encoding="utf-8")
    (folder / "empty.txt").unlink()
    out = tmp_path / "out.jsonl"
    status, _, err = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out", out, "--batch-size", "1")
    assert status == 130
    assert [r["source"] for r in lines(out)] == [str(folder / "a.txt")]
    with out.open("a", encoding="utf-8") as f:
        f.write('{"source": "cut of')  # a line the crash cut off
    (folder / "b.txt").write_text("Documento b", encoding="utf-8")
    status, _, err = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out", out)
    assert status == 0 and "1 of 3 document(s) already done" in err
    assert [r["source"] for r in lines(out)] == [str(folder / n) for n in ("a.txt", "b.txt", "sub/c.txt")]


def test_a_failing_batch_does_not_stop_the_rest(tiny_run, folder, tmp_path, monkeypatch, capsys, calls):
    (folder / "b.txt").write_text("this one will fail", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    status, _, err = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out", out, "--batch-size", "1")
    assert status == 1
    assert [r["source"] for r in lines(out)] == [str(folder / "a.txt"), str(folder / "sub/c.txt")]
    assert f"  {folder / 'b.txt'}: extraction failed: RuntimeError: simulated device failure" in err.splitlines()


def test_a_poison_document_fails_alone_its_batch_is_tried_one_by_one(
    tiny_run, folder, tmp_path, monkeypatch, capsys, calls
):
    (folder / "b.txt").write_text("this one will fail", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    status, _, err = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out", out, "--batch-size", "8")
    assert status == 1 and len(calls[0]) == 3  # the batch of three failed, then each went alone
    assert [r["source"] for r in lines(out)] == [str(folder / "a.txt"), str(folder / "sub/c.txt")]
    assert f"  {folder / 'b.txt'}: extraction failed: RuntimeError: simulated device failure" in err.splitlines()


def test_one_file_per_input_in_any_format(tiny_run, folder, tmp_path, monkeypatch, capsys, calls):
    import xml.etree.ElementTree as ET

    (folder / "b.txt").write_text("nojson here", encoding="utf-8")
    out_dir = tmp_path / "tei"
    status, _, err = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out-dir", out_dir, "--format", "tei")
    assert status == 1
    written = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    assert written == ["a.txt.tei.xml", "sub/c.txt.tei.xml"]  # the folder's layout; b had no JSON to write as TEI
    assert ET.fromstring((out_dir / "a.txt.tei.xml").read_text(encoding="utf-8")).tag.endswith("TEI")
    assert (
        f"  {folder / 'b.txt'}: the output was not JSON (no JSON object in the output), nothing to write as tei" in err
    )
    status, _, err = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out-dir", out_dir, "--format", "tei")
    assert "2 of 4 document(s) already done" in err and calls[-1] == ["nojson here"]


def test_output_mistakes_are_one_line_errors(tiny_run, folder, tmp_path, monkeypatch, capsys, calls):
    status, _, err = cli(
        monkeypatch, capsys, "extract", tiny_run, folder, "--out", tmp_path / "o", "--out-dir", tmp_path
    )
    assert status == 2 and err.strip() == "error: --out and --out-dir: give one of them"
    bad = tmp_path / "notes.jsonl"
    bad.write_text("my own notes\n", encoding="utf-8")
    status, _, err = cli(monkeypatch, capsys, "extract", tiny_run, folder, "--out", bad)
    assert status == 2
    assert err.strip() == (
        f"error: {bad}: line 1 is not a metatune JSON Lines record; "
        "pass --force to replace the file, or choose another --out"
    )
    assert bad.read_text() == "my own notes\n" and calls == []


def test_a_full_queue_is_a_503_with_retry_after():
    from fastapi.testclient import TestClient

    from metatune.doctypes import TypeRegistry
    from metatune.service import create_app

    started, release = threading.Event(), threading.Event()

    class SlowExtractor:
        run_dir, info, default_type, device = None, {}, "general", "cpu"
        registry = TypeRegistry.load()

        def extract(self, texts, types, batch_size):
            started.set()
            release.wait(30)
            return [Extraction("general", {"date": "2019"}, "{}") for _ in texts]

        def fields(self, name):
            return ["date"]

    app = create_app(SlowExtractor(), batch_size=1, batch_wait_ms=0, max_queue=1)
    with TestClient(app) as client:
        answers = []

        def post():
            answers.append(client.post("/extract", json={"text": "Una tesis"}).status_code)

        first = threading.Thread(target=post)
        first.start()
        assert started.wait(30)  # the first request is in the model
        second = threading.Thread(target=post)
        second.start()
        deadline = time.monotonic() + 30
        while app.state.batcher.queue.qsize() < 1:  # the second waits in the queue, which is now full
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = client.post("/extract", json={"text": "Una tesis"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json() == {"error": "the server is busy (1 requests queued, the --max-queue); retry later"}
        r = client.post("/consume-llm", json={"text": "Una tesis"})
        assert r.status_code == 503 and r.json()["error"]["code"] == 503 and "retry-after" in r.headers
        release.set()
        first.join(30)
        second.join(30)
        assert answers == [200, 200]


def test_reading_ahead_keeps_input_order_holds_a_bounded_window_and_the_pdf_limits(tmp_path, monkeypatch):
    """The folder run parses the next documents while the model runs; order, errors and limits stay."""
    import threading
    import time
    from pathlib import Path

    from test_extract import heavy_pdf

    import metatune.documents as documents
    from metatune.documents import Item, read_ahead
    from metatune.errors import MetatuneError

    names = ["a.txt", "heavy.pdf", "missing.txt", "b.txt"]
    (tmp_path / "a.txt").write_text("Título A", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Título B", encoding="utf-8")
    (tmp_path / "heavy.pdf").write_bytes(heavy_pdf(30, 600_000))
    items = [Item(n, tmp_path / n, Path(n)) for n in names]
    began = time.perf_counter()
    out = list(read_ahead(items, workers=2, window=3))
    assert time.perf_counter() - began < 20  # the heavy PDF is refused in seconds, in its own process
    assert [item.name for item, _ in out] == names
    assert out[0][1] == "Título A" and out[3][1] == "Título B"
    assert "the content of its first pages is too large" in str(out[1][1])
    assert isinstance(out[2][1], MetatuneError) and "missing.txt" in str(out[2][1])

    started, lock = [], threading.Lock()
    real = documents.read_item

    def counted(item, *args):
        with lock:
            started.append(item.name)
        return real(item, *args)

    monkeypatch.setattr(documents, "read_item", counted)
    many = [Item(f"{i}.txt", tmp_path / "a.txt", Path(f"{i}.txt")) for i in range(20)]
    reader = read_ahead(many, workers=2, window=3)
    first = next(reader)
    time.sleep(0.2)
    assert first[0].name == "0.txt" and len(started) <= 4  # the window, and the one that replaced the first
    reader.close()
