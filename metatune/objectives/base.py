"""The seam between the shared library and the objectives.

An objective is what the model learns and how a saved run turns that into metadata. It owns
everything that differs between objectives: how records become training features, which model head
it needs, its collator and losses (handed to the training engines in `Prepared`), what it records in
metatune.json and in the model card, and its extractor. The training engines, `evaluate`,
`extract`, the folder run, the service and `bench` only see this interface.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from metatune import __version__
from metatune.config import Config, ExtractionSettings
from metatune.errors import MetatuneError
from metatune.formatting import InputFormat
from metatune.run_info import InputSpec, RunInfo, TokenLimits

if TYPE_CHECKING:
    from metatune.card import CardParts
    from metatune.doctypes import TypeRegistry
    from metatune.extraction import Extraction
    from metatune.training.common import Prepared


@runtime_checkable
class Extractor(Protocol):
    """What every objective's extractor offers: a batch of texts in, one Extraction per text out."""

    run_dir: Path
    info: RunInfo
    registry: TypeRegistry
    default_type: str  # the type of a document nobody names and nothing predicts
    device: object
    model: object
    tokenizer: object

    def extract(
        self, texts: list[str], types: list[str | None] | None = None, batch_size: int = 8, progress: bool = False
    ) -> list[Extraction]: ...

    def resolve_type(self, name: str | None) -> str:
        """A known type's canonical name (None: the default type); an unknown one is a one-line error."""
        ...

    def fields(self, doc_type: str) -> list[str]:
        """The fields the run writes for this type."""
        ...

    def one_at_a_time(self, text: str, doc_type: str, max_new_tokens: int) -> str:
        """The raw output of the plainest way to run the model on one document: the reference the
        batched `extract` is timed and checked against (metatune bench)."""
        ...

    def statistics(self, results: list[Extraction]) -> dict:
        """What `evaluate` records about how the outputs were made (the run's objective, settings,
        tokens generated...)."""
        ...

    def read_raw(self, raw: str) -> dict | None:
        """The record a raw output holds as the model wrote it (before any value is expanded or
        snapped); None when it cannot be read into one."""
        ...


class RunTypes:
    """The run's document types and the fields it writes for each; a base of the extractors
    (needs `registry`, `default_type` and `info`)."""

    def resolve_type(self, name: str | None) -> str:
        doc_type = self.registry.find(name or self.default_type)
        if doc_type is None:
            raise MetatuneError(f"unknown document type {name!r} (known: {', '.join(self.registry.types)})")
        return doc_type.name

    def fields(self, doc_type: str) -> list[str]:
        return self.info.selection.fields(self.registry.types[doc_type])


class Objective:
    """One objective: subclasses set `name` and implement `prepare`, `extractor` and `card`."""

    name: str = ""
    bench_sets: tuple[str, ...] = ()  # `--set` overrides `metatune bench` trains it with, as its quality config does

    def prepare(self, config: Config, registry: TypeRegistry, dataset, need_validation: bool) -> Prepared:
        """The model with the head this objective needs, the encoded splits, the collators and losses
        the training engines use, and the run's description (metatune.json). Writes nothing."""
        raise NotImplementedError

    def extractor(self, run_dir, settings: ExtractionSettings, device: str | None = None) -> Extractor:
        """A saved run of this objective, ready to extract."""
        raise NotImplementedError

    def zero_shot(self, run_dir, settings: ExtractionSettings, device: str | None = None) -> Extractor:
        """The run's base model untrained, as a baseline, where the objective has one."""
        raise MetatuneError(f"a {self.name} run has no zero-shot baseline: its base model was not trained to do this")

    def card(self, info: RunInfo, name: str) -> CardParts:
        """What the model card of a run of this objective (named `name`) says about it."""
        raise NotImplementedError

    def input_tokens(self, info: RunInfo) -> int:
        """The most tokens of a document's text a run of this objective reads (its input limit)."""
        return info.limits.max_input_tokens

    def type_accuracy(self, run_dir, info: RunInfo, texts: list[str], types: list[str]) -> dict | None:
        """How often the run's own document-type classifier names each text's true type; None where the
        run has none."""
        return None


def describe(
    config: Config, registry, fmt: InputFormat, seq2seq: bool, chat: bool = False, prompts: dict | None = None
) -> RunInfo:
    """The run's description for metatune.json: how its inputs were built, from what; an objective
    adds its own section."""
    d = config.data
    return RunInfo(
        metatune_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        base_model=config.model.name,
        architecture="seq2seq" if seq2seq else "causal",
        objective=config.training.objective,
        input=InputSpec(
            style=fmt.style,
            include_fields=fmt.include_fields,
            exclude_fields=list(fmt.exclude_fields),
            chat_template=chat,
            prompts=prompts or {},
            anchor_min_words=fmt.anchor_min_words,
            anchor_words=fmt.anchor_words,
            prompt_example=fmt.prompt_example,
        ),
        limits=TokenLimits(max_input_tokens=d.max_input_tokens, max_target_tokens=d.max_target_tokens),
        fallback_type=d.fallback_type,
        types=registry.to_dict(),
        config=json.loads(config.model_dump_json()),
    )
