"""Tag extraction against its forward-pass limit, eager and under torch.compile, on one saved tag run.

    .venv/bin/python benchmarks/tag_extraction.py runs/grobid-headers-tag --docs 20 --dtype bfloat16 \
        --compile --output benchmarks/results/tag-extraction.json

Validation documents of the run's data (the grobid-headers set when present), each read alone, as
`metatune extract` reads them on a CPU. Per document: wall seconds of `Tagger.extract`, and the
limit, 2 x parameters x the tokens it reads at the matmul peak of that dtype measured in the same run
(`metatune.bench.machine.peak_rates`, the best of three before the model is loaded). With
`--compile` the model's forward is then wrapped in `torch.compile` (inductor, dynamic shapes; with
`--freeze` inductor's freezing, which folds the weights in as constants and prepacks them), the
compile time is reported on its own, the same documents are read again, and the records are
compared with the eager ones. Each document's forward pass is also timed alone (`forward`): the
ratio of extraction to it is what tokenizing, decoding and writing the record add. With
`--allocator` the documents are also read with glibc's allocator left at its defaults and with it
keeping freed memory (what the Tagger does on a CPU), and with `--attention` (bf16) with SDPA and with
matmul attention (metatune/attention.py), whichever the probe picked for the first reading: each way
twice, alternating, with the minor page faults of each reading.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from metatune import attention
from metatune.bench import default_data, machine_info
from metatune.bench.machine import peak_rates
from metatune.config import ExtractionSettings
from metatune.data import load_dataset
from metatune.objectives.tag.extractor import Tagger
from metatune.objectives.tag.labels import token_offsets


@torch.inference_mode()
def forward_each(tagger: Tagger, texts: list[str], size: int) -> list[float]:
    """Wall seconds of each document's forward pass alone, on the input Tagger.extract builds (one window)."""
    seconds = []
    with attention.keep_freed_memory(tagger.keep_freed_memory):  # as Tagger.extract reads
        for text in texts:
            ids = token_offsets(tagger.tokenizer, text, size)[0]
            batch = tagger.collate([{"input_ids": tagger.window_input(ids)}])
            start = time.perf_counter()
            tagger.model(**{k: v.to(tagger.device) for k, v in batch.items()})
            seconds.append(time.perf_counter() - start)
    return seconds


def read_each(tagger: Tagger, texts: list[str]) -> tuple[list[str], list[float]]:
    raws, seconds = [], []
    for text in texts:
        start = time.perf_counter()
        raws.append(tagger.extract([text])[0].raw)
        seconds.append(time.perf_counter() - start)
    return raws, seconds


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def alternating(tagger: Tagger, texts: list[str], eager: list[str], limits: list[float], ways: dict, apply) -> dict:
    """Each way (name: the value `apply` sets) read twice, alternating (the machine's load drifts):
    per reading the mean seconds per document, against the limit, of the forward passes alone, the
    minor page faults per document, and how many records equal the first reading's (`eager`)."""
    figures = {name: {} for name in ways}
    for name, value in list(ways.items()) * 2:
        apply(value)
        faults = minor_faults()
        raws, seconds = read_each(tagger, texts)
        faults = minor_faults() - faults
        forward = forward_each(tagger, texts, tagger.window_size)
        for key, figure in [
            ("seconds", sum(seconds) / len(texts)),
            ("to_limit", sum(seconds) / sum(limits)),
            ("forward_seconds", sum(forward) / len(texts)),
            ("faults_per_document", faults / len(texts)),
            ("identical_records", sum(a == b for a, b in zip(eager, raws))),
        ]:
            figures[name].setdefault(key, []).append(figure)
    return figures


def readings(values: list[float], form: str) -> str:
    """One way's readings for the printed summary: "0.214 / 0.215"."""
    return " / ".join(format(x, form) for x in values)


def summary(seconds: list[float], limits: list[float]) -> dict:
    return {
        "median_s": statistics.median(seconds),
        "mean_s": statistics.mean(seconds),
        "to_limit": sum(seconds) / sum(limits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", default=None, help="dataset (default: the grobid-headers set, else the sample)")
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--compile", action="store_true", help="also read them with the forward compiled")
    parser.add_argument(
        "--freeze", action="store_true", help="with --compile: inductor freezing (weights as constants, prepacked)"
    )
    parser.add_argument(
        "--allocator", action="store_true", help="also read them with glibc's defaults and keeping freed memory"
    )
    parser.add_argument(
        "--attention", action="store_true", help="also read them with SDPA and with matmul attention (bf16)"
    )
    parser.add_argument("--output", type=Path, default=None, help="write every figure here as JSON")
    args = parser.parse_args()
    if args.freeze and not args.compile:
        parser.error("--freeze freezes a compiled forward: add --compile")
    if args.attention and args.dtype != "bfloat16":
        parser.error("--attention compares the kernels the Tagger chooses between in bf16: add --dtype bfloat16")

    # the best of three, before the model is loaded: one short bf16 product alone can read far low
    peak = max(peak_rates("cpu", 2048)[args.dtype]["wall"] for _ in range(3))
    tagger = Tagger.from_run(args.run, ExtractionSettings(dtype=args.dtype))
    records = load_dataset(args.data or default_data()[0], tagger.registry, tagger.info.fallback_type)
    texts = [r["original_text"] for r in records.split("validation")[: args.docs]]
    parameters = sum(p.numel() for p in tagger.model.parameters())
    # the tokens of each document's one forward pass, as Tagger.extract builds it (one window)
    size = tagger.window_size
    tokens = [len(tagger.window_input(token_offsets(tagger.tokenizer, t, size)[0])) for t in texts]
    limits = [2 * parameters * n / peak for n in tokens]

    tagger.extract(texts[:1])  # first-call allocations out of the timing
    eager, seconds = read_each(tagger, texts)
    forward = forward_each(tagger, texts, size)
    result = {
        "run": str(args.run),
        "documents": len(texts),
        "dtype": args.dtype,
        "machine": machine_info(),
        "peak_gflops": peak / 1e9,
        "mean_tokens": statistics.mean(tokens),
        "limit_mean_s": statistics.mean(limits),
        "eager": summary(seconds, limits),
        # the model's forward pass alone: what extraction adds around it (tokenizing, decoding, the record)
        "forward": summary(forward, limits),
        "extraction_to_forward": sum(seconds) / sum(forward),
        "attention": tagger.model.config._attn_implementation,  # the probe's pick (bf16 on a CPU)
    }
    if args.allocator:  # glibc's defaults against freed memory kept
        ways = {"glibc_defaults": False, "kept": True}
        result.update(
            alternating(tagger, texts, eager, limits, ways, lambda keep: setattr(tagger, "keep_freed_memory", keep))
        )
        tagger.keep_freed_memory = True
    if args.attention:  # the two kernels
        chosen = tagger.model.config._attn_implementation
        ways = {"sdpa": "sdpa", attention.NAME: attention.NAME}
        result.update(alternating(tagger, texts, eager, limits, ways, tagger.model.set_attn_implementation))
        tagger.model.set_attn_implementation(chosen)
    if args.compile:
        torch._inductor.config.freezing = args.freeze
        start = time.perf_counter()
        tagger.model.forward = torch.compile(tagger.model.forward, dynamic=True)
        tagger.extract(texts[:2])
        result["compile_s"] = time.perf_counter() - start
        compiled, seconds = read_each(tagger, texts)
        result["compiled"] = summary(seconds, limits)
        result["compiled_identical_records"] = sum(a == b for a, b in zip(eager, compiled))
        result["frozen"] = args.freeze

    print(
        f"{len(texts)} documents in {args.dtype}, {result['mean_tokens']:.0f} tokens on average; "
        f"peak {result['peak_gflops']:.0f} GFLOP/s, limit {result['limit_mean_s']:.3f} s per document"
    )
    for way in ("eager", "forward", "compiled"):
        if way in result:
            r = result[way]
            print(
                f"{way:8} median {r['median_s']:.3f} s, mean {r['mean_s']:.3f} s per document, {r['to_limit']:.2f}x the limit"
            )
    print(
        f"extraction takes {result['extraction_to_forward']:.2f}x its forward passes; attention {result['attention']}"
    )
    for way in ("glibc_defaults", "kept", "sdpa", attention.NAME):
        if way in result:
            r = result[way]
            print(
                f"{way:15} mean s per document {readings(r['seconds'], '.3f')} ({readings(r['to_limit'], '.2f')}x "
                f"the limit), forward alone {readings(r['forward_seconds'], '.3f')}, "
                f"{readings(r['faults_per_document'], '.0f')} minor page faults per document, "
                f"records identical to the first reading {r['identical_records']}"
            )
    if args.compile:
        print(
            f"compile {result['compile_s']:.0f} s; records identical {result['compiled_identical_records']}/{len(texts)}"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
