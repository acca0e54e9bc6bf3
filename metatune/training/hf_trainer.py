"""The default training path: Hugging Face `Trainer` (`Seq2SeqTrainer` for seq2seq models)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from transformers import (
    EarlyStoppingCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from metatune.encoding import collator
from metatune.training.common import Prepared, use_bf16


class JsonlLogger(TrainerCallback):
    """Appends every logged metric (loss, learning rate, eval loss...) to a JSON Lines file."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


def training_arguments(prepared: Prepared, work: Path) -> TrainingArguments:
    t = prepared.config.training
    evaluate = t.eval_each_epoch and bool(prepared.validation)
    cls = Seq2SeqTrainingArguments if prepared.seq2seq else TrainingArguments
    return cls(
        output_dir=str(work / "checkpoints"),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.lr_scheduler_type,
        bf16=use_bf16(prepared.config),
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
        disable_tqdm=False,
    )


def run_trainer(prepared: Prepared, work: Path, resume: bool) -> dict:
    args = training_arguments(prepared, work)
    callbacks = [JsonlLogger(work / "metrics.jsonl")]
    if args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(prepared.config.training.early_stopping_patience))
    cls = Seq2SeqTrainer if prepared.seq2seq else Trainer
    trainer = cls(
        model=prepared.model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.validation or None,
        data_collator=collator(prepared.tokenizer),
        processing_class=prepared.tokenizer,
        callbacks=callbacks,
    )
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
    prepared.model = trainer.model
    return summary
