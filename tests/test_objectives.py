"""The objective seam: an objective is registered by name and owns everything that differs; the
engines, the CLI, extract and evaluate run it without knowing it. Configs written before the
objective sections load with a note."""

from __future__ import annotations

import json

import pytest
import torch

from metatune.errors import MetatuneError
from metatune.objectives import OBJECTIVES, get, register
from metatune.objectives.base import Objective, RunTypes

from conftest import SAMPLE, run_main


class FirstLine(Objective):
    """A toy objective: label the tokens of the document's first line, extract that line as the title."""

    name = "first-line"

    def prepare(self, config, registry, dataset, need_validation):
        from metatune.formatting import InputFormat
        from metatune.models import load_base
        from metatune.objectives.base import describe
        from metatune.training.common import Prepared, TrainerParts

        model, tokenizer, seq2seq = load_base(config.model, labels=["other", "first line"])

        def features(record):
            text = record["original_text"][:300]
            first = text.index("\n") if "\n" in text else len(text)
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return {"input_ids": enc["input_ids"], "labels": [int(s < first) for s, _ in enc["offset_mapping"]]}

        def collate(rows):
            width = max(len(r["input_ids"]) for r in rows)
            pad = [width - len(r["input_ids"]) for r in rows]
            return {
                "input_ids": torch.tensor([r["input_ids"] + [tokenizer.pad_token_id] * n for r, n in zip(rows, pad)]),
                "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * n for r, n in zip(rows, pad)]),
                "labels": torch.tensor([r["labels"] + [-100] * n for r, n in zip(rows, pad)]),
            }

        train = [features(r) for r in dataset.split("training")]
        info = describe(config, registry, InputFormat.from_settings(config.data), seq2seq)
        return Prepared(config, model, tokenizer, seq2seq, train, [], info, TrainerParts(collate))

    def extractor(self, run_dir, settings, device=None):
        return FirstLineExtractor(run_dir)

    def card(self, info, name):
        from metatune.card import CardParts

        return CardParts(pipeline_tag="token-classification", how="by finding the first line")


class FirstLineExtractor(RunTypes):
    def __init__(self, run_dir):
        from transformers import AutoModelForTokenClassification

        from metatune.export import load_run

        self.model, self.tokenizer, self.info = load_run(run_dir, head=AutoModelForTokenClassification)
        self.run_dir, self.registry, self.device = run_dir, self.info.registry(), self.model.device
        self.default_type = "general"

    def extract(self, texts, types=None, batch_size=8, progress=False):
        from metatune.extraction import Extraction

        results = []
        for text in texts:
            enc = self.tokenizer(text[:300], add_special_tokens=False, return_offsets_mapping=True)
            with torch.no_grad():
                labels = self.model(input_ids=torch.tensor([enc["input_ids"]])).logits[0].argmax(-1).tolist()
            ends = [e for (_, e), label in zip(enc["offset_mapping"], labels) if label == 1]
            data = {"title": text[: max(ends)].strip()} if ends else {}
            results.append(Extraction(self.resolve_type(None), data, json.dumps(data, ensure_ascii=False)))
        return results

    def one_at_a_time(self, text, doc_type, max_new_tokens=0):
        return self.extract([text])[0].raw

    def read_raw(self, raw):
        return json.loads(raw)

    def statistics(self, results):
        return {}


@pytest.fixture
def first_line():
    register(FirstLine())
    yield
    OBJECTIVES.pop("first-line")


def test_a_third_objective_trains_and_extracts_through_the_cli(first_line, tiny_llama, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    sets = [f"model.name={tiny_llama}", f"data.path={SAMPLE}", f"training.output_dir={run}"]
    sets += ["training.objective=first-line", "training.max_steps=60", "training.learning_rate=1e-2"]
    sets += ["training.eval_each_epoch=false", "training.bf16=false", "training.logging_steps=5"]
    code, _, err = run_main(monkeypatch, capsys, "train", *[a for s in sets for a in ("--set", s)])
    assert code == 0, err
    assert json.loads((run / "metatune.json").read_text())["objective"] == "first-line"
    assert "by finding the first line" in (run / "README.md").read_text()
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < 0.5 * losses[0], losses

    doc = SAMPLE.parent / "holdout.txt"  # a thesis the run has not seen
    code, out, err = run_main(monkeypatch, capsys, "extract", run, doc)
    assert code == 0, err
    assert json.loads(out)["metadata"] == {"title": doc.read_text(encoding="utf-8").splitlines()[0]}
    code, _, err = run_main(monkeypatch, capsys, "evaluate", run, "--data", SAMPLE, "--limit", "2")
    assert code == 0, err

    # it gives the Trainer its parts but no LoopParts: the custom loop is refused, in one line, writing nothing
    sets[2] = f"training.output_dir={tmp_path / 'loop'}"
    code, _, err = run_main(
        monkeypatch, capsys, "train", *[a for s in sets + ["training.mode=loop"] for a in ("--set", s)]
    )
    assert code != 0 and err.strip().splitlines()[-1] == (
        "error: training.objective=first-line trains with training.mode=trainer (it has no custom loop)"
    )
    assert not (tmp_path / "loop").exists() and not (tmp_path / "loop.partial").exists()


def test_an_unknown_objective_is_one_line_before_anything_is_written(tiny_llama, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--model",
        tiny_llama,
        "--output",
        tmp_path / "run",
        "--set",
        "training.objective=x",
    )
    assert code != 0 and err.strip().splitlines() == [
        "error: training.objective: unknown objective 'x' (choose from generate, tag)"
    ]
    assert not list(tmp_path.iterdir())
    with pytest.raises(MetatuneError, match="unknown objective 'x'"):
        get("x")


def test_configs_written_before_the_objective_sections_load_with_a_note(tmp_path, capsys):
    from metatune.config import load_config

    old = tmp_path / "old.yaml"
    old.write_text(
        "data:\n  anchor_min_words: 20\n  prompt_example: false\n  snap_to_source: false\n"
        "training:\n  objective: tag\n  tag_attention: causal\n",
        encoding="utf-8",
    )
    config = load_config(old, sets=["data.anchor_words=4"])
    assert (config.generate.anchor_min_words, config.generate.anchor_words) == (20, 4)
    assert config.generate.prompt_example is False and config.generate.snap_to_source is False
    assert config.tag.attention == "causal"
    notes = capsys.readouterr().err.strip().splitlines()
    assert f"note: {old}: data.anchor_min_words is now generate.anchor_min_words; read as that" in notes
    assert f"note: {old}: training.tag_attention is now tag.attention; read as that" in notes
    assert len(notes) == 5
    new = load_config(sets=["generate.anchor_min_words=20", "tag.attention=causal"])
    assert new.generate.anchor_min_words == 20 and new.tag.attention == "causal"
    assert capsys.readouterr().err == ""
