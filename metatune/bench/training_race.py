"""Timing two Trainers step by step, in turn: the original approach against metatune's."""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from metatune.bench.machine import matmul_rate, peak_rates
from metatune.bench.original import ORIGINAL_BATCH, original_features
from metatune.bench.settings import BenchSettings


class Turns:
    """Participants (threads) that take turns in a fixed order; one that leaves is skipped from then on."""

    def __init__(self, names: list[str]):
        self.order = list(names)
        self.active = set(names)
        self.turn: str | None = names[0]
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def done(self, name: str) -> None:
        with self.cond:
            self._pass(name)

    def leave(self, name: str) -> None:
        with self.cond:
            self.active.discard(name)
            if self.turn == name:
                self._pass(name)

    def _pass(self, name: str) -> None:
        i = self.order.index(name)
        following = self.order[i + 1 :] + self.order[: i + 1]
        self.turn = next((n for n in following if n in self.active), None)
        self.cond.notify_all()


class BatchLog:
    """Wraps a data collator and records what each batch computes: positions, real tokens, targets."""

    def __init__(self, inner, seq2seq: bool):
        self.inner, self.seq2seq, self.batches = inner, seq2seq, []

    def __call__(self, features):
        batch = self.inner(features)
        self.batches.append(batch_counts(batch, self.seq2seq))
        return batch


def batch_counts(batch, seq2seq: bool) -> dict:
    """Token positions the model computes, non-padding tokens among them, and target tokens."""
    labels = batch["labels"]
    targets = int((labels != -100).sum())
    positions = batch["input_ids"].numel()
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else positions
    if seq2seq:  # the decoder computes the (padded) label positions too
        positions += labels.numel()
        tokens += targets
    return {"positions": positions, "tokens": tokens, "targets": targets}


def step_timer(turns: Turns, name: str, times: list[tuple[float, float]]):
    """Wall and CPU seconds (all threads of the process) of each optimizer step, taken in turn."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            turns.wait(name)
            self.start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))
            turns.done(name)

    return StepTimer()


def quiet_arguments(args, **changes):
    """The same TrainingArguments with nothing saved, evaluated, reported or printed."""
    return dataclasses.replace(
        args,
        save_strategy="no",
        eval_strategy="no",
        load_best_model_at_end=False,
        report_to="none",
        logging_steps=10**9,
        logging_first_step=False,
        disable_tqdm=True,
        **changes,
    )


@dataclass
class Side:
    name: str
    trainer: object
    log: BatchLog
    accumulation: int
    times: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) seconds per step
    error: BaseException | None = None


def epoch_totals(trainer, seq2seq: bool, accumulation: int) -> dict:
    """What one epoch computes, batch by batch as the Trainer's sampler groups it (collation only)."""
    totals = {"positions": 0, "tokens": 0, "targets": 0, "batches": 0}
    for batch in trainer.get_train_dataloader():
        for k, v in batch_counts(batch, seq2seq).items():
            totals[k] += v
        totals["batches"] += 1
    totals["steps"] = math.ceil(totals["batches"] / accumulation)
    return totals


def side_figures(side: Side, epoch: dict, parameters: int, peak: dict[str, float]) -> dict:
    """Per-step measurements turned into per-epoch and per-second figures."""
    steps = []
    for i, (seconds, cpu) in enumerate(side.times):
        batches = side.log.batches[i * side.accumulation : (i + 1) * side.accumulation]
        counts = {k: sum(b[k] for b in batches) for k in ("positions", "tokens", "targets")}
        steps.append({"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), **counts})
    measured = steps[1:] if len(steps) >= 3 else steps  # the first step warms up allocators and caches
    per_position = statistics.median(s["seconds"] / s["positions"] for s in measured)
    cpu_per_position = statistics.median(s["cpu_seconds"] / s["positions"] for s in measured)
    flops = statistics.median(6 * parameters * s["tokens"] / s["seconds"] for s in measured)
    flops_cpu = statistics.median(6 * parameters * s["tokens"] / s["cpu_seconds"] for s in measured)
    epoch_seconds = per_position * epoch["positions"]
    return {
        "steps": steps,
        "seconds_per_step_median": statistics.median(s["seconds"] for s in measured),
        "epoch": epoch,
        "padding_share": round(1 - epoch["tokens"] / epoch["positions"], 4),
        "epoch_seconds": round(epoch_seconds, 1),
        "epoch_cpu_seconds": round(cpu_per_position * epoch["positions"], 1),
        "target_tokens_per_second": round(epoch["targets"] / epoch_seconds, 2),
        "tokens_per_second": round(epoch["tokens"] / epoch_seconds, 2),
        "model_flops_per_second": flops,
        "mfu": round(flops / peak["wall"], 4),
        "model_flops_per_cpu_second": flops_cpu,
        "mfu_cpu_time": round(flops_cpu / peak["cpu"], 4) if peak["cpu"] else None,
    }


def timed_training(
    prepared, original_train: list[dict], original_model, settings: BenchSettings, work: Path, device: str
) -> dict:
    """Both Trainers train `settings.steps` steps, taking turns with each other and a matmul probe;
    the original side on `original_train` (bench.original.original_examples)."""
    import torch
    from transformers import Trainer, set_seed

    from metatune.encoding import collator
    from metatune.precision import use_bf16
    from metatune.training.common import attends_causally, padding_free
    from metatune.training.hf_trainer import build_trainer, training_arguments

    base_args = training_arguments(prepared, work)
    args = quiet_arguments(base_args, max_steps=settings.steps)
    metatune = build_trainer(prepared, args, callbacks=[])
    metatune_log = BatchLog(metatune.data_collator, prepared.seq2seq)
    metatune.data_collator = metatune_log

    pad_id = prepared.tokenizer.pad_token_id
    original_data = [original_features(x, pad_id, prepared.seq2seq) for x in original_train]
    original_args = quiet_arguments(
        base_args,
        max_steps=settings.steps,
        per_device_train_batch_size=ORIGINAL_BATCH,
        gradient_accumulation_steps=1,
        train_sampling_strategy="random",
        bf16=False,
        fp16=False,
    )
    original_log = BatchLog(
        collator(prepared.tokenizer), prepared.seq2seq
    )  # all rows have one length: no padding added
    original = Trainer(
        model=original_model, args=original_args, train_dataset=original_data, data_collator=original_log
    )

    accumulation = args.gradient_accumulation_steps
    epochs = {
        "original": epoch_totals(original, prepared.seq2seq, 1),
        "metatune": epoch_totals(metatune, prepared.seq2seq, accumulation),
    }
    for log in (metatune_log, original_log):
        log.batches.clear()

    turns = Turns(["peak", "original", "metatune"])
    sides = [Side("original", original, original_log, 1), Side("metatune", metatune, metatune_log, accumulation)]
    for side in sides:
        side.trainer.add_callback(step_timer(turns, side.name, side.times))

    def train(side: Side):
        try:
            set_seed(args.seed)
            side.trainer.train()
        except BaseException as e:  # re-raised in the main thread
            side.error = e
        finally:
            turns.leave(side.name)

    threads = [threading.Thread(target=train, args=(side,), daemon=True) for side in sides]
    for t in threads:
        t.start()
    n = settings.matmul_size or (2048 if device == "cpu" else 8192)
    peaks = [peak_rates(device, n)]  # both dtypes first, then float32 again after every step
    turns.done("peak")
    while True:
        turns.wait("peak")
        if turns.active == {"peak"}:
            break
        peaks.append({"float32": matmul_rate(torch.float32, n, 2, device)})
        turns.done("peak")
    turns.leave("peak")
    for t in threads:
        t.join()
    for side in sides:
        if side.error is not None:
            raise side.error

    rates = [rate for p in peaks for rate in p.values()]
    # CPU time says nothing of work done on a GPU
    peak = {"wall": max(r["wall"] for r in rates), "cpu": max(r["cpu"] for r in rates) if device == "cpu" else None}
    parameters = sum(p.numel() for p in original_model.parameters())
    out = {side.name: side_figures(side, epochs[side.name], parameters, peak) for side in sides}
    out["original"]["setup"] = {"batch_size": ORIGINAL_BATCH, "dtype": "float32", "padding": "max_length 2048 + 512"}
    out["metatune"]["setup"] = {
        "examples_per_step": args.per_device_train_batch_size * accumulation,
        "micro_batch": args.per_device_train_batch_size,
        "padding_free": padding_free(prepared.config, prepared.seq2seq, attends_causally(prepared.model)),
        "bf16": use_bf16(prepared.config),
        "group_by_length": prepared.config.training.group_by_length,
        "target_only_logits": getattr(metatune, "compute_loss_func", None) is not None,
        "gradient_checkpointing": prepared.config.model.gradient_checkpointing,
        "lora": prepared.config.model.lora.enabled,
    }
    out["parameters"] = parameters
    out["peak_flops_per_second"] = {
        "float32_best": max(p["float32"]["wall"] for p in peaks),
        "float32_median": statistics.median(p["float32"]["wall"] for p in peaks),
        "bfloat16": peaks[0]["bfloat16"]["wall"],
        "used": peak["wall"],
        "per_cpu_second_used": peak["cpu"],
        "samples": len(peaks),
    }
    original_epoch, metatune_epoch = out["original"]["epoch_seconds"], out["metatune"]["epoch_seconds"]
    out["speedup_per_epoch"] = round(original_epoch / metatune_epoch, 2)
    # CPU time counts the work, not the waiting for cores other programs hold: steadier on a shared machine
    if device == "cpu":
        out["speedup_per_epoch_cpu"] = round(
            out["original"]["epoch_cpu_seconds"] / out["metatune"]["epoch_cpu_seconds"], 2
        )
    return out
