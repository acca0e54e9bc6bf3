"""The results written out: every figure as JSON, the tables as Markdown."""

from __future__ import annotations

import json
import time
from pathlib import Path

from metatune.bench.original import ORIGINAL_TARGET
from metatune.files import write_atomic


def write_results(result: dict, output: Path) -> tuple[Path, Path]:
    """`bench-<date>.json` and `.md` in `output`, each written whole or not at all."""
    output.mkdir(parents=True, exist_ok=True)
    stem = "bench-" + time.strftime("%Y%m%d-%H%M%S")
    paths = (output / f"{stem}.json", output / f"{stem}.md")
    for path, text in zip(paths, (json.dumps(result, indent=2) + "\n", markdown(result))):
        write_atomic(path, text)
    return paths


def _g(flops: float) -> str:
    return f"{flops / 1e9:.1f} GFLOP/s"


def examples_line(x: dict) -> str:
    """The training examples of each side (runs saved before the original's side was built have one set
    for both)."""
    metatune = (
        f"{x['train']} training examples with targets of at most {ORIGINAL_TARGET} tokens "
        f"({x['skipped_target_over_512']} longer ones left out), mean {x['mean_tokens']} tokens of which "
        f"{x['mean_target_tokens']} target"
    )
    if "original_train" not in x:
        return f"* Examples: {metatune}, the same on both sides"
    how = ", ".join(f"`{s}`" for s in x.get("sets", [])) or "the defaults"
    return (
        f"* Examples: metatune ({how}): {metatune}; original (every value whole, the instruction with its example): "
        f"{x['original_train']} examples, mean {x['original_mean_tokens']} tokens of which "
        f"{x['original_mean_target_tokens']} target"
    )


def other_run_lines(name: str, section: dict) -> list[str]:
    t, e = section["training"], section["extraction"]
    lines = [
        "",
        f"## The {name} run",
        "",
        f"Training ({'bf16' if t['bf16'] else 'float32'}, {t['documents_per_step']} documents per step, "
        f"{t['steps_timed']} steps timed): median {t['seconds_per_step_median']:.2f} s per step, "
        f"{t['tokens_per_step_mean']:.0f} document tokens per step, {_g(t['model_flops_per_second'])}, "
        f"**MFU {t['mfu']:.1%}** of the peak above.",
    ]
    if "error" in e:
        return [*lines, "", f"Extraction failed: {e['error']}"]
    return [
        *lines,
        "",
        "| extraction | seconds per document | x one forward pass |",
        "|---|---:|---:|",
        f"| one forward pass at the {e['dtype']} peak (the limit) | {e['forward_limit_seconds_per_document']:.3f} | 1 |",
        f"| batched ({e['batch_size']} documents) | {1 / e['batched_docs_per_second']:.3f} | {e['batched_x_limit']:.3g} |",
        f"| one at a time | {1 / e['plain_docs_per_second']:.3f} | {e['one_at_a_time_x_limit']:.3g} |",
        "",
        f"{e['documents']} documents in {e['dtype']}; the same records batched and one at a time: "
        f"{e['identical_predictions']}/{e['documents']}.",
    ]


def markdown(r: dict) -> str:
    m, t = r["machine"], r["training"]
    o, n = t["original"], t["metatune"]
    peak = t["peak_flops_per_second"]
    lines = [
        f"# metatune bench, {r['date']}",
        "",
        f"* Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m.get('memory_gb', '?')} GB"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}",
        f"* Load average at start / end: {m['load_average_start'][0]:.2f} / {m['load_average_end'][0]:.2f}"
        + (" (the machine was shared: timings are noisy)" if m.get("under_load") else ""),
        f"* Model: {r['model']} ({t['parameters']:,} parameters); data: {r['data']}"
        + (f" ({r['data_note']})" if "data_note" in r else ""),
        examples_line(r["examples"]),
        f"* Steps timed per side: {len(n['steps'])}, in turn (seconds per epoch extrapolated from them)",
        f"* Peak matrix multiply here: float32 {_g(peak['float32_best'])} (best of {peak['samples']}), "
        f"bfloat16 {_g(peak['bfloat16'])}; MFU uses {_g(peak['used'])}",
        "",
        "## Training",
        "",
        "| | original approach | metatune | ratio |",
        "|---|---:|---:|---:|",
        f"| useful target tokens / s | {o['target_tokens_per_second']:.1f} | {n['target_tokens_per_second']:.1f} | "
        f"{n['target_tokens_per_second'] / o['target_tokens_per_second']:.2f}x |",
        f"| seconds per epoch | {o['epoch_seconds']:.0f} | {n['epoch_seconds']:.0f} | {t['speedup_per_epoch']:.2f}x |",
        f"| optimizer steps per epoch | {o['epoch']['steps']} | {n['epoch']['steps']} | |",
        f"| token positions computed per epoch | {o['epoch']['positions']:,} | {n['epoch']['positions']:,} | "
        f"{o['epoch']['positions'] / n['epoch']['positions']:.2f}x |",
        f"| padding share | {o['padding_share']:.1%} | {n['padding_share']:.1%} | |",
        f"| median seconds per step | {o['seconds_per_step_median']:.1f} | {n['seconds_per_step_median']:.1f} | |",
        f"| model FLOP/s (6 x params x non-padding tokens) | {_g(o['model_flops_per_second'])} | "
        f"{_g(n['model_flops_per_second'])} | |",
        f"| MFU (over the peak above) | {o['mfu']:.1%} | {n['mfu']:.1%} | |",
    ]
    if "speedup_per_epoch_cpu" in t:  # on a shared CPU these count the work, not the waiting for a core
        lines += [
            f"| CPU seconds per epoch (all threads) | {o['epoch_cpu_seconds']:.0f} | {n['epoch_cpu_seconds']:.0f} | "
            f"{t['speedup_per_epoch_cpu']:.2f}x |",
            f"| MFU in CPU time (model FLOP per CPU second over the matmul's) | {o['mfu_cpu_time']:.1%} | "
            f"{n['mfu_cpu_time']:.1%} | |",
        ]
    lines += [
        "",
        "metatune's side: " + ", ".join(f"{k}={v}" for k, v in n["setup"].items()) + ".",
    ]
    e = r.get("extraction")
    if e:
        lines += [
            "",
            "## Extraction",
            "",
            "| | one document at a time, the plainest way | Extractor, batched | ratio |",
            "|---|---:|---:|---:|",
            f"| documents / s | {e['plain_docs_per_second']:.3f} | {e['batched_docs_per_second']:.3f} | {e['speedup']:.2f}x |",
            f"| CPU seconds (all threads) | {e['plain_cpu_seconds']:.0f} | {e['batched_cpu_seconds']:.0f} | "
            f"{e['speedup_cpu']:.2f}x |",
            "",
            f"{e['documents']} documents, batch size {e['batch_size']}, at most {e['max_new_tokens']} new tokens, greedy; "
            f"identical predictions: {e['identical_predictions']}/{e['documents']} "
            f"(identical raw text: {e['identical_raw_outputs']}/{e['documents']}); "
            f"{e['parsed_outputs']}/{e['documents']} outputs are JSON; model: "
            + (f"the run `{r['extraction_run']}`." if "extraction_run" in r else "the base model, untrained."),
        ]
    for name, section in r.get("other_runs", {}).items():
        lines += other_run_lines(name, section)
    mem = r.get("memory")
    if mem or e:
        lines += [
            "",
            "## Peak resident memory",
            "",
            "| what | peak RSS | after loading | seconds of the step |",
            "|---|---:|---:|---:|",
        ]
        names = {
            "train_original": "training, original approach (batch 2 x 2560)",
            "train_full": "training, metatune full fine-tuning (longest batch)",
            "train_lora": "training, metatune LoRA (longest batch)",
        }
        for key, label in names.items():
            if mem and key in mem:
                lines.append(
                    f"| {label} | {mem[key]['peak_rss_mb']:,.0f} MB | {mem[key]['rss_after_load_mb']:,.0f} MB | "
                    f"{mem[key]['step_seconds']:.0f} |"
                )
        if e:
            lines.append(
                f"| extraction, batched ({e['peak_rss_scope']}) | {e['peak_rss_mb']:,.0f} MB | "
                f"{e['rss_after_load_mb']:,.0f} MB | |"
            )
    return "\n".join(lines) + "\n"
