"""What a bench run measures with: its settings, the default data and metatune's side of the race."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metatune.bench.original import ORIGINAL_INPUT, ORIGINAL_TARGET
from metatune.config import DEFAULT_MODEL, load_config
from metatune.paths import REPO_DIR

GROBID = REPO_DIR.parent / "shared" / "data" / "grobid-headers" / "dataset.json"
SAMPLE = REPO_DIR / "data" / "sample" / "sample.json"


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
    other_runs: bool = True  # also time every other way to train a run (metatune.objectives.other_runs)


def default_data() -> tuple[str, str | None]:
    """(path, note): the real grobid-headers data when present, else the bundled sample, saying so."""
    if GROBID.is_file():
        return str(GROBID), None
    return str(SAMPLE), f"{GROBID} is absent: measured on the bundled synthetic sample {SAMPLE.name} instead"


def own_sets(settings: BenchSettings) -> list[str]:
    """The settings metatune's side of the race is trained with (the default config with --set), as its
    quality config trains (metatune.objectives.bench_sets)."""
    from metatune.objectives import bench_sets  # imports torch

    return bench_sets(load_config(sets=settings.sets))


def bench_sets(settings: BenchSettings, output_dir: Path) -> list[str]:
    """metatune's side: every target field, the original's token limits, the settings its quality
    config trains with, nothing written outside `output_dir`."""
    return [
        "data.exclude_fields=[]",
        *own_sets(settings),
        f"data.max_input_tokens={ORIGINAL_INPUT}",
        f"data.max_target_tokens={ORIGINAL_TARGET}",
        "training.eval_each_epoch=false",
        *settings.sets,
        f"training.output_dir={output_dir}",
    ]
