"""The custom loop (training.mode: loop): same steps as the Trainer, learning, early stopping, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metatune.errors import MetatuneError

from conftest import read_metrics, sample_run_config, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def config_for(model: Path, output: Path, *extra: str):
    # the comparisons below hold in float32
    return sample_run_config(model, output, "training.mode=loop", "training.bf16=false", *extra)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


@pytest.fixture(scope="module")
def tiny_llama_dropout(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny Llama with attention dropout, so that training consumes random numbers."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config("llama", tiny_tokenizer)
    config.attention_dropout = 0.1
    path = tmp_path_factory.mktemp("tiny-llama-dropout")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_loop_matches_the_trainer_step_by_step(tmp_path, tiny_llama):
    """Same data, seed and shuffle (both use accelerate's seeded sampler): the same losses at every step."""
    from metatune.training.run import train

    common = [
        "training.max_steps=4",
        "training.per_device_train_batch_size=2",
        "training.gradient_accumulation_steps=2",
        "training.group_by_length=false",
        "training.eval_each_epoch=false",
        "training.learning_rate=1e-3",
        "training.warmup_ratio=0.25",  # one warmup step, then linear decay
    ]
    logs = {}
    for mode in ("trainer", "loop"):
        train(config_for(tiny_llama, tmp_path / mode, f"training.mode={mode}", *common))
        logs[mode] = [m for m in read_metrics(tmp_path / mode / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in logs["loop"]] == [m["step"] for m in logs["trainer"]] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "learning_rate", "epoch"):
        loop, trainer = [m[key] for m in logs["loop"]], [m[key] for m in logs["trainer"]]
        assert loop == pytest.approx(trainer, rel=1e-4), key
    assert logs["loop"][0]["learning_rate"] == 0 and logs["loop"][1]["learning_rate"] == pytest.approx(1e-3)
    trained, reference = weights(tmp_path / "loop"), weights(tmp_path / "trainer")
    assert trained.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(trained[name], reference[name], rtol=1e-4, atol=1e-6)
    info = json.loads((tmp_path / "loop" / "metatune.json").read_text(encoding="utf-8"))
    assert info["training"]["mode"] == "loop" and info["training"]["steps"] == 4


def test_seq2seq_with_accumulation_averages_in_both_modes(tmp_path, tiny_t5):
    """T5's loss ignores the Trainer's token count: accumulated batches must still be averaged, not added."""
    from metatune.training.run import train

    common = [
        "training.max_steps=2",
        "training.per_device_train_batch_size=2",
        "training.gradient_accumulation_steps=2",
        "training.group_by_length=false",
        "training.eval_each_epoch=false",
    ]
    logs = {}
    for mode in ("loop", "trainer"):
        train(config_for(tiny_t5, tmp_path / mode, f"training.mode={mode}", *common))
        logs[mode] = [m for m in read_metrics(tmp_path / mode / "metrics.jsonl") if "loss" in m]
    # The loop weighs every target token alike; the Trainer averages the two batches' means, a little
    # different. Adding them up instead would double both the loss and the gradient norm.
    for key in ("loss", "grad_norm"):
        assert [m[key] for m in logs["trainer"]] == pytest.approx([m[key] for m in logs["loop"]], rel=2e-2), key
    assert 6 < logs["loop"][0]["loss"] < 8  # about log(600), the tiny vocabulary's size


def test_loop_learns_evaluates_each_epoch_and_saves_a_run(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    from metatune.training.run import train

    output = tmp_path / "run"
    train(
        config_for(
            tiny_llama,
            output,
            "training.num_train_epochs=3",
            "training.lr_scheduler_type=constant",
            "training.warmup_ratio=0",
        )
    )
    metrics = read_metrics(output / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    assert len(losses) == 9
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert [step for step, _ in evals] == [3, 6, 9]
    assert evals[-1][1] < evals[0][1] - 0.5, evals
    assert metrics[-1]["train_loss"] == pytest.approx(sum(losses) / 9)

    info = json.loads((output / "metatune.json").read_text(encoding="utf-8"))
    summary = info["training"]
    assert summary["mode"] == "loop" and summary["steps"] == 9 and summary["epochs"] == 3
    assert summary["eval_loss"] == pytest.approx(evals[-1][1]) and summary["resumed_from"] is None
    assert not output.with_name("run.partial").exists()  # checkpoints go once the run is saved
    model = AutoModelForCausalLM.from_pretrained(output)
    assert not torch.equal(
        model.model.embed_tokens.weight, AutoModelForCausalLM.from_pretrained(tiny_llama).model.embed_tokens.weight
    )


def test_early_stopping_stops_and_keeps_the_best_weights(tmp_path, tiny_llama, monkeypatch):
    """Validation loss (scripted here) improves, then not for 2 epochs: training stops, the best epoch's weights return."""
    import metatune.training.loop as loop
    from metatune.objectives import prepare
    from metatune.training.common import work_dir

    scripted = iter([5.0, 4.0, 4.5, 4.2, 3.0, 2.0])
    monkeypatch.setattr(loop, "evaluate", lambda *args: next(scripted))
    cfg = config_for(
        tiny_llama,
        tmp_path / "run",
        "training.num_train_epochs=6",
        "training.early_stopping_patience=2",
        "training.save_total_limit=1",
    )
    prepared = prepare(cfg)
    work = work_dir(tmp_path / "run")
    work.mkdir()  # what `train` does once prepare has checked every input
    model, summary = loop.run_loop(prepared, work, resume=False)

    assert summary["steps"] == 12 and summary["epochs"] == 4  # epochs 3 and 4 did not improve on epoch 2
    evals = [m["eval_loss"] for m in read_metrics(work / "metrics.jsonl") if "eval_loss" in m]
    assert evals == [5.0, 4.0, 4.5, 4.2]
    checkpoints = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-12", "checkpoint-6"]  # the newest, and the best one kept past the limit
    best, last = weights(work / "checkpoints" / "checkpoint-6"), weights(work / "checkpoints" / "checkpoint-12")
    state = model.state_dict()
    for name in best:
        torch.testing.assert_close(state[name], best[name], rtol=0, atol=0)
    assert any(not torch.equal(best[name], last[name]) for name in best)


def test_resume_continues_exactly(tmp_path, tiny_llama_dropout, monkeypatch):
    """Stopped after a mid-epoch checkpoint and resumed, a run ends where the uninterrupted one does.

    The model has dropout and batches are grouped by length, so this holds only if the data
    position, the shuffle and the random number generators all come back as they were.
    """
    import metatune.training.loop as loop
    from metatune.training.run import train

    extra = [
        "training.num_train_epochs=2",
        "training.per_device_train_batch_size=4",  # 6 steps per epoch
        "training.save_steps=4",
        "training.group_by_length=true",
    ]
    train(config_for(tiny_llama_dropout, tmp_path / "straight", *extra))

    cfg = config_for(tiny_llama_dropout, tmp_path / "resumed", *extra)
    real_save = loop.save_checkpoint

    def save_then_crash(accelerator, root, state, keep):
        name = real_save(accelerator, root, state, keep)
        if state.step == 8:
            raise RuntimeError("simulated crash after the checkpoint of step 8")
        return name

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    monkeypatch.undo()
    work = tmp_path / "resumed.partial"
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["checkpoint-6", "checkpoint-8"]
    state = json.loads((work / "checkpoints" / "checkpoint-8" / "loop_state.json").read_text(encoding="utf-8"))
    assert (state["step"], state["epoch"], state["batches"]) == (8, 1, 2)  # two batches into the second epoch

    train(cfg, resume=True)
    info = json.loads((tmp_path / "resumed" / "metatune.json").read_text(encoding="utf-8"))
    assert info["training"]["resumed_from"] == "checkpoint-8" and info["training"]["steps"] == 12
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-7)
    logged = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if "loss" in m}
    expected = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "straight" / "metrics.jsonl") if "loss" in m}
    assert sorted(logged) == list(range(1, 13))  # each step logged once across the two sessions
    assert [logged[s] for s in expected] == pytest.approx(list(expected.values()), rel=1e-5)


def test_fp16_and_bf16_together_is_an_error(tmp_path, tiny_llama):
    from metatune.training.run import train

    cfg = config_for(tiny_llama, tmp_path / "run", "training.fp16=true", "training.bf16='true'")
    with pytest.raises(MetatuneError, match="training.fp16 and training.bf16 are both true; choose one"):
        train(cfg)
    assert list(tmp_path.iterdir()) == []
