"""The generate objective's extractor: a saved run turned into batched JSON extraction.

Inputs are rebuilt from the run's metatune.json (prompts, input style, token limits) with the same
encoding functions training used. Generation is batched (rows of similar length together, padded
on the left for causal models), uses the KV cache, and stops each row as soon as the JSON object it
writes is closed (JsonObjectEnd).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from metatune.alignment import expand_record, snap_record
from metatune.config import ExtractionSettings
from metatune.doctypes import TypeRegistry
from metatune.encoding import PromptEncoder, global_attention_mask
from metatune.errors import MetatuneError
from metatune.export import load_run
from metatune.extraction import Extraction
from metatune.models import cast, default_device, make_greedy
from metatune.objectives.base import RunTypes
from metatune.objectives.generate.json_output import parse_output
from metatune.objectives.generate.type_classifier import TypeClassifier
from metatune.run_info import RunInfo


class _Scan:
    """Brace depth of a JSON object being written, outside strings; text before the first '{' is ignored."""

    __slots__ = ("depth", "in_string", "escape")

    def __init__(self):
        self.depth, self.in_string, self.escape = 0, False, False

    def feed(self, text: str) -> bool:
        """True once the first object is closed."""
        for c in text:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
            elif c == "{":
                self.depth += 1
            elif self.depth == 0:
                continue  # prose before the object: quotes and braces there mean nothing
            elif c == '"':
                self.in_string = True
            elif c == "}":
                self.depth -= 1
                if self.depth == 0:
                    return True
        return False


def closes_object(text: str) -> bool:
    return _Scan().feed(text)


LOOP_MAX_PERIOD = 64  # tokens in the longest block a repetition loop may repeat
LOOP_MIN_TOKENS = 32  # a loop is at least this many tokens of repeats (and at least 3 copies)


def loop_start(tokens: list[int]) -> int | None:
    """Where a repetition loop at the end of `tokens` begins its second copy, or None.

    A loop is a block of 1..LOOP_MAX_PERIOD tokens repeated at least 3 times and over at least
    LOOP_MIN_TOKENS tokens at the very end: what a small model writes once it is stuck.
    """
    n = len(tokens)
    for period in range(1, LOOP_MAX_PERIOD + 1):
        copies = max(3, -(-LOOP_MIN_TOKENS // period))
        if copies * period > n:
            break
        block = tokens[n - period :]
        if all(tokens[n - k * period : n - (k - 1) * period] == block for k in range(2, copies + 1)):
            start = n - copies * period
            while start - period >= 0 and tokens[start - period : start] == block:  # the first copy of the block
                start -= period
            return start + period
    return None


class JsonObjectEnd(StoppingCriteria):
    """Stops a row as soon as the JSON object it generates is closed, or once it is caught in a loop.

    `start` is the sequence length before the first generated token (the padded prompt of a causal
    model; the decoder's start token of a seq2seq one). Greedy decoding keeps rows in place, so each
    row's scan state is carried over and only new tokens are read (`incremental`); a call may bring
    several new tokens (prompt-lookup decoding accepts a run of them at once). Beam search reorders
    rows between calls, so there every row's generated text is scanned again. `stop_at[row]` is the
    sequence length at which the row closed its object, or where its loop's second copy began (the
    repeats are cut; `looped[row]` says so).
    """

    def __init__(self, tokenizer, start: int, incremental: bool = True):
        self.tokenizer = tokenizer
        self.incremental = incremental
        self.pieces: dict[int, str] = {}
        self.start = self.seen = start
        self.scans: list[_Scan] = []
        self.stop_at: list[int | None] = []

    def piece(self, token_id: int) -> str:
        text = self.pieces.get(token_id)
        if text is None:
            text = self.pieces[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=True)
        return text

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        rows, length = input_ids.shape
        if not self.incremental:
            ids = input_ids[:, self.start :].tolist()
            done = [closes_object("".join(self.piece(t) for t in row)) for row in ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
        if not self.scans:
            self.scans = [_Scan() for _ in range(rows)]
            self.stop_at = [None] * rows
            self.looped = [False] * rows
            self.written = [[] for _ in range(rows)]
        new = input_ids[:, self.seen :].tolist()  # only the tokens not read yet leave the device
        for r, row in enumerate(new):
            if self.stop_at[r] is not None:
                continue
            for offset, token in enumerate(row):
                if self.scans[r].feed(self.piece(token)):
                    self.stop_at[r] = self.seen + offset + 1
                    break
            else:
                self.written[r] += row
                if (start := loop_start(self.written[r])) is not None:
                    self.stop_at[r] = self.start + start
                    self.looped[r] = True
        self.seen = length
        done = [s is not None for s in self.stop_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Extractor(RunTypes):
    """A saved run turned into metadata extraction: `extract` takes document texts.

    `Extractor.from_run` loads the fine-tuned run; `Extractor.zero_shot` loads the run's base model
    untrained, with the same tokenizer and prompts (the baseline). `settings` (config.ExtractionSettings):
    * dtype "auto" keeps the precision the weights were saved in (float32 for a full fine-tune);
      bfloat16 halves the memory, but then a document's greedy output may change with the documents
      batched beside it (rounding differs with the padded shapes);
    * trust_remote_code lets the model (or the run's base) run Python code of its own; never taken
      from metatune.json;
    * snap replaces predicted values that (nearly) occur in the document by the document's own text
      (metatune.alignment.snap_record); None takes the run's generate.snap_to_source (on by default);
    * prompt_lookup: prompt-lookup decoding, proposing up to this many tokens per step copied from the
      prompt where the output's last words occur in it, all checked in one forward pass (0: off).
      Greedy and causal models only; transformers' assisted decoding takes one sequence at a time, so
      documents are decoded one by one whatever the batch size.
    """

    def __init__(self, run_dir, model, tokenizer, info: RunInfo, settings: ExtractionSettings):
        self.run_dir, self.info, self.settings = Path(run_dir), info, settings
        self.model, self.tokenizer = model, tokenizer
        self.device = self.model.device
        cast(self.model, settings.dtype)
        self.registry = info.registry(source=f"{run_dir}/metatune.json")
        self.encoder = PromptEncoder.for_run(info, self.registry, tokenizer)
        self.seq2seq = info.seq2seq
        if settings.prompt_lookup and self.seq2seq:
            raise MetatuneError(
                "prompt-lookup decoding needs a causal model (a seq2seq decoder does not see the "
                "document it would copy from)"
            )
        self.max_new_tokens = settings.max_new_tokens or info.limits.max_target_tokens
        self.num_beams = settings.num_beams
        self.prompt_lookup = settings.prompt_lookup
        self.snap = run_snap(info) if settings.snap is None else settings.snap
        self.anchored = info.input.anchor_min_words > 0
        self.default_type = info.fallback_type or "general"
        name = info.type_classifier  # runs saved before it had none
        self.type_classifier = TypeClassifier.load(self.run_dir, name) if name else None
        # A causal model continues from the right edge of every row; an encoder reads rows padded on the
        # right, as in training (LED's learned positions would shift under left padding).
        self.tokenizer.padding_side = "right" if self.seq2seq else "left"
        self.generation_config = self._generation_config()

    @classmethod
    def from_run(
        cls, run_dir, settings: ExtractionSettings = ExtractionSettings(), device: str | None = None
    ) -> Extractor:
        model, tokenizer, info = load_run(run_dir, device, settings.trust_remote_code)
        return cls(run_dir, model, tokenizer, info, settings)

    @classmethod
    def zero_shot(
        cls, run_dir, settings: ExtractionSettings = ExtractionSettings(), device: str | None = None
    ) -> Extractor:
        model, tokenizer, info = _load_base(run_dir, device, settings.trust_remote_code)
        return cls(run_dir, model, tokenizer, info, settings)

    def _generation_config(self):
        config = copy.deepcopy(self.model.generation_config)
        make_greedy(config, self.max_new_tokens, self.tokenizer.pad_token_id)
        config.num_beams = self.num_beams
        config.use_cache = True
        config.max_length = None
        config.prompt_lookup_num_tokens = self.prompt_lookup or None
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        return config

    def input_ids(self, text: str, doc_type: str) -> list[int]:
        return self.encoder.prompt_ids(text, doc_type)

    @torch.inference_mode()
    def generate(
        self, encoded: list[list[int]], batch_size: int = 8, max_new_tokens: int | None = None, progress: bool = False
    ) -> list[str]:
        """Outputs for already-encoded prompts, in their order; batches group similar lengths."""
        return self.generate_with_counts(encoded, batch_size, max_new_tokens, progress)[0]

    @torch.inference_mode()
    def generate_with_counts(
        self, encoded: list[list[int]], batch_size: int = 8, max_new_tokens: int | None = None, progress: bool = False
    ) -> tuple[list[str], list[int], list[bool]]:
        """Like `generate`, plus the number of tokens generated for each prompt and whether it was cut
        out of a repetition loop."""
        if batch_size < 1:
            raise MetatuneError(f"batch size must be at least 1, got {batch_size}")
        if self.prompt_lookup:
            batch_size = 1
        from tqdm.auto import tqdm

        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        outputs: list[str] = [""] * len(encoded)
        counts: list[int] = [0] * len(encoded)
        looped: list[bool] = [False] * len(encoded)
        config = self.generation_config
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        not_counted = {self.tokenizer.pad_token_id, *eos}  # padding and end-of-sequence are not content
        if max_new_tokens and max_new_tokens != config.max_new_tokens:
            config = copy.deepcopy(config)
            config.max_new_tokens = max_new_tokens
        bar = tqdm(total=len(encoded), unit="doc", disable=not progress, leave=False)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt").to(self.device)
            if self.model.config.model_type == "led":  # LED needs global attention on the first token
                batch["global_attention_mask"] = global_attention_mask(batch["attention_mask"])
            offset = 1 if self.seq2seq else batch["input_ids"].shape[1]  # after the decoder's start token / the prompt
            stop = JsonObjectEnd(self.tokenizer, offset, incremental=self.num_beams == 1)
            generated = self.model.generate(
                **batch, generation_config=config, stopping_criteria=StoppingCriteriaList([stop])
            )
            for r, (i, seq) in enumerate(zip(rows, generated.tolist())):
                end = stop.stop_at[r] if stop.stop_at and stop.stop_at[r] else len(seq)
                new = seq[offset:end]
                outputs[i] = self.tokenizer.decode(new, skip_special_tokens=True)
                counts[i] = sum(1 for t in new if t not in not_counted)
                looped[i] = bool(getattr(stop, "looped", None) and stop.looped[r])
            bar.update(len(rows))
        bar.close()
        return outputs, counts, looped

    def extract(
        self, texts: list[str], types: list[str | None] | None = None, batch_size: int = 8, progress: bool = False
    ) -> list[Extraction]:
        """Parsed metadata for each text. A type left as None is the one the run's type classifier
        predicts from the text; a run without a classifier takes its default type, unless the model's
        output names a known type in a "type" field."""
        requested = list(types or [None] * len(texts))
        if len(requested) != len(texts):
            raise MetatuneError(f"{len(texts)} texts but {len(requested)} types")
        decided = [self.choose_type(text, t) for text, t in zip(texts, requested)]
        encoded = [self.input_ids(text, t) for text, (t, _) in zip(texts, decided)]
        results = []
        raws, counts, looped = self.generate_with_counts(encoded, batch_size, progress=progress)
        for text, (t, source), raw, n, loop in zip(texts, decided, raws, counts, looped):
            parsed = parse_output(raw)
            if source == "default" and (named := output_type(self.registry, parsed.data, t)) != t:
                t, source = named, "model"
            data = parsed.data
            if data and self.anchored:
                data = expand_record(text, data)
            if data and self.snap:
                data = snap_record(text, data)
            notes = {"repaired": True} if parsed.repaired else {}
            counts = {"tokens": n, "loops": int(loop), "repaired": int(parsed.repaired)}
            results.append(Extraction(t, data, raw, parsed.error, type_source=source, notes=notes, counts=counts))
        return results

    @torch.inference_mode()
    def one_at_a_time(self, text: str, doc_type: str, max_new_tokens: int) -> str:
        """One document, one plain greedy `generate` call without the stopping rule: the baseline."""
        input_ids = torch.tensor([self.input_ids(text, doc_type)], device=self.device)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[0] if self.seq2seq else out[0, input_ids.shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def read_raw(self, raw: str) -> dict | None:
        return parse_output(raw).data

    def statistics(self, results: list[Extraction]) -> dict:
        return {
            "objective": self.info.objective,
            "num_beams": self.num_beams,
            "batch_size": self.settings.batch_size,
            "prompt_lookup": self.prompt_lookup,
            "max_new_tokens": self.max_new_tokens,
            "generated_tokens": sum(r.counts["tokens"] for r in results),
            "loops": sum(r.counts["loops"] for r in results),
            "repaired": sum(r.counts["repaired"] for r in results),
        }

    def choose_type(self, text: str, name: str | None) -> tuple[str, str]:
        """(the type whose prompt the text gets, how it was decided: given, classifier or default)."""
        if name is not None:
            return self.resolve_type(name), "given"
        if self.type_classifier is not None:
            predicted = self.registry.find(self.type_classifier.predict(text)[0])
            if predicted is not None:
                return predicted.name, "classifier"
        return self.resolve_type(None), "default"


def run_snap(info: RunInfo) -> bool:
    """The run's generate.snap_to_source (data.snap_to_source in runs saved before the generate section)."""
    return info.setting("generate", "snap_to_source", info.setting("data", "snap_to_source", True))


def output_type(registry: TypeRegistry, data: dict | None, default: str) -> str:
    """The type the model named in a "type" field, when it is a known one; else `default`."""
    named = registry.find(data.get("type")) if data else None
    return named.name if named is not None else default


def _load_base(run_dir, device: str | None, trust_remote_code: bool = False):
    """The run's base model, untrained, with the run's tokenizer (so inputs are token for token the same)."""
    from transformers import AutoTokenizer

    from metatune.config import ModelSettings
    from metatune.models import load_base

    info = RunInfo.read(run_dir)
    settings = ModelSettings.model_validate(info.config.get("model", {}))
    settings = settings.model_copy(
        update={
            "quantization": "none",
            "lora": settings.lora.model_copy(update={"enabled": False}),
            "trust_remote_code": trust_remote_code,
        }
    )
    model, _, _ = load_base(settings)
    tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=trust_remote_code)
    device = device or default_device()
    model.to(device).eval()
    return model, tokenizer, info
