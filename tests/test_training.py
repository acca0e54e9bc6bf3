"""Real (tiny) training runs through metatune.training.run.train: loss, saved run, round trip, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metatune.config import Config
from metatune.errors import MetatuneError

from conftest import SAMPLE, read_metrics, sample_run_config

pytestmark = pytest.mark.usefixtures("one_thread")


def config_for(model: Path, output: Path, *extra: str):
    return sample_run_config(model, output, "training.lr_scheduler_type=constant", "training.warmup_ratio=0", *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama, one_thread):
    """One complete run (schema input style, 6 epochs), and the model as it was in memory when saved."""
    import metatune.training.run as run_module

    output = tmp_path_factory.mktemp("training") / "run"
    saved = {}
    real_save_run = run_module.save_run

    def spy(model, tokenizer, info, out, card, extra=None, config_keys=None):
        saved["model"] = model
        return real_save_run(model, tokenizer, info, out, card, extra, config_keys)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "save_run", spy)
        result = run_module.train(
            config_for(tiny_llama, output, "data.input_style=schema", "training.num_train_epochs=6")
        )
    assert result == output
    return output, saved["model"]


def test_loss_goes_down(trained):
    output, _ = trained
    metrics = read_metrics(output / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if "loss" in m]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert len(losses) == 18 and len(evals) == 6  # every step logged; evaluated after each epoch
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses  # about 6.2 -> 4.1
    assert evals == sorted(evals, reverse=True) and evals[-1] < evals[0] - 1.0, evals  # about 5.9 -> 4.1
    assert [m["step"] for m in metrics if "eval_loss" in m] == [3, 6, 9, 12, 15, 18]


def test_saved_run_loads_with_transformers_alone(trained, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output, _ = trained
    files = {p.name for p in output.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "metatune.json",
        "metrics.jsonl",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)  # safetensors only
    assert not output.with_name("run.partial").exists()  # checkpoints are gone once the run is saved
    assert not list(output.parent.glob(".run.*"))
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert model.config.model_type == "llama"
    assert tokenizer("Tesis")["input_ids"] and tokenizer.eos_token == "</s>"
    assert model.generation_config.max_new_tokens == 192 and model.generation_config.do_sample is False

    info = json.loads((output / "metatune.json").read_text(encoding="utf-8"))
    assert info["base_model"] == str(tiny_llama)
    assert info["architecture"] == "causal"
    assert info["input"]["style"] == "schema"
    assert info["input"]["include_fields"] == ["title", "creator", "date", "language"]
    assert {"Tesis", "Articulo", "Libro", "Objeto de conferencia", "general"} <= set(info["types"])
    assert info["types"]["Tesis"]["fields"]["director"] == "array"
    prefix = info["input"]["prompts"]["Tesis"]["prefix"]
    assert prefix.startswith("<|input|>\n### Template:\n") and '"title": ""' in prefix
    assert info["input"]["prompts"]["Tesis"]["suffix"] == "\n<|output|>\n"
    assert info["limits"] == {"max_input_tokens": 256, "max_target_tokens": 192}
    assert info["training"]["steps"] == 18 and info["training"]["train_examples"] == 24


def test_every_file_of_a_saved_run_has_the_usual_mode(trained):
    import os

    from metatune.files import UMASK

    output, _ = trained
    modes = {str(p.relative_to(output)): os.stat(p).st_mode & 0o777 for p in output.rglob("*")}
    assert modes["model.safetensors"] == 0o666 & ~UMASK, modes
    assert {m for name, m in modes.items() if (output / name).is_file()} == {0o666 & ~UMASK}, modes
    assert os.stat(output).st_mode & 0o777 == 0o777 & ~UMASK


def test_round_trip_save_load_generate(trained):
    from metatune.objectives.generate.extractor import Extractor

    output, in_memory = trained
    in_memory.eval()
    extractor = Extractor.from_run(output, device="cpu")
    record = json.loads(SAMPLE.read_text(encoding="utf-8"))["test"][0]
    ids = extractor.input_ids(record["original_text"], record["type"])
    assert len(ids) <= 256
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = in_memory(input_ids=x).logits
        got = extractor.model(input_ids=x).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        reference = in_memory.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=extractor.tokenizer.pad_token_id,
        )
    assert (
        extractor.tokenizer.decode(reference[0, len(ids) :], skip_special_tokens=True)
        == extractor.generate([ids], max_new_tokens=12)[0]
    )
    results = extractor.extract([record["original_text"]], ["Artículo"])
    assert len(results) == 1 and results[0].doc_type == "Articulo" and isinstance(results[0].raw, str)


def test_inference_builds_the_inputs_training_saw(trained, tiny_llama, tmp_path):
    from metatune.objectives import prepare
    from metatune.objectives.generate.extractor import Extractor

    output, _ = trained
    info = json.loads((output / "metatune.json").read_text(encoding="utf-8"))
    config = Config.model_validate(info["config"])  # the run's own settings
    config.training.output_dir = str(tmp_path / "again")
    prepared = prepare(config)
    extractor = Extractor.from_run(output, device="cpu")
    record = json.loads(SAMPLE.read_text(encoding="utf-8"))["training"][0]
    ids = extractor.input_ids(record["original_text"], record["type"])
    prompts = [f["input_ids"][: f["labels"].count(-100)] for f in prepared.train]
    assert ids in prompts


def test_crash_leaves_no_output_and_resume_continues(tmp_path, tiny_llama, monkeypatch):
    """A run that dies after its second epoch's checkpoint; --resume finishes it from there."""
    from transformers.trainer_callback import CallbackHandler

    from metatune.training.run import train

    output = tmp_path / "run"
    work = tmp_path / "run.partial"
    cfg = config_for(tiny_llama, output, "training.num_train_epochs=3")

    with pytest.raises(MetatuneError, match="nothing to resume"):
        train(cfg, resume=True)
    assert not work.exists()

    real_on_save = CallbackHandler.on_save

    def on_save(self, args, state, control, **kwargs):
        control = real_on_save(self, args, state, control, **kwargs)
        if state.global_step == 6:
            raise RuntimeError("simulated crash after the checkpoint of epoch 2")
        return control

    monkeypatch.setattr(CallbackHandler, "on_save", on_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    monkeypatch.undo()

    assert not output.exists()  # only a complete run gets the output's name
    assert not list(tmp_path.glob(".run.*"))
    checkpoints = sorted(p.name for p in (work / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]  # one per epoch
    for name in checkpoints:
        assert (work / "checkpoints" / name / "model.safetensors").is_file()
    before = read_metrics(work / "metrics.jsonl")
    assert max(m["step"] for m in before) == 6

    with pytest.raises(MetatuneError, match="unfinished run is there; pass --resume"):
        train(cfg)

    assert train(cfg, resume=True) == output
    info = json.loads((output / "metatune.json").read_text(encoding="utf-8"))
    assert info["training"]["resumed_from"] == "checkpoint-6"
    assert info["training"]["steps"] == 9
    metrics = read_metrics(output / "metrics.jsonl")
    losses = {m["step"]: m["loss"] for m in metrics if "loss" in m}
    assert sorted(losses) == list(range(1, 10))  # the first session's log, then the resumed one
    assert losses[7] < 0.85 * losses[1], losses  # it went on from the trained weights, not from scratch
    assert not work.exists()


def test_bad_input_leaves_nothing_on_disk(tmp_path, tiny_llama):
    from metatune.training.run import train

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"training": [{"type": "Tesis", "original_text": ""}], "validation": []}), encoding="utf-8"
    )
    before = sorted(tmp_path.rglob("*"))
    for cfg in (
        config_for(tiny_llama, tmp_path / "run", f"data.path={bad}"),
        config_for(tiny_llama, tmp_path / "run", "data.max_input_tokens=20"),  # the instruction alone is longer
        config_for(tiny_llama, tmp_path / "run", f"model.name={tmp_path / 'no-model'}"),
    ):
        with pytest.raises(MetatuneError):
            train(cfg)
        assert sorted(tmp_path.rglob("*")) == before


def break_checkpoint(path: Path) -> None:
    """What a kill -9 in the middle of the Trainer's save leaves: config files and a temporary file."""
    for f in path.iterdir():
        if f.name not in ("config.json", "generation_config.json"):
            f.unlink()
    (path / "tmpk2x9_model.safetensors").write_bytes(b"\0" * 1000)


def test_resume_skips_a_checkpoint_killed_mid_save(tmp_path, tiny_llama, monkeypatch):
    """Killed while checkpoint-6 was written: --resume goes on from checkpoint-3, logs every step once,
    and metatune.json's train_loss and seconds cover the whole run, not only the resumed part."""
    import time

    from transformers.trainer_callback import CallbackHandler

    from metatune.training.run import train

    output, work = tmp_path / "run", tmp_path / "run.partial"
    cfg = config_for(tiny_llama, output, "training.num_train_epochs=3", "training.save_total_limit=0")
    real_on_save, real_on_step_end = CallbackHandler.on_save, CallbackHandler.on_step_end

    def on_save(self, args, state, control, **kwargs):
        control = real_on_save(self, args, state, control, **kwargs)
        if state.global_step == 6:
            raise RuntimeError("killed")
        return control

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(1)  # a first session that takes measurably long
        return real_on_step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(CallbackHandler, "on_save", on_save)
    monkeypatch.setattr(CallbackHandler, "on_step_end", on_step_end)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg)
    monkeypatch.undo()
    break_checkpoint(work / "checkpoints" / "checkpoint-6")
    earlier = json.loads((work / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text(encoding="utf-8"))
    earlier_seconds = earlier["stateful_callbacks"]["RunTotals"]["attributes"]["seconds"]
    assert earlier_seconds >= 3

    began = time.perf_counter()
    assert train(cfg, resume=True) == output
    wall = time.perf_counter() - began
    info = json.loads((output / "metatune.json").read_text(encoding="utf-8"))["training"]
    assert info["resumed_from"] == "checkpoint-3" and info["steps"] == 9
    metrics = read_metrics(output / "metrics.jsonl")
    steps = [m["step"] for m in metrics if "loss" in m]
    assert steps == list(range(1, 10))  # steps 4-6 of the killed session are not there twice
    assert [m["step"] for m in metrics if "eval_loss" in m] == [3, 6, 9]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert info["train_loss"] == pytest.approx(sum(losses) / 9, rel=1e-5)
    assert metrics[-1]["train_loss"] == pytest.approx(info["train_loss"])
    assert earlier_seconds <= info["seconds"] <= earlier_seconds + wall + 0.1
    assert metrics[-1]["train_runtime"] == pytest.approx(info["seconds"], abs=0.1)


def test_resume_with_only_an_unfinished_checkpoint_starts_again(tmp_path, tiny_llama, monkeypatch):
    from transformers.trainer_callback import CallbackHandler

    from metatune.training.run import train

    output, work = tmp_path / "run", tmp_path / "run.partial"
    cfg = config_for(
        tiny_llama, output, "training.max_steps=4", "training.save_steps=2", "training.eval_each_epoch=false"
    )

    def on_save(self, args, state, control, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(CallbackHandler, "on_save", on_save)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg)
    monkeypatch.undo()
    break_checkpoint(work / "checkpoints" / "checkpoint-2")

    assert train(cfg, resume=True) == output
    info = json.loads((output / "metatune.json").read_text(encoding="utf-8"))["training"]
    assert info["resumed_from"] is None and info["steps"] == 4
    assert [m["step"] for m in read_metrics(output / "metrics.jsonl") if "loss" in m] == [1, 2, 3, 4]
