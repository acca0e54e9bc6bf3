"""training.bf16: weights — the model trained in bf16 with a float32 master copy in the optimizer."""

import json

import pytest
import torch
from test_tagging import synthetic_records, tag_config

from metatune.config import ExtractionSettings
from metatune.training.master_weights import Float32MasterAdamW


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "data.json"
    path.write_text(json.dumps({"training": synthetic_records(48, 0), "validation": synthetic_records(8, 1)}))
    return path


def steps(optimizer, param, n):
    for _ in range(n):
        param.grad = torch.ones_like(param)
        optimizer.step()
        optimizer.zero_grad()


def test_updates_below_bf16_resolution_add_up_in_the_master_copy():
    """lr 1e-4 moves a weight of 1.0 by less than bf16's step there (2^-7): AdamW on the bf16 weight
    itself never moves it; through the float32 copy 100 such updates move it by 0.01."""
    plain = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    steps(torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0), plain, 100)
    assert torch.equal(plain, torch.ones(4, dtype=torch.bfloat16))

    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = Float32MasterAdamW([weight], lr=1e-4, weight_decay=0.0)
    steps(optimizer, weight, 100)
    master = optimizer.pairs[0][1]
    assert master.dtype == torch.float32 and master[0].item() == pytest.approx(1 - 100 * 1e-4, abs=1e-5)
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, master.to(torch.bfloat16))
    assert weight.grad is None


def test_a_restored_checkpoint_becomes_the_master_copy_and_the_run_ends_in_float32():
    model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    optimizer = Float32MasterAdamW(model.parameters(), lr=1e-3)
    steps(optimizer, model.weight, 3)
    saved = optimizer.state_dict()
    with torch.no_grad():  # the checkpoint's weights, loaded into the model before the optimizer state
        model.weight.fill_(0.5)
    optimizer.load_state_dict(saved)
    assert torch.equal(optimizer.pairs[0][1], torch.full((2, 3), 0.5))

    steps(optimizer, model.weight, 1)
    master = optimizer.pairs[0][1].clone()
    float32 = optimizer.into_float32(model)
    assert float32.weight.dtype == torch.float32 and torch.equal(float32.weight, master)  # not its bf16 rounding
    assert not torch.equal(master, master.to(torch.bfloat16).float())


@pytest.mark.parametrize("mode", ["trainer", "loop"])
def test_tag_training_with_bf16_weights_learns_and_saves_float32_weights(
    tmp_path, tiny_llama, records, mode, monkeypatch
):
    from safetensors.torch import load_file

    from metatune.objectives import open_run
    from metatune.training.run import train

    config = tag_config(
        tiny_llama, records, tmp_path / "run", "training.bf16=weights", "training.max_steps=12", f"training.mode={mode}"
    )
    trained = []
    step = Float32MasterAdamW.step
    monkeypatch.setattr(
        Float32MasterAdamW, "step", lambda self, *a: (trained.extend(p.dtype for p, _ in self.pairs), step(self, *a))
    )
    run = train(config)
    assert trained and set(trained) == {torch.bfloat16}  # the model's own weights were bf16 while training
    assert json.loads((run / "metatune.json").read_text())["training"]["precision"] == "bf16-weights"
    losses = [
        json.loads(line)["loss"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert losses[-1] < losses[0], losses
    weights = load_file(run / "model.safetensors")
    layer = next(w for name, w in weights.items() if name.endswith("q_proj.weight"))
    assert layer.dtype == torch.float32 and not torch.equal(layer, layer.to(torch.bfloat16).float())
    tagger = open_run(run, ExtractionSettings(dtype="float32"))
    result = tagger.extract([synthetic_records(1, 9)[0]["original_text"]])[0]
    assert result.data is not None


def test_bf16_weights_are_refused_with_fp16_and_with_a_4bit_model(tiny_llama, records, tmp_path):
    from metatune.errors import MetatuneError
    from metatune.precision import mixed_precision

    both = tag_config(tiny_llama, records, tmp_path / "a", "training.bf16=weights", "training.fp16=true")
    with pytest.raises(MetatuneError, match="training.fp16 is true and training.bf16 is weights; choose one"):
        mixed_precision(both)
    quantized = tag_config(tiny_llama, records, tmp_path / "b", "training.bf16=weights", "model.quantization=4bit")
    with pytest.raises(MetatuneError, match="a 4-bit model cannot be"):
        mixed_precision(quantized)
