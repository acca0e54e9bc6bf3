"""Printing once per launch: under `accelerate launch` or `torchrun` every process runs the same code,
and only the main one (rank 0) speaks."""

from __future__ import annotations

import os
import sys


def is_main_process() -> bool:
    """Rank 0 of the process group if one is started, else of the launcher's RANK (a single process: yes).

    The same answer as accelerate's `PartialState().is_main_process` and the Trainer's
    `args.process_index == 0`, without importing either (or torch, when it is not loaded yet:
    without torch.distributed imported no process group can have been started).
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def main_print(*args, **kwargs) -> None:
    """`print`, on the main process only."""
    if is_main_process():
        print(*args, **kwargs)
