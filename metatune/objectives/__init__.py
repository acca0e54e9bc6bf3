"""The objectives a run can be trained with, by the name `training.objective` gives, and the
functions the rest of metatune reaches them through: `check` and `prepare` (training), `open_run` (a
saved run's extractor, or its untrained baseline), `card`, `input_tokens`, `type_accuracy`, `bench_sets` and
`other_runs` (`metatune bench`). Nothing outside this package reads `training.objective` or a run's
objective: it asks these functions.

Built in: `generate` (the model writes the JSON) and `tag` (it labels the tokens of the text that
hold each value). Another objective subclasses `metatune.objectives.base.Objective` and is added
with `register`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from accelerate.utils import set_seed

from metatune.config import Config, ExtractionSettings
from metatune.data import load_for_training
from metatune.errors import MetatuneError
from metatune.objectives.base import Extractor, Objective
from metatune.objectives.generate import GenerateObjective
from metatune.objectives.tag import TagObjective
from metatune.run_info import RunInfo

if TYPE_CHECKING:
    from metatune.card import CardParts
    from metatune.training.common import Prepared

OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    OBJECTIVES[objective.name] = objective
    return objective


def get(name: str) -> Objective:
    """The objective of this name; an unknown name is a one-line error listing the known ones."""
    if name not in OBJECTIVES:
        raise MetatuneError(f"training.objective: unknown objective {name!r} (choose from {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]


def of_config(config: Config) -> Objective:
    return get(config.training.objective)


def of_run(info: RunInfo) -> Objective:
    return get(info.objective)


def check(config: Config) -> None:
    """An unknown `training.objective` is a one-line error (before training writes anything)."""
    of_config(config)


def prepare(config: Config, need_validation: bool = True) -> Prepared:
    """The dataset read and checked, then prepared by the config's objective (model, features,
    collators, losses, the run's description). Writes nothing."""
    objective = of_config(config)
    registry, dataset = load_for_training(config.data, need_validation)
    set_seed(config.training.seed)  # new weights (a tagging head, LoRA adapters) start from the run's seed
    prepared = objective.prepare(config, registry, dataset, need_validation)
    if config.training.mode == "loop" and prepared.loop is None:
        raise MetatuneError(
            f"training.objective={objective.name} trains with training.mode=trainer (it has no custom loop)"
        )
    return prepared


def open_run(
    run_dir,
    settings: ExtractionSettings = ExtractionSettings(),
    device: str | None = None,
    baseline: bool = False,
) -> Extractor:
    """The extractor a saved run needs, whatever its objective; `baseline`: the run's base model
    untrained (the zero-shot baseline), where its objective has one."""
    objective = of_run(RunInfo.read(run_dir))
    return (objective.zero_shot if baseline else objective.extractor)(run_dir, settings, device)


def card(info: RunInfo, name: str) -> CardParts:
    """What the model card of the run `info` (named `name`) says about how it writes the metadata,
    beginning with the objective it was trained with."""
    parts = of_run(info).card(info, name)
    return replace(parts, settings=[("training.objective", info.objective), *parts.settings])


def input_tokens(info: RunInfo) -> int:
    """The most tokens of a document's text the run `info` reads: the text after them is not needed
    (a PDF is not parsed beyond it)."""
    return of_run(info).input_tokens(info)


def type_accuracy(run_dir, info: RunInfo, texts: list[str], types: list[str]) -> dict | None:
    """How often the run's own document-type classifier names each text's true type; None where the
    run predicts no type apart from extraction."""
    return of_run(info).type_accuracy(run_dir, info, texts, types)


def bench_sets(config: Config) -> list[str]:
    """The settings `metatune bench` trains `config`'s objective with (as its quality config does)."""
    return list(of_config(config).bench_sets)


def other_runs(config: Config) -> dict[str, list[str]]:
    """`metatune bench`'s other runs: for every objective but `config`'s, its name and the settings
    that train it instead."""
    return {name: [f"training.objective={name}"] for name in OBJECTIVES if name != config.training.objective}


register(GenerateObjective())
register(TagObjective())
