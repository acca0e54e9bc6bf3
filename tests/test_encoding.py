"""Input styles and encoding: what the model reads, token limits, label masking, per-batch padding."""

from __future__ import annotations

import copy
import json

import pytest

from metatune.config import DataSettings, load_config
from metatune.doctypes import FieldSelection, TypeRegistry
from metatune.encoding import IGNORE_INDEX, Limits, collator, encode_example, encode_prompt
from metatune.errors import MetatuneError
from metatune.formatting import SCHEMA_END, Example, InputFormat, build_prompts, make_examples

from conftest import SAMPLE

EXCLUDE = tuple(DataSettings().exclude_fields)
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def registry():
    return TypeRegistry.load()


@pytest.fixture(scope="module")
def records():
    return json.loads(SAMPLE.read_text(encoding="utf-8"))["training"]


def example_for(record, registry, style="prompt", include=None, tokenizer=None, chat=False) -> Example:
    fmt = InputFormat(style, include, EXCLUDE, chat)
    prompts = build_prompts(registry, fmt, tokenizer)
    return make_examples(record, registry.find(record["type"]), registry, fmt, prompts)[0]


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --- input styles -----------------------------------------------------------------------------


def test_schema_style_is_nuextract_template(registry, records):
    record = records[0]
    doc_type = registry.find(record["type"])
    example = example_for(record, registry, "schema")
    schema = json.dumps(
        doc_type.template(FieldSelection.of(None, EXCLUDE).fields(doc_type)), ensure_ascii=False, indent=4
    )
    text = record["original_text"]
    assert example.prefix + example.document + example.suffix == (
        f"<|input|>\n### Template:\n{schema}\n### Text:\n{text}\n<|output|>\n"
    )
    template = json.loads(schema)
    assert template["title"] == "" and template["creator"] == [] and "abstract" not in template
    assert example.target.endswith("<|end-output|>")
    target = json.loads(example.target[: -len(SCHEMA_END)])
    assert target["title"] == record["title"] and set(target) <= set(template)


def test_prompt_style(registry, records):
    record = records[0]
    example = example_for(record, registry, "prompt")
    assert example.prefix.startswith("Extraé los metadatos bibliográficos de la tesis")
    assert example.prefix.endswith("Documento:\n") and example.suffix == "\n\nJSON:\n"
    assert example.document == record["original_text"]
    target = json.loads(example.target)  # plain JSON, no end marker
    assert target["title"] == record["title"] and target["creator"] == record["creator"]


def test_prompt_style_in_the_chat_template(registry, records, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    record = records[0]
    example = example_for(record, registry, "prompt", tokenizer=tokenizer, chat=True)
    doc_type = registry.find(record["type"])
    instruction = doc_type.prompt(FieldSelection.of(None, EXCLUDE).fields(doc_type))
    messages = [
        {"role": "system", "content": instruction},
        {"role": "user", "content": "Documento:\n" + record["original_text"]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert example.prefix + example.document + example.suffix == rendered  # the instruction is the system message
    assert example.suffix.endswith("<s>assistant\n")
    # the template wrote its own special tokens: encoding adds none of its own
    prompt = encode_prompt(example, tokenizer, 4096, seq2seq=False, chat=True)
    assert prompt == ids(tokenizer, example.prefix) + ids(tokenizer, example.document) + ids(tokenizer, example.suffix)


# --- causal models ------------------------------------------------------------------------------


def test_causal_features(registry, records, tiny_tokenizer):
    tok = tiny_tokenizer
    example = example_for(records[0], registry)
    features = encode_example(example, tok, Limits(4096, 512), seq2seq=False, chat=False)
    prompt = ids(tok, example.prefix) + ids(tok, example.document) + ids(tok, example.suffix)
    target = ids(tok, example.target) + [tok.eos_token_id]
    assert features["input_ids"] == prompt + target  # nothing between prompt and target
    assert features["labels"] == [IGNORE_INDEX] * len(prompt) + target  # the prompt is out of the loss
    assert features["attention_mask"] == [1] * len(prompt + target)
    assert tok.pad_token_id not in features["input_ids"]
    assert tok.decode(features["input_ids"][len(prompt) :], skip_special_tokens=True) == example.target


def test_only_the_document_is_truncated(registry, records, tiny_tokenizer):
    tok = tiny_tokenizer
    record = dict(records[0], original_text=records[0]["original_text"] * 20)
    example = example_for(record, registry)
    prefix, suffix = ids(tok, example.prefix), ids(tok, example.suffix)
    target = ids(tok, example.target) + [tok.eos_token_id]
    for limit in (400, 600):
        features = encode_example(example, tok, Limits(limit, 512), seq2seq=False, chat=False)
        n_prompt = features["labels"].count(IGNORE_INDEX)
        assert n_prompt == limit  # filled up to the limit, not over
        prompt = features["input_ids"][:n_prompt]
        assert prompt[: len(prefix)] == prefix and prompt[-len(suffix) :] == suffix  # instruction intact
        assert (
            prompt[len(prefix) : -len(suffix)] == ids(tok, record["original_text"])[: limit - len(prefix) - len(suffix)]
        )
        assert features["input_ids"][n_prompt:] == target  # target intact
    # a short document is left alone
    short = example_for(records[0], registry)
    features = encode_example(short, tok, Limits(4096, 512), seq2seq=False, chat=False)
    assert features["labels"].count(IGNORE_INDEX) < 4096


def test_default_and_configured_limits(tmp_path):
    assert Limits() == Limits(2048, 512)
    cfg = load_config(sets=["data.max_input_tokens=256", "data.max_target_tokens=64"])
    assert (cfg.data.max_input_tokens, cfg.data.max_target_tokens) == (256, 64)


def test_instruction_longer_than_the_limit_is_an_error(registry, records, tiny_tokenizer):
    example = example_for(records[0], registry)
    with pytest.raises(
        MetatuneError, match=r"instruction for type 'Tesis' alone takes \d+ tokens.*max_input_tokens=50"
    ):
        encode_example(example, tiny_tokenizer, Limits(50, 512), seq2seq=False, chat=False)


def test_target_longer_than_the_limit_is_skipped_never_cut(registry, records, tiny_tokenizer):
    example = example_for(records[0], registry)
    n_target = len(ids(tiny_tokenizer, example.target)) + 1
    assert encode_example(example, tiny_tokenizer, Limits(4096, n_target - 1), seq2seq=False, chat=False) is None
    fits = encode_example(example, tiny_tokenizer, Limits(4096, n_target), seq2seq=False, chat=False)
    assert len(fits["labels"]) - fits["labels"].count(IGNORE_INDEX) == n_target


# --- seq2seq models -------------------------------------------------------------------------------


def test_seq2seq_features(registry, records, tiny_tokenizer):
    tok = tiny_tokenizer
    example = example_for(records[1], registry, "schema")
    features = encode_example(example, tok, Limits(4096, 512), seq2seq=True, chat=False)
    prompt = ids(tok, example.prefix) + ids(tok, example.document) + ids(tok, example.suffix)
    assert features["input_ids"] == prompt and features["attention_mask"] == [1] * len(prompt)
    assert features["labels"] == ids(tok, example.target) + [tok.eos_token_id]
    assert IGNORE_INDEX not in features["labels"]
    record = dict(records[1], original_text=records[1]["original_text"] * 20)
    long = encode_example(example_for(record, registry, "schema"), tok, Limits(300, 512), seq2seq=True, chat=False)
    assert len(long["input_ids"]) == 300 and long["labels"] == features["labels"]


# --- batches ---------------------------------------------------------------------------------------


def test_collator_pads_to_the_batch_longest_only(registry, records, tiny_tokenizer):
    tok = tiny_tokenizer
    limits = Limits(2048, 512)
    features = [encode_example(example_for(r, registry), tok, limits, seq2seq=False, chat=False) for r in records[:3]]
    lengths = [len(f["input_ids"]) for f in features]
    assert len(set(lengths)) == 3
    batch = collator(tok)(copy.deepcopy(features))
    assert batch["input_ids"].shape == (3, max(lengths))  # not 2048
    assert batch["labels"].shape == batch["attention_mask"].shape == (3, max(lengths))
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == f["input_ids"]
        assert batch["labels"][row, :n].tolist() == f["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()  # padding never enters the loss
    # two short rows make a short batch
    short = sorted(features, key=lambda f: len(f["input_ids"]))[:2]
    assert collator(tok)(copy.deepcopy(short))["input_ids"].shape[1] == len(short[1]["input_ids"])


def test_seq2seq_collator_pads_labels_separately(registry, records, tiny_tokenizer):
    tok = tiny_tokenizer
    features = [
        encode_example(example_for(r, registry, "schema"), tok, Limits(2048, 512), seq2seq=True, chat=False)
        for r in records[:3]
    ]
    batch = collator(tok)(copy.deepcopy(features))
    assert batch["input_ids"].shape[1] == max(len(f["input_ids"]) for f in features)
    assert batch["labels"].shape[1] == max(len(f["labels"]) for f in features)
    for row, f in enumerate(features):
        assert batch["labels"][row, len(f["labels"]) :].eq(IGNORE_INDEX).all()


# --- what training prepares ---------------------------------------------------------------------------


def test_prepare_reports_skipped_targets(tmp_path, tiny_llama, capsys):
    from metatune.objectives import prepare

    base = [
        f"model.name={tiny_llama}",
        f"data.path={SAMPLE}",
        f"training.output_dir={tmp_path / 'run'}",
        "data.input_style=schema",
        "data.max_input_tokens=256",
    ]
    full = prepare(load_config(sets=base + ["data.max_target_tokens=512"]))
    assert full.skipped == 0 and full.stats["train_examples"] == 24
    assert max(len(x["input_ids"]) - x["labels"].count(IGNORE_INDEX) for x in full.train) <= 512
    lengths = sorted(len(x["labels"]) - x["labels"].count(IGNORE_INDEX) for x in full.train)
    limit = lengths[len(lengths) // 2]  # about half the targets are longer than this
    capsys.readouterr()
    part = prepare(load_config(sets=base + [f"data.max_target_tokens={limit}"]))
    too_long = sum(n > limit for n in lengths)
    assert too_long > 0 and part.stats["train_examples"] == 24 - too_long
    assert part.skipped >= too_long  # validation examples may be skipped too
    out = capsys.readouterr().out
    assert f"Skipped {part.skipped} examples whose target is longer than data.max_target_tokens={limit}" in out
    assert all(len(x["input_ids"]) - x["labels"].count(IGNORE_INDEX) <= limit for x in part.train)
    with pytest.raises(MetatuneError, match="no training example fits data.max_target_tokens=3"):
        prepare(load_config(sets=base + ["data.max_target_tokens=3"]))


class Spy:
    """A tokenizer that records the length of every text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_huge_document_is_cut_by_characters_before_it_is_tokenised(tiny_tokenizer, records):
    """Only a bounded prefix of the document is tokenised, and the kept tokens are those of the whole text."""
    text = records[0]["original_text"]
    long = (text + "\n") * (100_000 // len(text) + 1)  # ~100k characters: cheap enough to tokenise whole here
    prefix, suffix = ids(tiny_tokenizer, "Extrae:\n"), ids(tiny_tokenizer, "\nJSON:")
    spy = Spy(tiny_tokenizer)
    got = encode_prompt(Example("Extrae:\n", long, "\nJSON:", "", "Tesis"), spy, 256, seq2seq=False, chat=False)
    assert got == prefix + ids(tiny_tokenizer, long)[: 256 - len(prefix) - len(suffix)] + suffix
    assert max(spy.lengths) <= 256 * 64, spy.lengths

    spy.lengths.clear()
    huge = Example("Extrae:\n", "palabra " * 2_000_000, "\nJSON:", "", "Tesis")  # 16 MB
    assert len(encode_prompt(huge, spy, 256, seq2seq=False, chat=False)) == 256
    assert max(spy.lengths) <= 256 * 64, spy.lengths
