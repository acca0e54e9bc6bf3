"""Precision: `training.bf16: auto` follows a measured probe; bf16 training and extraction work on any CPU."""

from __future__ import annotations

import json

import pytest
import torch

from metatune import precision
from metatune.config import ExtractionSettings, load_config
from metatune.errors import MetatuneError

from conftest import SAMPLE


def test_probe_measures_a_positive_speedup():
    assert precision.cpu_bf16_speedup() > 0


@pytest.mark.parametrize("speedup, expected", [(0.01, "no"), (1.0, "no"), (4.2, "bf16"), (7.0, "bf16")])
def test_auto_follows_the_probe(monkeypatch, speedup, expected):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    assert precision.mixed_precision(load_config()) == expected
    assert precision.mixed_precision(load_config(sets=["training.bf16=false"])) == "no"
    assert precision.mixed_precision(load_config(sets=["training.bf16=true"])) == "bf16"


def test_fp16_on_a_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    with pytest.raises(MetatuneError, match="training.fp16 needs a CUDA GPU"):
        precision.mixed_precision(load_config(sets=["training.fp16=true"]))


@pytest.mark.parametrize("mode", ["trainer", "loop"])
def test_forced_bf16_trains_and_extracts_on_any_cpu(tmp_path, tiny_llama, mode):
    """bf16 autocast runs on every CPU (slowly where it has no bf16 units): forced, it must work."""
    from metatune.objectives.generate.extractor import Extractor
    from metatune.training.run import train

    output = tmp_path / "run"
    config = load_config(
        sets=[
            f"model.name={tiny_llama}",
            f"data.path={SAMPLE}",
            f"training.output_dir={output}",
            "data.include_fields=[date, language]",
            "data.max_input_tokens=256",
            "data.max_target_tokens=32",
            "training.max_steps=6",
            "training.per_device_train_batch_size=4",
            "training.learning_rate=1e-2",
            "training.warmup_ratio=0",
            "training.eval_each_epoch=false",
            "training.logging_steps=1",
            f"training.mode={mode}",
            "training.bf16=true",
        ]
    )
    train(config)
    losses = [
        json.loads(line)["loss"]
        for line in (output / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert len(losses) >= 5 and losses[-1] < losses[0], losses
    extractor = Extractor.from_run(output, ExtractionSettings(dtype="bfloat16", max_new_tokens=8))
    assert extractor.model.dtype == torch.bfloat16
    result = extractor.extract(["Universidad Nacional de La Plata, 2020"], ["Tesis"], batch_size=1)[0]
    assert result.counts["tokens"] > 0


def test_an_earlier_runs_precision_does_not_leak_into_the_next(monkeypatch):
    """accelerate reads ACCELERATE_MIXED_PRECISION: each run sets it from its own config."""
    import os

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # left by a bf16 run in this process
    assert precision.apply_precision(load_config(sets=["training.bf16=false"])) == "no"
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"
