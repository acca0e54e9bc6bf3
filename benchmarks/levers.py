"""Training levers, one at a time: paired A/B timings of a forward + backward pass on real examples.

    .venv/bin/python benchmarks/levers.py --reps 3 --levers target_head,padding_free_bs4_mid \
        --output benchmarks/results/levers.json

Each lever runs its baseline and its candidate alternately, `--reps` times, on the same examples of
the training data (the grobid-headers set when present), with the model of `--model`. A lever's
figure is the median of the per-pair ratios candidate / baseline, in wall seconds and in CPU seconds
of all the process's threads: on a shared machine CPU time counts the work, not the waiting for a
core, so its ratio is the steadier one. Peak memory is the process's resident high-water mark during
each pass (reset before it). `omp_wait_policy` compares two worker processes instead (the variable
must be set before the OpenMP runtime starts). No optimizer step: it costs the same in every variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from metatune.bench import default_data, peak_rss_mb, reset_peak_rss
from metatune.config import load_config
from metatune.encoding import collator, target_positions
from metatune.objectives import prepare


def load(model: str, data: str | None):
    config = load_config(
        sets=["data.exclude_fields=[]", "training.output_dir=/tmp/metatune-levers/run"],
        model=model,
        data=data or default_data()[0],
    )
    prepared = prepare(config, need_validation=False)
    prepared.model.train()
    return prepared


def forward_backward(model, batches, target_head=True) -> float:
    """Summed loss of the batches; logits at target positions only, or everywhere."""
    total = 0.0
    for batch in batches:
        batch = dict(batch)
        labels = batch.pop("labels")
        if target_head:
            keep = target_positions(labels)
            logits = model(**batch, logits_to_keep=keep, use_cache=False).logits
            targets = labels[:, 1:][labels[:, 1:] != -100]
        else:
            logits = model(**batch, use_cache=False).logits[:, :-1].flatten(0, 1)
            targets = labels[:, 1:].flatten()
        loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        loss.backward()
        total += loss.item()
    model.zero_grad(set_to_none=True)
    return total


def levers(prepared) -> dict:
    """name: (baseline, candidate), each a function running one pass."""
    from transformers import DataCollatorWithFlattening

    m, tok = prepared.model, prepared.tokenizer
    ex = sorted(prepared.train, key=lambda x: len(x["input_ids"]))
    n, mid = len(ex), len(ex) // 2
    one = [ex[mid]]
    # bf16 runs tens of times slower on CPUs without bf16 units: 128 tokens of one example (its target's end)
    short = [{k: v[-128:] for k, v in ex[mid].items()}]
    pair = [ex[mid], ex[mid - 12]]  # two lengths a length-grouped batch could hold together
    group = {"short": ex[n // 10 : n // 10 + 4], "mid": ex[mid : mid + 4], "long": ex[int(n * 0.9) : int(n * 0.9) + 4]}
    pad, flat = collator(tok), DataCollatorWithFlattening()

    def run(examples, target_head=True, model=m, packed=False, single=False, mask=True):
        if packed:
            batches = [flat(examples)]
        elif single:
            batches = [pad([x]) for x in examples]
        else:
            batches = [pad(examples)]
        if not mask:  # right padding: causal attention never lets a real token see the padding after it
            batches = [{k: v for k, v in b.items() if k != "attention_mask"} for b in batches]
        return lambda: forward_backward(model, batches, target_head)

    def with_threads(count, fn):
        def go():
            old = torch.get_num_threads()
            torch.set_num_threads(count)
            try:
                return fn()
            finally:
                torch.set_num_threads(old)

        return go

    def with_autocast(fn):
        def go():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn()

        return go

    def with_checkpointing(fn):
        def go():
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            try:
                return fn()
            finally:
                m.gradient_checkpointing_disable()

        return go

    def with_attention(impl, fn):
        def go():
            m.set_attn_implementation(impl)
            try:
                return fn()
            finally:
                m.set_attn_implementation("sdpa")

        return go

    def compiled(fn_of_model):
        state = {}

        def go():
            if "model" not in state:
                state["model"] = torch.compile(m)
                start = time.perf_counter()
                fn_of_model(state["model"])()  # compiles
                print(f"compile and first pass: {time.perf_counter() - start:.1f}s", flush=True)
            return fn_of_model(state["model"])()

        return go

    def bf16_weights(fn_of_model):
        state = {}

        def go():
            state.setdefault("model", copy.deepcopy(m).to(torch.bfloat16))
            return fn_of_model(state["model"])()

        return go

    table = {
        "target_head": (run(one, target_head=False), run(one)),
        "padding_free_bs2": (run(pair), run(pair, single=True)),
        "packing_bs2": (run(pair), run(pair, packed=True)),
        "one_thread": (run(one), with_threads(1, run(one))),
        "gradient_checkpointing": (run(one), with_checkpointing(run(one))),
        "eager_attention": (run(pair), with_attention("eager", run(pair))),
        "bf16_autocast_short": (run(short), with_autocast(run(short))),
        "bf16_weights_short": (run(short), bf16_weights(lambda model: run(short, model=model))),
        "torch_compile": (run(one), compiled(lambda model: run(one, model=model))),
    }
    for name, examples in group.items():
        table[f"padding_free_bs4_{name}"] = (run(examples), run(examples, single=True))
        table[f"no_mask_bs4_{name}"] = (run(examples), run(examples, mask=False))
        table[f"no_mask_bs4_vs_padding_free_{name}"] = (run(examples, single=True), run(examples, mask=False))
    return table


def timed(fn) -> dict:
    reset_peak_rss()
    start, start_cpu = time.perf_counter(), time.process_time()
    loss = fn()
    return {
        "wall": time.perf_counter() - start,
        "cpu": time.process_time() - start_cpu,
        "loss": loss,
        "peak_mb": peak_rss_mb(),
    }


def paired(base, cand, reps: int, name: str) -> dict:
    rows = []
    for r in range(reps):
        order = [("base", base), ("cand", cand)] if r % 2 == 0 else [("cand", cand), ("base", base)]
        row = {label: timed(fn) for label, fn in order}
        rows.append(row)
        b, c = row["base"], row["cand"]
        print(
            f"{name} {r}: wall {b['wall']:.1f}/{c['wall']:.1f}s cpu {b['cpu']:.1f}/{c['cpu']:.1f}s "
            f"loss {b['loss']:.3f}/{c['loss']:.3f} peak {b['peak_mb']:.0f}/{c['peak_mb']:.0f} MB "
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    med = statistics.median
    return {
        "wall_ratio": med(r["cand"]["wall"] / r["base"]["wall"] for r in rows),
        "cpu_ratio": med(r["cand"]["cpu"] / r["base"]["cpu"] for r in rows),
        "base_cpu_s": med(r["base"]["cpu"] for r in rows),
        "cand_cpu_s": med(r["cand"]["cpu"] for r in rows),
        "base_wall_s": med(r["base"]["wall"] for r in rows),
        "cand_wall_s": med(r["cand"]["wall"] for r in rows),
        "base_peak_mb": max(r["base"]["peak_mb"] for r in rows),
        "cand_peak_mb": max(r["cand"]["peak_mb"] for r in rows),
        "same_loss": all(abs(r["base"]["loss"] - r["cand"]["loss"]) <= 1e-3 * abs(r["base"]["loss"]) for r in rows),
        "reps": reps,
    }


def worker(model: str, data: str | None) -> None:
    """One pass per line read on stdin; prints its timing as JSON (for omp_wait_policy)."""
    prepared = load(model, data)
    ex = sorted(prepared.train, key=lambda x: len(x["input_ids"]))[len(prepared.train) // 2]
    batch = collator(prepared.tokenizer)([ex])
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(timed(lambda: forward_backward(prepared.model, [batch]))), flush=True)


def omp_wait_policy(model: str, data: str | None, reps: int) -> dict:
    """OpenMP threads that spin while they wait (the default) against threads that sleep (PASSIVE)."""
    procs = {}
    for policy in ("default", "PASSIVE"):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        cmd = [sys.executable, __file__, "--worker", "--model", model] + (["--data", data] if data else [])
        procs[policy] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        while procs[policy].stdout.readline().strip() != "ready":
            pass

    def ask(policy):
        def go():
            procs[policy].stdin.write("go\n")
            procs[policy].stdin.flush()
            return json.loads(procs[policy].stdout.readline())

        return go

    rows = []
    for r in range(reps):
        names = ["default", "PASSIVE"] if r % 2 == 0 else ["PASSIVE", "default"]
        row = {("base" if n == "default" else "cand"): ask(n)() for n in names}
        rows.append(row)
        print(
            f"omp_wait_policy {r}: wall {row['base']['wall']:.1f}/{row['cand']['wall']:.1f}s "
            f"cpu {row['base']['cpu']:.1f}/{row['cand']['cpu']:.1f}s load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    for p in procs.values():
        p.stdin.close()
        p.wait()
    med = statistics.median
    return {
        "wall_ratio": med(r["cand"]["wall"] / r["base"]["wall"] for r in rows),
        "cpu_ratio": med(r["cand"]["cpu"] / r["base"]["cpu"] for r in rows),
        "base_wall_s": med(r["base"]["wall"] for r in rows),
        "cand_wall_s": med(r["cand"]["wall"] for r in rows),
        "base_cpu_s": med(r["base"]["cpu"] for r in rows),
        "cand_cpu_s": med(r["cand"]["cpu"] for r in rows),
        "reps": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--levers", help="comma-separated names (default: all)")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.model, args.data)
    prepared = load(args.model, args.data)
    table = levers(prepared)
    names = args.levers.split(",") if args.levers else [*table, "omp_wait_policy"]
    unknown = [n for n in names if n not in table and n != "omp_wait_policy"]
    if unknown:
        raise SystemExit(f"unknown lever(s): {', '.join(unknown)} (known: {', '.join([*table, 'omp_wait_policy'])})")
    results = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": args.model,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "levers": {},
    }
    for name in names:
        if name == "omp_wait_policy":
            results["levers"][name] = omp_wait_policy(args.model, args.data, args.reps)
        else:
            results["levers"][name] = paired(*table[name], args.reps, name)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
