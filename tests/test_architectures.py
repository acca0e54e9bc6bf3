"""Every supported architecture trains through `metatune train`, saves, reloads and generates."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from metatune.cli import app
from metatune.config import load_config, preset_names
from metatune.models import unwritable_characters
from metatune.objectives.generate.extractor import Extractor
from metatune.training.run import train

from conftest import SAMPLE, make_tiny_model

ARCHITECTURES = ["led", "t5", "llama", "gemma3", "mistral", "qwen2"]
PRESETS = ["gemma", "led", "led-large", "led-spanish", "llama", "mistral", "nuextract", "qwen", "smollm2-135m", "t5"]


def tiny_run_config(model_dir, output, *extra):
    return load_config(
        sets=[
            f"model.name={model_dir}",
            f"data.path={SAMPLE}",
            "data.max_input_tokens=256",
            "data.include_fields=[title,date]",  # a short prompt and target: fast steps
            "data.chat_template=false",
            f"training.output_dir={output}",
            "training.max_steps=2",
            "training.per_device_train_batch_size=2",
            "training.eval_each_epoch=false",
            "training.learning_rate=1e-3",
            "training.logging_steps=1",
            *extra,
        ]
    )


class GenerateSpy:
    """Wraps model.generate to keep what it was given and what it returned."""

    def __init__(self, generate):
        self.generate, self.calls = generate, []

    def __call__(self, **kwargs):
        out = self.generate(**kwargs)
        self.calls.append((kwargs, out))
        return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_train_save_reload_generate(arch, tiny_tokenizer, tmp_path, monkeypatch):
    model_dir = make_tiny_model(arch, tiny_tokenizer, tmp_path / "base")
    if arch == "led":
        forward_masks = spy_led_forward(monkeypatch)
    run = train(tiny_run_config(model_dir, tmp_path / "run"))
    if arch == "led":  # the Trainer path gave every batch global attention on each row's first token
        assert len(forward_masks) == 2
        for mask in forward_masks:
            assert mask is not None and mask[:, 0].eq(1).all() and mask[:, 1:].eq(0).all()

    info = json.loads((run / "metatune.json").read_text())
    assert info["architecture"] == ("seq2seq" if arch in ("led", "t5") else "causal")
    assert info["training"]["steps"] == 2
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert (run / "model.safetensors").is_file()

    extractor = Extractor.from_run(run, device="cpu")
    assert extractor.model.config.model_type == tiny_config_type(arch)
    spy = extractor.model.generate = GenerateSpy(extractor.model.generate)
    texts = ["Universidad Nacional de La Plata. Tesis doctoral. Autor: Juan Pérez. 2019.", "Revista de Ciencias. 2021."]
    encoded = [extractor.input_ids(t, "Tesis") for t in texts]
    outputs = extractor.generate(encoded, batch_size=2, max_new_tokens=8)

    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    ((kwargs, generated),) = spy.calls
    assert ((generated >= 0) & (generated < len(extractor.tokenizer))).all()
    if arch == "led":
        # global attention on the first token of every row, in generation as in training
        assert kwargs["global_attention_mask"][:, 0].tolist() == [1, 1]
        assert kwargs["global_attention_mask"][:, 1:].sum() == 0
    else:
        assert "global_attention_mask" not in kwargs


def tiny_config_type(arch):
    return {"gemma3": "gemma3_text"}.get(arch, arch)


def spy_led_forward(monkeypatch) -> list:
    """Records the global_attention_mask every LED training forward receives."""
    from transformers import LEDForConditionalGeneration

    seen = []
    forward = LEDForConditionalGeneration.forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("global_attention_mask"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LEDForConditionalGeneration, "forward", spy)
    return seen


def test_tokenizer_that_cannot_write_json_is_named():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import corpus

    tok = Tokenizer(models.Unigram())  # like T5's SentencePiece vocabulary: no braces, no byte fallback
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    texts = [t.translate(str.maketrans("", "", "{}[]")) for t in corpus()]
    tok.train_from_iterator(
        texts, trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    )
    no_braces = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    assert unwritable_characters(no_braces) == ["{", "}", "[", "]"]


def test_byte_level_tokenizer_writes_json(tiny_tokenizer):
    assert unwritable_characters(tiny_tokenizer) == []


def test_models_command_lists_every_preset():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.splitlines()]
    assert listed == PRESETS == preset_names()


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_defaults(preset):
    config = load_config(sets=[f"model.name={preset}"])
    m, d, t = config.model, config.data, config.training
    assert 1e-6 <= t.learning_rate <= 1e-3
    if m.quantization == "4bit":
        assert m.lora.enabled and m.dtype == "bfloat16"  # QLoRA: adapters on a frozen 4-bit base
    if m.lora.enabled:
        assert (m.lora.r, m.lora.alpha, m.lora.dropout, m.lora.target_modules) == (128, 64, 0.05, "all-linear")
        assert t.learning_rate >= 1e-4  # adapters want a higher rate than full fine-tuning
    else:
        assert m.dtype == "float32"  # full fine-tuning keeps float32 master weights (bf16 autocast on GPUs)
    assert d.input_style == ("schema" if preset == "nuextract" else "prompt")
    if preset.startswith("led"):
        assert d.max_input_tokens >= 4096  # what LED is for
