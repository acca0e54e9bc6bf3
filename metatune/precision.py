"""Which precision a run trains and reads in: the one place that decides.

`training.bf16: auto` uses bfloat16 where it is fast. On GPUs that is every card with bf16 support.
On CPUs the flags in /proc/cpuinfo are not enough (an AVX2-only CPU runs bf16 matmuls ~100x slower
than float32, an AVX-512-BF16 one ~4x faster, AMX ~7x faster, and a kernel may not use the units
the flags announce), so a short probe times one 256x256 matmul in both precisions and picks bf16
only when it is clearly faster. The probe runs once per process and takes well under a second.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache

import torch

from metatune.errors import MetatuneError

PROBE_SIZE = 256
BF16_MIN_SPEEDUP = 1.5  # bf16 must beat float32 by this factor to be chosen on a CPU


def _best_seconds(dtype: torch.dtype, repeats: int = 5) -> float:
    a = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    a @ b  # warm-up: kernel selection and allocation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


@lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times faster a bf16 matmul is than a float32 one on this CPU (measured)."""
    return _best_seconds(torch.float32) / _best_seconds(torch.bfloat16)


def bf16_fast() -> bool:
    """Whether bf16 pays off here: a GPU with bf16 support, or a CPU where the probe says so."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def inference_bf16(device_type: str) -> bool:
    """Whether an extractor that reads each document in its own forward pass takes `dtype: auto` as
    bf16: on a CPU where the probe says bf16 is fast. (On a GPU documents share padded batches, and
    in bf16 padding can change a document's result: there `auto` keeps the saved dtype.)"""
    return device_type == "cpu" and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def use_bf16(config) -> bool:
    setting = config.training.bf16
    return bf16_fast() if setting == "auto" else setting


def mixed_precision(config) -> str:
    """accelerate's `mixed_precision` for this run: "bf16", "fp16" or "no"."""
    t = config.training
    if t.fp16:
        if t.bf16 is True:
            raise MetatuneError("training.fp16 and training.bf16 are both true; choose one")
        if not torch.cuda.is_available():
            raise MetatuneError("training.fp16 needs a CUDA GPU; on a CPU use training.bf16 (or neither)")
        return "fp16"
    return "bf16" if use_bf16(config) else "no"


def apply_precision(config) -> str:
    """Sets accelerate's precision for this process from the config and returns it.

    Both training modes (and DeepSpeed) read ACCELERATE_MIXED_PRECISION when they build their
    Accelerator; set from the config every time, an earlier run in the same process cannot leak its
    precision into the next.
    """
    mode = mixed_precision(config)
    os.environ["ACCELERATE_MIXED_PRECISION"] = mode
    return mode
