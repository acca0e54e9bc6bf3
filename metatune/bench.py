"""`metatune bench`: training and extraction speed on this machine, against the original approach.

One command, one JSON file and one Markdown table:

* training: metatune's Trainer path against a reproduction of the original module's path (prompt
  padded to 2048 tokens and target to 512 with padding="max_length", the two concatenated, float32,
  batch 2, no length grouping). Both are real `Trainer.train()` runs on the same examples, model and
  seed, for the same number of optimizer steps; a callback makes them take their steps in turn, so
  a change in the machine's load hits both alike. Seconds per epoch are extrapolated from the
  measured steps: the median seconds per computed token position times the positions one epoch
  computes (every original step has the same shape; metatune's vary with the batch's length).
* MFU: model FLOPs per second of metatune's training step, 6 x parameters x non-padding tokens,
  over the best matrix-multiply rate measured in the same run (float32 or bfloat16, whichever is
  faster here), measured between the training steps.
* extraction: documents per second of `Extractor.extract` (batched) against one plain
  `model.generate` call per document, greedy, interleaved chunk by chunk, with a check that both
  give the same predictions.
* memory: peak resident memory of training (full and LoRA, one step on the epoch's longest batch)
  and of extraction, each in a fresh subprocess.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from metatune.config import DEFAULT_MODEL, load_config
from metatune.errors import MetatuneError
from metatune.files import write_atomic
from metatune.paths import REPO_DIR

GROBID = REPO_DIR.parent / "shared" / "data" / "grobid-headers" / "dataset.json"
SAMPLE = REPO_DIR / "data" / "sample" / "sample.json"
ORIGINAL_INPUT, ORIGINAL_TARGET, ORIGINAL_BATCH = 2048, 512, 2  # the original module's fixed shapes


@dataclass
class BenchSettings:
    output: Path
    model: str = DEFAULT_MODEL
    data: str | None = None  # None: ../shared/data/grobid-headers when present, else the bundled sample
    steps: int = 3  # optimizer steps timed on each side (the first is a warm-up when there are 3 or more)
    extract_docs: int = 8
    extract_batch_size: int = 8
    max_new_tokens: int = 128
    memory: bool = True  # the subprocess memory probes
    matmul_size: int | None = None  # n of the n x n peak-rate products (default: 2048 on CPUs, 8192 on GPUs)
    sets: list[str] = field(default_factory=list)  # --set overrides for metatune's side
    extract_run: Path | None = None  # a saved run to time extraction with (default: the base model saved as a run)


def default_data() -> tuple[str, str | None]:
    """(path, note): the real grobid-headers data when present, else the bundled sample, saying so."""
    if GROBID.is_file():
        return str(GROBID), None
    return str(SAMPLE), f"{GROBID} is absent: measured on the bundled synthetic sample {SAMPLE.name} instead"


def bench_sets(settings: BenchSettings, output_dir: Path) -> list[str]:
    """metatune's side: every target field, the original's token limits, nothing written outside `output_dir`."""
    return [
        "data.exclude_fields=[]",
        f"data.max_input_tokens={ORIGINAL_INPUT}",
        f"data.max_target_tokens={ORIGINAL_TARGET}",
        "training.eval_each_epoch=false",
        *settings.sets,
        f"training.output_dir={output_dir}",
    ]


# ---------------------------------------------------------------------------------------------
# The machine


def machine_info() -> dict:
    import torch
    import transformers

    info = {
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_start": list(os.getloadavg()),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
        info["cpu"] = names[0] if names else info["cpu"]
        info["cpu_matrix_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gb"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def matmul_rate(dtype, n: int, reps: int, device: str = "cpu") -> dict[str, float]:
    """Best FLOP/s of an n x n matrix product over `reps` runs (after one warm-up): per wall second,
    and per CPU second of all this process's threads (which the load of other programs barely moves)."""
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    wall = cpu = math.inf
    for i in range(reps + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        if i:
            wall = min(wall, time.perf_counter() - start)
            cpu = min(cpu, max(time.process_time() - start_cpu, 1e-9))
    return {"wall": 2 * n**3 / wall, "cpu": 2 * n**3 / cpu}


def peak_rates(device: str, n: int) -> dict[str, dict[str, float]]:
    """FLOP/s of float32 and bfloat16 matrix products (CPUs without bf16 units are far slower in bf16)."""
    import torch

    n_bf16 = n // 2 if device == "cpu" else n  # tens of times slower without bf16 units: keep it short
    return {
        "float32": matmul_rate(torch.float32, n, 3, device),
        "bfloat16": matmul_rate(torch.bfloat16, n_bf16, 1 if device == "cpu" else 3, device),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory since start or the last `reset_peak_rss`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def reset_peak_rss() -> bool:
    """Restarts the peak counter at the current size (Linux: /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The original module's inputs


def split_causal(example: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of a metatune causal example: the prompt is the part masked out of the loss."""
    n = next((i for i, label in enumerate(example["labels"]) if label != -100), len(example["labels"]))
    return example["input_ids"][:n], example["input_ids"][n:]


def original_features(example: dict, pad_id: int, seq2seq: bool) -> dict:
    """One example as the original module built it: prompt padded to 2048, target padded to 512."""
    if seq2seq:
        prompt, target = example["input_ids"], example["labels"]
    else:
        prompt, target = split_causal(example)
    p_pad, t_pad = ORIGINAL_INPUT - len(prompt), ORIGINAL_TARGET - len(target)
    input_ids = prompt + [pad_id] * p_pad
    mask = [1] * len(prompt) + [0] * p_pad
    labels = target + [-100] * t_pad
    if seq2seq:
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    return {
        "input_ids": input_ids + target + [pad_id] * t_pad,
        "attention_mask": mask + [1] * len(target) + [0] * t_pad,
        "labels": [-100] * ORIGINAL_INPUT + labels,
    }


# ---------------------------------------------------------------------------------------------
# Timing two Trainers step by step, in turn


class Turns:
    """Participants (threads) that take turns in a fixed order; one that leaves is skipped from then on."""

    def __init__(self, names: list[str]):
        self.order = list(names)
        self.active = set(names)
        self.turn: str | None = names[0]
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def done(self, name: str) -> None:
        with self.cond:
            self._pass(name)

    def leave(self, name: str) -> None:
        with self.cond:
            self.active.discard(name)
            if self.turn == name:
                self._pass(name)

    def _pass(self, name: str) -> None:
        i = self.order.index(name)
        following = self.order[i + 1 :] + self.order[: i + 1]
        self.turn = next((n for n in following if n in self.active), None)
        self.cond.notify_all()


class BatchLog:
    """Wraps a data collator and records what each batch computes: positions, real tokens, targets."""

    def __init__(self, inner, seq2seq: bool):
        self.inner, self.seq2seq, self.batches = inner, seq2seq, []

    def __call__(self, features):
        batch = self.inner(features)
        self.batches.append(batch_counts(batch, self.seq2seq))
        return batch


def batch_counts(batch, seq2seq: bool) -> dict:
    """Token positions the model computes, non-padding tokens among them, and target tokens."""
    labels = batch["labels"]
    targets = int((labels != -100).sum())
    positions = batch["input_ids"].numel()
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else positions
    if seq2seq:  # the decoder computes the (padded) label positions too
        positions += labels.numel()
        tokens += targets
    return {"positions": positions, "tokens": tokens, "targets": targets}


def step_timer(turns: Turns, name: str, times: list[tuple[float, float]]):
    """Wall and CPU seconds (all threads of the process) of each optimizer step, taken in turn."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            turns.wait(name)
            self.start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))
            turns.done(name)

    return StepTimer()


def quiet_arguments(args, **changes):
    """The same TrainingArguments with nothing saved, evaluated, reported or printed."""
    return dataclasses.replace(
        args,
        save_strategy="no",
        eval_strategy="no",
        load_best_model_at_end=False,
        report_to="none",
        logging_steps=10**9,
        logging_first_step=False,
        disable_tqdm=True,
        **changes,
    )


@dataclass
class Side:
    name: str
    trainer: object
    log: BatchLog
    accumulation: int
    times: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) seconds per step
    error: BaseException | None = None


def epoch_totals(trainer, seq2seq: bool, accumulation: int) -> dict:
    """What one epoch computes, batch by batch as the Trainer's sampler groups it (collation only)."""
    totals = {"positions": 0, "tokens": 0, "targets": 0, "batches": 0}
    for batch in trainer.get_train_dataloader():
        for k, v in batch_counts(batch, seq2seq).items():
            totals[k] += v
        totals["batches"] += 1
    totals["steps"] = math.ceil(totals["batches"] / accumulation)
    return totals


def side_figures(side: Side, epoch: dict, parameters: int, peak: dict[str, float]) -> dict:
    """Per-step measurements turned into per-epoch and per-second figures."""
    steps = []
    for i, (seconds, cpu) in enumerate(side.times):
        batches = side.log.batches[i * side.accumulation : (i + 1) * side.accumulation]
        counts = {k: sum(b[k] for b in batches) for k in ("positions", "tokens", "targets")}
        steps.append({"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), **counts})
    measured = steps[1:] if len(steps) >= 3 else steps  # the first step warms up allocators and caches
    per_position = statistics.median(s["seconds"] / s["positions"] for s in measured)
    cpu_per_position = statistics.median(s["cpu_seconds"] / s["positions"] for s in measured)
    flops = statistics.median(6 * parameters * s["tokens"] / s["seconds"] for s in measured)
    flops_cpu = statistics.median(6 * parameters * s["tokens"] / s["cpu_seconds"] for s in measured)
    epoch_seconds = per_position * epoch["positions"]
    return {
        "steps": steps,
        "seconds_per_step_median": statistics.median(s["seconds"] for s in measured),
        "epoch": epoch,
        "padding_share": round(1 - epoch["tokens"] / epoch["positions"], 4),
        "epoch_seconds": round(epoch_seconds, 1),
        "epoch_cpu_seconds": round(cpu_per_position * epoch["positions"], 1),
        "target_tokens_per_second": round(epoch["targets"] / epoch_seconds, 2),
        "tokens_per_second": round(epoch["tokens"] / epoch_seconds, 2),
        "model_flops_per_second": flops,
        "mfu": round(flops / peak["wall"], 4),
        "model_flops_per_cpu_second": flops_cpu,
        "mfu_cpu_time": round(flops_cpu / peak["cpu"], 4) if peak["cpu"] else None,
    }


def timed_training(prepared, original_model, settings: BenchSettings, work: Path, device: str) -> dict:
    """Both Trainers train `settings.steps` steps, taking turns with each other and a matmul probe."""
    import torch
    from transformers import Trainer, set_seed

    from metatune.encoding import collator
    from metatune.precision import use_bf16
    from metatune.training.common import padding_free
    from metatune.training.hf_trainer import build_trainer, training_arguments

    base_args = training_arguments(prepared, work)
    args = quiet_arguments(base_args, max_steps=settings.steps)
    metatune = build_trainer(prepared, args, callbacks=[])
    metatune_log = BatchLog(metatune.data_collator, prepared.seq2seq)
    metatune.data_collator = metatune_log

    pad_id = prepared.tokenizer.pad_token_id
    original_data = [original_features(x, pad_id, prepared.seq2seq) for x in prepared.train]
    original_args = quiet_arguments(
        base_args,
        max_steps=settings.steps,
        per_device_train_batch_size=ORIGINAL_BATCH,
        gradient_accumulation_steps=1,
        train_sampling_strategy="random",
        bf16=False,
        fp16=False,
    )
    original_log = BatchLog(collator(prepared.tokenizer), prepared.seq2seq)  # all rows have one length: no padding added
    original = Trainer(model=original_model, args=original_args, train_dataset=original_data, data_collator=original_log)

    accumulation = args.gradient_accumulation_steps
    epochs = {
        "original": epoch_totals(original, prepared.seq2seq, 1),
        "metatune": epoch_totals(metatune, prepared.seq2seq, accumulation),
    }
    for log in (metatune_log, original_log):
        log.batches.clear()

    turns = Turns(["peak", "original", "metatune"])
    sides = [Side("original", original, original_log, 1), Side("metatune", metatune, metatune_log, accumulation)]
    for side in sides:
        side.trainer.add_callback(step_timer(turns, side.name, side.times))

    def train(side: Side):
        try:
            set_seed(args.seed)
            side.trainer.train()
        except BaseException as e:  # re-raised in the main thread
            side.error = e
        finally:
            turns.leave(side.name)

    threads = [threading.Thread(target=train, args=(side,), daemon=True) for side in sides]
    for t in threads:
        t.start()
    n = settings.matmul_size or (2048 if device == "cpu" else 8192)
    peaks = [peak_rates(device, n)]  # both dtypes first, then float32 again after every step
    turns.done("peak")
    while True:
        turns.wait("peak")
        if turns.active == {"peak"}:
            break
        peaks.append({"float32": matmul_rate(torch.float32, n, 2, device)})
        turns.done("peak")
    turns.leave("peak")
    for t in threads:
        t.join()
    for side in sides:
        if side.error is not None:
            raise side.error

    rates = [rate for p in peaks for rate in p.values()]
    # CPU time says nothing of work done on a GPU
    peak = {"wall": max(r["wall"] for r in rates), "cpu": max(r["cpu"] for r in rates) if device == "cpu" else None}
    parameters = sum(p.numel() for p in original_model.parameters())
    out = {
        side.name: side_figures(side, epochs[side.name], parameters, peak)
        for side in sides
    }
    out["original"]["setup"] = {"batch_size": ORIGINAL_BATCH, "dtype": "float32", "padding": "max_length 2048 + 512"}
    out["metatune"]["setup"] = {
        "examples_per_step": args.per_device_train_batch_size * accumulation,
        "micro_batch": args.per_device_train_batch_size,
        "padding_free": padding_free(prepared.config, prepared.seq2seq),
        "bf16": use_bf16(prepared.config),
        "group_by_length": prepared.config.training.group_by_length,
        "target_only_logits": getattr(metatune, "compute_loss_func", None) is not None,
        "gradient_checkpointing": prepared.config.model.gradient_checkpointing,
        "lora": prepared.config.model.lora.enabled,
    }
    out["parameters"] = parameters
    out["peak_flops_per_second"] = {
        "float32_best": max(p["float32"]["wall"] for p in peaks),
        "float32_median": statistics.median(p["float32"]["wall"] for p in peaks),
        "bfloat16": peaks[0]["bfloat16"]["wall"],
        "used": peak["wall"],
        "per_cpu_second_used": peak["cpu"],
        "samples": len(peaks),
    }
    original_epoch, metatune_epoch = out["original"]["epoch_seconds"], out["metatune"]["epoch_seconds"]
    out["speedup_per_epoch"] = round(original_epoch / metatune_epoch, 2)
    # CPU time counts the work, not the waiting for cores other programs hold: steadier on a shared machine
    if device == "cpu":
        out["speedup_per_epoch_cpu"] = round(out["original"]["epoch_cpu_seconds"] / out["metatune"]["epoch_cpu_seconds"], 2)
    return out


# ---------------------------------------------------------------------------------------------
# Subprocess probes: memory of one training step, and extraction


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
    from metatune.training.common import prepare
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
        args = quiet_arguments(args, max_steps=1, per_device_train_batch_size=ORIGINAL_BATCH, bf16=False, fp16=False,
                               gradient_accumulation_steps=1)
        trainer = Trainer(model=prepared.model, args=args, train_dataset=data, data_collator=collator(prepared.tokenizer))
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
        if spec["side"] != "original" else ORIGINAL_INPUT + ORIGINAL_TARGET,
    }


def plain_generate(model, tokenizer, ids: list[int], max_new_tokens: int, seq2seq: bool) -> str:
    """The baseline: one document, one `generate` call, greedy."""
    import torch

    input_ids = torch.tensor([ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0] if seq2seq else out[0, input_ids.shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True)


def probe_extract(spec: dict) -> dict:
    """Plain one-at-a-time generation against the batched Extractor, interleaved chunk by chunk.

    A tag run (training.objective=tag) generates nothing: its Tagger one document at a time is timed
    against the same Tagger batched.
    """
    from transformers import set_seed

    from metatune.export import read_run_info
    from metatune.inference import open_run
    from metatune.parsing import parse_output

    set_seed(0)
    tag = read_run_info(spec["run"]).get("objective") == "tag"
    extractor = open_run(spec["run"], snap=False)  # the raw outputs are compared
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
            if tag:
                out = [extractor.extract([t], [ty], batch_size=1)[0].raw for t, ty in zip(chunk_t, chunk_ty)]
            else:
                out = [plain_generate(extractor.model, extractor.tokenizer, extractor.input_ids(t, ty), max_new,
                                      extractor.seq2seq) for t, ty in zip(chunk_t, chunk_ty)]
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
    same_data = sum(parse_output(p).data == b.data for p, b in zip(plain_raw, batched))
    n = len(texts)
    return {
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
        "objective": "tag" if tag else "generate",
        "generated_tokens_plain": 0 if tag else sum(len(extractor.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in plain_raw),
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


# ---------------------------------------------------------------------------------------------
# The whole benchmark


def extraction_run(prepared, model, tokenizer, directory: Path, max_new_tokens: int) -> Path:
    """A saved run of the (untrained) base model, for timing extraction: speed does not need a good model."""
    from metatune.export import save_run

    info = copy.deepcopy(prepared.info)
    info["limits"]["max_target_tokens"] = max_new_tokens
    generation = model.generation_config
    generation.max_new_tokens, generation.do_sample = max_new_tokens, False
    for key in ("temperature", "top_p", "top_k"):
        setattr(generation, key, None)
    return save_run(model, tokenizer, info, directory)


def documents(config, count: int) -> tuple[list[str], list[str]]:
    """The first `count` validation documents (texts, types), else training ones."""
    from metatune.data import load_for_training, record_type

    _, dataset = load_for_training(config.data, need_validation=False)
    records = dataset.splits.get("validation") or dataset.split("training")
    records = records[:count]
    return [r["original_text"] for r in records], [str(record_type(r)) for r in records]


def run_bench(settings: BenchSettings) -> dict:
    import torch

    from metatune.models import load_pretrained
    from metatune.training.common import prepare

    if settings.steps < 1 or settings.extract_docs < 1 or settings.extract_batch_size < 1 or settings.max_new_tokens < 1:
        raise MetatuneError("--steps, --extract-docs, --extract-batch-size and --max-new-tokens must be at least 1")
    if settings.extract_run is not None and not (Path(settings.extract_run) / "metatune.json").is_file():
        raise MetatuneError(f"--extract-run {settings.extract_run}: not a saved run (no metatune.json)")
    data, data_note = (settings.data, None) if settings.data else default_data()
    device = "cuda" if torch.cuda.is_available() else "cpu"
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
        result["examples"] = {
            "train": len(prepared.train),
            "skipped_target_over_512": prepared.skipped,
            "mean_tokens": round(prepared.stats["train_tokens"] / len(prepared.train), 1),
            "mean_target_tokens": round(prepared.stats["train_target_tokens"] / len(prepared.train), 1),
        }
        if settings.extract_run is not None:
            run_dir = Path(settings.extract_run)
            result["extraction_run"] = str(run_dir)
        else:
            run_dir = extraction_run(prepared, copy.deepcopy(original_model), tokenizer, work / "extract-run",
                                     settings.max_new_tokens)
        print(f"Timing {settings.steps} training steps of each side, in turn")
        result["training"] = timed_training(prepared, original_model, settings, work, device)
        del prepared, original_model
        gc.collect()

        ctx = probe_context()
        texts, types = documents(config, settings.extract_docs)
        print(f"Timing extraction of {len(texts)} documents (in a subprocess)")
        result["extraction"] = run_probe(
            ctx,
            {"kind": "extract", "run": str(run_dir), "texts": texts, "types": types,
             "batch_size": settings.extract_batch_size, "max_new_tokens": settings.max_new_tokens},
            work,
        )
        if settings.memory:
            base = {"kind": "train", "model": settings.model, "data": data, "work": str(work / "probe")}
            overrides = bench_sets(settings, work / "probe-run")  # the same settings the timed run used
            memory = {}
            print("Measuring peak memory of training (one step on the longest batch, each in a subprocess)")
            memory["train_original"] = run_probe(ctx, {**base, "side": "original", "sets": overrides}, work)
            memory["train_full"] = run_probe(ctx, {**base, "side": "metatune", "sets": overrides + ["model.lora.enabled=false"]}, work)
            memory["train_lora"] = run_probe(ctx, {**base, "side": "lora", "sets": overrides + ["model.lora.enabled=true"]}, work)
            result["memory"] = memory
    result["machine"]["load_average_end"] = list(os.getloadavg())
    # other programs kept more than half the CPUs busy when the run started
    result["machine"]["under_load"] = result["machine"]["load_average_start"][0] > 0.5 * (os.cpu_count() or 1)
    return result


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
        f"* Examples: {r['examples']['train']} training examples with targets of at most {ORIGINAL_TARGET} tokens "
        f"({r['examples']['skipped_target_over_512']} longer ones left out on both sides), "
        f"mean {r['examples']['mean_tokens']} tokens of which {r['examples']['mean_target_tokens']} target",
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
            "| | plain generate, one document at a time | Extractor, batched | ratio |",
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
    mem = r.get("memory")
    if mem or e:
        lines += ["", "## Peak resident memory", "",
                  "| what | peak RSS | after loading | seconds of the step |", "|---|---:|---:|---:|"]
        names = {"train_original": "training, original approach (batch 2 x 2560)",
                 "train_full": "training, metatune full fine-tuning (longest batch)",
                 "train_lora": "training, metatune LoRA (longest batch)"}
        for key, label in names.items():
            if mem and key in mem:
                lines.append(f"| {label} | {mem[key]['peak_rss_mb']:,.0f} MB | {mem[key]['rss_after_load_mb']:,.0f} MB | "
                             f"{mem[key]['step_seconds']:.0f} |")
        if e:
            lines.append(f"| extraction, batched ({e['peak_rss_scope']}) | {e['peak_rss_mb']:,.0f} MB | "
                         f"{e['rss_after_load_mb']:,.0f} MB | |")
    return "\n".join(lines) + "\n"
