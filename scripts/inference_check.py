"""Generation checks of the Extractor on this machine: batch size scaling, the cost of the JSON stop,
and whether batched greedy outputs equal one-at-a-time outputs, per dtype.

    .venv/bin/python scripts/inference_check.py --arch ~/.cache/metatune/gguf/<SmolLM2 dir> \\
        [--run RUN_DIR] [--dtypes float32,bfloat16] [--new-tokens 128] [--out results.json]

--arch is a directory with a model's config.json and tokenizer (no weights needed): a model of that
architecture is built with random weights, and a run directory around it with the built-in document
types and prompts (chat template included). Random weights never close a JSON object, so every row
generates --new-tokens tokens: the timings compare batch sizes at equal work. --run adds the same
equality check on a trained run, whose outputs do close their objects. The 32 documents of
data/sample/sample.json are the inputs. Run it on an idle machine; the first dtype listed also warms
the device up (list it twice to see).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import StoppingCriteriaList

from metatune.config import ExtractionSettings
from metatune.objectives.generate.extractor import Extractor, JsonObjectEnd, closes_object

REPO = Path(__file__).resolve().parent.parent


def timed(fn):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def random_run(arch: Path, target: Path, new_tokens: int) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from metatune.doctypes import TypeRegistry
    from metatune.formatting import InputFormat, build_prompts
    from metatune.run_info import FORMAT_VERSION

    tokenizer = AutoTokenizer.from_pretrained(arch)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(arch), dtype=torch.float32)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    registry = TypeRegistry.load()
    fmt = InputFormat("prompt", None, ("keywords", "abstract", "subject"), True)
    info = {
        "format_version": FORMAT_VERSION,
        "base_model": f"{arch.name} (random weights)",
        "architecture": "causal",
        "input": {
            "style": "prompt",
            "include_fields": None,
            "exclude_fields": list(fmt.exclude_fields),
            "chat_template": bool(tokenizer.chat_template),
            "prompts": build_prompts(registry, fmt, tokenizer),
        },
        "limits": {"max_input_tokens": 768, "max_target_tokens": new_tokens},
        "fallback_type": None,
        "types": registry.to_dict(),
        "config": {},
    }
    (target / "metatune.json").write_text(json.dumps(info), encoding="utf-8")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=Path, required=True)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    data = json.loads((REPO / "data" / "sample" / "sample.json").read_text(encoding="utf-8"))
    records = data["training"] + data["validation"] + data["test"]
    texts, types = [r["original_text"] for r in records], [r["type"] for r in records]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results: dict = {"device": device, "torch": torch.__version__, "documents": len(texts)}

    if args.run:
        for dtype in args.dtypes.split(","):
            ex = Extractor.from_run(args.run, ExtractionSettings(dtype=dtype))
            together = ex.extract(texts[:16], types[:16], batch_size=16)
            alone = [ex.extract([t], [ty], batch_size=1)[0] for t, ty in zip(texts[:16], types[:16])]
            results[f"run/{dtype}"] = {
                "dtype": str(ex.model.dtype),
                "identical_batch16_vs_1": sum(a.raw == b.raw for a, b in zip(together, alone)),
                "of": 16,
                "closed_their_object": sum(closes_object(a.raw) for a in together),
            }
            print(results[f"run/{dtype}"], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        run = random_run(args.arch, Path(tmp), args.new_tokens)
        for n, dtype in enumerate(args.dtypes.split(",")):
            ex = Extractor.from_run(run, ExtractionSettings(dtype=dtype))
            encoded = [ex.input_ids(t, ty) for t, ty in zip(texts, types)]
            ex.generate(encoded, len(encoded))  # warm-up: one full batch
            outputs, row = {}, {"dtype": str(ex.model.dtype)}
            for batch_size in (1, 8, 32):
                docs = encoded[:4] if batch_size == 1 else encoded
                (outs, counts, _), seconds = timed(lambda: ex.generate_with_counts(docs, batch_size))
                outputs[batch_size] = outs
                row[f"batch{batch_size}"] = {
                    "documents": len(docs),
                    "seconds": round(seconds, 2),
                    "tokens_per_s": round(sum(counts) / seconds, 1),
                }
            row["identical_batch32_vs_1"] = f"{sum(a == b for a, b in zip(outputs[32], outputs[1]))}/4"
            row["identical_batch8_vs_32"] = f"{sum(a == b for a, b in zip(outputs[8], outputs[32]))}/{len(encoded)}"
            # what the stopping criterion itself costs: the same batch of 32 with and without it
            batch = ex.tokenizer.pad({"input_ids": encoded}, return_tensors="pt").to(ex.device)
            _, plain = timed(lambda: ex.model.generate(**batch, generation_config=ex.generation_config))
            _, stopped = timed(
                lambda: ex.model.generate(
                    **batch,
                    generation_config=ex.generation_config,
                    stopping_criteria=StoppingCriteriaList([JsonObjectEnd(ex.tokenizer)]),
                )
            )
            row["batch32_seconds_without_stop"], row["batch32_seconds_with_stop"] = round(plain, 2), round(stopped, 2)
            results[f"random/{n}/{dtype}"] = row
            print(dtype, row, flush=True)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
