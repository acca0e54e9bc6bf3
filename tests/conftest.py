"""Shared fixtures: tiny tokenizers and randomly initialised tiny models built offline from configs."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "sample.json"
GROBID = REPO.parent / "shared" / "data" / "grobid-headers" / "dataset.json"


def train_tokenizer(texts: list[str], vocab_size: int = 600):
    """A small byte-level BPE tokenizer trained on `texts`, with the usual special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def corpus() -> list[str]:
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    texts = [r["original_text"] for split in data.values() for r in split]
    texts += [
        json.dumps({k: v for k, v in r.items() if k != "original_text"}, ensure_ascii=False)
        for split in data.values()
        for r in split
    ]
    texts.append((REPO / "metatune" / "configs" / "doctypes.yaml").read_text(encoding="utf-8"))
    return texts


@pytest.fixture(autouse=True)
def float32_reading(monkeypatch):
    """Extractors read in what was saved (float32 here): `dtype: auto` may pick bf16 where this CPU
    is fast in it, and the tests compare outputs that agree only in float32. A test of that choice
    (tests/test_tagging.py) undoes this."""
    monkeypatch.setattr("metatune.precision.inference_bf16", lambda device_type: False)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(corpus())


def tiny_config(arch: str, tokenizer):
    """A randomly initialisable config of the given architecture, a few hundred thousand parameters."""
    import transformers as tf

    ids = dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    vocab = len(tokenizer)
    small = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        vocab_size=vocab,
        **ids,
    )
    if arch == "llama":
        return tf.LlamaConfig(**small, tie_word_embeddings=True)
    if arch == "qwen2":
        return tf.Qwen2Config(**small)
    if arch == "mistral":
        return tf.MistralConfig(**small, sliding_window=None)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**small, head_dim=16, sliding_window=64)
    if arch == "t5":
        return tf.T5Config(
            vocab_size=vocab,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=tokenizer.pad_token_id,
            **ids,
        )
    if arch == "led":
        return tf.LEDConfig(
            vocab_size=vocab,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            attention_window=[16, 16],
            max_encoder_position_embeddings=4096,
            max_decoder_position_embeddings=1024,
            decoder_start_token_id=tokenizer.eos_token_id,
            **ids,
        )
    raise ValueError(arch)


def make_tiny_model(arch: str, tokenizer, path: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    config = tiny_config(arch, tokenizer)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = cls.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_tiny_model("llama", tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_tiny_model("t5", tiny_tokenizer, tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_llama) -> Path:
    """A real saved run: the tiny llama fine-tuned for a few steps on the sample data.

    It is trained to write only `date` and `language` (short targets, so it learns to close its JSON
    object within the steps a test can afford); shared by the evaluate, extract and serve tests.
    """
    from metatune.config import load_config
    from metatune.training.run import train

    output = tmp_path_factory.mktemp("tiny-run") / "run"
    config = load_config(
        sets=[
            "data.include_fields=[date, language]",
            "data.max_input_tokens=256",
            "data.max_target_tokens=32",
            "training.max_steps=50",
            "training.learning_rate=1e-2",
            "training.warmup_ratio=0",
            "training.per_device_train_batch_size=8",
            "training.eval_each_epoch=false",
            "training.save_total_limit=1",
            "training.logging_steps=10",
            "training.bf16=false",  # extraction tests compare outputs that agree only in float32
        ],
        model=str(tiny_llama),
        data=str(SAMPLE),
        output=str(output),
    )
    return train(config)


# --- a tiny model trained on the sample data (test_loop.py, test_training.py) -----------------------

FIELDS = "[title, creator, date, language]"  # short prompts and targets keep the runs fast


def sample_run_config(model: Path, output: Path, *extra: str):
    """`model` trained on the sample data, on 4 fields: 24 training documents, 3 steps per epoch;
    `extra`: more --set items."""
    from metatune.config import load_config

    return load_config(
        sets=[
            f"model.name={model}",
            f"data.path={SAMPLE}",
            f"training.output_dir={output}",
            f"data.include_fields={FIELDS}",
            "data.max_input_tokens=256",
            "data.max_target_tokens=192",
            "training.per_device_train_batch_size=8",
            "training.per_device_eval_batch_size=8",
            "training.learning_rate=3e-3",
            "training.logging_steps=1",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train as fast on one thread, and far faster than on two when the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_metrics(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@contextmanager
def serving(app):
    """The app served by uvicorn on a free loopback port, in a thread of this process; yields its URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run_main(monkeypatch, capsys, *args, stdin: str | None = None):
    """Runs the real `metatune` entry point in this process: (exit status, stdout, stderr)."""
    import io
    import sys

    from metatune.cli import main

    monkeypatch.setattr(sys, "argv", ["metatune", *map(str, args)])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err
