"""The tag objective's extractor, the Tagger: a saved tag run turned into extraction.

One forward pass per document labels its tokens; the labelled spans become the same JSON the
generative Extractor writes, so evaluate, extract and serve treat both alike. The type comes from
the run's type label unless the caller names one; the language, not a span of the text, is
detected (metatune.language).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch

from metatune import attention, precision
from metatune.config import ExtractionSettings
from metatune.errors import MetatuneError
from metatune.export import load_run
from metatune.extraction import Extraction
from metatune.language import detect_language
from metatune.models import cast, read_both_ways, read_first_layers_forward
from metatune.objectives.base import RunTypes
from metatune.objectives.tag.labels import (
    TagCollator,
    TagScheme,
    allowed_transitions,
    class_prompts,
    decode,
    learned_transitions,
    stitch_windows,
    tagger_input,
    to_record,
    token_offsets,
    window_starts,
    window_stride,
)
from metatune.objectives.tag.restore import RESTORER_FILE, LineRestorer, lacks_lines, last_hidden_states
from metatune.training.common import activation_bytes


class Tagger(RunTypes):
    """A saved tag run turned into extraction; of the generation settings only dtype, batch_size and
    trust_remote_code apply (nothing is generated)."""

    def __init__(self, run_dir, model, tokenizer, info, settings: ExtractionSettings):
        self.run_dir, self.info, self.settings = Path(run_dir), info, settings
        self.model, self.tokenizer = model, tokenizer
        self.device = self.model.device
        dtype = settings.dtype
        if dtype == "auto" and precision.inference_bf16(self.device.type):
            dtype = "bfloat16"  # each document is its own forward pass on a CPU (extract, below)
        cast(self.model, dtype)
        self.registry = self.info.registry(source=f"{run_dir}/metatune.json")
        tagging = self.info.tagging
        self.scheme = TagScheme.from_dict(tagging["scheme"])
        if tagging["bidirectional"]:  # runs saved before `is_causal: false` was in their config too
            read_both_ways(self.model)
            read_first_layers_forward(self.model, tagging.get("causal_layers", 0))
            attention.use_where_faster(self.model, self.model.dtype == torch.bfloat16, self.device.type)
        self.collate = TagCollator(self.tokenizer.pad_token_id)
        # On a CPU glibc maps a pass's larger tensors afresh and faults their pages in again in every
        # layer (~39k page faults per GROBID header read in bf16); kept, freed memory is reused.
        self.keep_freed_memory = self.device.type == "cpu"
        self.transitions = allowed_transitions(self.scheme)
        if tagging.get("transitions") in ("learned", "seen"):
            scores = tagging["transitions"] == "learned"
            self.transitions = learned_transitions(tagging["transition_counts"], self.transitions, scores)
        self.prompts = class_prompts(self.tokenizer, self.scheme)
        self.max_input_tokens = self.info.limits.max_input_tokens
        self.windows = tagging.get("windows", 1)  # windows of max_input_tokens read per document
        self.delay = tagging.get("label_delay", 0)  # each text token's label read this many positions later
        self.default_type = self.info.fallback_type or (
            self.scheme.types[0] if len(self.scheme.types) == 1 else "general"
        )
        self.seq2seq = self.info.seq2seq
        self.restorer = None  # tag.restore_lines: puts line breaks back into text that has none
        if restoration := (info.training or {}).get("line_restoration"):
            if not (self.run_dir / RESTORER_FILE).is_file():
                raise MetatuneError(f"{run_dir}: the run restores line breaks but its {RESTORER_FILE} is missing")
            self.restorer = LineRestorer.load(self.run_dir / RESTORER_FILE, restoration["threshold"])

    @classmethod
    def from_run(
        cls, run_dir, settings: ExtractionSettings = ExtractionSettings(), device: str | None = None
    ) -> Tagger:
        from transformers import AutoModelForTokenClassification

        # SDPA's fast kernel; read_both_ways makes it bidirectional (the run's config names eager for other runtimes)
        model, tokenizer, info = load_run(
            run_dir, device, settings.trust_remote_code, AutoModelForTokenClassification, attn_implementation="sdpa"
        )
        return cls(run_dir, model, tokenizer, info, settings)

    @torch.inference_mode()
    def extract(
        self, texts: list[str], types: list[str | None] | None = None, batch_size: int = 8, progress: bool = False
    ) -> list[Extraction]:
        """Metadata for each text. A type left as None is the one the run's type label predicts."""
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise MetatuneError(f"batch size must be at least 1, got {batch_size}")
        requested = list(types or [None] * len(texts))
        if len(requested) != len(texts):
            raise MetatuneError(f"{len(texts)} texts but {len(requested)} types")
        asked = [self.resolve_type(t) if t is not None else None for t in requested]
        if self.restorer is not None:
            texts = [self.restore_lines(text) if lacks_lines(text) else text for text in texts]
        size = self.window_size
        stride = window_stride(size)
        encoded = [token_offsets(self.tokenizer, text, size + (self.windows - 1) * stride) for text in texts]
        rows = [(i, s) for i, (ids, _) in enumerate(encoded) for s in window_starts(len(ids), size, stride)]
        rows.sort(key=lambda row: min(len(encoded[row[0]][0]) - row[1], size), reverse=True)
        windows: dict[int, dict[int, torch.Tensor]] = {}
        left = {i: len(window_starts(len(ids), size, stride)) for i, (ids, _) in enumerate(encoded)}
        results: list[Extraction | None] = [None] * len(texts)
        bar = tqdm(total=len(texts), unit="doc", disable=not progress, leave=False)
        # On a CPU a batch buys nothing for one forward pass per document (0.80 against 0.82 s per
        # document measured) and padding changes bf16 labels: there, each window is its own batch.
        per_call = batch_size if self.device.type != "cpu" else 1
        kept = attention.keep_freed_memory(self.keep_freed_memory, self.model, partial(activation_bytes, self.model))
        with kept:
            for begin in range(0, len(rows), per_call):
                chunk = rows[begin : begin + per_call]
                inputs = [self.window_input(encoded[i][0][s : s + size]) for i, s in chunk]
                batch = self.collate([{"input_ids": x} for x in inputs])
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits.cpu()
                for r, (i, s) in enumerate(chunk):
                    # without the delay's rows: the type position, then each text token's own label
                    windows.setdefault(i, {})[s] = torch.cat(
                        [logits[r, :1], logits[r, 1 + self.delay : len(inputs[r])]]
                    )
                    left[i] -= 1
                    if left[i]:
                        continue
                    ids, offsets = encoded[i]
                    predicted, values = decode(
                        stitch_windows(windows.pop(i), len(ids), size),
                        offsets,
                        texts[i],
                        self.scheme,
                        self.transitions,
                        list(map(len, self.prompts)),
                    )
                    doc_type = asked[i] or (predicted if self.registry.find(predicted) else self.resolve_type(None))
                    results[i] = self._extraction(texts[i], doc_type, values)
                    bar.update(1)
        bar.close()
        return results

    def restore_lines(self, text: str) -> str:
        """`text` with a line break where the run's line restorer finds that a line of the page started
        (one more forward pass per window; a token read by two windows takes the later one's reading)."""
        size = self.window_size
        stride = window_stride(size)
        ids, offsets = token_offsets(self.tokenizer, text, size + (self.windows - 1) * stride)
        probabilities = torch.zeros(len(ids))
        first = 1 + self.delay  # where the window's text tokens are read (after the type position)
        for start in window_starts(len(ids), size, stride):
            window = ids[start : start + size]
            batch = self.collate([{"input_ids": self.window_input(window)}])
            with last_hidden_states(self.model) as states:
                self.model(**{k: v.to(self.device) for k, v in batch.items()})
            hidden = states[0][0, first : first + len(window)].cpu()
            probabilities[start : start + len(window)] = self.restorer.probabilities(hidden)
        return self.restorer.restore(text, offsets, probabilities)

    @property
    def window_size(self) -> int:
        """Text tokens per window (per document when `windows` is 1)."""
        return self.max_input_tokens - 1 - self.delay - sum(map(len, self.prompts))

    def window_input(self, ids: list[int]) -> list[int]:
        """The model's input for one window's text tokens: the type position, the text, the fillers of
        delayed labels, each closed-list field's prompt."""
        return tagger_input(self.tokenizer, ids, self.prompts, self.delay)

    def one_at_a_time(self, text: str, doc_type: str, max_new_tokens: int = 0) -> str:
        """One document alone (nothing padded beside it); `max_new_tokens` does not apply."""
        return self.extract([text], [doc_type], batch_size=1)[0].raw

    def read_raw(self, raw: str) -> dict | None:
        return json.loads(raw)  # the extractor's own JSON of the record

    def statistics(self, results: list[Extraction]) -> dict:
        batch = self.settings.batch_size if self.device.type != "cpu" else 1
        return {
            "objective": self.info.objective,
            "batch_size": batch,
            "bidirectional": self.info.tagging["bidirectional"],
        }

    def _extraction(self, text: str, doc_type: str, values: dict[str, list[str]]) -> Extraction:
        fields = self.fields(doc_type)
        kinds = self.registry.types[doc_type].fields
        data = to_record(values, {f: kinds[f] for f in fields}, self.scheme.lists)
        if "language" in fields and (language := detect_language(text)):
            data["language"] = language
        data = {f: data[f] for f in fields if f in data}
        return Extraction(doc_type, data, json.dumps(data, ensure_ascii=False))
