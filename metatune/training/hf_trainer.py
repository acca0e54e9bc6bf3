"""The default training path: Hugging Face `Trainer` (`Seq2SeqTrainer` for seq2seq models)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import torch
from transformers import (
    EarlyStoppingCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import ExportableState

from metatune.console import main_print
from metatune.errors import MetatuneError
from metatune.faults import saving_checkpoints, stop_signal
from metatune.precision import apply_precision
from metatune.training.common import Prepared, attends_causally, micro_batches, padded_training_bytes
from metatune.training.distributed import whole_model
from metatune.training.metrics_log import append_metrics, drop_metrics_after

TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last into a checkpoint


def checkpoint_step(path: Path) -> int | None:
    """N of a directory named checkpoint-N, else None."""
    prefix, _, number = path.name.partition("-")
    return int(number) if prefix == "checkpoint" and number.isdigit() else None


def complete_checkpoint(path: Path) -> bool:
    """Whether the Trainer finished writing this checkpoint: a kill in the middle of a save leaves a
    directory without a readable trainer_state.json."""
    try:
        json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(root: Path, remove_others: bool) -> Path | None:
    """The newest complete Trainer checkpoint under `root`; with `remove_others`, unfinished ones are deleted."""
    found = sorted((p for p in root.glob("checkpoint-*") if checkpoint_step(p) is not None), key=checkpoint_step)
    complete = [p for p in found if complete_checkpoint(p)]
    if remove_others:
        for path in found:
            if path not in complete:
                shutil.rmtree(path, ignore_errors=True)
    return complete[-1] if complete else None


class RunTotals(TrainerCallback, ExportableState):
    """The summed training loss and the training seconds of the whole run, across resumes.

    The Trainer's own figures cover only the current `train()` call; these are saved in every
    checkpoint's trainer_state.json and read back on resume. `count` wraps `Trainer.training_step`.
    """

    def __init__(self, loss_sum: float = 0.0, seconds: float = 0.0):
        self.loss_sum, self.seconds = loss_sum, seconds  # up to the last checkpoint
        self.session_loss, self.session_start = 0.0, time.perf_counter()

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | None) -> RunTotals:
        if checkpoint is None:
            return cls()
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
        saved = state.get("stateful_callbacks", {}).get(cls.__name__)
        return cls(**saved["attributes"]) if saved else cls()

    def count(self, training_step):
        def counted(*args, **kwargs):
            loss = training_step(*args, **kwargs)
            self.session_loss += loss.item()
            return loss

        return counted

    def totals(self) -> tuple[float, float]:
        return self.loss_sum + self.session_loss, self.seconds + time.perf_counter() - self.session_start

    def state(self) -> dict:
        loss_sum, seconds = self.totals()
        return {"args": {}, "attributes": {"loss_sum": loss_sum, "seconds": seconds}}

    def on_train_begin(self, args, state, control, **kwargs):
        self.session_start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "train_loss" in logs:  # the Trainer's summary at the end: make it the whole run's
            loss_sum, seconds = self.totals()
            logs["train_loss"] = loss_sum / max(state.global_step, 1)
            logs["train_runtime"] = round(seconds, 4)


class JsonlLogger(TrainerCallback):
    """Appends every logged metric (loss, learning rate, eval loss...) to a JSON Lines file."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            append_metrics(self.path, state.global_step, state.epoch, logs)


class SaveEverySteps(TrainerCallback):
    """Checkpoints every `steps` optimizer steps on top of the per-epoch ones (training.save_steps)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.steps == 0:
            control.should_save = True


class StopOnSignal(TrainerCallback):
    """On SIGTERM or SIGINT (metatune.faults): a checkpoint at the next step end, then the end of training."""

    def __init__(self):
        self.saved_step = None

    def on_step_end(self, args, state, control, **kwargs):
        if stop_agreed(args):
            control.should_save = control.should_training_stop = True
            control.should_evaluate = False
            self.saved_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.saved_step == state.global_step:  # saved at the step end already: not twice
            control.should_save = control.should_evaluate = False
        elif stop_agreed(args):
            control.should_save = control.should_training_stop = True
            control.should_evaluate = False


def stop_agreed(args: TrainingArguments) -> bool:
    """Whether a signal asked any process to stop (all of them stop at the same step)."""
    stop = stop_signal() is not None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor(int(stop), device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop


REPORT_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def report_to(setting: str) -> str | list[str]:
    """The Trainer's report_to for training.report_to; tensorboard is skipped quietly when not installed
    (the default), the others must be installed (and configured: WANDB_*, MLFLOW_TRACKING_URI)."""
    if setting == "none":
        return "none"
    if importlib.util.find_spec(REPORT_PACKAGES[setting]) is None:
        if setting == "tensorboard":
            return "none"
        raise MetatuneError(
            f"training.report_to={setting} needs the {REPORT_PACKAGES[setting]} package "
            f"(pip install {REPORT_PACKAGES[setting]}), or set training.report_to=none"
        )
    return [setting]


def training_arguments(prepared: Prepared, work: Path) -> TrainingArguments:
    t = prepared.config.training
    evaluate = t.eval_each_epoch and bool(prepared.validation)
    cls = Seq2SeqTrainingArguments if prepared.seq2seq else TrainingArguments
    causal = attends_causally(prepared.model)
    padded = 0  # what padded batches would need in memory: only weighed for a model read both ways
    if not causal:
        lengths = [len(x["input_ids"]) for x in prepared.train]
        padded = padded_training_bytes(prepared.model, lengths, t.per_device_train_batch_size)
    batch, accumulation = micro_batches(prepared.config, prepared.seq2seq, causal, padded)
    if not causal and t.padding_free == "auto" and batch < t.per_device_train_batch_size:  # memory decided it
        main_print(
            f"Training one example per micro-batch: padded batches would need ~{padded / 2**30:.1f} GiB, "
            f"more than this machine has available (set training.padding_free=false to pad anyway)"
        )
    precision = apply_precision(prepared.config)
    return cls(
        output_dir=str(work / "checkpoints"),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=accumulation,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.lr_scheduler_type,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),  # bf16 autocast on a CPU (the Trainer refuses it otherwise)
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="epoch",
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=evaluate and t.early_stopping_patience > 0,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to=report_to(t.report_to),
        seed=t.seed,
        data_seed=t.seed,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned memory only helps copies to a GPU
        disable_tqdm=False,
    )


def build_trainer(prepared: Prepared, args: TrainingArguments, callbacks: list) -> Trainer:
    """The Trainer `run_trainer` uses (also timed by metatune.bench), with the collator and loss it was given."""
    parts = prepared.trainer
    cls = Seq2SeqTrainer if prepared.seq2seq else Trainer
    trainer = cls(
        model=prepared.model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.validation or None,
        data_collator=parts.collate,
        processing_class=prepared.tokenizer,
        callbacks=callbacks,
        compute_loss_func=parts.loss,
    )
    if parts.mean_loss:
        # A loss that ignores `num_items_in_batch`: left to think the model uses it, the Trainer would
        # add up the mean losses of accumulated batches instead of averaging them (loss and gradients
        # times gradient_accumulation_steps).
        trainer.model_accepts_loss_kwargs = False
    return trainer


def run_trainer(prepared: Prepared, work: Path, resume: bool) -> tuple[object, dict]:
    """Trains `prepared.model`; returns the trained model (whole, unwrapped) and the run's summary."""
    args = training_arguments(prepared, work)
    metrics, main = work / "metrics.jsonl", args.process_index == 0
    checkpoint = None
    if resume and Path(args.output_dir).is_dir():
        checkpoint = last_complete_checkpoint(Path(args.output_dir), remove_others=main)
        if main:
            drop_metrics_after(metrics, checkpoint_step(checkpoint) if checkpoint else 0)
        main_print(
            f"Resuming from {checkpoint}" if checkpoint else "No complete checkpoint saved yet: training from the start"
        )
    totals = RunTotals.from_checkpoint(checkpoint)
    # totals first: it completes the summary the logger writes
    callbacks = [totals, JsonlLogger(metrics), StopOnSignal()]
    if args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(prepared.config.training.early_stopping_patience))
    if prepared.config.training.save_steps > 0:
        callbacks.append(SaveEverySteps(prepared.config.training.save_steps))
    trainer = build_trainer(prepared, args, callbacks)
    trainer.training_step = totals.count(trainer.training_step)
    trainer._save_checkpoint = saving_checkpoints(
        trainer._save_checkpoint, lambda: Path(args.output_dir) / f"checkpoint-{trainer.state.global_step}"
    )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    loss_sum, seconds = totals.totals()
    summary = {
        "mode": "trainer",
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_loss": loss_sum / max(trainer.state.global_step, 1),
        "seconds": round(seconds, 1),
        "resumed_from": checkpoint.name if checkpoint else None,
    }
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    if evals:
        summary["eval_loss"] = evals[-1]
    return whole_model(trainer.accelerator, trainer.model_wrapped), summary
