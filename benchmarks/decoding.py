"""Decoding strategies of the Extractor on one saved run: one document at a time, prompt-lookup
decoding (one at a time), and batches; speed and whether the outputs are the same.

    .venv/bin/python benchmarks/decoding.py runs/grobid-headers --docs 16 --lookup 10 \
        --output benchmarks/results/decoding.json

Validation documents of the run's data (the grobid-headers set when present). The three ways run
chunk by chunk (`--batch-size` documents), in an order that rotates between chunks so that a drift in
the machine's load favours none. Every way stops a row when its JSON object closes, so raw outputs
compare exactly. `--float64` decodes the documents whose prompt-lookup output differs once more in
float64, both ways: equal there means the difference is float32 rounding, not the method.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from metatune.bench import default_data, machine_info
from metatune.config import ExtractionSettings
from metatune.data import load_dataset, record_type
from metatune.objectives.generate.extractor import Extractor


def counted_forward(model) -> list[int]:
    """Counts the model's forward passes (one list entry each)."""
    calls, forward = [], model.forward
    model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    return calls


def decode(extractor: Extractor, encoded: list[list[int]], batch_size: int) -> tuple[list[str], list[int], float]:
    start = time.perf_counter()
    raws, counts, _ = extractor.generate_with_counts(encoded, batch_size)
    return raws, counts, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", default=None, help="dataset (default: the grobid-headers set, else the sample)")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lookup", type=int, default=10, help="tokens proposed per prompt-lookup step")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--float64", action="store_true", help="decode differing documents again in float64")
    parser.add_argument("--output", type=Path, default=None, help="write every figure here as JSON")
    args = parser.parse_args()

    plain = Extractor.from_run(args.run, ExtractionSettings(dtype=args.dtype, snap=False))
    lookup = Extractor(
        args.run,
        plain.model,
        plain.tokenizer,
        plain.info,  # one copy of the weights
        ExtractionSettings(dtype=args.dtype, snap=False, prompt_lookup=args.lookup),
    )
    records = load_dataset(args.data or default_data()[0], plain.registry, plain.info.fallback_type)
    records = records.split("validation")[: args.docs]
    types = [
        plain.resolve_type(record_type(r)) if plain.registry.find(record_type(r)) else plain.default_type
        for r in records
    ]
    encoded = [plain.input_ids(r["original_text"], t) for r, t in zip(records, types)]
    calls = counted_forward(plain.model)

    ways = {"one at a time": (plain, 1), "prompt lookup": (lookup, 1), "batched": (plain, args.batch_size)}
    out = {name: {"raw": [], "tokens": [], "seconds": 0.0, "forwards": 0} for name in ways}
    per_doc = {name: [] for name in ways}
    names = list(ways)
    for c, start in enumerate(range(0, len(encoded), args.batch_size)):
        chunk = encoded[start : start + args.batch_size]
        for name in names[c % 3 :] + names[: c % 3]:
            extractor, size = ways[name]
            calls.clear()
            raws, counts, seconds = decode(extractor, chunk, size)
            out[name]["raw"] += raws
            out[name]["tokens"] += counts
            out[name]["seconds"] += seconds
            out[name]["forwards"] += len(calls)
            per_doc[name].append(seconds / len(chunk))

    reference = out["one at a time"]["raw"]
    n = len(encoded)
    result = {
        "run": str(args.run),
        "documents": n,
        "dtype": args.dtype,
        "lookup_tokens": args.lookup,
        "batch_size": args.batch_size,
        "machine": machine_info(),
        "ways": {},
    }
    print(f"{n} documents, {args.dtype}, batch size {args.batch_size}, prompt lookup {args.lookup} tokens")
    print(f"{'':16} {'s/doc':>7} {'ratio':>6} {'tokens/forward':>15} {'identical raw':>14}")
    base = out["one at a time"]["seconds"]
    for name, o in out.items():
        same = sum(a == b for a, b in zip(o["raw"], reference))
        per_forward = sum(o["tokens"]) / max(1, o["forwards"])
        result["ways"][name] = {
            "seconds_per_document": o["seconds"] / n,
            "speedup": base / o["seconds"],
            "median_chunk_seconds_per_document": statistics.median(per_doc[name]),
            "tokens": sum(o["tokens"]),
            "forward_passes": o["forwards"],
            "identical_raw": same,
        }
        print(f"{name:16} {o['seconds'] / n:7.2f} {base / o['seconds']:5.2f}x {per_forward:15.2f} {same:>9}/{n}")

    differing = [i for i, (a, b) in enumerate(zip(out["prompt lookup"]["raw"], reference)) if a != b]
    if args.float64 and differing:
        plain.model.to(torch.float64)
        again = [encoded[i] for i in differing]
        equal = sum(a == b for a, b in zip(decode(plain, again, 1)[0], decode(lookup, again, 1)[0]))
        result["float64_identical_of_differing"] = [equal, len(differing)]
        print(f"float64: {equal} of the {len(differing)} documents that differed in {args.dtype} decode identically")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
