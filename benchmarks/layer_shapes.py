"""How close the tagger's own matrix products come to the machine's peak: the ceiling on training MFU.

    .venv/bin/python benchmarks/layer_shapes.py [--tokens 2400] [--reps 5] [--out FILE]

`metatune.bench.machine.peak_rates` measures a square 2,048-wide product; SmolLM2-135M's layers are
576 wide (the MLP 1,536), and a training step runs each linear layer three times (forward, the
gradient of its input, the gradient of its weight) under bf16 autocast, which also casts the float32
weights. This times one transformer layer's seven linear layers that way on `--tokens` rows (a
micro-batch: 4 documents of ~600 tokens), forward and backward, counting 6 x tokens x in x out FLOPs
per layer, and prints each layer's rate and their FLOP-weighted total against the square peak
measured in the same run; and each layer's forward pass alone in bf16 on `--read-tokens` rows (one
~530-token header, as the Tagger reads documents on a CPU): the ceiling on extraction. Only the
linear layers: attention is benchmarks/attention.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from metatune.bench.machine import peak_rates

# SmolLM2-135M: hidden 576, MLP 1,536, 9 query heads and 3 key/value heads of 64
SHAPES = {
    "q_proj": (576, 576),
    "k_proj": (576, 192),
    "v_proj": (576, 192),
    "o_proj": (576, 576),
    "gate_proj": (576, 1536),
    "up_proj": (576, 1536),
    "down_proj": (1536, 576),
}


def step_seconds(layer: torch.nn.Linear, x: torch.Tensor, autocast: bool, reps: int) -> float:
    """Median seconds of one forward and backward pass of `layer` over `x` (after a warm-up)."""
    times = []
    for i in range(reps + 1):
        layer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        y.backward(torch.ones_like(y))
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def forward_seconds(layer: torch.nn.Linear, x: torch.Tensor, reps: int) -> float:
    """Median seconds of one forward pass of `layer` over `x` (after a warm-up)."""
    times = []
    for i in range(reps + 1):
        start = time.perf_counter()
        layer(x)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2400, help="rows per product (documents x tokens)")
    parser.add_argument("--read-tokens", type=int, default=530, help="rows of the forward-only product")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    before = peak_rates("cpu", 2048)
    rows, totals = {}, {"autocast": [0.0, 0.0], "bf16": [0.0, 0.0], "forward": [0.0, 0.0]}
    for name, (n_in, n_out) in SHAPES.items():
        flops = 6 * args.tokens * n_in * n_out
        row = {}
        for how in ("autocast", "bf16"):
            # autocast: float32 weights cast to bf16 on every forward, as training runs them;
            # bf16: weights and input already bf16 (no casts), what the products alone allow
            dtype = torch.float32 if how == "autocast" else torch.bfloat16
            layer = torch.nn.Linear(n_in, n_out, bias=False, dtype=dtype)
            x = torch.randn(args.tokens, n_in, dtype=dtype, requires_grad=True)
            seconds = step_seconds(layer, x, how == "autocast", args.reps)
            row[how] = round(flops / seconds / 1e9, 1)
            totals[how][0] += flops
            totals[how][1] += seconds
        layer = torch.nn.Linear(n_in, n_out, bias=False, dtype=torch.bfloat16)
        x = torch.randn(args.read_tokens, n_in, dtype=torch.bfloat16)
        flops, seconds = 2 * args.read_tokens * n_in * n_out, forward_seconds(layer, x, args.reps)
        row["forward"] = round(flops / seconds / 1e9, 1)
        totals["forward"][0] += flops
        totals["forward"][1] += seconds
        rows[name] = row
    after = peak_rates("cpu", 2048)
    peak = max(before["bfloat16"]["wall"], after["bfloat16"]["wall"]) / 1e9
    layer_rates = {how: round(f / s / 1e9, 1) for how, (f, s) in totals.items()}
    figures = {
        "cpu_flags": sorted(
            set(Path("/proc/cpuinfo").read_text().split()) & {"avx2", "avx512_bf16", "amx_bf16", "amx_tile"}
        ),
        "threads": torch.get_num_threads(),
        "tokens": args.tokens,
        "read_tokens": args.read_tokens,
        "bf16_peak_gflops_per_second": round(peak, 1),
        "gflops_per_second_per_layer": rows,
        "all_seven": layer_rates,
        "share_of_peak": {how: round(rate / peak, 3) for how, rate in layer_rates.items()},
    }
    print(f"GFLOP/s; training: forward + backward on {args.tokens} rows; reading: bf16 forward on {args.read_tokens}")
    print(f"{'layer':10s} {'autocast':>9s} {'bf16':>9s} {'forward':>9s}")
    for name, row in {**rows, "all seven": layer_rates}.items():
        print(f"{name:10s} {row['autocast']:9.1f} {row['bf16']:9.1f} {row['forward']:9.1f}")
    print(f"square bf16 peak {peak:.1f}")
    print(json.dumps(figures["share_of_peak"]))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
