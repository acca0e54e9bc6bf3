"""Continuous batching (transformers' `generate_batch`: a finished row's slot is refilled with the next
document) against the Extractor's batches on one saved generate run: speed and whether the records
are the same.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/continuous_batching.py runs/catalogued \
        --data data/sample-catalogued/sample.json --docs 8 --output benchmarks/results/continuous-batching-8.json

Validation documents of the run's data (the grobid-headers set when present). The Extractor stops a
row when its JSON object closes; `generate_batch` takes no stopping criteria, so its rows run to the
end-of-sequence token or `max_new_tokens`, and the records are compared after reading each output's
first JSON object. Both ways run twice, alternating, and the faster time of each is kept.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from metatune.bench import default_data, machine_info
from metatune.config import ExtractionSettings
from metatune.data import load_dataset, record_type
from metatune.objectives.generate.extractor import Extractor
from metatune.objectives.generate.json_output import parse_output


def batched(extractor: Extractor, encoded: list[list[int]], size: int) -> tuple[list[str], float]:
    start = time.perf_counter()
    raws = extractor.generate(encoded, size)
    return raws, time.perf_counter() - start


def continuous(extractor: Extractor, encoded: list[list[int]], size: int) -> tuple[list[str], float]:
    from transformers import ContinuousBatchingConfig

    config = copy.deepcopy(extractor.generation_config)
    config.prompt_lookup_num_tokens = None
    start = time.perf_counter()
    out = extractor.model.generate_batch(
        inputs=encoded,
        generation_config=config,
        continuous_batching_config=ContinuousBatchingConfig(max_requests_per_batch=size),
        progress_bar=False,
    )
    seconds = time.perf_counter() - start
    ordered = [out[f"req_{i}"].generated_tokens for i in range(len(encoded))]
    return [extractor.tokenizer.decode(t, skip_special_tokens=True) for t in ordered], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", default=None, help="dataset (default: the grobid-headers set, else the sample)")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, default=None, help="write every figure here as JSON")
    args = parser.parse_args()

    extractor = Extractor.from_run(args.run, ExtractionSettings(dtype="float32", snap=False))
    records = load_dataset(args.data or default_data()[0], extractor.registry, extractor.info.fallback_type)
    records = records.split("validation")[: args.docs]
    types = [
        extractor.resolve_type(record_type(r)) if extractor.registry.find(record_type(r)) else extractor.default_type
        for r in records
    ]
    encoded = [extractor.input_ids(r["original_text"], t) for r, t in zip(records, types)]

    ways = {"batched": batched, "continuous": continuous}
    seconds = {name: [] for name in ways}
    raws = {}
    for _ in range(2):
        for name, way in ways.items():
            raws[name], s = way(extractor, encoded, args.batch_size)
            seconds[name].append(s)
    best = {name: min(s) for name, s in seconds.items()}
    same = sum(parse_output(a).data == parse_output(b).data for a, b in zip(raws["batched"], raws["continuous"]))
    n = len(encoded)
    result = {
        "run": str(args.run),
        "documents": n,
        "batch_size": args.batch_size,
        "max_new_tokens": extractor.max_new_tokens,
        "machine": machine_info(),
        "seconds": seconds,
        "seconds_per_document": {name: s / n for name, s in best.items()},
        "continuous_speedup": best["batched"] / best["continuous"],
        "identical_records": same,
    }
    print(
        f"{n} documents, float32, batches / slots of {args.batch_size}, at most {extractor.max_new_tokens} new tokens"
    )
    for name, s in best.items():
        print(f"{name:11} {s / n:6.2f} s/doc  (runs: {', '.join(f'{x:.1f}' for x in seconds[name])} s)")
    print(f"continuous / batched: {result['continuous_speedup']:.2f}x faster; identical records {same}/{n}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
