"""metrics.jsonl, the run's training log, written the same way by both training modes."""

from __future__ import annotations

import json
from pathlib import Path


def append_metrics(path: Path, step: int, epoch: float | None, logs: dict) -> None:
    """One line of metrics.jsonl: {"step": ..., "epoch": ..., <metrics>}."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "epoch": epoch, **logs}) + "\n")


def drop_metrics_after(path: Path, step: int) -> None:
    """On resume: forget lines logged after the checkpoint, which the resumed run logs again, the
    summary of a run stopped early, and a line a full disk cut off."""

    def kept(line: str) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return False
        return record["step"] <= step and "train_runtime" not in record

    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        path.write_text("".join(line + "\n" for line in lines if kept(line)), encoding="utf-8")
