"""What the training engines (the Trainer path, the custom loop) receive to train (`Prepared`), and
where a run keeps its checkpoints until it is complete."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from metatune import attention
from metatune.config import Config
from metatune.errors import MetatuneError
from metatune.export import check_output
from metatune.faults import available_memory
from metatune.run_info import RunInfo


@dataclass
class TrainerParts:
    """What the Trainer engine (training/hf_trainer.py) needs: a collator and a loss."""

    collate: Callable[[list[dict]], dict]
    loss: Callable | None = (
        None  # the Trainer's compute_loss_func(outputs, labels, num_items_in_batch); None: the model's
    )
    # the model's own loss is a per-batch mean that ignores num_items_in_batch (transformers' seq2seq
    # losses): the Trainer must then average accumulated batches instead of adding them
    mean_loss: bool = False


@dataclass
class LoopParts:
    """What the custom loop (training/loop.py) needs: a collator, per-example losses
    (summed cross-entropy over an example's targets, and their number) and the targets of a batch."""

    collate: Callable[[list[dict]], dict]
    example_losses: Callable[[object, dict], tuple[torch.Tensor, torch.Tensor]]
    count_targets: Callable[[dict], torch.Tensor]


@dataclass
class Prepared:
    """Everything an engine trains and a run is saved from."""

    config: Config
    model: object
    tokenizer: object
    seq2seq: bool
    train: list[dict]
    validation: list[dict]
    info: RunInfo  # what goes into metatune.json
    trainer: TrainerParts
    loop: LoopParts | None = None  # None: training.mode=loop is refused
    skipped: int = 0  # examples left out (a target longer than max_target_tokens)
    stats: dict = field(default_factory=dict)  # training figures for metatune.json
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)  # saved with the run: name -> writer
    config_keys: dict = field(default_factory=dict)  # written into the run's config.json (export.save_run)
    # called with the trained model before it is saved: removes what only training uses, returns its
    # figures for metatune.json's training section
    finish: Callable[[object], dict] | None = None


def micro_batches(config: Config, seq2seq: bool, causal: bool = True, padded_bytes: int = 0) -> tuple[int, int]:
    """(examples per forward pass, gradient accumulation steps) for `training.padding_free`.

    Padding-free, each example is its own micro-batch: nothing padded, and no attention mask, so
    attention takes its causal fast path. The optimizer still steps once per
    per_device_train_batch_size x gradient_accumulation_steps examples, on the same loss (summed
    over the target tokens of them all, divided by their count). On CPUs this is faster than padded
    batches for a model that attends causally; GPUs keep batches, which they run in parallel.
    Seq2seq losses are per-batch means, so seq2seq models keep their batches too.
    `padded_bytes`: what training with padded batches would need in memory (`padded_training_bytes`).
    """
    t = config.training
    if padding_free(config, seq2seq, causal, padded_bytes):
        return 1, t.per_device_train_batch_size * t.gradient_accumulation_steps
    return t.per_device_train_batch_size, t.gradient_accumulation_steps


def padding_free(config: Config, seq2seq: bool, causal: bool = True, padded_bytes: int = 0) -> bool:
    """`training.padding_free`; `auto`: on CPUs, for a model that attends causally. A model that reads
    both ways (`is_causal: false`, a bidirectional tag run) has no triangle for a lone example to
    skip, and a padded batch's larger matrix products run faster (docs/performance.md), unless
    training with padded batches (`padded_bytes`) would not fit in the memory available: one example
    per micro-batch keeps the activations of one example instead of a whole batch's."""
    setting = config.training.padding_free
    if seq2seq:
        return False
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return False
    return causal or padded_bytes > MEMORY_SHARE * (available_memory() or float("inf"))


# Activations a layer keeps per token for the backward pass, in float32 units: 16 x the hidden size
# plus 6 x the MLP's inner size. Fitted to a measured run: SmolLM2-135M, bf16 autocast, batches of 4
# documents of up to 1,536 tokens, 16-19 GB resident (docs/benchmarks.md, "Titles to the ends of their lines").
ACTIVATION_FLOATS = (16, 6)
STATE_BYTES_PER_PARAMETER = 18  # float32 weights and gradients, AdamW's two moments, a bf16 copy
MEMORY_SHARE = 0.9  # of the memory available when training starts


def padded_training_bytes(model, lengths: list[int], batch_size: int) -> int:
    """Estimated peak memory of training `model` on padded, length-grouped batches of `batch_size`
    examples of these token `lengths`: the longest batch's activations and the training state."""
    longest = sorted(lengths, reverse=True)[:batch_size]
    state = STATE_BYTES_PER_PARAMETER * sum(p.numel() for p in model.parameters())
    return activation_bytes(model, len(longest), max(longest, default=0)) + state


def activation_bytes(model, batch: int, length: int) -> int:
    """Estimated memory a forward and backward pass of `model` over a padded batch of `batch` examples
    of `length` tokens keeps beyond the training state: the activations for the backward pass, and
    with matmul attention its bf16 attention probabilities."""
    c = model.config.get_text_config()
    hidden, layers = c.hidden_size, c.num_hidden_layers
    inner = getattr(c, "intermediate_size", None) or 4 * hidden
    tokens = batch * length
    per_token = 4 * layers * (ACTIVATION_FLOATS[0] * hidden + ACTIVATION_FLOATS[1] * inner)
    scores = 0  # SDPA keeps no score matrix
    if model.config._attn_implementation == attention.NAME:
        scores = 2 * layers * c.num_attention_heads * tokens * length
    return tokens * per_token + scores


def attends_causally(model) -> bool:
    return getattr(model.config, "is_causal", True) is not False


def work_dir(output: Path) -> Path:
    """Checkpoints and logs live here until the run is complete."""
    return output.with_name(output.name + ".partial")


def start_output(config: Config, resume: bool, overwrite: bool) -> tuple[Path, Path]:
    output = Path(config.training.output_dir)
    check_output(output, overwrite)
    work = work_dir(output)
    if resume:
        if not work.is_dir():
            raise MetatuneError(f"{work}: nothing to resume (no unfinished run for {output})")
    elif work.exists():
        if not overwrite:
            raise MetatuneError(
                f"{work}: an unfinished run is there; pass --resume to continue it or --overwrite to start again"
            )
        shutil.rmtree(work)
    return output, work  # prepare() creates `work` once the data and the model have loaded
