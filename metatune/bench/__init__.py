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
* extraction: documents per second of `Extractor.extract` (batched) against the extractor's
  plainest way, one document at a time (a model that writes: one plain greedy `model.generate`
  call each), interleaved chunk by chunk, with a check that both give the same predictions.
* memory: peak resident memory of training (full and LoRA, one step on the epoch's longest batch)
  and of extraction, each in a fresh subprocess.

Modules: `settings` (BenchSettings, the default data), `machine` (machine, peak matmul rate,
resident memory), `original` (the original module's inputs), `training_race` (the timed training
race), `other_runs` (the steps and extraction of every other way to train a run), `probes` (the
memory and extraction subprocesses), `run` (`run_bench`, all of it in order),
`report` (the JSON and Markdown files).
"""

from metatune.bench.machine import machine_info, peak_rss_mb, reset_peak_rss
from metatune.bench.original import original_features
from metatune.bench.probes import probe_extract
from metatune.bench.report import write_results
from metatune.bench.run import run_bench
from metatune.bench.settings import GROBID, SAMPLE, BenchSettings, default_data
from metatune.bench.training_race import Turns, quiet_arguments

__all__ = [
    "GROBID",
    "SAMPLE",
    "BenchSettings",
    "Turns",
    "default_data",
    "machine_info",
    "original_features",
    "peak_rss_mb",
    "probe_extract",
    "quiet_arguments",
    "reset_peak_rss",
    "run_bench",
    "write_results",
]
