"""`metatune train`: check and prepare (metatune.objectives), train with the configured mode, save the run.

Works the same in one process and under `accelerate launch` / `torchrun`: every process trains,
only the main one creates the work directory, writes the saved run and removes the checkpoints;
the others wait for it, so nothing is written twice.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from metatune import attention
from metatune.config import Config
from metatune.console import main_print
from metatune.export import save_run
from metatune.faults import WriteFault, quiet_tied_weights, stop_on_signals, stop_signal, stopped, training_writes
from metatune.objectives import card, check, prepare
from metatune.precision import apply_precision
from metatune.training.common import activation_bytes, start_output, work_dir
from metatune.training.distributed import check_launch, on_main, process_state


def train(config: Config, resume: bool = False, overwrite: bool = False) -> Path:
    # Both modes (and DeepSpeed) take the precision from here, not from an accelerate config file;
    # a conflicting fp16/bf16 setting fails before anything is written.
    precision = apply_precision(config)
    check(config)  # a config that names no known way to train fails before anything is written
    state = process_state()
    check_launch(config, state)
    output = Path(config.training.output_dir)
    work = work_dir(output)
    on_main(state, lambda: start_output(config, resume, overwrite))
    with state.main_process_first():  # the main process fills caches (converted GGUF, dataset) first
        prepared = prepare(config, need_validation=config.training.eval_each_epoch)
    # Only now, with every input checked, does anything appear on disk: a mistake leaves nothing behind.
    on_main(state, lambda: work.mkdir(parents=True, exist_ok=True))
    main_print(
        f"Training {config.model.name} ({prepared.info.architecture}) on {len(prepared.train)} examples, "
        f"validating on {len(prepared.validation)}"
        + (f", {state.num_processes} processes" if state.num_processes > 1 else "")
    )
    try:
        with (
            stop_on_signals(),
            training_writes(work, "the training logs"),
            quiet_tied_weights(prepared.model),
            attention.training_memory(prepared.model, state.device.type, partial(activation_bytes, prepared.model)),
        ):
            if config.training.mode == "loop":
                from metatune.training.loop import run_loop

                model, summary = run_loop(prepared, work, resume)
            else:
                from metatune.training.hf_trainer import run_trainer

                model, summary = run_trainer(prepared, work, resume)
            if stop_signal() is not None:  # the checkpoint of the last step is saved
                raise stopped(summary["steps"])
    except BaseException as e:
        # A run that failed before its first checkpoint has nothing to resume: leave nothing behind,
        # unless a write failed (full disk, read-only folder): its message says to --resume (which starts over).
        resumable = isinstance(e, WriteFault) or any((work / "checkpoints").glob("checkpoint-*"))
        if state.is_main_process and not resumable:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finished = prepared.finish(model) if prepared.finish else {}
    info = prepared.info.model_copy(
        update={
            "training": {
                **summary,
                **prepared.stats,
                **finished,
                "processes": state.num_processes,
                "precision": precision,
            }
        }
    )
    extra = {"metrics.jsonl": work / "metrics.jsonl", "logs": work / "checkpoints" / "runs"}
    extra |= {name: work / name for name in prepared.files}

    def finish():
        with training_writes(output, "the run"):
            for write in prepared.files.values():
                write(work)
            save_run(model, prepared.tokenizer, info, output, card, extra, prepared.config_keys)
        shutil.rmtree(work, ignore_errors=True)

    on_main(state, finish)
    state.wait_for_everyone()
    main_print(f"Saved the run to {output}")
    return output
