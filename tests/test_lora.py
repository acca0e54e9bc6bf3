"""LoRA through peft: configuration, training, adapter + merged saving, loading back."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from metatune.config import LoraSettings, ModelSettings, load_config
from metatune.errors import MetatuneError
from metatune.export import load_run
from metatune.objectives.generate.extractor import Extractor
from metatune.peft_setup import load_trainable, lora_config
from metatune.training.run import train

from conftest import SAMPLE, make_tiny_model


def lora_run_config(model_dir, output, *extra):
    return load_config(
        sets=[
            f"model.name={model_dir}",
            "model.lora.enabled=true",
            "model.lora.r=8",
            "model.lora.alpha=16",
            f"data.path={SAMPLE}",
            "data.max_input_tokens=256",
            "data.include_fields=[title,date]",  # a short prompt and target: fast steps
            "data.chat_template=false",
            f"training.output_dir={output}",
            "training.max_steps=2",
            "training.per_device_train_batch_size=2",
            "training.eval_each_epoch=false",
            "training.learning_rate=2e-2",  # large enough that two steps move the adapter visibly
            *extra,
        ]
    )


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
        return model(input_ids=ids).logits


def base_plus_adapter(cls, base_dir, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(cls.from_pretrained(base_dir), adapter_dir)


def test_lora_config_defaults_and_task_types():
    settings = load_config(sets=["model.name=smollm2-135m", "model.lora.enabled=true"]).model.lora
    assert (settings.r, settings.alpha, settings.dropout, settings.target_modules) == (128, 64, 0.05, "all-linear")
    assert settings.merge is True
    causal, seq2seq = lora_config(settings, seq2seq=False), lora_config(settings, seq2seq=True)
    assert (causal.task_type, seq2seq.task_type) == ("CAUSAL_LM", "SEQ_2_SEQ_LM")
    assert (causal.r, causal.lora_alpha, causal.lora_dropout) == (128, 64, 0.05)
    custom = load_config(
        sets=[
            "model.lora.r=16",
            "model.lora.alpha=32",
            "model.lora.dropout=0.1",
            "model.lora.target_modules=[q_proj,v_proj]",
        ]
    ).model.lora
    config = lora_config(custom, seq2seq=False)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (
        16,
        32,
        0.1,
        {"q_proj", "v_proj"},
    )


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_lora_wraps_every_linear_layer_but_the_head(arch, tiny_tokenizer, tmp_path, capsys):
    base = make_tiny_model(arch, tiny_tokenizer, tmp_path / "base")
    model, _, seq2seq = load_trainable(ModelSettings(name=str(base), lora=LoraSettings(enabled=True, r=4, alpha=8)))
    assert model.peft_config["default"].task_type == ("SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM")
    linear = {name for name, m in model.base_model.model.named_modules() if isinstance(m, torch.nn.Linear)}
    wrapped = {name.removesuffix(".base_layer") for name in linear if name.endswith(".base_layer")}
    plain = {name for name in linear if "lora_" not in name and not name.endswith(".base_layer")} - wrapped
    assert plain == {"lm_head"}  # the only linear layer left alone is the output head
    assert len(wrapped) == (7 * 2 if arch == "llama" else (4 + 2) * 2 + (4 + 4 + 2) * 2)
    trainable, total = model.get_nb_trainable_parameters()
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert f"Trainable parameters: {trainable:,} of {total:,}" in capsys.readouterr().out


def test_unknown_target_modules_is_a_one_line_error(tiny_tokenizer, tmp_path):
    base = make_tiny_model("llama", tiny_tokenizer, tmp_path / "base")
    settings = ModelSettings(name=str(base), lora=LoraSettings(enabled=True, target_modules=["nope_proj"]))
    with pytest.raises(
        MetatuneError, match=r"^model\.lora\.target_modules: Target modules .*nope_proj.* not found"
    ) as e:
        load_trainable(settings)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_merged_model_loads_without_peft_and_matches_base_plus_adapter(arch, tiny_tokenizer, tmp_path):
    base = make_tiny_model(arch, tiny_tokenizer, tmp_path / "base")
    run = train(lora_run_config(base, tmp_path / "run"))
    cls = AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForCausalLM

    info = json.loads((run / "metatune.json").read_text())
    assert info["lora"]["merged"] is True and info["lora"]["adapter"] == "adapter"
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (
        run / "adapter" / "adapter_config.json"
    ).is_file()
    merged = cls.from_pretrained(run)  # plain transformers, no peft
    assert not any("lora" in name for name in merged.state_dict())

    ids = torch.tensor([tiny_tokenizer("Universidad Nacional de La Plata, tesis de 2019")["input_ids"]])
    expected = logits(base_plus_adapter(cls, base, run / "adapter"), ids)
    assert torch.allclose(logits(merged, ids), expected, atol=1e-4)
    assert (logits(cls.from_pretrained(base), ids) - expected).abs().max() > 1e-3  # the adapter did learn


def test_unmerged_run_loads_base_plus_adapter(tiny_tokenizer, tmp_path):
    base = make_tiny_model("llama", tiny_tokenizer, tmp_path / "base")
    run = train(lora_run_config(base, tmp_path / "run", "model.lora.merge=false", "model.gradient_checkpointing=true"))

    info = json.loads((run / "metatune.json").read_text())
    assert info["lora"]["merged"] is False and info["lora"]["base"] == str(base.resolve())
    assert not (run / "model.safetensors").exists() and (run / "adapter" / "adapter_model.safetensors").is_file()
    model, tokenizer, _ = load_run(run, device="cpu")
    ids = torch.tensor([tiny_tokenizer("Facultad de Informática, 2020")["input_ids"]])
    expected = logits(base_plus_adapter(AutoModelForCausalLM, base, run / "adapter"), ids)
    assert torch.allclose(logits(model, ids), expected, atol=1e-4)
    assert model.generation_config.max_new_tokens == info["limits"]["max_target_tokens"]

    extractor = Extractor.from_run(run, device="cpu")
    out = extractor.generate([extractor.input_ids("Tesis doctoral, 2019", "Tesis")], max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer, tmp_path):
    base = make_tiny_model("llama", tiny_tokenizer, tmp_path / "base")
    ids = torch.tensor([tiny_tokenizer("Revista de Ciencias Sociales, vol. 12")["input_ids"]] * 2)
    grads = []
    for checkpointing in (False, True):
        lora = LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0)
        model, _, _ = load_trainable(ModelSettings(name=str(base), lora=lora, gradient_checkpointing=checkpointing))
        assert model.base_model.model.is_gradient_checkpointing is checkpointing
        model.train()
        for p in model.parameters():  # LoRA B starts at zero: give it values so A gets a gradient too
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(p.numel()))
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.slow
def test_smollm2_lora_adapter_only_run(tmp_path):
    """The real SmolLM2 (a GGUF preset): LoRA, adapter-only run, base + adapter found again from the preset."""
    run = train(
        lora_run_config(
            "smollm2-135m",
            tmp_path / "run",
            "model.lora.merge=false",
            "training.max_steps=1",
            "training.per_device_train_batch_size=1",
            "data.include_fields=[title]",
            "data.max_input_tokens=256",
        )
    )
    info = json.loads((run / "metatune.json").read_text())
    assert info["lora"] == {**info["lora"], "merged": False, "base": "smollm2-135m"}
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size < 20e6  # r=8: a few MB, not the model
    extractor = Extractor.from_run(run, device="cpu")  # loads the base from the preset, then the adapter
    assert not any("lora" in name for name in extractor.model.state_dict())  # merged in memory for generation
    out = extractor.generate([extractor.input_ids("Tesis doctoral. Juan Pérez. 2019.", "Tesis")], max_new_tokens=8)
    assert len(out) == 1 and out[0]
