"""Subprocess probes: peak memory of one training step, and extraction speed; each in a fresh process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from metatune.bench.machine import peak_rss_mb, reset_peak_rss
from metatune.bench.original import ORIGINAL_BATCH, ORIGINAL_INPUT, ORIGINAL_TARGET, original_features
from metatune.bench.training_race import quiet_arguments
from metatune.config import load_config
from metatune.errors import MetatuneError
from metatune.files import write_atomic

PRELOAD = ["metatune.bench", "metatune.training.hf_trainer", "metatune.inference", "peft"]


def probe_context():
    """Where probes run: children of a fork server that imported torch and transformers once.

    Each probe is a fresh process (its peak memory is its own) without paying the imports again.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_probe(ctx, spec: dict, work: Path) -> dict:
    """Runs `probe_main(spec)` in a child process and returns what it wrote."""
    result_path = work / f"probe-{spec['kind']}-{spec.get('side', 'extract')}.json"
    child = ctx.Process(target=probe_main, args=({**spec, "result": str(result_path)},))
    child.start()
    child.join()
    if not result_path.is_file():
        raise MetatuneError(f"bench probe '{spec['kind']}' ended with exit code {child.exitcode} and no result")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    if "error" in result:
        raise MetatuneError(f"bench probe '{spec['kind']}' failed: {result['error']}")
    return result


def probe_train(spec: dict) -> dict:
    """One optimizer step on the epoch's longest batch; the process's peak resident memory."""
    from metatune.objectives import prepare
    from metatune.training.hf_trainer import build_trainer, training_arguments

    config = load_config(sets=spec["sets"], model=spec["model"], data=spec["data"])
    if spec["side"] == "original":
        config.model.lora.enabled = False
        config.model.gradient_checkpointing = False
    prepared = prepare(config, need_validation=False)
    loaded = peak_rss_mb()
    work = Path(spec["work"])
    args = training_arguments(prepared, work)
    if spec["side"] == "original":
        from transformers import Trainer

        from metatune.encoding import collator

        pad_id = prepared.tokenizer.pad_token_id
        data = [original_features(x, pad_id, prepared.seq2seq) for x in prepared.train[:ORIGINAL_BATCH]]
        args = quiet_arguments(
            args,
            max_steps=1,
            per_device_train_batch_size=ORIGINAL_BATCH,
            bf16=False,
            fp16=False,
            gradient_accumulation_steps=1,
        )
        trainer = Trainer(
            model=prepared.model, args=args, train_dataset=data, data_collator=collator(prepared.tokenizer)
        )
    else:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        prepared.train = sorted(prepared.train, key=lambda x: len(x["input_ids"]))[-per_step:]
        trainer = build_trainer(prepared, quiet_arguments(args, max_steps=1), callbacks=[])
    start = time.perf_counter()
    trainer.train()
    return {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_load_mb": round(loaded, 1),
        "step_seconds": round(time.perf_counter() - start, 2),
        "longest_sequence": max(len(x["input_ids"]) for x in prepared.train)
        if spec["side"] != "original"
        else ORIGINAL_INPUT + ORIGINAL_TARGET,
    }


def probe_extract(spec: dict) -> dict:
    """The extractor's plainest way, one document at a time (`Extractor.one_at_a_time`), against its
    batched `extract`, interleaved chunk by chunk."""
    from transformers import set_seed

    from metatune.config import ExtractionSettings
    from metatune.objectives import open_run

    set_seed(0)
    extractor = open_run(spec["run"], ExtractionSettings(snap=False))  # the raw outputs are compared
    texts, types = spec["texts"], [extractor.resolve_type(t) for t in spec["types"]]
    size, max_new = spec["batch_size"], spec["max_new_tokens"]
    plain_seconds = batched_seconds = plain_cpu = batched_cpu = 0.0
    plain_raw, batched, peaks, chunk_ratios = [], [], [], []
    can_reset = reset_peak_rss()
    loaded = peak_rss_mb()
    for c, start in enumerate(range(0, len(texts), size)):
        chunk_t, chunk_ty = texts[start : start + size], types[start : start + size]

        def run_plain():
            t0, c0 = time.perf_counter(), time.process_time()
            out = [extractor.one_at_a_time(t, ty, max_new) for t, ty in zip(chunk_t, chunk_ty)]
            return out, time.perf_counter() - t0, time.process_time() - c0

        def run_batched():
            reset_peak_rss()
            t0, c0 = time.perf_counter(), time.process_time()
            out = extractor.extract(chunk_t, chunk_ty, batch_size=size)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            peaks.append(peak_rss_mb())
            return out, seconds, cpu

        if c % 2 == 0:  # alternate which goes first, so a drift in load favours neither
            (p_out, p_s, p_c), (b_out, b_s, b_c) = run_plain(), run_batched()
        else:
            (b_out, b_s, b_c), (p_out, p_s, p_c) = run_batched(), run_plain()
        plain_seconds += p_s
        batched_seconds += b_s
        plain_cpu += p_c
        batched_cpu += b_c
        chunk_ratios.append(p_s / b_s)
        plain_raw += p_out
        batched += b_out
    same_raw = sum(p == b.raw for p, b in zip(plain_raw, batched))
    # the record the model wrote, read the same way on both sides (before values are expanded or snapped)
    same_data = sum(extractor.read_raw(p) == extractor.read_raw(b.raw) for p, b in zip(plain_raw, batched))
    n = len(texts)
    return {
        **extractor.statistics(batched),  # the extractor's own figures (tokens written, batch...)
        "documents": n,
        "batch_size": size,
        "max_new_tokens": max_new,
        "plain_docs_per_second": n / plain_seconds,
        "batched_docs_per_second": n / batched_seconds,
        "speedup": round(plain_seconds / batched_seconds, 2),
        "speedup_per_chunk": [round(r, 2) for r in chunk_ratios],
        "plain_cpu_seconds": round(plain_cpu, 2),
        "batched_cpu_seconds": round(batched_cpu, 2),
        "speedup_cpu": round(plain_cpu / batched_cpu, 2),
        "identical_predictions": same_data,
        "identical_raw_outputs": same_raw,
        "parsed_outputs": sum(b.data is not None for b in batched),
        "dtype": str(next(extractor.model.parameters()).dtype).removeprefix("torch."),
        "rss_after_load_mb": round(loaded, 1),
        "peak_rss_mb": round(max(peaks) if can_reset else peak_rss_mb(), 1),
        "peak_rss_scope": "batched extraction" if can_reset else "whole probe process",
    }


def probe_main(spec: dict) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        result = probe_train(spec) if spec["kind"] == "train" else probe_extract(spec)
    except Exception as e:  # reported by the parent as one line
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    write_atomic(spec["result"], json.dumps(result))
