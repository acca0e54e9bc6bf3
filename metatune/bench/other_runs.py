"""`metatune bench`'s other runs (metatune.objectives.other_runs: the ways to train a run other than the
race's): each one's training steps' MFU, and its extraction against the forward-pass limit, both over the
matrix-multiply peak the training race measured in the same run."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from transformers import TrainerCallback

from metatune.bench.training_race import quiet_arguments


class StepTimes(TrainerCallback):
    """Wall seconds of every optimizer step."""

    def __init__(self):
        self.times, self.start = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


class TokenCount:
    """Wraps a collator: counts the real (unpadded) tokens of every batch it builds."""

    def __init__(self, collate):
        self.collate, self.tokens = collate, []

    def __call__(self, features):
        self.tokens.append(sum(len(f["input_ids"]) for f in features))
        return self.collate(features)


def step_figures(
    times: list[float], tokens: list[int], parameters: int, peak: float, trainable: int | None = None
) -> dict:
    """Seconds per step and MFU (6 x parameters x document tokens per second over `peak`) of the steps
    after the first (warm-up: allocators, oneDNN kernels), or of all of them when there are fewer than 3.

    With `trainable` parameters fewer than all (frozen layers), a token costs 2 x parameters in the
    forward pass and 4 x trainable ones in the backward pass.
    """
    per_step = len(tokens) // max(len(times), 1)  # micro-batches per optimizer step
    step_tokens = [sum(tokens[i * per_step : (i + 1) * per_step]) for i in range(len(times))]
    keep = slice(1, None) if len(times) >= 3 else slice(None)
    times, step_tokens = times[keep], step_tokens[keep]
    flops_per_token = 2 * parameters + 4 * (parameters if trainable is None else trainable)
    rate = flops_per_token * sum(step_tokens) / sum(times)
    return {
        "steps_timed": len(times),
        "seconds_per_step_median": round(statistics.median(times), 3),
        "tokens_per_step_mean": round(statistics.mean(step_tokens), 1),
        "model_flops_per_second": rate,
        "mfu": round(rate / peak, 4),
    }


def run_sets(sets: list[str], output_dir: Path) -> list[str]:
    """The other run's `sets` with the data's defaults, on every field of the data."""
    return [
        *sets,
        "data.exclude_fields=[]",
        "training.eval_each_epoch=false",
        f"training.output_dir={output_dir}",
    ]


def timed_steps(config, steps: int, work: Path, peak: float, texts: list[str], name: str) -> tuple[dict, Path, float]:
    """`steps` optimizer steps of `config` through the Trainer engine (`metatune train`'s), the trained
    model saved as the run `work/name-run` for the extraction probe, and the mean tokens the model reads
    of `texts`."""
    from metatune.export import save_run
    from metatune.objectives import card, prepare
    from metatune.precision import use_bf16
    from metatune.training.hf_trainer import build_trainer, training_arguments

    prepared = prepare(config, need_validation=False)
    args = quiet_arguments(training_arguments(prepared, work / f"{name}-train"), max_steps=steps)
    timer = StepTimes()
    trainer = build_trainer(prepared, args, [timer])
    counter = TokenCount(trainer.data_collator)
    trainer.data_collator = counter
    trainer.train()
    parameters = sum(p.numel() for p in prepared.model.parameters())
    figures = step_figures(timer.times, counter.tokens, parameters, peak)
    figures |= {
        "parameters": parameters,
        "bf16": use_bf16(prepared.config),
        "documents_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "mean_document_tokens": round(statistics.mean(len(x["input_ids"]) for x in prepared.train), 1),
    }
    run = save_run(
        prepared.model,
        prepared.tokenizer,
        prepared.info,
        work / f"{name}-run",
        card,
        config_keys=prepared.config_keys,
    )
    limit = config.data.max_input_tokens
    tokens = statistics.mean(min(len(prepared.tokenizer(t)["input_ids"]) + 1, limit) for t in texts)
    return figures, run, tokens


def forward_limit(extraction: dict, parameters: int, tokens: float, peaks: dict) -> dict:
    """Seconds per document of one forward pass (2 x parameters x tokens) at the peak of the dtype the
    extractor ran in, and how far the batched and one-at-a-time extraction are from it."""
    peak = peaks["bfloat16"] if extraction.get("dtype") == "bfloat16" else peaks["float32_best"]
    limit = 2 * parameters * tokens / peak
    return {
        "forward_limit_seconds_per_document": limit,
        # three significant digits: a tiny model against a short peak probe can be far below 0.01
        "batched_x_limit": float(f"{1 / extraction['batched_docs_per_second'] / limit:.3g}"),
        "one_at_a_time_x_limit": float(f"{1 / extraction['plain_docs_per_second'] / limit:.3g}"),
    }
