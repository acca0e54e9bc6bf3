"""The machine: what it is, its peak matrix-multiply rate, and this process's peak resident memory."""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from pathlib import Path


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
