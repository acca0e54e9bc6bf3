"""The custom training loop (`training.mode: loop`), on accelerate.

`run_loop` reads top to bottom in a few named steps: `setup` (accelerator, loaders, optimizer,
schedule), `restore` (a checkpoint's `LoopState` when resuming), then per optimizer step
`optimizer_step` and `record_step`, per epoch `end_epoch` (validation, early stopping) and
`save_checkpoint`, and at the end `load_best` and `summarize`.

It feeds the model the same batches as the Trainer path (same collator, samplers and data seed),
normalises the loss the same way (summed over the target tokens of every micro-batch of an
optimizer step, on every process, divided by their count) and follows the same schedule, so with
the same settings both paths log the same per-step losses. Unlike the Trainer it normalises
seq2seq losses per token too (transformers' T5/LED/BART losses ignore `num_items_in_batch`).

Runs as is on one CPU or GPU and under `accelerate launch` / `torchrun` (DDP, FSDP, DeepSpeed);
only the main process writes files other than accelerate's own per-process checkpoint parts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler, get_parameter_names
from transformers.trainer_utils import get_last_checkpoint

from metatune.config import TrainingSettings
from metatune.console import main_print
from metatune.faults import stop_signal, stopped, training_writes
from metatune.precision import mixed_precision
from metatune.training.common import LoopParts, Prepared
from metatune.training.distributed import whole_model
from metatune.training.metrics_log import append_metrics, drop_metrics_after

STATE_FILE = "loop_state.json"  # the LoopState, which accelerate's save_state does not keep


@dataclass
class LoopState:
    """Where training stands; saved with every checkpoint, so that a resumed run continues exactly."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batches: int = 0  # batches of the current epoch trained on
    loss_sum: float = 0.0  # of every step's loss, for the run's mean
    log_loss: float = 0.0  # of the steps since the last logged one
    log_steps: int = 0
    eval_loss: float | None = None
    best_eval_loss: float | None = None
    best_checkpoint: str | None = None  # with early stopping: kept by the rotation, loaded at the end
    bad_evals: int = 0  # validations in a row without improvement

    @classmethod
    def load(cls, checkpoint: Path) -> LoopState:
        saved = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """Group-by-length shuffle seeded by (seed, epoch): the same order on every process and after a resume."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


def train_sampler(prepared: Prepared):
    t = prepared.config.training
    if t.group_by_length:  # megabatches of batch x accumulation examples, as the Trainer does
        lengths = [len(x["input_ids"]) for x in prepared.train]
        return EpochLengthGroupedSampler(t.per_device_train_batch_size * t.gradient_accumulation_steps, lengths, t.seed)
    return RandomSampler(prepared.train)  # accelerate makes it a SeedableRandomSampler(data_seed + epoch)


def adamw(model, t) -> torch.optim.AdamW:
    """AdamW as the Trainer builds it: no weight decay on biases and norm weights, fused kernel."""
    no_decay = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], no_decay))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": t.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=t.learning_rate, fused=True)


def evaluate(accelerator: Accelerator, model, loader, parts: LoopParts) -> float:
    """Mean cross-entropy per target token over the whole validation split (all processes)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            sums, counts = accelerator.gather_for_metrics(parts.example_losses(model, batch))
            total += sums.sum().item()
            count += counts.sum().item()
    model.train()
    return total / max(count, 1)


def rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def set_rng_state(state: tuple) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
    if state[3] is not None:
        torch.cuda.set_rng_state_all(state[3])


def save_checkpoint(accelerator: Accelerator, root: Path, state: LoopState, keep: int) -> str:
    """accelerate's state (weights, optimizer, scheduler, RNG) plus the LoopState, renamed into place when complete."""
    name = f"checkpoint-{state.step}"
    tmp, final = root / f"{name}.tmp", root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with training_writes(final, "a checkpoint", remove=tmp):
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps({**asdict(state), "checkpoint": name}, indent=2), encoding="utf-8")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            rotate(root, keep, state.best_checkpoint)
    accelerator.wait_for_everyone()
    return name


def stop_agreed(accelerator: Accelerator) -> bool:
    """Whether a signal asked any process to stop (all of them stop at the same step)."""
    if stop_signal() is not None:
        accelerator.set_trigger()
    return accelerator.check_trigger()


def rotate(root: Path, keep: int, best: str | None) -> None:
    """Deletes all but the newest `keep` checkpoints (and the best one); keep <= 0 keeps all."""
    if keep <= 0:
        return
    found = sorted(
        (p for p in root.glob("checkpoint-*") if p.name.split("-")[1].isdigit()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    for path in found[:-keep]:
        if path.name != best:
            shutil.rmtree(path)


@dataclass
class Loop:
    """One run's pieces as accelerate prepared them, and the settings the steps read."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    eval_loader: DataLoader | None  # None without validation each epoch
    t: TrainingSettings
    parts: LoopParts  # the collator and losses to train with
    total_steps: int
    metrics: Path
    checkpoints: Path

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def on_plateau(self) -> bool:
        """ReduceLROnPlateau steps on the validation loss, not after each optimizer step."""
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    @property
    def patience(self) -> int:
        return self.t.early_stopping_patience if self.eval_loader is not None else 0

    def epoch_float(self, state: LoopState) -> float:
        return state.epoch + state.batches / len(self.train_loader)


def setup(prepared: Prepared, work: Path) -> Loop:
    """The accelerator, data loaders, optimizer and schedule, prepared for this launch."""
    t = prepared.config.training
    accum = t.gradient_accumulation_steps
    # A second run in the same Python process may use another precision; the Trainer resets this too.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=mixed_precision(prepared.config),
        gradient_accumulation_steps=accum,  # fills DeepSpeed's "auto"; the loop groups micro-batches itself
        step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever the process count
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=t.seed),
    )
    set_seed(t.seed)

    collate = prepared.loop.collate
    train_loader = DataLoader(
        prepared.train, batch_size=t.per_device_train_batch_size, sampler=train_sampler(prepared), collate_fn=collate
    )

    # The schedule needs the per-process number of batches before accelerate shards the loader
    # (DeepSpeed wants the scheduler in the same prepare call as the model).
    batches_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * steps_per_epoch)
    optimizer = adamw(prepared.model, t)
    scheduler = get_scheduler(
        t.lr_scheduler_type,
        optimizer,
        num_warmup_steps=math.ceil(total_steps * t.warmup_ratio),
        num_training_steps=total_steps,
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(prepared.model, optimizer, train_loader, scheduler)
    assert len(train_loader) == batches_per_epoch, (len(train_loader), batches_per_epoch)
    eval_loader = None
    if t.eval_each_epoch and prepared.validation:
        eval_loader = accelerator.prepare(
            DataLoader(prepared.validation, batch_size=t.per_device_eval_batch_size, collate_fn=collate)
        )
    return Loop(
        accelerator,
        model,
        optimizer,
        scheduler,
        train_loader,
        eval_loader,
        t,
        parts=prepared.loop,
        total_steps=total_steps,
        metrics=work / "metrics.jsonl",
        checkpoints=work / "checkpoints",
    )


def restore(loop: Loop, resume: bool) -> tuple[LoopState, str | None, tuple | None]:
    """(state to start from, checkpoint resumed from, RNG state to put back once the first batch is drawn).

    Resuming part way through an epoch, starting the iterator that skips the trained batches draws
    from the RNG; putting the checkpoint's RNG state back afterwards undoes that.
    """
    checkpoint = get_last_checkpoint(loop.checkpoints) if resume and loop.checkpoints.is_dir() else None
    state, rng_after_skip = LoopState(), None
    if checkpoint:
        loop.accelerator.load_state(checkpoint)
        state = LoopState.load(Path(checkpoint))
        if loop.main:
            drop_metrics_after(loop.metrics, state.step)
        main_print(f"Resuming from {checkpoint} (step {state.step} of {loop.total_steps})")
        if state.batches:
            rng_after_skip = rng_state()
    elif resume:
        main_print("No checkpoint saved yet: training from the start")
    loop.accelerator.wait_for_everyone()
    return state, checkpoint, rng_after_skip


def epoch_batches(loop: Loop, state: LoopState):
    """An iterator over this epoch's batches, after those a resumed run trained on already."""
    loop.train_loader.set_epoch(state.epoch)
    if state.batches:
        return iter(loop.accelerator.skip_first_batches(loop.train_loader, state.batches))
    return iter(loop.train_loader)


def optimizer_step(loop: Loop, window: list[dict]) -> tuple[float, float, torch.Tensor | None]:
    """One optimizer step on a window of micro-batches: (loss summed over processes, learning rate, gradient norm)."""
    accelerator, model = loop.accelerator, loop.model
    # Every target token of the step, on every process, weighs the same.
    n_tokens = accelerator.reduce(sum(loop.parts.count_targets(b) for b in window).to(accelerator.device), "sum")
    step_loss = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        # DeepSpeed steps when told gradients are synced; the Trainer sets this flag the same way.
        accelerator.gradient_state._set_sync_gradients(last)
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            sums, _ = loop.parts.example_losses(model, batch)
            loss = sums.sum() / n_tokens
            # DDP averages gradients over processes and accelerate divides by `accum`: undo both.
            accelerator.backward(loss * accelerator.num_processes * loop.t.gradient_accumulation_steps)
        step_loss += loss.detach()
    max_norm = loop.t.max_grad_norm
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm) if max_norm > 0 else None
    learning_rate = loop.scheduler.get_last_lr()[0]
    loop.optimizer.step()
    if not accelerator.optimizer_step_was_skipped and not loop.on_plateau:
        loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(step_loss, "sum").item(), learning_rate, grad_norm


def record_step(loop: Loop, state: LoopState, step_loss: float, learning_rate: float, grad_norm) -> None:
    """Counts a step taken; logs the mean loss since the last log after the first and every logging_steps-th."""
    state.step += 1
    state.loss_sum += step_loss
    state.log_loss += step_loss
    state.log_steps += 1
    if state.step == 1 or state.step % loop.t.logging_steps == 0:
        logs = {"loss": state.log_loss / state.log_steps, "learning_rate": learning_rate}
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        if loop.main:
            append_metrics(loop.metrics, state.step, loop.epoch_float(state), logs)
        state.log_loss, state.log_steps = 0.0, 0


def end_epoch(loop: Loop, state: LoopState) -> bool:
    """At the end of an epoch, or of training part way through one; returns whether training stops."""
    epoch_float = loop.epoch_float(state)
    if state.batches >= len(loop.train_loader):
        state.epoch, state.batches = state.epoch + 1, 0
    early_stop = loop.eval_loader is not None and validate(loop, state, epoch_float)
    return early_stop or state.step >= loop.total_steps


def validate(loop: Loop, state: LoopState, epoch_float: float) -> bool:
    """Logs the validation loss and keeps track of the best; returns whether early stopping says stop."""
    began = time.perf_counter()
    state.eval_loss = evaluate(loop.accelerator, loop.model, loop.eval_loader, loop.parts)
    if loop.on_plateau:
        loop.scheduler.step(state.eval_loss)
    if loop.main:
        append_metrics(
            loop.metrics,
            state.step,
            epoch_float,
            {"eval_loss": state.eval_loss, "eval_runtime": round(time.perf_counter() - began, 4)},
        )
    if state.best_eval_loss is None or state.eval_loss < state.best_eval_loss:
        state.best_eval_loss, state.bad_evals = state.eval_loss, 0
        state.best_checkpoint = f"checkpoint-{state.step}" if loop.patience else None
        return False
    state.bad_evals += 1
    if loop.patience and state.bad_evals >= loop.patience:
        main_print(f"Early stopping: validation loss has not improved for {state.bad_evals} epochs")
        return True
    return False


def load_best(loop: Loop, state: LoopState) -> None:
    """With early stopping, the weights of the best validation loss, when they are not the last ones."""
    if loop.patience and state.best_checkpoint and state.best_checkpoint != f"checkpoint-{state.step}":
        loop.accelerator.load_state(str(loop.checkpoints / state.best_checkpoint))
        main_print(f"Loaded the weights of {state.best_checkpoint} (best validation loss {state.best_eval_loss:.4f})")


def summarize(loop: Loop, state: LoopState, resumed_from: str | None, seconds: float) -> dict:
    """The run's summary (for metatune.json), also logged as the last line of metrics.jsonl."""
    seconds = round(seconds, 1)
    summary = {
        "mode": "loop",
        "steps": state.step,
        "epochs": loop.epoch_float(state),
        "train_loss": state.loss_sum / max(state.step, 1),
        "seconds": seconds,
        "resumed_from": Path(resumed_from).name if resumed_from else None,
    }
    if state.eval_loss is not None:
        summary["eval_loss"] = state.eval_loss
    if loop.main:
        append_metrics(
            loop.metrics, state.step, summary["epochs"], {"train_loss": summary["train_loss"], "train_runtime": seconds}
        )
    return summary


def run_loop(prepared: Prepared, work: Path, resume: bool) -> tuple[object, dict]:
    """Trains `prepared.model`; returns the trained model (whole, unwrapped) and the run's summary."""
    loop = setup(prepared, work)
    t = loop.t
    state, resumed_from, rng_after_skip = restore(loop, resume)
    progress = tqdm(
        total=loop.total_steps, initial=state.step, desc="training", disable=not loop.accelerator.is_local_main_process
    )
    start = time.perf_counter()
    loop.model.train()
    stop = state.step >= loop.total_steps
    while not stop:
        batches = epoch_batches(loop, state)
        while state.step < loop.total_steps:
            window = list(
                itertools.islice(batches, t.gradient_accumulation_steps)
            )  # one optimizer step's micro-batches
            if not window:
                break
            if rng_after_skip is not None:
                set_rng_state(rng_after_skip)
                rng_after_skip = None
            state.batches += len(window)
            step_loss, learning_rate, grad_norm = optimizer_step(loop, window)
            record_step(loop, state, step_loss, learning_rate, grad_norm)
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            stop = stop_agreed(loop.accelerator)
            if stop or (t.save_steps > 0 and state.step % t.save_steps == 0 and state.batches < len(loop.train_loader)):
                save_checkpoint(loop.accelerator, loop.checkpoints, state, t.save_total_limit)
            if stop:
                raise stopped(state.step)
        stop = end_epoch(loop, state)
        save_checkpoint(loop.accelerator, loop.checkpoints, state, t.save_total_limit)
    progress.close()

    load_best(loop, state)
    summary = summarize(loop, state, resumed_from, time.perf_counter() - start)
    model = whole_model(loop.accelerator, loop.model)
    loop.accelerator.free_memory()
    return model, summary
