"""The whole benchmark: the training race, then the extraction and memory probes, in one result."""

from __future__ import annotations

import copy
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from metatune.bench.machine import machine_info
from metatune.bench.original import original_examples
from metatune.bench.other_runs import forward_limit, run_sets, timed_steps
from metatune.bench.probes import probe_context, run_probe
from metatune.bench.settings import BenchSettings, bench_sets, default_data, own_sets
from metatune.bench.training_race import timed_training
from metatune.config import load_config
from metatune.errors import MetatuneError
from metatune.models import default_device, make_greedy


def extraction_run(prepared, model, tokenizer, directory: Path, max_new_tokens: int) -> Path:
    """A saved run of the (untrained) base model, for timing extraction: speed does not need a good model."""
    from metatune.export import save_run
    from metatune.objectives import card

    info = prepared.info.model_copy(deep=True, update={"type_classifier": None})  # extraction is told the types
    info.limits.max_target_tokens = max_new_tokens
    make_greedy(model.generation_config, max_new_tokens, tokenizer.pad_token_id)
    return save_run(model, tokenizer, info, directory, card)


def documents(config, count: int) -> tuple[list[str], list[str]]:
    """The first `count` validation documents (texts, types), else training ones."""
    from metatune.data import load_for_training, record_type

    _, dataset = load_for_training(config.data, need_validation=False)
    records = dataset.splits.get("validation") or dataset.split("training")
    records = records[:count]
    return [r["original_text"] for r in records], [str(record_type(r)) for r in records]


def other_run_section(
    name: str, sets: list[str], settings: BenchSettings, data: str, texts, types, training: dict, work: Path, ctx
) -> dict:
    """The other run `name`'s steps and extraction, against the peaks the training race measured."""
    peaks = training["peak_flops_per_second"]
    config = load_config(sets=run_sets(sets, work / f"{name}-out"), model=settings.model, data=data)
    print(f"Timing {settings.steps} training steps of the {name} run")
    figures, run_dir, tokens = timed_steps(config, settings.steps, work, peaks["used"], texts, name)
    print(f"Timing {name} extraction of {len(texts)} documents (in a subprocess)")
    spec = {"kind": "extract", "run": str(run_dir), "texts": texts, "types": types}
    extraction = run_probe(
        ctx, spec | {"batch_size": settings.extract_batch_size, "max_new_tokens": settings.max_new_tokens}, work
    )
    if "error" not in extraction:
        extraction |= forward_limit(extraction, figures["parameters"], tokens, peaks)
    return {"training": figures, "extraction": extraction}


def run_bench(settings: BenchSettings) -> dict:
    from metatune.models import load_pretrained
    from metatune.objectives import prepare

    if (
        settings.steps < 1
        or settings.extract_docs < 1
        or settings.extract_batch_size < 1
        or settings.max_new_tokens < 1
    ):
        raise MetatuneError("--steps, --extract-docs, --extract-batch-size and --max-new-tokens must be at least 1")
    if settings.extract_run is not None and not (Path(settings.extract_run) / "metatune.json").is_file():
        raise MetatuneError(f"--extract-run {settings.extract_run}: not a saved run (no metatune.json)")
    data, data_note = (settings.data, None) if settings.data else default_data()
    device = default_device()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = {"date": started, "machine": machine_info(), "model": settings.model, "data": data}
    if data_note:
        result["data_note"] = data_note
        print(f"note: {data_note}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="metatune-bench-") as tmp:
        work = Path(tmp)
        config = load_config(sets=bench_sets(settings, work / "run"), model=settings.model, data=data)
        prepared = prepare(config, need_validation=False)
        plain = config.model.model_copy(deep=True)
        plain.lora.enabled, plain.gradient_checkpointing, plain.dtype = False, False, "float32"
        original_model, tokenizer, _ = load_pretrained(plain)
        original_train = original_examples(config.data, prepared.tokenizer, prepared.seq2seq)
        result["examples"] = {
            "train": len(prepared.train),
            "skipped_target_over_512": prepared.skipped,
            "mean_tokens": round(prepared.stats["train_tokens"] / len(prepared.train), 1),
            "mean_target_tokens": round(prepared.stats["train_target_tokens"] / len(prepared.train), 1),
            "sets": own_sets(settings),
            "original_train": len(original_train),
            "original_mean_tokens": round(sum(len(x["input_ids"]) for x in original_train) / len(original_train), 1),
            "original_mean_target_tokens": round(
                sum(sum(1 for t in x["labels"] if t != -100) for x in original_train) / len(original_train), 1
            ),
        }
        if settings.extract_run is not None:
            run_dir = Path(settings.extract_run)
            result["extraction_run"] = str(run_dir)
        else:
            run_dir = extraction_run(
                prepared, copy.deepcopy(original_model), tokenizer, work / "extract-run", settings.max_new_tokens
            )
        print(f"Timing {settings.steps} training steps of each side, in turn")
        result["training"] = timed_training(prepared, original_train, original_model, settings, work, device)
        del prepared, original_model
        gc.collect()

        ctx = probe_context()
        texts, types = documents(config, settings.extract_docs)
        print(f"Timing extraction of {len(texts)} documents (in a subprocess)")
        result["extraction"] = run_probe(
            ctx,
            {
                "kind": "extract",
                "run": str(run_dir),
                "texts": texts,
                "types": types,
                "batch_size": settings.extract_batch_size,
                "max_new_tokens": settings.max_new_tokens,
            },
            work,
        )
        if settings.memory:
            base = {"kind": "train", "model": settings.model, "data": data, "work": str(work / "probe")}
            overrides = bench_sets(settings, work / "probe-run")  # the same settings the timed run used
            memory = {}
            print("Measuring peak memory of training (one step on the longest batch, each in a subprocess)")
            memory["train_original"] = run_probe(ctx, {**base, "side": "original", "sets": overrides}, work)
            memory["train_full"] = run_probe(
                ctx, {**base, "side": "metatune", "sets": overrides + ["model.lora.enabled=false"]}, work
            )
            memory["train_lora"] = run_probe(
                ctx, {**base, "side": "lora", "sets": overrides + ["model.lora.enabled=true"]}, work
            )
            result["memory"] = memory
        if settings.other_runs:  # the race trains one way; time each other way a run can be trained too
            from metatune.objectives import other_runs  # imports torch

            result["other_runs"] = {
                name: other_run_section(name, sets, settings, data, texts, types, result["training"], work, ctx)
                for name, sets in other_runs(config).items()
            }
    result["machine"]["load_average_end"] = list(os.getloadavg())
    # other programs kept more than half the CPUs busy when the run started
    result["machine"]["under_load"] = result["machine"]["load_average_start"][0] > 0.5 * (os.cpu_count() or 1)
    return result
