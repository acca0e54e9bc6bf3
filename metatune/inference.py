"""The Extractor: a saved run turned into batched, greedy JSON extraction.

Inputs are rebuilt from the run's metatune.json (prompts, input style, token limits) with the same
encoding functions training used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metatune.doctypes import TypeRegistry
from metatune.encoding import encode_prompt
from metatune.errors import MetatuneError
from metatune.export import load_run
from metatune.formatting import Example
from metatune.parsing import parse_output


@dataclass
class Extraction:
    doc_type: str
    data: dict | None  # the parsed metadata, None when the output could not be parsed
    raw: str  # what the model wrote
    error: str | None = None
    repaired: bool = False


class Extractor:
    def __init__(self, run_dir, device: str | None = None):
        self.model, self.tokenizer, self.info = load_run(run_dir, device)
        self.device = self.model.device
        self.registry = TypeRegistry.from_dict(self.info["types"], source=f"{run_dir}/metatune.json")
        self.prompts = self.info["input"]["prompts"]
        self.chat = self.info["input"]["chat_template"]
        self.seq2seq = self.info["architecture"] == "seq2seq"
        self.max_input_tokens = self.info["limits"]["max_input_tokens"]
        self.max_new_tokens = self.info["limits"]["max_target_tokens"]
        self.default_type = self.info.get("fallback_type") or "general"
        self.tokenizer.padding_side = "left"  # generation continues from the right edge of every row

    def resolve_type(self, name: str | None) -> str:
        doc_type = self.registry.find(name or self.default_type)
        if doc_type is None:
            raise MetatuneError(f"unknown document type {name!r} (known: {', '.join(self.registry.types)})")
        return doc_type.name

    def input_ids(self, text: str, doc_type: str) -> list[int]:
        parts = self.prompts[doc_type]
        example = Example(parts["prefix"], text, parts["suffix"], "", doc_type)
        return encode_prompt(example, self.tokenizer, self.max_input_tokens, self.seq2seq, self.chat)

    @torch.inference_mode()
    def generate(self, encoded: list[list[int]], batch_size: int = 8, max_new_tokens: int | None = None) -> list[str]:
        """Greedy outputs for already-encoded prompts, in their order; batches group similar lengths."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        outputs: list[str] = [""] * len(encoded)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt").to(self.device)
            generated = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            if not self.seq2seq:
                generated = generated[:, batch["input_ids"].shape[1] :]
            for i, seq in zip(rows, generated):
                outputs[i] = self.tokenizer.decode(seq, skip_special_tokens=True)
        return outputs

    def extract(self, texts: list[str], types: list[str | None] | None = None, batch_size: int = 8) -> list[Extraction]:
        types = [self.resolve_type(t) for t in (types or [None] * len(texts))]
        encoded = [self.input_ids(text, t) for text, t in zip(texts, types)]
        results = []
        for t, raw in zip(types, self.generate(encoded, batch_size)):
            parsed = parse_output(raw)
            results.append(Extraction(t, parsed.data, raw, parsed.error, parsed.repaired))
        return results
