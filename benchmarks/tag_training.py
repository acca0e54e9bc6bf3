"""Where tag training's time goes: seconds per optimizer step, MFU against the matmul peak measured in
the same run, and (--profile) a torch.profiler summary of a few steps.

    .venv/bin/python benchmarks/tag_training.py --steps 8 [--profile] [--set training.bf16=false ...]

Trains configs/grobid-headers-tag.yaml (or --config) for --steps optimizer steps on the real header
corpus with the Trainer engine, exactly as `metatune train` would, into a temporary directory. MFU
counts 6 x parameters x document tokens per second over the steps after the first (warm-up); with
frozen layers (`tag.frozen_layers`), 2 x parameters + 4 x trainable parameters per token.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from metatune import attention
from metatune.bench.machine import peak_rates
from metatune.bench.other_runs import StepTimes, TokenCount, step_figures
from metatune.config import load_config
from metatune.objectives import prepare
from metatune.precision import apply_precision
from metatune.training.hf_trainer import build_trainer, training_arguments

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "grobid-headers-tag.yaml"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="profile steps 2 and 3 (torch.profiler, CPU)")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--out", help="write the figures here as JSON")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (inductor, dynamic shapes)")
    parser.add_argument(
        "--attention",
        choices=["sdpa", "eager", attention.NAME],
        help="the attention kernels (default: what `metatune train` picks, metatune/attention.py)",
    )
    parser.add_argument(
        "--bf16-weights",
        action="store_true",
        help="keep the weights, gradients and optimizer state in bf16 (no autocast, no float32 master copy): "
        "changes the numerics, a speed screen only",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tag-training-") as tmp:
        sets = [*args.sets, f"training.max_steps={args.steps}", "training.report_to=none"]
        sets += [f"training.output_dir={tmp}/run", "training.save_total_limit=0", "training.logging_steps=1000"]
        if args.bf16_weights:
            sets.append("training.bf16=false")  # no autocast: the weights themselves are bf16
        config = load_config(args.config, sets=sets)
        precision = apply_precision(config)
        before = peak_rates("cpu", 2048)
        prepared = prepare(config, need_validation=False)
        work = Path(tmp) / "run.partial"
        work.mkdir()
        targs = training_arguments(prepared, work)
        targs.save_strategy = "no"
        if args.attention:
            prepared.model.set_attn_implementation(args.attention)
        picked = prepared.model.config._attn_implementation
        if args.bf16_weights:
            prepared.model.to(torch.bfloat16)
            precision = "bf16"
        if args.compile:
            prepared.model = torch.compile(prepared.model, dynamic=True)
        timer = StepTimes()
        trainer = build_trainer(prepared, targs, [timer])
        counter = TokenCount(trainer.data_collator)
        trainer.data_collator = counter
        if args.profile:
            from torch.profiler import ProfilerActivity, profile, schedule

            prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=0, active=2, repeat=1))

            class Step(TrainerCallback):
                def on_step_end(self, *a, **k):
                    prof.step()

            trainer.add_callback(Step())
            with prof:
                trainer.train()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        else:
            wall, cpu, usage = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
            trainer.train()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            after_usage = resource.getrusage(resource.RUSAGE_SELF)
        after = peak_rates("cpu", 2048)

    dtype = "bfloat16" if precision == "bf16" else "float32"
    peak = max(before[dtype]["wall"], after[dtype]["wall"])
    params = sum(p.numel() for p in prepared.model.parameters())
    trainable = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    steps = step_figures(timer.times, counter.tokens, params, peak, trainable)
    figures = {
        "cpu_flags": sorted(
            set(Path("/proc/cpuinfo").read_text().split()) & {"avx2", "avx512_bf16", "amx_bf16", "amx_tile"}
        ),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "sets": args.sets,
        "compiled": args.compile,
        "attention": picked,
        "bf16_weights": args.bf16_weights,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},  # glibc's allocator
        "steps_timed": steps["steps_timed"],
        "median_step_seconds": steps["seconds_per_step_median"],
        "step_seconds": [round(t, 2) for t in timer.times],  # all of them, the warm-up step first
        "mean_tokens_per_step": steps["tokens_per_step_mean"],
        "gflops_per_second": round(steps["model_flops_per_second"] / 1e9, 1),
        "peak_gflops_per_second": {k: round(max(before[k]["wall"], after[k]["wall"]) / 1e9, 1) for k in before},
        "mfu": steps["mfu"],
        # CPU seconds per wall second while training, of torch's threads together: how busy the cores were
        "cores_busy": None if args.profile else round(cpu / wall, 2),
        # of that CPU time, the kernel's (page faults, mmap/munmap of tensors' memory), and the page faults
        "system_seconds": None if args.profile else round(after_usage.ru_stime - usage.ru_stime, 1),
        "minor_page_faults": None if args.profile else after_usage.ru_minflt - usage.ru_minflt,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
