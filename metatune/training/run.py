"""`metatune train`: prepare, train with the configured mode, save the run."""

from __future__ import annotations

import shutil
from pathlib import Path

from metatune.config import Config
from metatune.export import save_run
from metatune.training.common import prepare, start_output


def train(config: Config, resume: bool = False, overwrite: bool = False) -> Path:
    output, work = start_output(config, resume, overwrite)
    prepared = prepare(config, need_validation=config.training.eval_each_epoch)
    print(
        f"Training {config.model.name} ({prepared.info['architecture']}) on {prepared.stats['train_examples']} examples, "
        f"validating on {prepared.stats['validation_examples']}"
    )
    if config.training.mode == "loop":
        from metatune.training.loop import run_loop

        summary = run_loop(prepared, work, resume)
    else:
        from metatune.training.hf_trainer import run_trainer

        summary = run_trainer(prepared, work, resume)
    model = prepared.model
    generation = model.generation_config
    generation.max_new_tokens = config.data.max_target_tokens
    generation.do_sample = False
    generation.pad_token_id = prepared.tokenizer.pad_token_id
    for key in ("temperature", "top_p", "top_k"):
        setattr(generation, key, None)
    info = {**prepared.info, "training": {**summary, **prepared.stats}}
    extra = {"metrics.jsonl": work / "metrics.jsonl", "logs": work / "checkpoints" / "runs"}
    save_run(model, prepared.tokenizer, info, output, extra)
    shutil.rmtree(work, ignore_errors=True)
    print(f"Saved the run to {output}")
    return output
