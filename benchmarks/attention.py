"""One attention layer of SmolLM2-135M (9 query heads sharing 3 key/value heads of 64), forward and
backward, in SDPA (PyTorch's CPU flash kernel) against metatune's matmul attention
(metatune/attention.py), per document length and precision: which one a CPU training run should use.

    .venv/bin/python benchmarks/attention.py [--lengths 256,530,1062,1536] [--repeats 9] [--causal]

Each figure is the best of two medians of `--repeats` timed calls, the two kernels alternating, with
torch's default threads; `ratio` is SDPA's time over matmul's (above 1: matmul faster).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from metatune.attention import matmul_attention

HEADS, KV_HEADS, DIM = 9, 3, 64


def median_ms(call, repeats: int) -> float:
    call()
    call()  # warm-up: kernel selection and the allocator's first touch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def timings(kernel, q, k, v, grad, repeats: int) -> tuple[float, float]:
    """Median milliseconds of the forward pass alone, and of forward and backward."""
    with torch.no_grad():
        forward = median_ms(lambda: kernel(q, k, v), repeats)
    return forward, median_ms(lambda: kernel(q, k, v).backward(grad), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="256,530,1062,1536")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--causal", action="store_true", help="causal attention instead of both ways")
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()

    module = SimpleNamespace(is_causal=args.causal, training=True)
    kernels = {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=args.causal, enable_gqa=True),
        "matmul": lambda q, k, v: matmul_attention(module, q, k, v, None, is_causal=args.causal)[0].transpose(1, 2),
    }
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for length in map(int, args.lengths.split(",")):
            q = torch.randn(1, HEADS, length, DIM, dtype=dtype, requires_grad=True)
            k = torch.randn(1, KV_HEADS, length, DIM, dtype=dtype, requires_grad=True)
            v = torch.randn(1, KV_HEADS, length, DIM, dtype=dtype, requires_grad=True)
            grad = torch.randn(1, HEADS, length, DIM, dtype=dtype)
            with torch.no_grad():
                diff = (kernels["sdpa"](q, k, v) - kernels["matmul"](q, k, v)).abs().max().item()
            row = {"dtype": str(dtype).removeprefix("torch."), "length": length, "max_abs_difference": diff}
            for _ in range(2):
                for name, kernel in kernels.items():
                    forward, both = timings(kernel, q, k, v, grad, args.repeats)
                    row[f"{name}_forward_ms"] = min(row.get(f"{name}_forward_ms", forward), forward)
                    row[f"{name}_forward_backward_ms"] = min(row.get(f"{name}_forward_backward_ms", both), both)
            for part in ("forward", "forward_backward"):
                row[f"{part}_ratio"] = row[f"sdpa_{part}_ms"] / row[f"matmul_{part}_ms"]
            rows.append(row)
            print(
                f"{row['dtype']:>8} {length:>5} tokens  forward sdpa {row['sdpa_forward_ms']:6.1f} ms, "
                f"matmul {row['matmul_forward_ms']:6.1f} ms ({row['forward_ratio']:.2f}x)  forward+backward "
                f"sdpa {row['sdpa_forward_backward_ms']:6.1f} ms, matmul {row['matmul_forward_backward_ms']:6.1f} ms "
                f"({row['forward_backward_ratio']:.2f}x)  max |difference| {diff:.3g}",
                flush=True,
            )
    flags = sorted(set(Path("/proc/cpuinfo").read_text().split()) & {"avx2", "avx512_bf16", "amx_bf16", "amx_tile"})
    figures = {"cpu_flags": flags, "threads": torch.get_num_threads(), "causal": args.causal, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
