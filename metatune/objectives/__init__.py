"""The objectives a run can be trained with, by the name `training.objective` gives, and
`open_run`, which opens a saved run with its objective's extractor.

Built in: `generate` (the model writes the JSON) and `tag` (it labels the tokens of the text that
hold each value). Another objective subclasses `metatune.objectives.base.Objective` and is added
with `register`.
"""

from __future__ import annotations

from metatune.config import ExtractionSettings
from metatune.errors import MetatuneError
from metatune.objectives.base import Extractor, Objective
from metatune.objectives.generate import GenerateObjective
from metatune.objectives.tag import TagObjective
from metatune.run_info import RunInfo

OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    OBJECTIVES[objective.name] = objective
    return objective


def get(name: str) -> Objective:
    """The objective of this name; an unknown name is a one-line error listing the known ones."""
    if name not in OBJECTIVES:
        raise MetatuneError(f"training.objective: unknown objective {name!r} (choose from {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]


def of_run(info: RunInfo) -> Objective:
    return get(info.objective)


def open_run(run_dir, settings: ExtractionSettings = ExtractionSettings(), device: str | None = None) -> Extractor:
    """The extractor a saved run needs, whatever its objective."""
    return of_run(RunInfo.read(run_dir)).extractor(run_dir, settings, device)


register(GenerateObjective())
register(TagObjective())
