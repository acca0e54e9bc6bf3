"""Faults of the machine, not of the user: a full disk, a read-only folder, SIGTERM. One line
`error: ...`, a non-zero exit, nothing that looks complete but is not, and a rerun (or --resume)
that goes on from what was done.

A full disk is a patched writer that raises what the real one raises (safetensors: SafetensorError
"(os error 28)"; Python files: OSError ENOSPC); a read-only folder is chmod 0o500, and where the
tests run as root (which writes anyway) writes into it raise EROFS, as on a read-only mount.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import FIELDS, REPO, SAMPLE, run_main

pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(model: Path, output: Path, *sets: str) -> list:
    """`metatune train` of `model` on the sample data: 24 documents, 3 steps per epoch."""
    settings = [
        f"data.include_fields={FIELDS}",
        "data.max_input_tokens=256",
        "training.per_device_train_batch_size=8",
        "training.eval_each_epoch=false",
        "training.logging_steps=1",
        *sets,
    ]
    return ["train", "--model", model, "--data", SAMPLE, "--output", output] + [
        a for s in settings for a in ("--set", s)
    ]


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def fill_disk_at(monkeypatch, chosen) -> None:
    """safetensors' writer fails as on a full disk for the files `chosen(path)` picks, after writing a part."""
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.serialize_file

    def serialize_file(tensors, filename, metadata=None):
        if chosen(Path(filename)):
            Path(filename).write_bytes(b"\0" * 100)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_file)


@contextmanager
def records_of(logger_name: str):
    """The records a logger passes on to its handlers (after its filters)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def training_info(output: Path) -> dict:
    return json.loads((output / "metatune.json").read_text(encoding="utf-8"))["training"]


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["trainer", "loop"])
def test_a_full_disk_during_a_checkpoint_save(mode, tiny_llama, tmp_path, monkeypatch, capsys):
    output, work = tmp_path / "run", tmp_path / "run.partial"
    args = train_args(tiny_llama, output, "training.max_steps=3", "training.save_steps=1", f"training.mode={mode}")
    fill_disk_at(monkeypatch, lambda path: "checkpoint-2" in str(path))
    status, _, err = run_main(monkeypatch, capsys, *args)
    line = one_error_line(err)
    assert status == 1
    assert "checkpoint-2: no space left on the device while writing a checkpoint; free some space" in line
    assert line.endswith("--resume")
    # no checkpoint-2 without its weights (nor a checkpoint-2.tmp): only the complete one
    assert sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1"]
    assert not output.exists()

    monkeypatch.undo()  # space is back
    status, _, err = run_main(monkeypatch, capsys, *args, "--resume")
    assert status == 0, err
    info = training_info(output)
    assert info["resumed_from"] == "checkpoint-1" and info["steps"] == 3


def test_a_full_disk_during_the_final_save(tiny_llama, tmp_path, monkeypatch, capsys):
    output, work = tmp_path / "run", tmp_path / "run.partial"
    args = train_args(tiny_llama, output, "training.max_steps=2")
    fill_disk_at(monkeypatch, lambda path: path.parent.name.startswith(".run."))  # the run's temporary directory
    status, _, err = run_main(monkeypatch, capsys, *args)
    line = one_error_line(err)
    assert status == 1 and line.startswith(f"error: {output}: no space left on the device while writing the run"), line
    assert not output.exists() and not list(tmp_path.glob(".run.*"))
    assert (work / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()

    monkeypatch.undo()
    # the tied lm_head.weight is not in the checkpoint (safetensors keeps one copy): no warning about it
    with records_of("transformers.trainer") as records:
        status, _, err = run_main(monkeypatch, capsys, *args, "--resume")
    assert status == 0, err
    assert training_info(output)["resumed_from"] == "checkpoint-2"
    assert not [r for r in records if "missing keys" in r.getMessage()]


SIGTERM_AFTER_FIRST_STEP = """
import sys, time
import metatune.cli as cli
from metatune import faults

app = cli.app

def slowed_app():
    from transformers import Trainer  # imported once main() has set its logging filters, as the CLI does

    real = Trainer.training_step

    def training_step(self, *args, **kwargs):
        # from the second step on, wait for the test's signal: the run cannot end before it arrives
        while self.state.global_step >= 1 and faults.stop_signal() is None:
            time.sleep(0.01)
        return real(self, *args, **kwargs)

    Trainer.training_step = training_step
    app()

cli.app = slowed_app
sys.argv = ["metatune", *sys.argv[1:]]
cli.main()
"""


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tiny_llama, tmp_path, monkeypatch, capsys):
    output, work = tmp_path / "run", tmp_path / "run.partial"
    args = train_args(tiny_llama, output, "training.max_steps=3")  # no checkpoint before the end but the signal's
    log = tmp_path / "train.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SIGTERM_AFTER_FIRST_STEP, *map(str, args)],
            cwd=REPO,
            stderr=err,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    try:
        metrics = work / "metrics.jsonl"
        while not (metrics.is_file() and '"step": 1' in metrics.read_text(encoding="utf-8")):
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    err = log.read_text()
    assert "Traceback" not in err
    resume = "metatune " + shlex.join([*map(str, args), "--resume"])
    assert err.splitlines()[-1] == f"stopped by SIGTERM after step 2, saved as checkpoint-2; continue with: {resume}"
    assert "gemm_4bit_forward" not in err  # bitsandbytes' optional kernel, not installed
    assert json.loads((work / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert not output.exists()

    status, _, err = run_main(monkeypatch, capsys, *args, "--resume")
    assert status == 0, err
    info = training_info(output)
    assert info["resumed_from"] == "checkpoint-2" and info["steps"] == 3


def test_sigint_in_the_loop_saves_a_checkpoint_and_resume_finishes(tiny_llama, tmp_path, monkeypatch, capsys):
    import metatune.training.loop as loop_module

    output, work = tmp_path / "run", tmp_path / "run.partial"
    args = train_args(tiny_llama, output, "training.max_steps=3", "training.mode=loop")
    real_step, calls = loop_module.optimizer_step, []

    def optimizer_step(loop, window):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the second step
        return real_step(loop, window)

    monkeypatch.setattr(loop_module, "optimizer_step", optimizer_step)
    status, _, err = run_main(monkeypatch, capsys, *args)
    assert status == 128 + signal.SIGINT and "Traceback" not in err
    assert err.splitlines()[-1].startswith("stopped by SIGINT after step 2, saved as checkpoint-2; continue with: ")
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert json.loads((work / "checkpoints" / "checkpoint-2" / "loop_state.json").read_text())["step"] == 2

    monkeypatch.undo()
    status, _, err = run_main(monkeypatch, capsys, *args, "--resume")
    assert status == 0, err
    assert len(calls) == 2  # the patch is gone: the resumed run took step 3 with the real one
    info = training_info(output)
    assert info["resumed_from"] == "checkpoint-2" and info["steps"] == 3


def test_only_tied_weights_are_quiet(tiny_llama):
    from transformers import AutoModelForCausalLM

    from metatune.faults import quiet_tied_weights

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    logger = logging.getLogger("transformers.trainer")
    with records_of("transformers.trainer") as records, quiet_tied_weights(model):
        logger.warning("There were missing keys in the checkpoint model loaded: ['lm_head.weight'].")
        logger.warning("There were missing keys in the checkpoint model loaded: ['model.norm.weight'].")
    assert [r.getMessage() for r in records] == [
        "There were missing keys in the checkpoint model loaded: ['model.norm.weight']."
    ]


# --- extract, evaluate, serve ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    """A saved run trained for one step: what it writes does not matter here, only where."""
    from metatune.training.run import train

    from conftest import sample_run_config

    output = tmp_path_factory.mktemp("faults") / "run"
    return train(sample_run_config(tiny_llama, output, "training.max_steps=1", "training.eval_each_epoch=false"))


@pytest.fixture
def read_only(monkeypatch):
    """Makes a folder read-only: chmod 0o500, and for root (whom no mode stops) writes into it fail with EROFS."""
    folders = []

    def inside(path) -> bool:
        try:
            path = Path(os.fsdecode(path)).absolute()
        except TypeError:  # a file descriptor
            return False
        return any(path.is_relative_to(folder) for folder in folders)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_mkdir, real_os_open, real_open = os.mkdir, os.open, io.open

    def mkdir(path, *args, **kwargs):
        if inside(path) and not os.path.exists(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(builtins, "open", open_)

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o500)
        folders.append(folder.absolute())
        return folder

    yield make
    for folder in folders:
        folder.chmod(0o700)


def test_evaluate_into_a_read_only_folder(tiny_run, tmp_path, monkeypatch, capsys, read_only):
    reports = read_only(tmp_path / "reports")
    args = ["evaluate", tiny_run, "--data", SAMPLE, "--limit", "2", "--max-new-tokens", "8"]
    status, _, err = run_main(monkeypatch, capsys, *args, "--report", reports / "eval")
    line = one_error_line(err)
    assert status == 1
    assert line.startswith(f"error: {reports / 'eval'}: ")
    assert "while writing the evaluation report; make it writable, then run it again" in line
    assert "permission denied" in line or "read-only file system" in line
    assert not list(reports.iterdir())


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    for i, record in enumerate(data["test"][:3]):
        (folder / f"{i}.txt").write_text(record["original_text"][:400], encoding="utf-8")
    return folder


def test_extract_to_a_read_only_folder(tiny_run, docs, tmp_path, monkeypatch, capsys, read_only):
    results = read_only(tmp_path / "results")
    status, _, err = run_main(
        monkeypatch, capsys, "extract", tiny_run, docs, "--out-dir", results, "--max-new-tokens", "8"
    )
    line = one_error_line(err)
    assert status == 1 and line.startswith(f"error: {results}: ")
    assert "permission denied" in line or "read-only file system" in line
    assert not list(results.iterdir())


class FullAfter:
    """A file that takes `writes` writes, then half of the next one, then fails as a full disk does."""

    def __init__(self, file, writes: int):
        self.file, self.writes = file, writes

    def write(self, text: str) -> int:
        if self.writes == 0:
            self.file.write(text[: len(text) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.writes -= 1
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_extract_to_json_lines_on_a_full_disk_and_the_rerun(tiny_run, docs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.jsonl"
    real_open = io.open

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullAfter(f, 1) if "a" in mode and Path(os.fsdecode(file)) == out else f

    monkeypatch.setattr(io, "open", open_)
    args = ["extract", tiny_run, docs, "--out", out, "--batch-size", "1", "--max-new-tokens", "8"]
    status, _, err = run_main(monkeypatch, capsys, *args)
    line = one_error_line(err)
    assert status == 1
    assert (
        line
        == f"error: {out}: no space left on the device while writing the results; free some space, then rerun: it continues where it stopped"
    )
    first, cut = out.read_text(encoding="utf-8").split("\n")
    assert json.loads(first)["source"] == str(docs / "0.txt") and cut  # a line cut off by the full disk

    monkeypatch.undo()
    status, _, err = run_main(monkeypatch, capsys, *args)
    assert status == 0, err
    assert "1 of 3 document(s) already done" in err
    sources = [json.loads(line)["source"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert sources == [str(docs / f"{i}.txt") for i in range(3)]


def test_sigterm_to_the_service_finishes_the_request_in_flight(tiny_run, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from test_service import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("w") as out:  # a request waits 3 s for others to batch with: it is in flight when the signal comes
        proc = subprocess.Popen(
            [sys.executable, "-m", "metatune", "serve", str(tiny_run), "--port", str(port), "--batch-wait-ms", "3000"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k not in ("METATUNE_API_TOKEN", "SERVICE_TOKEN")},
            cwd=REPO,
        )
    try:
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                httpx.get(f"{url}/health")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{url}/extract", json={"text": "Una tesis"}, timeout=120)
            # answered after the request above was sent: the server has accepted that one too
            assert httpx.get(f"{url}/health").status_code == 200
            proc.send_signal(signal.SIGTERM)
            while True:  # new requests are refused from now on (one accepted before the socket closed is answered)
                try:
                    r = httpx.get(f"{url}/health")
                except httpx.TransportError:
                    break
                if r.status_code == 503:
                    break
                time.sleep(0.05)
            answer = in_flight.result()
        assert answer.status_code == 200 and "metadata" in answer.json()
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        proc.kill()
