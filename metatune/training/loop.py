"""The custom training loop (`training.mode: loop`), on accelerate; reads top to bottom.

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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler, get_parameter_names
from transformers.trainer_utils import get_last_checkpoint

from metatune.encoding import IGNORE_INDEX, collator
from metatune.training.common import Prepared
from metatune.training.distributed import whole_model
from metatune.precision import mixed_precision
from metatune.training.hf_trainer import append_metrics, drop_metrics_after

STATE_FILE = "loop_state.json"  # counters that accelerate's save_state does not keep


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


def target_count(batch: dict, shift: bool) -> torch.Tensor:
    labels = batch["labels"][:, 1:] if shift else batch["labels"]
    return labels.ne(IGNORE_INDEX).sum()


def token_losses(model, batch: dict, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: summed cross-entropy over its target tokens, and their number.

    Causal models predict token t+1 at position t (`shift`); seq2seq models need `labels` to build
    their decoder inputs and predict them in place.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"} if shift else batch
    logits = model(**inputs, use_cache=False).logits
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return ce.view(labels.shape).sum(1), labels.ne(IGNORE_INDEX).sum(1)


def evaluate(accelerator: Accelerator, model, loader, shift: bool) -> float:
    """Mean cross-entropy per target token over the whole validation split (all processes)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            sums, counts = accelerator.gather_for_metrics(token_losses(model, batch, shift))
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


def save_checkpoint(accelerator: Accelerator, root: Path, counters: dict, keep: int) -> str:
    """accelerate's state (weights, optimizer, scheduler, RNG) plus our counters, renamed into place when complete."""
    name = f"checkpoint-{counters['step']}"
    tmp, final = root / f"{name}.tmp", root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({**counters, "checkpoint": name}, indent=2), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        rotate(root, keep, counters.get("best_checkpoint"))
    accelerator.wait_for_everyone()
    return name


def rotate(root: Path, keep: int, best: str | None) -> None:
    """Deletes all but the newest `keep` checkpoints (and the best one); keep <= 0 keeps all."""
    if keep <= 0:
        return
    found = sorted((p for p in root.glob("checkpoint-*") if p.name.split("-")[1].isdigit()), key=lambda p: int(p.name.split("-")[1]))
    for path in found[:-keep]:
        if path.name != best:
            shutil.rmtree(path)


def run_loop(prepared: Prepared, work: Path, resume: bool) -> dict:
    t = prepared.config.training
    accum = t.gradient_accumulation_steps
    shift = not prepared.seq2seq
    # A second run in the same Python process may use another precision; the Trainer resets this too.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=mixed_precision(prepared.config),
        gradient_accumulation_steps=accum,  # fills DeepSpeed's "auto"; the loop groups micro-batches itself
        step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever the process count
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=t.seed),
    )
    set_seed(t.seed)
    main = accelerator.is_main_process
    metrics, ckpt_root = work / "metrics.jsonl", work / "checkpoints"

    collate = collator(prepared.tokenizer)
    train_loader = DataLoader(prepared.train, batch_size=t.per_device_train_batch_size, sampler=train_sampler(prepared), collate_fn=collate)
    evaluating = t.eval_each_epoch and bool(prepared.validation)

    # The schedule needs the per-process number of batches before accelerate shards the loader
    # (DeepSpeed wants the scheduler in the same prepare call as the model).
    batches_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * steps_per_epoch)
    optimizer = adamw(prepared.model, t)
    scheduler = get_scheduler(
        t.lr_scheduler_type, optimizer, num_warmup_steps=math.ceil(total_steps * t.warmup_ratio), num_training_steps=total_steps
    )
    on_plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)  # steps on the validation loss
    model, optimizer, train_loader, scheduler = accelerator.prepare(prepared.model, optimizer, train_loader, scheduler)
    assert len(train_loader) == batches_per_epoch, (len(train_loader), batches_per_epoch)
    if evaluating:
        eval_loader = accelerator.prepare(
            DataLoader(prepared.validation, batch_size=t.per_device_eval_batch_size, collate_fn=collate)
        )

    counters = {"step": 0, "epoch": 0, "batches": 0, "loss_sum": 0.0, "log_loss": 0.0, "log_steps": 0,
                "eval_loss": None, "best_eval_loss": None, "best_checkpoint": None, "bad_evals": 0}
    resumed_from = get_last_checkpoint(ckpt_root) if resume and ckpt_root.is_dir() else None
    rng_after_skip = None
    if resumed_from:
        accelerator.load_state(resumed_from)
        counters.update(json.loads((Path(resumed_from) / STATE_FILE).read_text(encoding="utf-8")))
        counters.pop("checkpoint", None)
        if main:
            drop_metrics_after(metrics, counters["step"])
            print(f"Resuming from {resumed_from} (step {counters['step']} of {total_steps})")
        if counters["batches"]:
            rng_after_skip = rng_state()  # starting the skipping iterator draws from the RNG; undo that
    elif resume and main:
        print("No checkpoint saved yet: training from the start")
    accelerator.wait_for_everyone()

    c = counters
    stop = c["step"] >= total_steps
    patience = t.early_stopping_patience if evaluating else 0
    progress = tqdm(total=total_steps, initial=c["step"], desc="training", disable=not accelerator.is_local_main_process)
    start = time.perf_counter()
    model.train()
    while not stop:
        train_loader.set_epoch(c["epoch"])
        loader = accelerator.skip_first_batches(train_loader, c["batches"]) if c["batches"] else train_loader
        batches = iter(loader)
        while c["step"] < total_steps:
            window = list(itertools.islice(batches, accum))  # one optimizer step's micro-batches
            if not window:
                break
            if rng_after_skip is not None:
                set_rng_state(rng_after_skip)
                rng_after_skip = None
            c["batches"] += len(window)

            # Every target token of the step, on every process, weighs the same.
            n_tokens = accelerator.reduce(sum(target_count(b, shift) for b in window).to(accelerator.device), "sum")
            step_loss = torch.zeros((), device=accelerator.device)
            for i, batch in enumerate(window):
                last = i == len(window) - 1
                # DeepSpeed steps when told gradients are synced; the Trainer sets this flag the same way.
                accelerator.gradient_state._set_sync_gradients(last)
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    sums, _ = token_losses(model, batch, shift)
                    loss = sums.sum() / n_tokens
                    # DDP averages gradients over processes and accelerate divides by `accum`: undo both.
                    accelerator.backward(loss * accelerator.num_processes * accum)
                step_loss += loss.detach()
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm) if t.max_grad_norm > 0 else None
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped and not on_plateau:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step_loss = accelerator.reduce(step_loss, "sum").item()
            c["step"] += 1
            c["loss_sum"] += step_loss
            c["log_loss"] += step_loss
            c["log_steps"] += 1
            epoch_float = c["epoch"] + c["batches"] / len(train_loader)
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            if c["step"] == 1 or c["step"] % t.logging_steps == 0:
                logs = {"loss": c["log_loss"] / c["log_steps"], "learning_rate": learning_rate}
                if grad_norm is not None:
                    logs["grad_norm"] = float(grad_norm)
                if main:
                    append_metrics(metrics, c["step"], epoch_float, logs)
                c["log_loss"], c["log_steps"] = 0.0, 0
            if t.save_steps > 0 and c["step"] % t.save_steps == 0 and c["batches"] < len(train_loader):
                save_checkpoint(accelerator, ckpt_root, c, t.save_total_limit)

        # End of an epoch, or of training part way through one.
        epoch_done = c["batches"] >= len(train_loader)
        epoch_float = c["epoch"] + c["batches"] / len(train_loader)
        if epoch_done:
            c["epoch"], c["batches"] = c["epoch"] + 1, 0
        stop = c["step"] >= total_steps
        name = f"checkpoint-{c['step']}"
        if evaluating:
            began = time.perf_counter()
            c["eval_loss"] = evaluate(accelerator, model, eval_loader, shift)
            if on_plateau:
                scheduler.step(c["eval_loss"])
            if main:
                append_metrics(metrics, c["step"], epoch_float,
                               {"eval_loss": c["eval_loss"], "eval_runtime": round(time.perf_counter() - began, 4)})
            if c["best_eval_loss"] is None or c["eval_loss"] < c["best_eval_loss"]:
                c["best_eval_loss"], c["bad_evals"] = c["eval_loss"], 0
                c["best_checkpoint"] = name if patience else None  # kept by the rotation, loaded at the end
            else:
                c["bad_evals"] += 1
                if patience and c["bad_evals"] >= patience:
                    if main:
                        print(f"Early stopping: validation loss has not improved for {c['bad_evals']} epochs")
                    stop = True
        save_checkpoint(accelerator, ckpt_root, c, t.save_total_limit)
    progress.close()

    if patience and c["best_checkpoint"] and c["best_checkpoint"] != f"checkpoint-{c['step']}":
        accelerator.load_state(str(ckpt_root / c["best_checkpoint"]))
        if main:
            print(f"Loaded the weights of {c['best_checkpoint']} (best validation loss {c['best_eval_loss']:.4f})")
    seconds = round(time.perf_counter() - start, 1)
    summary = {
        "mode": "loop",
        "steps": c["step"],
        "epochs": c["epoch"] + c["batches"] / len(train_loader),
        "train_loss": c["loss_sum"] / max(c["step"], 1),
        "seconds": seconds,
        "resumed_from": Path(resumed_from).name if resumed_from else None,
    }
    if c["eval_loss"] is not None:
        summary["eval_loss"] = c["eval_loss"]
    if main:
        append_metrics(metrics, c["step"], summary["epochs"], {"train_loss": summary["train_loss"], "train_runtime": seconds})
    prepared.model = whole_model(accelerator, model)
    accelerator.free_memory()
    return summary
