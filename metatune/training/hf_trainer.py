"""The default training path: Hugging Face `Trainer` (`Seq2SeqTrainer` for seq2seq models)."""

from __future__ import annotations

import importlib.util
import json
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
from transformers.trainer_utils import get_last_checkpoint

from metatune.config import Config
from metatune.encoding import collator
from metatune.errors import MetatuneError
from metatune.precision import mixed_precision
from metatune.training.common import Prepared, micro_batches, target_logits_supported, target_only_loss
from metatune.training.distributed import whole_model


def append_metrics(path: Path, step: int, epoch: float | None, logs: dict) -> None:
    """One line of metrics.jsonl: {"step": ..., "epoch": ..., <metrics>}."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "epoch": epoch, **logs}) + "\n")


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


def training_arguments(prepared: Prepared, work: Path) -> TrainingArguments:
    t = prepared.config.training
    evaluate = t.eval_each_epoch and bool(prepared.validation)
    cls = Seq2SeqTrainingArguments if prepared.seq2seq else TrainingArguments
    batch, accumulation = micro_batches(prepared.config, prepared.seq2seq)
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
        bf16=mixed_precision(prepared.config) == "bf16",
        fp16=mixed_precision(prepared.config) == "fp16",
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
        report_to=["tensorboard"] if importlib.util.find_spec("tensorboard") else "none",
        seed=t.seed,
        data_seed=t.seed,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned memory only helps copies to a GPU
        disable_tqdm=False,
    )


def build_trainer(prepared: Prepared, args: TrainingArguments, callbacks: list) -> Trainer:
    """The Trainer `run_trainer` uses (also timed by metatune.bench).

    Causal models compute their logits at target positions only (docs/performance.md).
    """
    target_logits = target_logits_supported(prepared.model, prepared.seq2seq)
    cls = Seq2SeqTrainer if prepared.seq2seq else Trainer
    trainer = cls(
        model=prepared.model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.validation or None,
        data_collator=collator(prepared.tokenizer, target_logits=target_logits),
        processing_class=prepared.tokenizer,
        callbacks=callbacks,
        compute_loss_func=target_only_loss if target_logits else None,
    )
    if prepared.seq2seq:
        # transformers' seq2seq losses (T5, LED, BART) ignore `num_items_in_batch`; left to think they
        # use it, the Trainer would add up the mean losses of accumulated batches instead of averaging
        # them (loss and gradients times gradient_accumulation_steps).
        trainer.model_accepts_loss_kwargs = False
    return trainer


def run_trainer(prepared: Prepared, work: Path, resume: bool) -> dict:
    args = training_arguments(prepared, work)
    callbacks = [JsonlLogger(work / "metrics.jsonl")]
    if args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(prepared.config.training.early_stopping_patience))
    if prepared.config.training.save_steps > 0:
        callbacks.append(SaveEverySteps(prepared.config.training.save_steps))
    trainer = build_trainer(prepared, args, callbacks)
    checkpoint = get_last_checkpoint(args.output_dir) if resume and Path(args.output_dir).is_dir() else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    summary = {
        "mode": "trainer",
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_loss": result.training_loss,
        "seconds": round(time.perf_counter() - start, 1),
        "resumed_from": Path(checkpoint).name if checkpoint else None,
    }
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    if evals:
        summary["eval_loss"] = evals[-1]
    prepared.model = whole_model(trainer.accelerator, trainer.model_wrapped)
    return summary
