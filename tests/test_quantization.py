"""4-bit (QLoRA): the BitsAndBytes config, the early refusal where it cannot run, and real 4-bit training.

bitsandbytes 0.50 runs NF4 on the CPU too, so the training tests run here for real; the CUDA test
runs where there is a GPU.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import metatune.quantization as quantization
from metatune.config import LoraSettings, ModelSettings, load_config
from metatune.errors import MetatuneError
from metatune.objectives.generate.extractor import Extractor
from metatune.peft_setup import load_trainable
from metatune.training.run import train

from conftest import make_tiny_model
from test_lora import base_plus_adapter, logits, lora_run_config


def four_bit_runs_here() -> bool:
    try:
        quantization.four_bit_backend()
        return True
    except MetatuneError:
        return False


@pytest.fixture
def fresh_backend_check():
    quantization.four_bit_backend.cache_clear()
    yield
    quantization.four_bit_backend.cache_clear()


@pytest.fixture
def no_four_bit(monkeypatch, fresh_backend_check):
    """A machine without CUDA whose bitsandbytes has no CPU kernels."""

    def broken_probe():
        raise RuntimeError("bitsandbytes has no CPU kernels\nfor quantize_4bit")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(quantization, "_cpu_probe", broken_probe)


def test_four_bit_config_is_nf4_double_quant_bf16_compute():
    q = quantization.four_bit_config()
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_use_double_quant is True
    assert q.bnb_4bit_compute_dtype == torch.bfloat16


@pytest.mark.parametrize("preset", ["llama", "gemma", "mistral"])
def test_decoder_presets_ask_for_qlora(preset):
    model = load_config(sets=[f"model.name={preset}"]).model
    assert model.quantization == "4bit" and model.lora.enabled


def test_four_bit_without_lora_is_refused_before_loading():
    settings = ModelSettings(name="/no/such/model", quantization="4bit")  # would fail later if it got that far
    with pytest.raises(
        MetatuneError, match=r"^model\.quantization=4bit trains LoRA adapters only .*model\.lora\.enabled=true$"
    ):
        load_trainable(settings)


def test_no_backend_fails_at_once_with_what_to_do(no_four_bit, tiny_tokenizer, tmp_path, monkeypatch):
    base = make_tiny_model("llama", tiny_tokenizer, tmp_path / "base")

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_load)
    config = lora_run_config(base, tmp_path / "run", "model.quantization=4bit")
    with pytest.raises(MetatuneError) as e:
        train(config)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(
        "model.quantization=4bit cannot run here: no CUDA, and bitsandbytes has no working CPU backend"
    )
    assert "no CPU kernels for quantize_4bit" in message  # why
    assert message.endswith("set model.quantization=none (full precision), or train on a CUDA machine")  # what instead
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()  # nothing half-written


def test_missing_bitsandbytes_says_how_to_install(fresh_backend_check, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(
        MetatuneError, match=r"needs bitsandbytes \(pip install bitsandbytes\); or set model\.quantization=none"
    ):
        quantization.four_bit_backend()


def check_qlora_trains(base, device_type: str):
    """LoRA on the 4-bit NF4 base: the base layers are 4-bit on `device_type`, the loss goes down."""
    import bitsandbytes as bnb

    lora = LoraSettings(enabled=True, r=8, alpha=16, dropout=0.0)
    model, tokenizer, _ = load_trainable(ModelSettings(name=str(base), quantization="4bit", lora=lora))
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    state = q_proj.base_layer.weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # nested: double quantization
    assert q_proj.base_layer.weight.device.type == device_type
    assert q_proj.base_layer.compute_dtype == torch.bfloat16

    ids = torch.tensor([tokenizer("Tesis de doctorado, Universidad Nacional de La Plata, 2019")["input_ids"]] * 2)
    ids = ids.to(q_proj.base_layer.weight.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses


def check_qlora_run(base, tmp_path, tokenizer):
    """`metatune train` with 4-bit: the saved run's merged model is full precision and loads plainly."""
    run = train(lora_run_config(base, tmp_path / "run", "model.quantization=4bit", "training.max_steps=1"))
    info = json.loads((run / "metatune.json").read_text())
    assert info["config"]["model"]["quantization"] == "4bit" and info["lora"]["merged"] is True
    assert "quantization_config" not in json.loads((run / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(run)
    ids = torch.tensor([tokenizer("Facultad de Ciencias Exactas")["input_ids"]])
    expected = logits(base_plus_adapter(AutoModelForCausalLM, base, run / "adapter"), ids)
    assert torch.allclose(logits(merged, ids), expected, atol=1e-4)
    extractor = Extractor.from_run(run)
    assert len(extractor.generate([extractor.input_ids("Tesis, 2019", "Tesis")], max_new_tokens=4)) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA test covers this machine")
def test_qlora_on_cpu(tiny_tokenizer, tmp_path):
    if not four_bit_runs_here():
        pytest.skip("bitsandbytes has no working CPU backend here")
    base = make_tiny_model("llama", tiny_tokenizer, tmp_path / "base")
    check_qlora_trains(base, "cpu")
    check_qlora_run(base, tmp_path, tiny_tokenizer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_on_cuda(tiny_tokenizer, tmp_path):
    assert quantization.four_bit_backend() == "cuda"
    base = make_tiny_model("llama", tiny_tokenizer, tmp_path / "base")
    check_qlora_trains(base, "cuda")
    check_qlora_run(base, tmp_path, tiny_tokenizer)
