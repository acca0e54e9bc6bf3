#!/usr/bin/env python3
"""Fit the line restorer of `tag.restore_lines` on a tag run trained without it, in place.

    python scripts/fit_line_restorer.py RUN --data DATASET.json

Does what training with `tag.restore_lines: true` does after its last step: reads the collapsed copy
of every training text of DATASET (the run's training data) with the saved model, fits the probe
that finds where the page's lines started, and adds `line_restorer.safetensors` and
`training.line_restoration` to the run. From then on extraction puts line breaks back into text
that has none before tagging it. The model's weights are not touched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metatune.config import Config, ExtractionSettings
from metatune.data import load_dataset
from metatune.errors import MetatuneError
from metatune.formatting import InputFormat
from metatune.objectives.tag.extractor import Tagger
from metatune.objectives.tag.objective import encode_split, restorer_copies
from metatune.objectives.tag.restore import RESTORER_FILE, fit_on_model
from metatune.run_info import RUN_FILE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the run's dataset (its training split is read)")
    parser.add_argument("--dtype", default="auto", help="as in `metatune extract` (auto: bf16 where it is faster)")
    args = parser.parse_args()
    try:
        tagger = Tagger.from_run(args.run, ExtractionSettings(dtype=args.dtype))
        config = Config.model_validate(tagger.info.config)
        seed = config.training.seed
        records = load_dataset(args.data, tagger.registry, tagger.info.fallback_type, seed).split("training")
    except (MetatuneError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # encoded as training encodes them (the line targets in `lines`)
    fmt = InputFormat.from_settings(config.data)
    encoding = (tagger.registry, config.data.fallback_type, fmt, tagger.scheme, tagger.tokenizer)
    features = encode_split(restorer_copies(records, config), *encoding, config.data.max_input_tokens, {}, tagger.delay)
    restorer, stats = fit_on_model(tagger.model, features, False, seed)
    restorer.save(args.run / RESTORER_FILE)
    info = tagger.info.model_copy(update={"training": {**tagger.info.training, "line_restoration": stats}})
    info.write(args.run)
    print(f"{args.run / RESTORER_FILE} and {args.run / RUN_FILE}: {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
