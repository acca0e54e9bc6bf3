"""Two CPU processes (torchrun, gloo DDP) train like one process with the same global batch.

The test launches this file under torchrun; run as a script, it trains the given settings in both
modes (loop, then Trainer) in the same two processes, which saves starting them twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SAMPLE

MODES = ("loop", "trainer")


def settings(model: Path, per_device_batch: int) -> list[str]:
    return [
        f"model.name={model}",
        f"data.path={SAMPLE}",
        "data.include_fields=[title, creator, date, language]",
        "data.max_input_tokens=256",
        "data.max_target_tokens=192",
        "training.max_steps=3",
        f"training.per_device_train_batch_size={per_device_batch}",
        "training.per_device_eval_batch_size=3",  # 4 validation examples: uneven across 2 processes
        "training.group_by_length=false",
        "training.learning_rate=3e-3",
        "training.logging_steps=1",
        "training.bf16=false",  # the processes must agree to float32 rounding
    ]


def train_both_modes(root: Path, sets: list[str]) -> None:
    from metatune.config import load_config
    from metatune.training.run import train

    for mode in MODES:
        train(load_config(sets=[*sets, f"training.mode={mode}", f"training.output_dir={root / mode}"]))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_llama):
    """Global batch 4: 2 per process on 2 processes vs 4 on one; same losses, gradient norms, weights."""
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(ddp),
        *settings(tiny_llama, 2),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("Saved the run to") == 2  # once per mode: only rank 0 reports (and saves)
    assert ", 2 processes" in done.stdout

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_both_modes(tmp_path / "single", settings(tiny_llama, 4))
    finally:
        torch.set_num_threads(threads)

    assert sorted(p.name for p in ddp.iterdir()) == sorted(MODES)  # no partial, temporary or second copies
    initial = load_file(tiny_llama / "model.safetensors")
    for mode in MODES:
        two, one = (
            read_metrics(ddp / mode / "metrics.jsonl"),
            read_metrics(tmp_path / "single" / mode / "metrics.jsonl"),
        )
        steps = [m for m in two if "loss" in m]
        assert [m["step"] for m in steps] == [1, 2, 3]  # written once, by rank 0
        for key in ("loss", "grad_norm"):  # a sum instead of a mean would double the gradient norm
            assert [m[key] for m in steps] == pytest.approx([m[key] for m in one if "loss" in m], rel=1e-4), (mode, key)
        if mode == "loop":  # the Trainer averages per-batch means, and a process's short batch is padded with repeats
            assert [m["eval_loss"] for m in two if "eval_loss" in m] == pytest.approx(
                [m["eval_loss"] for m in one if "eval_loss" in m], rel=1e-4
            )
        info = json.loads((ddp / mode / "metatune.json").read_text(encoding="utf-8"))
        assert info["training"]["processes"] == 2 and info["training"]["steps"] == 3

        trained, reference = (
            load_file(ddp / mode / "model.safetensors"),
            load_file(tmp_path / "single" / mode / "model.safetensors"),
        )
        assert trained.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(trained[name], reference[name], rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}")
        assert not torch.equal(trained["model.embed_tokens.weight"], initial["model.embed_tokens.weight"])


if (
    __name__ == "__main__"
):  # the torchrun worker: python -m torch.distributed.run ... test_distributed.py ROOT SETTINGS...
    from metatune.training.distributed import close_processes

    train_both_modes(Path(sys.argv[1]), sys.argv[2:])
    close_processes()
