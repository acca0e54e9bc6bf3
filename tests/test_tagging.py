"""The tag objective: labels from aligned spans, BIO decoding, a tiny tagger that learns, save / load / extract."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from metatune.alignment import Span
from metatune.config import ExtractionSettings
from metatune.objectives.tag.labels import (
    TagCollator,
    TagScheme,
    allowed_transitions,
    bio_labels,
    decode,
    encode_tagged,
    tag_loss_for,
    to_record,
    viterbi,
)
from metatune.precision import inference_bf16 as REAL_INFERENCE_BF16  # imported before conftest patches it

from conftest import SAMPLE

SCHEME = TagScheme(("title", "creator", "keywords", "date"), ("Articulo", "Tesis"))
O, B_TITLE, I_TITLE, B_CREATOR, I_CREATOR, B_KW, I_KW, B_DATE, I_DATE = range(9)  # noqa: E741 (O: the BIO label for outside)


def test_labels_list_outside_then_bio_per_field_then_types():
    assert SCHEME.labels == [
        "O",
        "B-title",
        "I-title",
        "B-creator",
        "I-creator",
        "B-keywords",
        "I-keywords",
        "B-date",
        "I-date",
        "TYPE=Articulo",
        "TYPE=Tesis",
    ]
    assert TagScheme.from_dict(SCHEME.to_dict()) == SCHEME


def test_bio_labels_begin_each_item_and_leave_the_rest_outside():
    offsets = [(0, 4), (5, 9), (10, 13), (14, 18), (19, 23)]
    spans = [(Span(0, 9), "title", None), (Span(10, 13), "creator", None), (Span(14, 18), "creator", None)]
    assert bio_labels(offsets, spans, SCHEME) == [B_TITLE, I_TITLE, B_CREATOR, B_CREATOR, O]


def test_encoded_record_puts_the_type_first_and_counts_unaligned_values(tiny_tokenizer):
    text = "A study of things\nAna Ruiz, Juan Pérez\nKeywords: things; stuff"
    record = {
        "title": "A study of things",
        "creator": ["Ana Ruiz", "Juan Pérez", "Nobody Here"],
        "keywords": ["things", "stuff"],
    }
    features, counts = encode_tagged(
        record, text, "Tesis", ["title", "creator", "keywords"], SCHEME, tiny_tokenizer, 256
    )
    assert features["labels"][0] == SCHEME.labels.index("TYPE=Tesis")
    assert len(features["labels"]) == len(features["input_ids"])
    assert counts == {"title": [1, 1], "creator": [3, 2], "keywords": [2, 2]}
    labels = features["labels"][1:]
    assert labels.count(B_CREATOR) == 2 and labels.count(B_KW) == 2 and labels.count(B_TITLE) == 1
    # "things" in the title is the title's: the keyword is labelled in the keywords line
    assert labels.index(B_KW) > max(i for i, label in enumerate(labels) if label == B_CREATOR)


def test_viterbi_never_puts_an_inside_label_without_its_begin():
    allowed = allowed_transitions(SCHEME)
    scores = torch.full((4, 9), -10.0)
    scores[0, O] = 0
    scores[1, I_TITLE] = 0  # alone, argmax would start a title with I-
    scores[1, B_TITLE] = -1
    scores[2, I_CREATOR] = 0  # I-creator after a title: not allowed
    scores[2, I_TITLE] = -2
    scores[3, O] = 0
    assert viterbi(scores, allowed) == [O, B_TITLE, I_TITLE, O]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_viterbi_finds_the_best_scoring_sequence_that_the_transitions_allow(seed):
    """Against every sequence enumerated: 5 tokens, 4 labels, transition scores with forbidden pairs
    (-inf), and as a boolean matrix of allowed pairs; the sequence starts as if after label 0 (O)."""
    import itertools

    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(5, 4, generator=generator, dtype=torch.float32)  # decode passes float32 log-probabilities
    transitions = torch.randn(4, 4, generator=generator, dtype=torch.float32)
    transitions[torch.rand(4, 4, generator=generator) < 0.3] = float("-inf")
    transitions[:, 0] = 0.0  # O may always follow: some sequence is allowed
    for matrix in (transitions, transitions > float("-inf")):
        pairs = torch.where(matrix, 0.0, float("-inf")) if matrix.dtype == torch.bool else matrix

        def total(path, pairs=pairs):
            return sum(float(scores[t, j]) + float(pairs[path[t - 1] if t else 0, j]) for t, j in enumerate(path))

        best = max(itertools.product(range(4), repeat=5), key=total)
        assert viterbi(scores, matrix) == list(best)


def test_decode_reads_spans_as_values_of_the_text():
    text = "Deep  learning\nfor all Ana Ruiz Juan Paz 5 Sep 2012"
    offsets = [
        (0, 4),
        (6, 14),
        (15, 18),
        (19, 22),
        (23, 26),
        (27, 31),
        (32, 36),
        (37, 40),
        (41, 42),
        (43, 46),
        (47, 51),
    ]
    path = [B_TITLE, I_TITLE, I_TITLE, I_TITLE, B_CREATOR, I_CREATOR, B_CREATOR, I_CREATOR, B_DATE, I_DATE, I_DATE]
    logits = torch.full((1 + len(offsets), len(SCHEME.labels)), -5.0)
    logits[0, SCHEME.labels.index("TYPE=Tesis")] = 5
    for i, label in enumerate(path):
        logits[1 + i, label] = 5
    doc_type, values = decode(logits, offsets, text, SCHEME, allowed_transitions(SCHEME))
    assert doc_type == "Tesis"
    assert values == {"title": ["Deep learning for all"], "creator": ["Ana Ruiz", "Juan Paz"], "date": ["2012/09/05"]}
    assert to_record(values, {"title": "string", "creator": "array", "date": "string", "keywords": "array"}) == {
        "title": "Deep learning for all",
        "creator": ["Ana Ruiz", "Juan Paz"],
        "date": "2012/09/05",
    }


def test_decoded_values_take_whole_words_the_longest_text_span_and_lists_as_trained():
    text = "BrowseVCF: a tool\nAlan Borning, Alan Borning and Alan"
    offsets = [(0, 6), (6, 9), (9, 10), (11, 12), (13, 17), (18, 22), (23, 30), (32, 36), (37, 44), (49, 53)]
    path = [O, B_TITLE, I_TITLE, I_TITLE, I_TITLE, B_CREATOR, I_CREATOR, B_CREATOR, I_CREATOR, B_CREATOR]
    logits = torch.full((1 + len(offsets), len(SCHEME.labels)), -5.0)
    for i, label in enumerate(path):
        logits[1 + i, label] = 5
    _, values = decode(logits, offsets, text, SCHEME, allowed_transitions(SCHEME))
    assert values["title"] == ["BrowseVCF: a tool"]  # the span began inside a word: it takes the word
    assert values["creator"] == ["Alan Borning"]  # listed once; "Alan", the start of a name, is dropped
    repeating = TagScheme(SCHEME.fields, SCHEME.types, lists=("creator",), repeats=True)
    _, values = decode(logits, offsets, text, repeating, allowed_transitions(repeating))
    assert values["creator"] == ["Alan Borning", "Alan Borning"]  # the training lists repeat names
    assert to_record({"title": ["C", "Crooked Functions"]}, {"title": "string"}) == {"title": "Crooked Functions"}
    assert to_record({"originPlaceInfo": ["A", "B"]}, {"originPlaceInfo": "string"}, lists=("originPlaceInfo",)) == {
        "originPlaceInfo": ["A", "B"]
    }


def test_a_one_value_field_broken_across_lines_is_one_span():
    text = "Modeling Architecture:\nA hybrid approach\nAna Ruiz\nJuan Paz"
    offsets = [(0, 8), (9, 22), (23, 24), (25, 31), (32, 40), (41, 44), (45, 49), (50, 54), (55, 58)]
    path = [B_TITLE, I_TITLE, B_TITLE, I_TITLE, I_TITLE, B_CREATOR, I_CREATOR, B_CREATOR, I_CREATOR]
    logits = torch.full((1 + len(offsets), len(SCHEME.labels)), -5.0)
    for i, label in enumerate(path):
        logits[1 + i, label] = 5
    one_span = TagScheme(SCHEME.fields, SCHEME.types, lists=("creator",), one_span=True)
    assert TagScheme.from_dict(one_span.to_dict()) == one_span
    _, values = decode(logits, offsets, text, one_span, allowed_transitions(one_span))
    # the title's second line begins with B-: it continues the title; a list's items stay apart
    assert values == {"title": ["Modeling Architecture: A hybrid approach"], "creator": ["Ana Ruiz", "Juan Paz"]}
    # runs saved before keep two spans (and the record takes the longer)
    old = TagScheme(SCHEME.fields, SCHEME.types, lists=("creator",))
    assert TagScheme.from_dict({k: v for k, v in old.to_dict().items() if k != "one_span"}) == old
    _, values = decode(logits, offsets, text, old, allowed_transitions(old))
    assert values["title"] == ["Modeling Architecture:", "A hybrid approach"]
    # something other than whitespace between: two spans
    text = "Modeling Architecture:\n§ hybrid approach\nAna Ruiz\nJuan Paz"
    logits[1 + 2] = -5.0
    logits[1 + 2, O] = 5
    logits[1 + 3, I_TITLE], logits[1 + 3, B_TITLE] = -5.0, 5.0
    _, values = decode(logits, offsets, text, one_span, allowed_transitions(one_span))
    assert values["title"] == ["Modeling Architecture:", "hybrid approach"]


def test_collator_pads_and_masks_only_padding():
    collate = TagCollator(pad_token_id=0)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [9, 1, 2]}, {"input_ids": [5, 6], "labels": [9, 0]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 6, 0]]
    assert batch["labels"].tolist() == [[9, 1, 2], [9, 0, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert set(collate([{"input_ids": [5, 6, 7]}])) == {"input_ids"}  # nothing padded: no mask at all


def test_reading_both_ways_without_a_mask_is_the_all_visible_4d_mask(tiny_llama):
    """The mask-free bidirectional attention (models.read_both_ways) gives the logits, loss and gradients
    of the 4-D all-visible mask it replaced, alone and in a padded batch (float32)."""
    from transformers import AutoModelForTokenClassification

    from metatune.models import read_both_ways

    torch.manual_seed(0)
    docs = [[1, *range(10, 40)], [1, *range(50, 70)]]
    labels = [[3, *([1, 2, 0] * 10)], [3, *([0, 1, 2, 2] * 5)]]
    reference = AutoModelForTokenClassification.from_pretrained(tiny_llama, num_labels=4, dtype=torch.float32)
    model = AutoModelForTokenClassification.from_pretrained(tiny_llama, num_labels=4, dtype=torch.float32)
    model.load_state_dict(reference.state_dict())
    read_both_ways(model)

    def four_d(lengths, width):  # the mask the collator used to build: every token sees every real token
        keys = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
        return keys[:, None, None, :].expand(len(lengths), 1, width, width)

    def loss_and_grads(m, batch):
        m.zero_grad()
        logits = m(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss = tag_loss_for(TagScheme(("title",), ("article",)), 32.0)({"logits": logits}, batch["labels"])
        loss.backward()
        return logits.detach(), loss.detach(), [p.grad.clone() for p in m.parameters()]

    for rows in ([0], [0, 1]):  # one document (no mask at all), a padded batch (padding mask only)
        batch = TagCollator(0)([{"input_ids": docs[r], "labels": labels[r]} for r in rows])
        lengths = [len(docs[r]) for r in rows]
        old = dict(batch, attention_mask=four_d(lengths, max(lengths)))
        (lo, so, go), (ln, sn, gn) = loss_and_grads(reference, old), loss_and_grads(model, batch)
        real = batch["labels"] != -100
        assert torch.allclose(lo[real], ln[real], atol=1e-5) and torch.allclose(so, sn, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(go, gn))
    causal = AutoModelForTokenClassification.from_pretrained(tiny_llama, num_labels=4, dtype=torch.float32)
    causal.load_state_dict(reference.state_dict())
    alone = TagCollator(0)([{"input_ids": docs[0]}])
    assert not torch.allclose(causal(**alone).logits, model(**alone).logits, atol=1e-3)  # it does read both ways


def test_the_first_layers_read_forward_alone_and_in_a_padded_batch(tiny_llama):
    """models.read_first_layers_forward over every layer of a model read both ways gives the causal
    model back, alone (no mask: SDPA's causal kernel) and in a padded batch; over the first layer only,
    a document's logits are the same alone and padded, and those of neither way of reading (float32).
    Attention other than SDPA is refused."""
    from transformers import AutoModelForTokenClassification

    from metatune.errors import MetatuneError
    from metatune.models import read_both_ways, read_first_layers_forward

    torch.manual_seed(0)
    docs = [[1, *range(10, 40)], [1, *range(50, 70)]]

    def model(forward_layers=None):
        m = AutoModelForTokenClassification.from_pretrained(tiny_llama, num_labels=4, dtype=torch.float32).eval()
        if forward_layers is not None:
            read_both_ways(m)
            read_first_layers_forward(m, forward_layers)
        return m

    causal, both_ways, all_forward, first_forward = model(), model(0), model(2), model(1)
    for m in (both_ways, all_forward, first_forward):
        m.load_state_dict(causal.state_dict())
    alone, padded = TagCollator(0)([{"input_ids": docs[1]}]), TagCollator(0)([{"input_ids": d} for d in docs])
    real = padded["attention_mask"].bool()
    with torch.no_grad():
        assert torch.allclose(all_forward(**alone).logits, causal(**alone).logits, atol=1e-5)
        assert torch.allclose(all_forward(**padded).logits[real], causal(**padded).logits[real], atol=1e-5)
        mixed = first_forward(**alone).logits
        assert torch.allclose(first_forward(**padded).logits[1, : len(docs[1])], mixed[0], atol=1e-5)
        assert not torch.allclose(mixed, causal(**alone).logits, atol=1e-3)
        assert not torch.allclose(mixed, both_ways(**alone).logits, atol=1e-3)
    eager = AutoModelForTokenClassification.from_pretrained(tiny_llama, num_labels=4, attn_implementation="eager")
    read_both_ways(eager)
    with pytest.raises(MetatuneError, match="reading the first 1 layers forward needs SDPA attention, not eager"):
        read_first_layers_forward(eager, 1)


WORDS = (
    "estudio síntesis formación docente escuelas simulación térmica puentes hormigón noticia organizaciones "
    "financiamiento empresas economía informalidad laboral municipios química suelos agua"
).split()
NAMES = "Ana Ruiz|Juan Pérez|María Gómez|Pedro Díaz|Laura Sosa|Carlos Vega|Sofía Paz|Diego Ríos".split("|")


def synthetic_records(n: int, seed: int) -> list[dict]:
    """Short documents whose title and authors follow markers: a task a tiny model learns in a few steps."""
    import random

    rng = random.Random(seed)
    records = []
    for i in range(n):
        title = " ".join(rng.sample(WORDS, rng.randint(3, 5))).capitalize()
        creators = rng.sample(NAMES, rng.randint(1, 2))
        text = (
            f"Universidad Nacional de La Plata\nTítulo: {title}\nAutores: {'; '.join(creators)}\n"
            f"Resumen: {' '.join(rng.sample(WORDS, 6))}."
        )
        records.append(
            {
                "id": f"s{i}",
                "type": "Articulo",
                "original_text": text,
                "title": title,
                "creator": creators,
                "language": "es",
            }
        )
    return records


def tag_config(model, data, output, *extra):
    from metatune.config import load_config

    return load_config(
        sets=[
            f"model.name={model}",
            f"data.path={data}",
            f"training.output_dir={output}",
            "training.objective=tag",
            "data.include_fields=[title, creator, language]",
            "data.max_input_tokens=128",
            "training.max_steps=120",
            "training.learning_rate=2e-3",
            "training.per_device_train_batch_size=8",
            "training.warmup_ratio=0",
            "training.logging_steps=5",
            "training.eval_each_epoch=false",
            "training.bf16=false",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "data.json"
    path.write_text(
        json.dumps(
            {
                "training": synthetic_records(48, 0),
                "validation": synthetic_records(8, 1),
                "test": synthetic_records(8, 2),
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def tag_run(tmp_path_factory, tiny_llama, synthetic):
    from metatune.training.run import train

    return train(tag_config(tiny_llama, synthetic, tmp_path_factory.mktemp("tag") / "run"))


def test_a_tiny_tagger_learns_and_its_run_says_how_it_was_trained(tag_run):
    losses = [
        json.loads(line)["loss"]
        for line in (tag_run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert losses[-1] < 0.3 * losses[0], losses
    info = json.loads((tag_run / "metatune.json").read_text(encoding="utf-8"))
    assert info["objective"] == "tag"
    assert info["training"]["precision"] == "no"  # trained in float32 (training.bf16=false), and says so
    assert info["tagging"]["scheme"] == {
        "fields": ["title", "creator"],
        "types": ["Articulo"],
        "lists": ["creator"],
        "repeats": False,
        "surnames": [],  # the names are written as the page writes them
        "classes": {},
        "date_form": ["/", ""],
        "date_hosts": [],
        "one_span": True,  # a new run's titles and abstracts are one span each
        "names": [],  # no catalogued names to write initials out from
        "mapped": {},
        "whole_lines": {},  # these titles follow a `Título:` marker on their line
        "sentences": [],  # titles and names do not end sentences
        "bridges": True,  # a new run joins a prose field's pieces across a short unlabelled gap
        "mixed_lists": [],  # one list field: nothing to share a line with
        "trailing_notices": True,  # a new run's abstracts lose a notice after their last sentence
    }
    assert info["tagging"]["alignment"]["title"] == {"values": 48, "aligned": 48}
    assert info["tagging"]["produced"]["title"] == {"how": "span", "values": 48, "in_text": 48}
    assert "language" in info["tagging"]["not_tagged"]


def test_tag_run_extracts_the_right_spans_after_reload(tag_run):
    from metatune.objectives import open_run
    from metatune.objectives.tag.extractor import Tagger

    tagger = open_run(tag_run)
    assert isinstance(tagger, Tagger)
    records = synthetic_records(8, 2)  # documents it never saw
    texts = [r["original_text"] for r in records]
    together = tagger.extract(texts, batch_size=4)
    alone = [tagger.extract([t], batch_size=1)[0] for t in texts]
    assert [r.data for r in together] == [r.data for r in alone]  # padding does not change a document's labels
    right = 0
    for result, record in zip(together, records):
        assert result.doc_type == "Articulo" and json.loads(result.raw) == result.data
        assert result.data["language"] == "es"
        right += result.data.get("title") == record["title"] and result.data.get("creator") == record["creator"]
    assert right >= 6, [r.data for r in together]


def test_in_bf16_a_documents_labels_do_not_depend_on_its_batch(tag_run):
    from metatune.objectives import open_run

    tagger = open_run(tag_run, ExtractionSettings(dtype="bfloat16"))  # forced, whatever this CPU would pick
    assert next(tagger.model.parameters()).dtype == torch.bfloat16
    texts = [r["original_text"] for r in synthetic_records(8, 2)]
    together = tagger.extract(texts, batch_size=8)
    assert [r.data for r in together] == [tagger.extract([t], batch_size=1)[0].data for t in texts]
    assert tagger.statistics(together)["batch_size"] == 1  # on a CPU every document is its own batch


@pytest.mark.parametrize("speedup", [0.01, 7.0])  # an AVX2-only CPU, an AMX one
def test_dtype_auto_reads_a_tag_run_in_bf16_only_where_the_probe_finds_bf16_fast(tag_run, monkeypatch, speedup):
    from metatune import precision
    from metatune.objectives import open_run

    monkeypatch.setattr(precision, "inference_bf16", REAL_INFERENCE_BF16)  # undo conftest's float32_reading
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    tagger = open_run(tag_run)  # dtype auto
    assert next(tagger.model.parameters()).dtype == (torch.bfloat16 if speedup > 1 else torch.float32)
    forced = open_run(tag_run, ExtractionSettings(dtype="float32"))
    assert next(forced.model.parameters()).dtype == torch.float32  # asked for: kept on any CPU


def test_a_run_saved_with_windows_reads_a_long_document_in_bounded_windows(tag_run):
    from metatune.objectives import open_run

    tagger = open_run(tag_run)
    texts = [r["original_text"] for r in synthetic_records(4, 2)]
    plain = [r.data for r in tagger.extract(texts)]
    tagger.windows = 3  # as a run trained with tag.windows=3 loads
    assert [r.data for r in tagger.extract(texts)] == plain  # what fits one window reads as before
    seen = []
    forward = tagger.model.forward
    tagger.model.forward = lambda **batch: seen.append(batch["input_ids"].shape) or forward(**batch)
    long = texts[0] + "\n" + " ".join(texts[1:] * 4)
    tagger.extract([long], batch_size=1)
    assert len(seen) == 3 and all(shape[1] <= 128 for shape in seen)  # three windows, none over the limit
    tagger.extract([long * 50], batch_size=8)
    assert len(seen) == 6  # a huge text costs no more than the windows the run reads
    assert all(shape == (1, 128) for shape in seen[3:])  # on a CPU each window is its own batch


def test_tag_objective_refuses_lora(tmp_path, tiny_llama):
    from metatune.errors import MetatuneError
    from metatune.training.run import train

    with pytest.raises(MetatuneError, match="training.objective=tag trains the full model"):
        train(tag_config(tiny_llama, SAMPLE, tmp_path / "a", "model.lora.enabled=true"))
    assert not list(tmp_path.iterdir())


def test_a_tagger_kept_to_its_first_layers_learns_saves_that_depth_and_extracts_after_reload(
    tmp_path, tiny_llama, synthetic
):
    from safetensors import safe_open

    from metatune.objectives import open_run
    from metatune.training.run import train

    run = train(tag_config(tiny_llama, synthetic, tmp_path / "run", "tag.layers=1"))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < 0.3 * losses[0], losses
    assert json.loads((run / "config.json").read_text())["num_hidden_layers"] == 1
    with safe_open(run / "model.safetensors", "pt") as weights:
        layers = {k.split("layers.")[1].split(".")[0] for k in weights.keys() if "layers." in k}
    assert layers == {"0"}  # the second layer is gone from the saved weights, not only from the config
    assert "| `tag.layers` | 1 (the first layers of the base model's) |" in (run / "README.md").read_text()
    tagger = open_run(run, ExtractionSettings(dtype="float32"))  # pinned: `auto` would pick bf16 on some CPUs
    assert len(tagger.model.base_model.layers) == 1
    records = synthetic_records(8, 2)
    results = tagger.extract([r["original_text"] for r in records])
    assert sum(r.data.get("title") == rec["title"] for r, rec in zip(results, records)) >= 6


def test_a_tagger_with_frozen_first_layers_trains_only_the_layers_above_them(tmp_path, tiny_llama, synthetic):
    from safetensors.torch import load_file

    from metatune.objectives import open_run
    from metatune.training.run import train

    run = train(tag_config(tiny_llama, synthetic, tmp_path / "run", "tag.frozen_layers=1"))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < 0.3 * losses[0], losses
    base, trained = load_file(tiny_llama / "model.safetensors"), load_file(run / "model.safetensors")
    shared = sorted(set(base) & set(trained))
    assert "model.embed_tokens.weight" in shared and any(".layers.1." in k for k in shared)
    for key in shared:
        if key == "model.embed_tokens.weight" or ".layers.0." in key:
            assert torch.equal(base[key], trained[key]), key  # frozen: exactly the pretrained weights
    assert any(not torch.equal(base[k], trained[k]) for k in shared if ".layers.1." in k)
    assert (
        json.loads((run / "metatune.json").read_text())["tagging"]["causal_layers"] == 1
    )  # read forward, as pretrained
    tagger = open_run(run, ExtractionSettings(dtype="float32"))
    layers = tagger.model.base_model.layers
    assert layers[0].self_attn.is_causal and not layers[1].self_attn.is_causal
    # bf16 (forced whatever this CPU would pick) reads the frozen layer forward too: the same spans
    texts = [r["original_text"] for r in synthetic_records(6, 3)]
    in_bf16 = open_run(run, ExtractionSettings(dtype="bfloat16"))
    assert in_bf16.model.dtype == torch.bfloat16 and in_bf16.model.base_model.layers[0].self_attn.is_causal
    spans = [r.data for r in tagger.extract(texts)]
    assert sum(bool(d.get("title")) for d in spans) >= 3, spans
    assert [r.data for r in in_bf16.extract(texts)] == spans


def test_a_tagger_keeps_its_first_layers_only_of_a_decoder_that_has_them(tmp_path, tiny_llama, tiny_t5):
    from metatune.errors import MetatuneError
    from metatune.training.run import train

    with pytest.raises(MetatuneError, match="the model has 2 layers: it cannot keep the first 3"):
        train(tag_config(tiny_llama, SAMPLE, tmp_path / "a", "tag.layers=3"))
    with pytest.raises(
        MetatuneError, match="keeping the first 1 layers needs a decoder model, not T5ForTokenClassification"
    ):
        train(tag_config(tiny_t5, SAMPLE, tmp_path / "b", "tag.layers=1"))
    with pytest.raises(MetatuneError, match="the model has 2 layers: freezing the first 2 would leave none to train"):
        train(tag_config(tiny_llama, SAMPLE, tmp_path / "c", "tag.frozen_layers=2"))
    with pytest.raises(MetatuneError, match="freezing the first 1 layers needs a decoder model"):
        train(tag_config(tiny_t5, SAMPLE, tmp_path / "d", "tag.frozen_layers=1"))
    assert not list(tmp_path.iterdir())


def test_the_custom_loop_trains_a_tagger_too(tmp_path, tiny_llama, synthetic):
    """The loop gets the tag objective's collator and losses like the Trainer does: it learns the spans."""
    from metatune.objectives import open_run
    from metatune.training.run import train

    run = train(tag_config(tiny_llama, synthetic, tmp_path / "run", "training.mode=loop", "training.max_steps=60"))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < 0.3 * losses[0], losses
    records = synthetic_records(8, 2)
    results = open_run(run).extract([r["original_text"] for r in records])
    assert sum(r.data.get("title") == rec["title"] for r, rec in zip(results, records)) >= 6


def test_cli_extract_and_evaluate_work_unchanged_on_a_tag_run(tag_run, synthetic, tmp_path):
    from test_cli import run_cli

    record = synthetic_records(1, 5)[0]
    doc = tmp_path / "doc.txt"
    doc.write_text(record["original_text"], encoding="utf-8")
    result = run_cli("extract", tag_run, doc, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["type"] == "Articulo" and out["metadata"]["title"] == record["title"]

    result = run_cli(
        "evaluate", tag_run, "--data", synthetic, "--split", "test", "--report", tmp_path / "eval", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["documents"] == 8 and metrics["parse_failures"] == 0
    assert metrics["fields"]["title"]["soft"]["f1"] >= 0.75

    result = run_cli("evaluate", tag_run, "--data", synthetic, "--baseline", "zero-shot", cwd=tmp_path)
    assert result.returncode == 2 and "a tag run has no zero-shot baseline" in result.stderr

    # GROBID's way of averaging, on the same documents with their line breaks gone
    result = run_cli(
        "evaluate", tag_run, "--data", synthetic, "--split", "test", "--report", tmp_path / "flat",
        "--micro-fields", "title,creator,first_author", "--collapse-whitespace", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    flat = json.loads(result.stdout)
    assert flat["run"]["collapsed_whitespace"] is True and flat["micro_chosen"]["fields"] == [
        "title",
        "creator",
        "first_author",
    ]
    assert "| **micro (title, creator, first_author)** |" in (tmp_path / "flat" / "metrics.md").read_text()
    result = run_cli(
        "evaluate", tag_run, "--data", synthetic, "--split", "test", "--report", tmp_path / "noisy", "--pdf-noise",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    noisy = json.loads(result.stdout)
    assert noisy["run"]["pdf_noise"] is True and noisy["run"]["collapsed_whitespace"] is True
    result = run_cli("evaluate", tag_run, "--data", synthetic, "--micro-fields", "isbn", cwd=tmp_path)
    assert result.returncode == 2 and "--micro-fields: 'isbn' is not a field this run writes" in result.stderr


SCHEME_TC = TagScheme(("title", "creator"), ("Articulo",), ("creator",))


def test_collapsed_copies_are_seeded_and_their_values_still_align(tiny_tokenizer):
    from metatune.objectives.tag.objective import collapsed_copies

    records = synthetic_records(40, 7)
    copies = collapsed_copies(records, 0.5, seed=3)
    assert copies == collapsed_copies(records, 0.5, seed=3) and 10 < len(copies) < 30
    assert collapsed_copies(records, 0.0, seed=3) == [] and len(collapsed_copies(records, 1.0, seed=3)) == 40
    for copy in copies:
        assert "\n" not in copy["original_text"] and "  " not in copy["original_text"]
        _, counts = encode_tagged(
            copy, copy["original_text"], "Articulo", ["title", "creator"], SCHEME_TC, tiny_tokenizer, 256
        )
        assert all(aligned == total for total, aligned in counts.values()), counts


def test_pdf_noise_adds_a_margin_text_and_glues_line_ends_but_keeps_values_whole():
    import random

    from metatune.noise import pdf_noise

    text = "\n".join(f"line{i} word{i}" for i in range(200))
    value = "line50 word50\nline51 word51"
    start = text.index(value)
    noisy = pdf_noise(text, random.Random(4), [(start, start + len(value))])
    assert noisy == pdf_noise(text, random.Random(4), [(start, start + len(value))]) and "\n" not in noisy
    assert " line50 word50 line51 word51 " in noisy  # inside and at its edges: not glued, nothing put in
    glued = sum(f"word{i}line{i + 1}" in noisy for i in range(199))
    assert 10 < glued < 50, glued  # about 15% of the 199 line ends
    original = [bool(re.fullmatch(r"(line\d+|word\d+)+", w)) for w in noisy.split()]
    margins = sum(1 for i, kept in enumerate(original) if not kept and (i == 0 or original[i - 1]))
    assert margins in (1, 2), noisy  # one or two margin texts, each a run of words not of the page


def test_noisy_copies_are_the_same_records_and_their_values_still_align(tiny_tokenizer):
    from metatune.objectives.tag.objective import collapsed_copies

    records = synthetic_records(40, 7)
    plain, noisy = collapsed_copies(records, 0.5, seed=3), collapsed_copies(records, 0.5, seed=3, noisy=1.0)
    assert [c["id"] for c in noisy] == [c["id"] for c in plain] and noisy == collapsed_copies(records, 0.5, 3, 1.0)
    assert all(n["original_text"] != p["original_text"] for n, p in zip(noisy, plain))
    for copy in noisy:
        assert "\n" not in copy["original_text"]
        _, counts = encode_tagged(
            copy, copy["original_text"], "Articulo", ["title", "creator"], SCHEME_TC, tiny_tokenizer, 256
        )
        assert all(aligned == total for total, aligned in counts.values()), counts


def test_a_copys_line_starts_are_where_its_originals_lines_began(tiny_tokenizer):
    import random

    from metatune.noise import pdf_noise
    from metatune.objectives.tag.labels import token_offsets
    from metatune.objectives.tag.lines import line_starts, line_targets

    original = "Journal of Tests 12\nA title  in two\n\nlines\nAna Ruiz"
    collapsed = "Journal of Tests 12 A title in two lines Ana Ruiz"
    starts = line_starts(original, collapsed)
    assert [collapsed[s:].split()[0] for s in starts] == ["Journal", "A", "lines", "Ana"]
    ids, offsets = token_offsets(tiny_tokenizer, collapsed, 100)
    targets = line_targets(offsets, starts)
    assert [offsets[i][0] for i, t in enumerate(targets) if t] == starts
    # margin texts between lines and a line end glued to the next line's first word
    text = "\n".join(f"line{i} word{i}" for i in range(60))
    noisy = pdf_noise(text, random.Random(4))
    starts = line_starts(text, noisy)
    assert [noisy[s:].split()[0][: len(f"line{i}")] for i, s in enumerate(starts)] == [f"line{i}" for i in range(60)]
    assert any(noisy[s - 1].isalnum() for s in starts[1:])  # a glued line end: the line starts inside a word
    ids, offsets = token_offsets(tiny_tokenizer, noisy, 2000)
    assert sum(line_targets(offsets, starts)) == 60  # each line start falls in exactly one token


def test_line_targets_travel_packed_in_the_labels_and_leave_the_field_loss_as_it_was(tiny_tokenizer):
    """The collator folds each position's line target into its label; the loss unpacks them: with the
    line head's weight at 0, the loss of packed labels is the loss of the plain labels."""
    from metatune.objectives.tag.lines import LineHead, split_labels

    collate = TagCollator(0, len(SCHEME.labels))
    features = [
        {"input_ids": [5, 6, 7, 8], "labels": [9, 1, 2, 0], "lines": [-1, 1, 0, 1]},
        {"input_ids": [5, 6], "labels": [10, 0]},  # a document as it is: no line targets
    ]
    batch = collate(features)
    labels, targets = split_labels(batch["labels"], len(SCHEME.labels))
    assert labels.tolist() == [[9, 1, 2, 0], [10, 0, -100, -100]]
    assert targets.tolist() == [[-1, 1, 0, 1], [-1, -1, -1, -1]]
    plain = TagCollator(0)(features)["labels"]
    assert plain.tolist() == labels.tolist()
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 8)
    logits = torch.randn(2, 4, len(SCHEME.labels))
    head = torch.nn.Linear(8, 1)
    lines = LineHead(0.0, len(SCHEME.labels))
    lines.module, lines._hidden = head, hidden
    loss = tag_loss_for(SCHEME, 1.0, None, lines)({"logits": logits}, batch["labels"])
    assert torch.equal(loss, tag_loss_for(SCHEME, 1.0)({"logits": logits}, plain))
    lines = LineHead(1.0, len(SCHEME.labels))
    lines.module, lines._hidden = head, hidden
    with_lines = tag_loss_for(SCHEME, 1.0, None, lines)({"logits": logits}, batch["labels"])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        head(hidden[0, [1, 2, 3]]).squeeze(-1), torch.tensor([1.0, 0.0, 1.0]), reduction="sum"
    )
    assert torch.allclose(with_lines - loss, expected / 6)  # divided by the batch's 6 labelled tokens


# float32 in both training paths, and bf16 autocast forced (what `auto` picks on CPUs with bf16 units)
@pytest.mark.parametrize("mode, bf16", [("trainer", False), ("loop", False), ("trainer", True)])
def test_a_tagger_learning_line_starts_lowers_that_loss_and_saves_a_plain_run(
    tmp_path, tiny_llama, synthetic, mode, bf16
):
    from safetensors import safe_open

    from metatune.objectives import open_run
    from metatune.training.run import train

    sets = ("tag.augment_collapsed=1.0", "tag.line_starts=1.0", "training.max_steps=60", f"training.mode={mode}")
    run = train(tag_config(tiny_llama, synthetic, tmp_path / "run", *sets, f"training.bf16={str(bf16).lower()}"))
    info = json.loads((run / "metatune.json").read_text())
    assert info["training"]["precision"] == ("bf16" if bf16 else "no")
    lines = info["training"]["line_starts"]
    assert lines["weight"] == 1.0 and lines["forward_passes"] > 0
    assert lines["loss_last_tenth"] < 0.5 * lines["loss_first_tenth"], lines
    with safe_open(run / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "line_head" in k]  # the head of training only is not saved
    assert "| `tag.line_starts` | 1.0 (in the copies without line breaks" in (run / "README.md").read_text()
    loaded = AutoModelForTokenClassification.from_pretrained(run)
    assert not hasattr(loaded, "line_head")
    records = synthetic_records(8, 2)
    results = open_run(run).extract([" ".join(r["original_text"].split()) for r in records])
    assert sum(r.data.get("title") == rec["title"] for r, rec in zip(results, records)) >= 6


def test_line_starts_need_copies_without_line_breaks(tmp_path, tiny_llama, synthetic):
    from metatune.errors import MetatuneError

    with pytest.raises(MetatuneError, match="tag.line_starts learns where lines started .* set tag.augment_collapsed$"):
        tag_config(tiny_llama, synthetic, tmp_path / "run", "tag.line_starts=1.0")


def test_service_answers_from_a_tag_run(tag_run):
    import httpx

    from metatune.objectives import open_run
    from metatune.service import create_app

    from conftest import serving

    record = synthetic_records(1, 6)[0]
    with serving(create_app(open_run(tag_run), token=None, max_bytes=4096, batch_size=4, batch_wait_ms=50)) as url:
        r = httpx.post(f"{url}/extract", json={"text": record["original_text"]}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["title"] == record["title"]


def test_data_validate_reports_what_the_tagger_can_label(tmp_path):
    from test_cli import run_cli

    result = run_cli("data", "validate", SAMPLE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("found in the text"))
    assert "title 32/32 (100%)" in line and "creator 69/70 (99%)" in line  # "Pérez, Juan" is found as "Juan Pérez"


def test_bench_times_a_tag_run_and_finds_batched_equal_to_one_at_a_time(tag_run):
    from metatune.bench import probe_extract

    records = synthetic_records(4, 7)
    result = probe_extract(
        {
            "run": str(tag_run),
            "texts": [r["original_text"] for r in records],
            "types": [None] * 4,
            "batch_size": 2,
            "max_new_tokens": 4,
        }
    )
    assert result["objective"] == "tag" and result["documents"] == 4
    assert result["identical_raw_outputs"] == 4 and result["parsed_outputs"] == 4
    assert result["batched_docs_per_second"] > 0 and result["plain_docs_per_second"] > 0


def test_forced_bf16_tag_training_and_extraction_run_on_any_cpu(tmp_path, tiny_llama, synthetic, monkeypatch):
    """bf16 autocast for the tag objective and a bf16 Tagger: what `auto` picks on CPUs with bf16 units."""
    from metatune import attention
    from metatune.objectives import open_run
    from metatune.training.run import train

    run = train(tag_config(tiny_llama, synthetic, tmp_path / "run", "training.bf16=true", "training.max_steps=12"))
    losses = [
        json.loads(line)["loss"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert losses[-1] < losses[0], losses
    trained = json.loads((run / "metatune.json").read_text())["training"]
    assert trained["precision"] == "bf16"  # as trained
    assert trained["attention"] == "sdpa"  # matmul attention trained no faster over a whole run (performance.md)
    assert "metatune_matmul" not in (run / "config.json").read_text()  # other runtimes load the run
    text = synthetic_records(1, 9)[0]["original_text"]
    for matmul_faster in (True, False):  # both kernels, whichever this CPU's probe picks (metatune/attention.py)
        monkeypatch.setattr(attention, "matmul_faster_on_cpu", lambda *shape, answer=matmul_faster: answer)
        tagger = open_run(run, ExtractionSettings(dtype="bfloat16"))
        assert tagger.model.dtype == torch.bfloat16
        expected = "metatune_matmul" if matmul_faster else "sdpa"
        assert tagger.model.config._attn_implementation == expected
        result = tagger.extract([text])[0]
        assert result.data is not None and result.data["language"] == "es"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bf16 forced: it runs, slowly, on AVX2-only CPUs too
def test_the_tag_extraction_benchmark_times_each_document_against_its_forward_pass_limit(
    tag_run, synthetic, tmp_path, dtype
):
    import subprocess
    import sys

    from conftest import REPO

    script = [sys.executable, str(REPO / "benchmarks" / "tag_extraction.py"), str(tag_run), "--data", str(synthetic)]
    out = tmp_path / "figures.json"
    # bf16: SDPA and matmul attention; float32: glibc's allocator as it is and keeping freed memory
    option, ways = (
        ("--attention", ("sdpa", "metatune_matmul"))
        if dtype == "bfloat16"
        else ("--allocator", ("glibc_defaults", "kept"))
    )
    done = subprocess.run(
        [*script, "--docs", "3", "--dtype", dtype, option, "--output", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["documents"] == 3 and figures["dtype"] == dtype and "compiled" not in figures
    for way in ways:  # each way read twice, alternating
        assert len(figures[way]["seconds"]) == 2 and all(x > 0 for x in figures[way]["forward_seconds"])
        assert all(0 <= n <= 3 for n in figures[way]["identical_records"])
        assert all(x >= 0 for x in figures[way]["faults_per_document"])
    if dtype == "bfloat16":
        assert figures[figures["attention"]]["identical_records"][0] == 3  # the probe's pick reads as before
    else:
        assert figures["kept"]["identical_records"] == [3, 3]  # the allocator changes no arithmetic
    assert figures["peak_gflops"] > 0 and figures["limit_mean_s"] > 0
    eager = figures["eager"]
    assert 0 < eager["median_s"] and eager["to_limit"] == pytest.approx(eager["mean_s"] / figures["limit_mean_s"])
    forward = figures["forward"]  # the forward passes alone are part of extraction
    assert 0 < forward["mean_s"] and figures["extraction_to_forward"] == pytest.approx(
        eager["mean_s"] / forward["mean_s"]
    )
    if dtype == "float32":
        refused = subprocess.run([*script, "--freeze"], capture_output=True, text=True)
        assert refused.returncode == 2 and "--freeze freezes a compiled forward: add --compile" in refused.stderr
        refused = subprocess.run([*script, "--dtype", "float32", "--attention"], capture_output=True, text=True)
        assert refused.returncode == 2 and "add --dtype bfloat16" in refused.stderr


def test_a_transformers_pipeline_reads_a_bidirectional_tag_run_as_the_tagger_does(tag_run):
    """pipeline("token-classification") on one unpadded document: the labels of the Tagger's logits."""
    from transformers import pipeline

    from metatune.objectives import open_run
    from metatune.objectives.tag.labels import first_token_id, token_offsets

    tagger = open_run(tag_run, ExtractionSettings(dtype="float32"))
    config = json.loads((tag_run / "config.json").read_text(encoding="utf-8"))
    assert config["is_causal"] is False and config["id2label"]["1"] == "B-title"
    assert "pipeline_tag: token-classification" in (tag_run / "README.md").read_text()
    tag = pipeline("token-classification", model=str(tag_run), aggregation_strategy="none", device="cpu")
    for record in synthetic_records(3, 11):
        text = record["original_text"]
        ids, _ = token_offsets(tagger.tokenizer, text, tagger.max_input_tokens - 1)
        batch = tagger.collate([{"input_ids": [first_token_id(tagger.tokenizer), *ids]}])
        with torch.no_grad():
            argmax = tagger.model(**batch).logits[0].argmax(-1).tolist()
        expected = {i: tagger.model.config.id2label[label] for i, label in enumerate(argmax) if i and label}
        got = {e["index"]: e["entity"] for e in tag(text)}
        assert got == expected and any(v.endswith("-title") for v in got.values())


def test_a_span_at_a_line_end_hyphen_takes_the_whole_word():
    from metatune.objectives.tag.labels import whole_words

    text = "On the regu-\nlation of cells\nby methyl-\nation"
    assert whole_words(text, 13, 28) == (7, 28)  # began after the hyphen: the word's first half is taken
    assert whole_words(text, 32, 38) == (32, 45)  # ended before the hyphen: its second half too
    assert whole_words(text, 32, 39) == (32, 45)
    flat = "by Alberto Carrasco- Casado and Ana Di - Pace"  # the same breaks in text without line breaks
    assert whole_words(flat, 3, flat.index(" Casado")) == (3, flat.index(" and"))
    assert whole_words(flat, 3, flat.index("Carrasco") + 8) == (3, flat.index("Carrasco") + 8)  # no hyphen taken
    assert whole_words(flat, 32, flat.index(" Pace")) == (32, flat.index(" Pace"))  # a spaced dash is no break
    assert whole_words("D. Fon-Der-Flaass\n", 0, 7, name=True) == (0, 17)  # ended at a hyphen inside the word
    # a label and its value are not a broken word, whatever their case
    for label in ("Abstract-\nWe show", "Keywords-\nrobots, cells", "KeyWords-\nrobots"):
        start = label.index("\n") + 1
        assert whole_words(label, start, len(label)) == (start, len(label))
    assert whole_words("Ana Pérez1, Juan", 0, 9, name=True) == (0, 9)  # a glued footnote marker stays out
    # a page number run into the title's first word stays out; a code that begins with digits does not
    glued = "Letters 1373High-Bandwidth Address\n190A Net"
    assert whole_words(glued, glued.index("High"), glued.index(" Address")) == (glued.index("High"), 26)
    assert whole_words(glued, glued.index("A Net"), len(glued)) == (glued.index("A Net"), len(glued))
    assert whole_words("MSC 05B20, 47A15", 6, 9) == (4, 9)  # a capital inside a code is not its start
    assert whole_words("Letters 1373high", 12, 16) == (8, 16)  # nor is a lower-case letter
    # so does a stamp's last word glued to it; a capital inside a name's word is no start
    stamp = "Accepted manuscriptDesign-to-time Scheduling"
    assert whole_words(stamp, stamp.index("Design"), len(stamp)) == (stamp.index("Design"), len(stamp))
    assert whole_words("Ana McDonald", 6, 12, name=True) == (4, 12)
    offsets = [(0, 2), (3, 6), (7, 11), (11, 12), (13, 19), (20, 22), (23, 28)]
    logits = torch.full((1 + len(offsets), len(SCHEME.labels)), -5.0)
    for i, label in enumerate([B_TITLE, I_TITLE, O, O, B_TITLE, I_TITLE, I_TITLE], 1):
        logits[i, label] = 5
    _, values = decode(logits, offsets, text, SCHEME, allowed_transitions(SCHEME))
    assert values["title"] == ["On the", "regu- lation of cells"]  # written as the corpus writes a break


def test_learned_transitions_forbid_what_the_training_labels_never_show():
    from metatune.objectives.tag.labels import learned_transitions, transition_counts

    type_label = SCHEME.first_type_label
    features = [  # titles are followed by O, then names; no creator ever follows a title directly
        {"labels": [type_label, B_TITLE, I_TITLE, O, B_CREATOR, I_CREATOR, B_CREATOR, O, -100]},
        {"labels": [type_label, O, B_TITLE, O, B_CREATOR, O]},
    ]
    counts = transition_counts(features, SCHEME)
    assert counts[O][B_TITLE] == 2 and counts[I_TITLE][O] == 1 and counts[B_TITLE][B_CREATOR] == 0
    assert counts[I_CREATOR][B_CREATOR] == 1 and sum(map(sum, counts)) == 12  # type positions and -100 left out
    learned = learned_transitions(counts, allowed_transitions(SCHEME))
    assert learned[O, B_TITLE].exp() == pytest.approx(2 / 5)  # O is followed by B-title 2 times of 5
    assert learned[B_TITLE, B_CREATOR] == float("-inf")  # allowed by BIO, never seen: forbidden
    assert learned[B_KW, I_KW] == 0 and learned[B_KW, I_TITLE] == float("-inf")  # never seen: BIO's rule
    # a title token that the emissions alone would make a creator is kept a title
    scores = torch.full((3, 9), -10.0)
    scores[0, B_TITLE] = 0
    scores[1, B_CREATOR], scores[1, I_TITLE] = 0, -1
    scores[2, O] = 0
    assert viterbi(scores, allowed_transitions(SCHEME)) == [B_TITLE, B_CREATOR, O]
    assert viterbi(scores, learned) == [B_TITLE, I_TITLE, O]


def test_windows_stitch_a_span_that_crosses_an_edge():
    from metatune.objectives.tag.labels import stitch_windows, window_starts, window_stride

    assert window_starts(8, 8, 6) == [0] and window_starts(12, 8, 6) == [0, 4]
    assert window_starts(20, 8, 6) == [0, 6, 12] and window_stride(8) == 6
    text = "aa bb cc dd ee TT UU VV WW ff gg hh"
    offsets = [(3 * k, 3 * k + 2) for k in range(12)]  # 12 tokens; the title is tokens 5-8
    n_labels = len(SCHEME.labels)

    def window(start: int, labels: dict[int, int]) -> torch.Tensor:
        rows = torch.full((1 + 8, n_labels), -5.0)
        rows[0, SCHEME.labels.index("TYPE=Tesis")] = 5
        for t in range(start, start + 8):
            rows[1 + t - start, labels.get(t, O)] = 5
        return rows

    # the first window ends inside the title; the second starts just before it
    first = window(0, {5: B_TITLE, 6: I_TITLE, 7: I_TITLE})
    second = window(4, {4: B_TITLE, 5: I_TITLE, 6: I_TITLE, 7: I_TITLE, 8: I_TITLE})
    second[1, :] = -5.0
    second[1, B_CREATOR] = 5  # token 4 at the second window's edge: the first window, with more context, wins
    stitched = stitch_windows({0: first, 4: second}, 12, 8)
    assert stitched.shape == (13, n_labels)
    doc_type, values = decode(stitched, offsets, text, SCHEME, allowed_transitions(SCHEME))
    assert doc_type == "Tesis" and values == {"title": ["TT UU VV WW"]}


def test_seen_transitions_forbid_the_unseen_without_scoring_the_rest():
    from metatune.objectives.tag.labels import learned_transitions

    counts = [[0] * 9 for _ in range(9)]
    counts[O][B_TITLE], counts[O][O], counts[B_TITLE][O] = 1, 9, 1
    seen = learned_transitions(counts, allowed_transitions(SCHEME), scores=False)
    assert seen[O, B_TITLE] == 0 and seen[O, O] == 0  # no frequency penalty on a rare pair
    assert seen[O, B_CREATOR] == float("-inf") and seen[B_TITLE, I_TITLE] == float("-inf")


def test_a_field_whose_training_spans_fill_whole_lines_takes_the_rest_of_its_lines():
    from metatune.objectives.tag.labels import whole_lines

    text = "Banner of the journal\nNIAID-Sponsored 2010 Guidelines for Managing\nFood Allergy 2\nAna Ruiz"
    offsets = [(0, 6), (7, 9), (10, 13), (14, 21), (22, 37), (38, 42), (43, 53), (54, 57), (58, 66)]
    offsets += [(67, 71), (72, 79), (80, 81), (82, 85), (86, 90)]
    # the model began the title two words late and ended it before a footnote mark "2" it left unlabelled
    path = [O, O, O, O, O, O, B_TITLE, I_TITLE, I_TITLE, I_TITLE, I_TITLE, O, B_CREATOR, I_CREATOR]
    logits = torch.full((1 + len(offsets), len(SCHEME.labels)), -5.0)
    for i, label in enumerate(path, 1):
        logits[i, label] = 5
    lines = TagScheme(SCHEME.fields, SCHEME.types, whole_lines=(("title", 60),))
    assert TagScheme.from_dict(lines.to_dict()) == lines
    _, values = decode(logits, offsets, text, lines, allowed_transitions(lines))
    assert values["title"] == ["NIAID-Sponsored 2010 Guidelines for Managing Food Allergy 2"]
    assert values["creator"] == ["Ana Ruiz"]  # a field that does not fill lines is left as the model labelled it
    _, values = decode(logits, offsets, text, SCHEME, allowed_transitions(SCHEME))
    assert values["title"] == ["Guidelines for Managing Food Allergy"]  # runs saved before: as labelled
    # lines longer than any the training spans covered (text without line breaks): left as labelled
    assert whole_lines(text.replace("\n", " "), 53, 79, 60, []) == (53, 79)
    # words of another span on the line stay that span's
    assert whole_lines("2019 Deep nets\n", 5, 14, 60, [(0, 4)]) == (5, 14)
    assert whole_lines("  Deep nets for all \n", 2, 11, 60, []) == (2, 19)  # whitespace is not taken


def test_a_span_of_a_sentence_field_is_continued_to_its_sentence_end():
    from metatune.objectives.tag.labels import SENTENCE_MAX_CHARS, to_sentence_end

    text = "Abstract We built a tool. Updates can be requested via email. Keywords: tools 1 Introduction"
    cut = text.index(" via")
    assert to_sentence_end(text, 9, cut, []) == (9, text.index("email.") + len("email."))
    ended = text.index("email.") + len("email.")
    assert to_sentence_end(text, 9, ended, []) == (9, ended)  # a span that ends a sentence stays
    assert to_sentence_end(text, 9, cut, [(text.index("email"), ended)]) == (9, cut)  # another span's words
    broken = text.replace(" via", "\nvia")
    assert to_sentence_end(broken, 9, cut, []) == (9, cut)  # not across a line break
    far = text.replace(" via email", " via" + " email" * (SENTENCE_MAX_CHARS // 6))
    assert to_sentence_end(far, 9, cut, []) == (9, cut)
    assert to_sentence_end("no end here", 0, 2, []) == (0, 2)


def test_an_abstract_loses_a_notice_after_its_last_sentence():
    from metatune.objectives.tag.labels import NOTICE_MAX_CHARS, without_trailing_notice

    text = "Abstract\nWe built\na tool. It\nworks.\n(Some figures are in colour only)\nKeywords: tools"
    start, ended = text.index("We built"), text.index("works.") + len("works.")
    notice = text.index("(Some") + len("(Some figures are in colour only)")
    assert without_trailing_notice(text, start, notice) == (start, ended)  # a line of its own
    assert without_trailing_notice(text, start, ended) == (start, ended)  # ends a sentence: stays
    # more than one line after the last sentence end (a last paragraph without a full stop): stays
    two = text.replace(" colour only)", " colour\nonly)")
    assert without_trailing_notice(two, start, notice) == (start, notice)
    # in a span with line breaks, a few words after the last sentence end that are not a line of their own
    # (the model stopped in the middle of a sentence): stays
    cut = text.index(" It") + 3
    assert without_trailing_notice(text, start, cut) == (start, cut)
    # without line breaks, a few words after the last sentence end are a notice; a long run is not
    flat = text.replace("\n", " ")
    assert without_trailing_notice(flat, start, notice) == (start, ended)
    long = flat.replace("colour only", "colour " + "only " * (NOTICE_MAX_CHARS // 5))
    assert without_trailing_notice(long, start, long.index(")") + 1) == (start, long.index(")") + 1)
    assert without_trailing_notice("no sentence\nend here", 0, 20) == (0, 20)

    # in decoding: a new run's scheme cuts the line the model labelled, a run saved before keeps it
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    scheme = TagScheme(
        ("title", "abstract"), ("Articulo",), sentences=("abstract",), one_span=True, trailing_notices=True
    )
    assert TagScheme.from_dict(scheme.to_dict()) == scheme
    path = [O, 3] + [4] * (len(words) - 4) + [O, O]  # B-abstract at "We", I-abstract to "only)"
    logits = torch.full((1 + len(words), len(scheme.labels)), -5.0)
    for i, label in enumerate(path, 1):
        logits[i, label] = 5
    _, values = decode(logits, words, text, scheme, allowed_transitions(scheme))
    assert values["abstract"] == ["We built a tool. It works."]
    old = TagScheme.from_dict({k: v for k, v in scheme.to_dict().items() if k != "trailing_notices"})
    assert old.trailing_notices is False
    _, values = decode(logits, words, text, old, allowed_transitions(old))
    assert values["abstract"] == ["We built a tool. It works. (Some figures are in colour only)"]


def test_an_abstract_the_model_left_a_citation_of_unlabelled_is_one_abstract():
    text = (
        "Control Theory 2 Abstract We study bandits. They were solved by Gittins Gittins & Jones, 1974]. "
        "His approach reduces the problem. We apply it. Keywords: tools"
    )
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    fields = ("title", "abstract", "keywords")
    scheme = TagScheme(fields, ("Articulo",), sentences=("abstract",), one_span=True, bridges=True)
    assert TagScheme.from_dict(scheme.to_dict()) == scheme
    b_title, i_title, b_abstract, i_abstract, b_kw = 1, 2, 3, 4, 5

    def decoded(labelled: dict[str, int], scheme: TagScheme) -> list[str]:
        """The abstracts decoded when each word starting with a key (first match on) takes its label."""
        path, label = [], O
        for start, _ in words:
            label = next((v for k, v in labelled.items() if text.startswith(k, start)), label)
            path.append(label)
            label = {b_abstract: i_abstract, b_title: i_title, b_kw: O}.get(label, label)
        logits = torch.full((1 + len(words), len(scheme.labels)), -5.0)
        for i, label in enumerate(path, 1):
            logits[i, label] = 5
        return decode(logits, words, text, scheme, allowed_transitions(scheme))[1].get("abstract", [])

    whole = text[text.index("We study") : text.index(" Keywords")]
    gap = {"We study": b_abstract, "Gittins &": O, "1974].": b_abstract, "Keywords:": O, "tools": b_kw}
    assert decoded(gap, scheme) == [whole]  # the gap holds no other field's span and is short: one abstract
    old = TagScheme(fields, ("Articulo",), sentences=("abstract",), one_span=True)
    assert TagScheme.from_dict({k: v for k, v in old.to_dict().items() if k != "bridges"}) == old
    assert decoded(gap, old) == [
        "We study bandits. They were solved by Gittins",
        "1974]. His approach reduces the problem. We apply it.",
    ]
    # a running head labelled as the abstract holds no sentence end: it stays apart
    head = {"Control": b_abstract, "2": O, "We study": b_abstract, "Keywords:": O}
    assert decoded(head, scheme) == ["Control Theory", whole]
    # another field's span between: apart
    other = gap | {"Gittins &": b_title, "1974].": b_abstract}
    assert len(decoded(other, scheme)) == 2
    # a gap longer than a side: apart
    far = {"We study": b_abstract, "Jones,": O, "We apply": b_abstract, "Keywords:": O}
    # (the first piece is continued to its sentence end, as any abstract span is)
    assert decoded(far, scheme) == [text[text.index("We study") : text.index(" His")], "We apply it."]
    # a piece that ends its sentence (a cited title labelled as the abstract) stays apart
    ended = {"We study": b_abstract, "They": O, "were": b_abstract, "Keywords:": O}
    assert decoded(ended, scheme) == ["We study bandits.", text[text.index("were") : text.index(" Keywords")]]


def test_the_fields_that_end_a_sentence_are_learned_from_the_training_spans():
    from metatune.objectives.tag.objective import WHOLE_LINES_SPANS, sentence_fields

    records, aligned = [], []
    for i in range(WHOLE_LINES_SPANS):
        text = f"Title {i} We measured {i} things. Keywords: x"
        records.append({"original_text": text})
        end = text.index(" Keywords")
        aligned.append({("title", 0): Span(0, len(f"Title {i}")), ("abstract", 0): Span(text.index("We"), end)})
    fields = ("title", "abstract")
    assert sentence_fields(records, aligned, fields) == ("abstract",)
    assert sentence_fields(records[1:], aligned[1:], fields) == ()  # too few spans teach nothing
    scheme = TagScheme(fields, ("Articulo",), sentences=("abstract",))
    assert TagScheme.from_dict(scheme.to_dict()) == scheme


def test_the_fields_that_fill_whole_lines_are_learned_from_the_training_spans():
    from metatune.objectives.tag.objective import WHOLE_LINES_SPANS, whole_line_fields

    records, aligned = [], []
    for i in range(WHOLE_LINES_SPANS):
        text = f"Title number {i}\nby Ana Ruiz, 2019"
        records.append({"original_text": text})
        aligned.append(
            {("title", 0): Span(0, text.index("\n")), ("creator", 0): Span(text.index("Ana"), text.index(","))}
        )
    fields = ("title", "creator")
    assert whole_line_fields(records, aligned, fields) == (("title", len("Title number 10")),)
    # a text without line breaks (a collapsed copy) teaches nothing; too few spans teach nothing
    collapsed = [{"original_text": r["original_text"].replace("\n", " ")} for r in records]
    assert whole_line_fields(records + collapsed, aligned + aligned, fields) == (("title", len("Title number 10")),)
    assert whole_line_fields(records[1:], aligned[1:], fields) == ()


def test_masked_examples_hide_a_fifth_of_the_tokens_and_ask_the_position_before_each():
    import random

    from metatune.encoding import IGNORE_INDEX
    from metatune.objectives.tag.adaptation import masked_example

    ids = list(range(100, 151))
    inputs, targets = (t[0].tolist() for t in masked_example(ids, 7, random.Random(0)))
    hidden = [p for p, token in enumerate(inputs) if token == 7]
    assert len(hidden) == 10 and 0 not in hidden  # 20% of the 50 positions after the first
    assert [p for p, t in enumerate(targets) if t != IGNORE_INDEX] == [p - 1 for p in hidden]
    assert all(targets[p - 1] == ids[p] for p in hidden)
    assert all(inputs[p] == ids[p] for p in range(len(ids)) if p not in hidden)


@pytest.mark.parametrize("bf16, per_forward", [(False, 1), (True, 4)])  # bf16 forced: any CPU runs it
def test_the_adaptation_stage_lowers_its_own_loss_and_trains_only_the_backbone(
    tiny_llama, synthetic, bf16, per_forward
):
    from metatune.models import read_both_ways
    from metatune.objectives.tag.adaptation import adapt

    model = AutoModelForTokenClassification.from_pretrained(tiny_llama, num_labels=3, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    read_both_ways(model)
    head = model.score.weight.detach().clone()
    embeddings = model.get_input_embeddings().weight.detach().clone()
    texts = [tokenizer(r["original_text"])["input_ids"] for r in synthetic_records(16, 0)]
    losses = adapt(
        model, tokenizer, texts, epochs=10, learning_rate=3e-3, batch_size=4, bf16=bf16, seed=0, per_forward=per_forward
    )
    assert len(losses) == 40
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    assert torch.equal(model.score.weight, head)  # the tagging head is trained afterwards, from scratch
    assert not torch.equal(model.get_input_embeddings().weight, embeddings)


def test_the_adaptation_stage_in_padded_batches_takes_the_steps_of_one_text_at_a_time(tiny_llama, synthetic):
    from metatune.models import read_both_ways
    from metatune.objectives.tag.adaptation import adapt

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    texts = [tokenizer(r["original_text"])["input_ids"] for r in synthetic_records(8, 0)]
    texts = [t[: 20 + 7 * i] for i, t in enumerate(texts)]  # lengths differ: the batches are padded
    runs = []
    for per_forward in (1, 4):
        torch.manual_seed(0)
        model = AutoModelForTokenClassification.from_pretrained(tiny_llama, num_labels=3, dtype=torch.float32)
        read_both_ways(model)
        losses = adapt(model, tokenizer, texts, 2, 3e-3, 4, False, 0, per_forward=per_forward, group_by_length=False)
        runs.append((losses, model.get_input_embeddings().weight.detach()))
    (single, weights_single), (batched, weights_batched) = runs
    assert len(single) == len(batched) == 4
    assert single == pytest.approx(batched, rel=1e-4)  # the same texts and masks per step, the same math
    assert torch.allclose(weights_single, weights_batched, atol=1e-5)


def test_a_tagger_adapted_first_records_the_stage_and_learns(tmp_path, tiny_llama, synthetic):
    from metatune.objectives import open_run
    from metatune.training.run import train

    run = train(
        tag_config(
            tiny_llama, synthetic, tmp_path / "run", "tag.adaptation_epochs=2", "tag.adaptation_learning_rate=3e-3"
        )
    )
    info = json.loads((run / "metatune.json").read_text())
    stage = info["tagging"]["adaptation"]
    assert stage["epochs"] == 2 and stage["steps"] == 12  # 48 documents twice, 8 per step
    assert stage["seconds"] > 0
    assert stage["loss_last_tenth"] < stage["loss_first_tenth"]
    assert "tag.adaptation_epochs" in (run / "README.md").read_text()
    records = synthetic_records(8, 2)
    results = open_run(run).extract([r["original_text"] for r in records])
    assert sum(r.data.get("title") == rec["title"] for r, rec in zip(results, records)) >= 6


def test_the_adaptation_stage_refuses_a_model_it_cannot_adapt(tmp_path, tiny_llama, tiny_t5):
    import shutil

    from metatune.errors import MetatuneError
    from metatune.training.run import train

    with pytest.raises(
        MetatuneError, match="tag.adaptation_epochs adapts a decoder that reads both ways: .* is not one"
    ):
        train(tag_config(tiny_llama, SAMPLE, tmp_path / "a", "tag.adaptation_epochs=1", "tag.attention=causal"))
    with pytest.raises(MetatuneError, match="is not one"):
        train(tag_config(tiny_t5, SAMPLE, tmp_path / "b", "tag.adaptation_epochs=1"))
    untied = tmp_path.parent / f"{tmp_path.name}-untied"
    shutil.copytree(tiny_llama, untied)
    config = json.loads((untied / "config.json").read_text())
    (untied / "config.json").write_text(json.dumps(config | {"tie_word_embeddings": False}))
    with pytest.raises(MetatuneError, match="needs a model whose output layer is its input embeddings"):
        train(tag_config(untied, SAMPLE, tmp_path / "c", "tag.adaptation_epochs=1"))
    assert not list(tmp_path.iterdir())


def test_delayed_labels_sit_k_positions_later_after_k_fillers(tiny_tokenizer):
    from metatune.encoding import IGNORE_INDEX
    from metatune.objectives.tag.labels import filler_id

    text = "A study of things\nAna Ruiz, Juan Pérez\nKeywords: things; stuff"
    record = {"title": "A study of things", "creator": ["Ana Ruiz", "Juan Pérez"], "keywords": ["things", "stuff"]}
    fields = ["title", "creator", "keywords"]
    plain, _ = encode_tagged(record, text, "Tesis", fields, SCHEME, tiny_tokenizer, 256)
    late, _ = encode_tagged(record, text, "Tesis", fields, SCHEME, tiny_tokenizer, 256, delay=3)
    assert late["input_ids"] == plain["input_ids"] + [filler_id(tiny_tokenizer)] * 3
    assert late["labels"] == plain["labels"][:1] + [IGNORE_INDEX] * 3 + plain["labels"][1:]
    cut, _ = encode_tagged(record, text, "Tesis", fields, SCHEME, tiny_tokenizer, 12, delay=3)
    assert len(cut["input_ids"]) == len(cut["labels"]) == 12  # the fillers count against the input limit
    assert cut["input_ids"][:9] == plain["input_ids"][:9]


def test_a_tagger_with_delayed_labels_learns_and_reads_each_label_k_tokens_late(tmp_path, tiny_llama, synthetic):
    from metatune.objectives import open_run
    from metatune.objectives.tag import extractor
    from metatune.objectives.tag.labels import filler_id, first_token_id, token_offsets
    from metatune.training.run import train

    run = train(tag_config(tiny_llama, synthetic, tmp_path / "run", "tag.attention=causal", "tag.label_delay=3"))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < 0.3 * losses[0], losses
    info = json.loads((run / "metatune.json").read_text(encoding="utf-8"))
    assert info["tagging"]["label_delay"] == 3 and not info["tagging"]["bidirectional"]
    assert "tag.label_delay" in (run / "README.md").read_text()
    tagger = open_run(run, ExtractionSettings(dtype="float32"))
    records = synthetic_records(8, 2)
    results = tagger.extract([r["original_text"] for r in records])
    assert sum(r.data.get("title") == rec["title"] for r, rec in zip(results, records)) >= 6
    seen = []
    real_decode = extractor.decode
    extractor.decode = lambda logits, *rest: seen.append(logits) or real_decode(logits, *rest)
    try:
        tagger.extract([records[0]["original_text"]])
    finally:
        extractor.decode = real_decode
    ids, _ = token_offsets(tagger.tokenizer, records[0]["original_text"], 128)
    inputs = [first_token_id(tagger.tokenizer), *ids, *[filler_id(tagger.tokenizer)] * 3]
    with torch.inference_mode():
        logits = tagger.model(input_ids=torch.tensor([inputs])).logits[0]
    # the type position, then token i's label read at position 1 + 3 + i, as training placed it
    assert torch.allclose(seen[0], torch.cat([logits[:1], logits[4:]]), atol=1e-5)


def test_delayed_labels_need_a_model_that_reads_forward(tmp_path, tiny_t5):
    from metatune.errors import MetatuneError
    from metatune.training.run import train

    with pytest.raises(MetatuneError, match="tag.label_delay gives a model that reads forward a look ahead: set tag"):
        tag_config(tiny_t5, SAMPLE, tmp_path / "a", "tag.label_delay=2")
    with pytest.raises(MetatuneError, match="is an encoder-decoder whose encoder reads both ways"):
        train(tag_config(tiny_t5, SAMPLE, tmp_path / "b", "tag.attention=causal", "tag.label_delay=2"))
    assert not list(tmp_path.iterdir())


def test_matmul_attention_trains_a_tagger_with_sdpas_losses(tmp_path, tiny_llama, synthetic, monkeypatch):
    """tag.attention_kernel=matmul: the same per-step losses as SDPA in float32, glibc set to keep freed
    memory while it trains (and asked before every forward pass what its batch may need), and a saved
    run that other runtimes load as before."""
    from metatune import attention
    from metatune.training.run import train

    kept, shapes = [], []
    real = attention.keep_freed_memory

    def keep(active=True, model=None, need=None):
        kept.append(active)
        return real(active, model, lambda batch, length: shapes.append((batch, length)) or need(batch, length))

    monkeypatch.setattr(attention, "keep_freed_memory", keep)
    steps = ("training.max_steps=6", "training.logging_steps=1")
    runs = {
        kernel: train(tag_config(tiny_llama, synthetic, tmp_path / kernel, f"tag.attention_kernel={kernel}", *steps))
        for kernel in ("sdpa", "matmul")
    }
    assert kept == [False, True]
    assert len(shapes) == 6 and all(batch >= 1 and length > 8 for batch, length in shapes), shapes
    losses = {
        k: [json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
        for k, r in runs.items()
    }
    assert len(losses["sdpa"]) == 6 and losses["matmul"] == pytest.approx(losses["sdpa"], rel=1e-4)
    info = json.loads((runs["matmul"] / "metatune.json").read_text(encoding="utf-8"))
    assert info["training"]["attention"] == attention.NAME
    assert attention.NAME not in (runs["matmul"] / "config.json").read_text()


def test_the_adaptation_stage_with_matmul_attention_asks_what_its_batches_need(
    tmp_path, tiny_llama, synthetic, monkeypatch
):
    """tag.adaptation_epochs with tag.attention_kernel=matmul: the stage calls the backbone itself, and
    the kept heap's hook still sees each of its batches (then the tagger's own training)."""
    from metatune import attention
    from metatune.training.run import train

    stages = []
    real = attention.keep_freed_memory

    def keep(active=True, model=None, need=None):
        shapes = []
        stages.append((active, shapes))
        return real(active, model, lambda batch, length: shapes.append((batch, length)) or need(batch, length))

    monkeypatch.setattr(attention, "keep_freed_memory", keep)
    sets = ("tag.attention_kernel=matmul", "tag.adaptation_epochs=1", "training.max_steps=3")
    run = train(tag_config(tiny_llama, synthetic, tmp_path / "run", *sets))
    (adapting, adapted_shapes), (training, trained_shapes) = stages
    assert adapting and training
    stage = json.loads((run / "metatune.json").read_text())["tagging"]["adaptation"]
    assert len(adapted_shapes) == stage["steps"] == 6  # 48 documents, 8 per step
    assert len(trained_shapes) == 3


def test_forced_bf16_tag_training_with_matmul_attention_runs_on_any_cpu(tmp_path, tiny_llama, synthetic):
    """bf16 autocast with tag.attention_kernel=matmul: what the setting runs on CPUs with bf16 units."""
    from metatune import attention
    from metatune.training.run import train

    sets = ("tag.attention_kernel=matmul", "training.bf16=true", "training.max_steps=12")
    run = train(tag_config(tiny_llama, synthetic, tmp_path / "run", *sets))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0], losses
    trained = json.loads((run / "metatune.json").read_text(encoding="utf-8"))["training"]
    assert (trained["precision"], trained["attention"]) == ("bf16", attention.NAME)


def test_matmul_attention_needs_a_decoder(tmp_path, tiny_t5):
    from metatune.errors import MetatuneError
    from metatune.training.run import train

    with pytest.raises(
        MetatuneError, match="tag.attention_kernel=matmul needs a decoder .* set tag.attention_kernel=sdpa"
    ):
        train(tag_config(tiny_t5, SAMPLE, tmp_path / "run", "tag.attention_kernel=matmul"))
    assert not list(tmp_path.iterdir())


def test_the_runs_seed_sets_the_new_heads_weights(tmp_path, tiny_llama, synthetic):
    """Whatever ran before in the process: the tagging head starts from training.seed."""
    from metatune.objectives import prepare

    def head(seed):
        torch.rand(7)  # the generator's state before does not matter
        config = tag_config(tiny_llama, synthetic, tmp_path / "run", f"training.seed={seed}")
        return prepare(config, need_validation=False).model.score.weight.detach()

    first = head(1)
    assert torch.equal(first, head(1)) and not torch.equal(first, head(2))


def test_a_text_has_lost_its_line_breaks_when_it_has_none_or_very_long_lines():
    from metatune.objectives.tag.restore import lacks_lines

    assert lacks_lines("Título: Uno dos Autores: Ana Pérez")
    assert lacks_lines("a b " * 300 + "\n" + "c d " * 300)  # two lines of 1,200 characters
    assert not lacks_lines("Título: Uno dos\nAutores: Ana Pérez\n")
    assert not lacks_lines("")


def test_the_line_restorer_learns_a_linear_rule_keeps_it_on_disk_and_breaks_only_spaces(tmp_path):
    from metatune.objectives.tag.restore import LineRestorer, fit

    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(40, 8, generator=g) for _ in range(30)]
    targets = [(h[:, 2] + 0.5 * h[:, 5] > 1.0).float() for h in hidden]  # a rule a linear probe can learn
    restorer, stats = fit(hidden, targets)
    assert stats["held_out"]["f1"] > 0.9, stats
    assert stats["documents"] == 30 and stats["positions"] == 1200
    assert stats["threshold"] == restorer.threshold
    restorer.save(tmp_path / "r.safetensors")
    loaded = LineRestorer.load(tmp_path / "r.safetensors", restorer.threshold)
    assert torch.equal(loaded.probabilities(hidden[0]), restorer.probabilities(hidden[0]))

    # a line starts at tokens 0, 2 and 4: the first has nothing before it, the last is glued to its neighbour
    text = "Title words Ana Pérez,Abstract"
    offsets = [(0, 5), (6, 11), (12, 15), (16, 21), (22, 30)]
    restorer.threshold = 0.5
    probabilities = torch.tensor([0.9, 0.1, 0.9, 0.4, 0.9])
    assert restorer.restore(text, offsets, probabilities) == "Title words\nAna Pérez,\nAbstract"


# float32 throughout, and bf16 forced (training autocast, the probe's fit, extraction): what `auto`
# picks on CPUs with bf16 units, exercised on every CPU
@pytest.mark.parametrize("bf16", [False, True])
def test_a_run_that_restores_lines_finds_them_in_collapsed_text_and_tags_the_restored_text(
    tmp_path, tiny_llama, synthetic, bf16
):
    from metatune.config import ExtractionSettings
    from metatune.errors import MetatuneError
    from metatune.objectives import open_run
    from metatune.objectives.tag.restore import RESTORER_FILE
    from metatune.training.run import train

    sets = ("tag.augment_collapsed=0.5", "tag.restore_lines=true", "training.max_steps=60")
    run = train(tag_config(tiny_llama, synthetic, tmp_path / "run", *sets, f"training.bf16={str(bf16).lower()}"))
    info = json.loads((run / "metatune.json").read_text())
    assert info["training"]["precision"] == ("bf16" if bf16 else "no")
    restoration = info["training"]["line_restoration"]
    assert restoration["documents"] == 48 and (run / RESTORER_FILE).is_file()
    # every synthetic line starts at a marker ("Título:", "Autores:", "Resumen:"): easy to find again
    assert restoration["held_out"]["f1"] > 0.8, restoration
    assert "| `tag.restore_lines` | true (a text without line breaks gets them back" in (run / "README.md").read_text()

    tagger = open_run(run, ExtractionSettings(dtype="bfloat16" if bf16 else "float32"))
    assert tagger.model.dtype == (torch.bfloat16 if bf16 else torch.float32)
    records = synthetic_records(8, 2)
    collapsed = [" ".join(r["original_text"].split()) for r in records]
    restored = [tagger.restore_lines(text) for text in collapsed]
    found = sum(text.count("\nTítulo:") + text.count("\nAutores:") for text in restored)
    assert found >= 12, restored  # of the 16 line starts before those markers
    assert all(re.sub(r"\s", "", r) == re.sub(r"\s", "", c) for r, c in zip(restored, collapsed))  # only line breaks
    with_restorer = tagger.extract(collapsed)
    lined = tagger.extract([r["original_text"] for r in records])
    tagger.restorer = None
    assert [e.data for e in with_restorer] == [e.data for e in tagger.extract(restored)]
    assert [e.data for e in lined] == [e.data for e in tagger.extract([r["original_text"] for r in records])]

    (run / RESTORER_FILE).unlink()
    with pytest.raises(MetatuneError, match=f"the run restores line breaks but its {RESTORER_FILE} is missing$"):
        open_run(run)


def test_fit_line_restorer_adds_the_restorer_to_a_run_trained_without_it(tmp_path, tag_run, synthetic):
    import shutil
    import subprocess
    import sys

    from metatune.objectives import open_run

    run = tmp_path / "run"
    shutil.copytree(tag_run, run)
    script = [sys.executable, "scripts/fit_line_restorer.py"]
    done = subprocess.run([*script, str(run), "--data", str(synthetic)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    restoration = json.loads((run / "metatune.json").read_text())["training"]["line_restoration"]
    assert restoration["documents"] == 48 and restoration["held_out"]["f1"] > 0.8, restoration
    before = open_run(tag_run).model.state_dict()
    tagger = open_run(run)
    assert all(torch.equal(v, before[k]) for k, v in tagger.model.state_dict().items())  # weights untouched
    collapsed = " ".join(synthetic_records(1, 2)[0]["original_text"].split())
    assert "\n" in tagger.restore_lines(collapsed)

    missing = subprocess.run(
        [*script, str(tmp_path / "nothing"), "--data", str(synthetic)], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.splitlines()[-1] == f"error: {tmp_path / 'nothing'}: run directory not found"
