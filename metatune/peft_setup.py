"""A loaded base model made ready to train: 4-bit preparation, gradient checkpointing, LoRA (peft).

Saving and loading LoRA runs is metatune.export's.
"""

from __future__ import annotations

from metatune.config import LoraSettings, ModelSettings
from metatune.console import main_print
from metatune.errors import MetatuneError
from metatune.models import freeze_first_layers, is_peft, keep_first_layers, load_base


def lora_config(settings: LoraSettings, seq2seq: bool):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,  # "all-linear": every linear layer but the output head
    )


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total), counting 4-bit weights by the parameters they stand for."""
    if is_peft(model):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def prepare_for_training(model, settings: ModelSettings, seq2seq: bool):
    """4-bit preparation, gradient checkpointing and LoRA, as `settings` ask; prints what is trained."""
    if settings.quantization == "4bit":
        from metatune.quantization import prepare_four_bit

        model = prepare_four_bit(model, settings.gradient_checkpointing)
    elif settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.lora.enabled:
        from peft import get_peft_model

        try:
            model = get_peft_model(model, lora_config(settings.lora, seq2seq))
        except ValueError as e:  # target modules that match nothing
            raise MetatuneError(f"model.lora.target_modules: {str(e).splitlines()[0]}") from None
    trainable, total = parameter_counts(model)
    what = f"LoRA r={settings.lora.r}" if settings.lora.enabled else "full fine-tuning"
    main_print(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%, {what})")
    return model


def load_trainable(settings: ModelSettings, labels: list[str] | None = None, layers: int = 0, frozen: int = 0):
    """(model, tokenizer, seq2seq): the base model loaded and prepared as `settings` describe.

    `labels`: a token-classification head with these labels instead of the language-model head;
    `layers`: keep only the first this many transformer layers (0: all); `frozen`: train neither the
    embeddings nor the first this many layers.
    """
    model, tokenizer, seq2seq = load_base(settings, labels)
    keep_first_layers(model, layers)
    freeze_first_layers(model, frozen)
    return prepare_for_training(model, settings, seq2seq), tokenizer, seq2seq
