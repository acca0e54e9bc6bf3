"""The catalogue record from a tag run: names surname-first, dates in the training data's form,
closed-list fields read after the document, and how each declared field is produced."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from metatune.alignment import align_record, normalise_date
from metatune.objectives.tag.labels import (
    TagScheme,
    allowed_transitions,
    class_prompts,
    date_in_form,
    decode,
    encode_tagged,
    spelled_out,
    tag_loss_for,
    token_offsets,
)
from metatune.objectives.tag.objective import (
    catalogued_names,
    date_form,
    date_hosts,
    example_losses_for,
    field_weights,
)

from conftest import REPO

LIMITS = SimpleNamespace(max_input_tokens=1536)


def card_info(tagging):
    """What a run's card reads: its tagging section, its limits and its training settings (none set here)."""
    return SimpleNamespace(
        tagging=tagging, limits=LIMITS, training={}, setting=lambda section, key, default=None: default
    )


NAMES = TagScheme(("title", "creator"), ("Tesis",), lists=("creator",), surnames=("creator",))


def round_trip(tokenizer, scheme: TagScheme, record: dict, text: str, fields: list[str]) -> dict:
    """Encode the record's labels, turn them into one-hot logits and decode them: what a tagger that
    learned the labels perfectly writes."""
    prompts = class_prompts(tokenizer, scheme)
    features, _ = encode_tagged(record, text, "Tesis", fields, scheme, tokenizer, 512, prompts)
    _, offsets = token_offsets(tokenizer, text, 511 - sum(map(len, prompts)))
    logits = torch.full((len(features["labels"]), len(scheme.labels)), -5.0)
    for i, label in enumerate(features["labels"]):
        logits[i, max(label, 0)] = 5.0
    _, values = decode(logits, offsets, text, scheme, allowed_transitions(scheme), list(map(len, prompts)))
    return values


@pytest.mark.parametrize(
    ("page", "catalogued"),
    [
        ("María Laura de la Fuente", "de la Fuente, María Laura"),  # a particle
        ("Dr. Juan Pérez Esquivel", "Pérez Esquivel, Juan"),  # a compound surname, an honorific outside
        ("Ana del Valle", "del Valle, Ana"),
        ("Bárbara Siccardi", "Siccardi, Bárbara"),
        ("Siccardi, Bárbara", "Siccardi, Bárbara"),  # a page that already writes the catalogue's form
        ("M. L. Quiroga", "Quiroga, M. L."),  # initials: the given names are the page's
    ],
)
def test_a_name_comes_out_in_the_catalogue_form_its_labels_teach(tiny_tokenizer, page, catalogued):
    text = f"Un estudio de las cosas\n{page}\nLa Plata, 2021"
    record = {"title": "Un estudio de las cosas", "creator": [catalogued]}
    values = round_trip(tiny_tokenizer, NAMES, record, text, ["title", "creator"])
    assert values["creator"] == [catalogued]


def test_a_single_name_or_names_in_page_order_keep_the_pages_text(tiny_tokenizer):
    text = "Un estudio de las cosas\nMadonna y Juan Pérez\n"
    record = {"title": "Un estudio de las cosas", "creator": ["Madonna", "Juan Pérez"]}
    assert round_trip(tiny_tokenizer, NAMES, record, text, ["title", "creator"])["creator"] == ["Madonna", "Juan Pérez"]
    assert not catalogued_names(["Juan Pérez", "Ana Ruiz", "Pérez, Juan"])  # page order: no surname labels
    assert catalogued_names(["Pérez, Juan", "Ruiz, Ana", "Madonna"])


AUTHORITY = TagScheme(
    ("creator",),
    ("Tesis",),
    surnames=("creator",),
    names=(
        "Echeverry, Julieta",
        "Echeverry, Juan Pablo",
        "García Márquez, Diego",
        "García Márquez, Dora",
        "de la Fuente, María Laura",
    ),
)


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("J. Echeverry", "Echeverry, Julieta"),  # the page's order, no surname labels
        ("Echeverry, J. P.", "Echeverry, Juan Pablo"),
        ("Echeverry, J.", "Echeverry, Julieta"),  # Juan Pablo begins with J. too, but is printed "J. P."
        ("de la Fuente, M. L.", "de la Fuente, María Laura"),  # a particle, two initials
        ("de la Fuente, M.", "de la Fuente, María Laura"),  # the first of her initials
        ("García Márquez, D.", "García Márquez, D."),  # two training names fit: the page's initials stay
        ("Echeverry, A.", "Echeverry, A."),  # no training name fits
        ("Pérez, J.", "Pérez, J."),  # a surname the training split never catalogued
        ("Echeverry, Juana", "Echeverry, Juana"),  # a given name spelled out is the page's
        ("Echeverry", "Echeverry"),
    ],
)
def test_a_name_printed_with_initials_is_written_as_the_training_name_it_abbreviates(name, written):
    assert AUTHORITY.known_name(name) == written
    assert NAMES.known_name(name) == name  # a run without catalogued names keeps the page's initials


SURNAMES = ["Acosta", "Benavídez", "Cabral", "Ferrandi", "Iturbe", "Mansilla", "Pereyra", "Quiroga", "Sosa", "Zanetti"]
POOL = TagScheme(
    ("creator",),
    ("Tesis",),
    surnames=("creator",),
    names=(
        *(f"{s}, Tomás" for s in SURNAMES),  # ten people with the initial T., all Tomás
        *(f"{s}, Martín" for s in SURNAMES[:5]),  # M. is Martín or Micaela
        *(f"{s}, Micaela" for s in SURNAMES[5:]),
        *(f"{s}, Valeria" for s in SURNAMES[:9]),  # nine people with V.: too few to say
        "Echeverry, Julieta",
    ),
)


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("Olmedo, T.", "Olmedo, Tomás"),  # no Olmedo in training; every one of ten T. is a Tomás
        ("T. Olmedo", "Olmedo, Tomás"),  # the page's order
        ("de la Fuente, T.", "de la Fuente, Tomás"),  # the surname as written, particles kept
        ("Olmedo, M.", "Olmedo, M."),  # M. is spelled two ways
        ("Olmedo, V.", "Olmedo, V."),  # nine people are too few
        ("Olmedo, T. A.", "Olmedo, T. A."),  # no training name has exactly those initials
        ("Echeverry, J.", "Echeverry, Julieta"),  # a known person still comes first
        ("Olmedo, Teresa", "Olmedo, Teresa"),  # a given name spelled out is the page's
    ],
)
def test_initials_are_spelled_out_only_where_every_training_person_with_them_spells_them_one_way(name, written):
    assert POOL.known_name(name) == written


def test_of_people_the_initials_fit_equally_the_one_the_training_split_names_most_often_is_chosen():
    often = TagScheme(
        ("creator",),
        ("Tesis",),
        surnames=("creator",),
        names=("Acosta, Federico", "Acosta, Florencia", "Acosta, Florencia", "Ruiz, Diego", "Ruiz, Dora"),
    )
    assert often.known_name("Acosta, F.") == "Acosta, Florencia"
    assert often.known_name("Ruiz, D.") == "Ruiz, D."  # named as often: the page's initials stay


def test_the_training_names_travel_with_the_run_and_decoding_uses_them(tiny_tokenizer):
    assert TagScheme.from_dict(AUTHORITY.to_dict()) == AUTHORITY
    assert TagScheme.from_dict({k: v for k, v in AUTHORITY.to_dict().items() if k != "names"}).names == ()
    scheme = TagScheme(NAMES.fields, NAMES.types, NAMES.lists, surnames=NAMES.surnames, names=AUTHORITY.names)
    text = "Un estudio de las cosas\nM. L. de la Fuente\nLa Plata, 2021"
    record = {"title": "Un estudio de las cosas", "creator": ["de la Fuente, M. L."]}
    assert round_trip(tiny_tokenizer, scheme, record, text, ["title", "creator"])["creator"] == [
        "de la Fuente, María Laura"
    ]
    assert round_trip(tiny_tokenizer, NAMES, record, text, ["title", "creator"])["creator"] == ["de la Fuente, M. L."]


@pytest.mark.parametrize(
    ("span", "normalised"),
    [
        ("1 de marzo de 2019", "2019/03/01"),
        ("1º de marzo de 2019", "2019/03/01"),
        ("3 al 5 de marzo de 2019", "2019/03/03"),  # a range: its first day
        ("March 3-5, 2019", "2019/03/03"),
        ("March 1st, 2019", "2019/03/01"),
        ("1st of March 2019", "2019/03/01"),
        ("10 y 11 de septiembre del 2018", "2018/09/10"),
        ("febrero de 2021", "2021/02"),
        ("2019", "2019"),
    ],
)
def test_dates_on_the_page_are_normalised(span, normalised):
    assert normalise_date(span) == normalised


def test_dates_are_written_in_the_training_datas_form(tiny_tokenizer):
    assert date_form([{"date": "2019-03-01"}, {"date": "2020-05"}, {"date": "2021"}]) == ("-", "")
    assert date_form([{"date": "2019"}, {"date": "2021"}]) == ("-", "year") or date_form(
        [{"date": "2019"}, {"date": "2021"}]
    ) == ("/", "year")
    assert date_form([{"date": "2019/03/01"}, {"date": "2020/05/02"}]) == ("/", "day")
    assert date_form([]) == ("/", "")
    assert date_in_form("2019/03/01", ("-", "")) == "2019-03-01"
    assert date_in_form("2019/03", ("-", "day")) == "2019-03"  # the page has no day: none is invented
    assert date_in_form("2019/03/01", (".", "year")) == "2019"
    scheme = TagScheme(("date",), ("Tesis",), date_form=("-", ""))
    text = "La Plata, 3 al 5 de marzo de 2019"
    assert round_trip(tiny_tokenizer, scheme, {"date": "2019-03-03"}, text, ["date"]) == {"date": ["2019-03-03"]}


def test_a_date_written_only_inside_the_event_line_is_read_from_the_events_span(tiny_tokenizer):
    papers = [
        {"title": f"Trabajo {i}", "event": f"Jornadas de Arte {i} (La Plata, {2010 + i})", "date": f"{2010 + i}"}
        for i in range(3)
    ]
    theses = [{"title": f"Tesis {i}", "date": "2019-03-01"} for i in range(10)]
    records = [{**r, "original_text": f"{r['title']}\n{r.get('event', '1 de marzo de 2019')}"} for r in papers + theses]
    fields = ("title", "event", "date")
    aligned = [align_record(r["original_text"], r, list(fields)) for r in records]
    # the events' spans took the papers' years: 3 of 13 dates have no span of their own, all inside an event
    assert sum(span is None for a in aligned for (f, _), span in a.items() if f == "date") == 3
    assert date_hosts(records, aligned, fields) == (("date", "event"),)
    assert date_hosts(records + theses * 6, aligned + aligned[3:] * 6, fields) == ()  # 3 of 73: too rare to learn
    scheme = TagScheme(fields, ("Tesis",), date_form=("-", ""), date_hosts=(("date", "event"),))
    assert TagScheme.from_dict(scheme.to_dict()) == scheme
    text = records[1]["original_text"]
    assert round_trip(tiny_tokenizer, scheme, papers[1], text, list(fields)) == {
        "title": ["Trabajo 1"],
        "event": ["Jornadas de Arte 1 (La Plata, 2011)"],
        "date": ["2011"],
    }
    plain = TagScheme(fields, ("Tesis",), date_form=("-", ""))
    assert "date" not in round_trip(tiny_tokenizer, plain, papers[1], text, list(fields))
    # a date with a span of its own keeps it
    record = {**papers[1], "date": "2011-05-02"}
    both = text + "\n2 de mayo de 2011"
    assert round_trip(tiny_tokenizer, scheme, record, both, list(fields))["date"] == ["2011-05-02"]


def test_a_closed_list_field_is_read_after_the_document(tiny_tokenizer):
    licences = ("CC BY 4.0 International", "CC BY-NC-SA 4.0 International")
    scheme = TagScheme(("title",), ("Tesis",), classes=(("rights", licences), ("degree.name", ("Doctor en Física",))))
    assert scheme.labels[-5:] == [
        "rights=",
        "rights=CC BY 4.0 International",
        "rights=CC BY-NC-SA 4.0 International",
        "degree.name=",
        "degree.name=Doctor en Física",
    ]
    assert TagScheme.from_dict(scheme.to_dict()) == scheme
    text = "Un estudio de las cosas\nhttp://creativecommons.org/licenses/by-nc-sa/4.0/"
    record = {"title": "Un estudio de las cosas", "rights": licences[1]}
    prompts = class_prompts(tiny_tokenizer, scheme)
    features, _ = encode_tagged(record, text, "Tesis", ["title", "rights"], scheme, tiny_tokenizer, 512, prompts)
    # the last token of each field's prompt carries its label; degree.name is not a field of this type
    assert features["input_ids"][-len(prompts[1]) - len(prompts[0]) :] == prompts[0] + prompts[1]
    assert features["labels"][-len(prompts[1]) - 1] == scheme.first_class_label("rights") + 2
    assert features["labels"][-1] == -100
    values = round_trip(tiny_tokenizer, scheme, record, text, ["title", "rights"])
    assert values == {"title": ["Un estudio de las cosas"], "rights": [licences[1]]}
    record.pop("rights")  # no value: the "rights=" label, and nothing written
    assert "rights" not in round_trip(tiny_tokenizer, scheme, record, text, ["title", "rights"])


def test_a_closed_list_fields_label_weighs_class_weight_tokens_in_the_loss():
    licences = ("CC BY 4.0", "CC BY-NC-SA 4.0")
    scheme = TagScheme(("title",), ("Tesis",), classes=(("rights", licences),))
    rights = scheme.first_class_label("rights") + 1
    labels = torch.tensor([[scheme.first_type_label, 1, 2, 0, -100, rights, -100]])  # type, B I O, pad, class
    logits = torch.randn(1, 7, len(scheme.labels), generator=torch.Generator().manual_seed(0))
    each = torch.nn.functional.cross_entropy(logits[0], labels[0], ignore_index=-100, reduction="none")
    plain = tag_loss_for(scheme, 1.0)({"logits": logits}, labels)
    weighted = tag_loss_for(scheme, 32.0)({"logits": logits}, labels)
    assert torch.allclose(plain, each.sum() / 5)
    assert torch.allclose(weighted, (each.sum() + 31 * each[5]) / 5)  # still divided by the labelled count
    # the custom loop's per-document sums weigh the same way; a scheme without classes is unweighted
    model = lambda **batch: SimpleNamespace(logits=logits)  # noqa: E731
    sums, counts = example_losses_for(scheme, 32.0)(model, {"input_ids": labels, "labels": labels})
    assert torch.allclose(sums, weighted * 5) and counts.tolist() == [5]
    no_classes = TagScheme(("title",), ("Tesis",))
    assert torch.allclose(
        tag_loss_for(no_classes, 32.0)({"logits": logits[..., :4]}, labels.clamp(max=3)),
        tag_loss_for(no_classes, 1.0)({"logits": logits[..., :4]}, labels.clamp(max=3)),
    )


def test_a_rare_span_field_weighs_more_with_field_balance():
    # 100 aligned directors, 25 codirectors: at balance 0.5 a codirector label weighs sqrt(4) = 2
    coverage = {"director": [101, 100], "codirector": [25, 25], "doi": [10, 0]}
    assert field_weights(coverage, ("director", "codirector"), 0.5) == {"director": 1.0, "codirector": 2.0}
    assert field_weights(coverage, ("director", "codirector"), 0.0) == {}
    scheme = TagScheme(("director", "codirector"), ("Tesis",))
    b_co = scheme.begin("codirector")
    labels = torch.tensor([[scheme.first_type_label, 1, 2, 0, b_co, b_co + 1, -100]])  # type, B I O B I, pad
    logits = torch.randn(1, 7, len(scheme.labels), generator=torch.Generator().manual_seed(0))
    each = torch.nn.functional.cross_entropy(logits[0], labels[0], ignore_index=-100, reduction="none")
    balanced = tag_loss_for(scheme, 32.0, {"director": 1.0, "codirector": 2.0})({"logits": logits}, labels)
    assert torch.allclose(balanced, (each.sum() + each[4] + each[5]) / 6)
    model = lambda **batch: SimpleNamespace(logits=logits)  # noqa: E731
    sums, _ = example_losses_for(scheme, 32.0, {"codirector": 2.0})(model, {"input_ids": labels, "labels": labels})
    assert torch.allclose(sums, balanced * 6)
    assert torch.allclose(tag_loss_for(scheme, 32.0, {})({"logits": logits}, labels), each.sum() / 6)


def test_field_balance_weighs_the_catalogued_samples_rare_fields(tiny_llama, catalogued, tmp_path):
    from metatune.config import load_config
    from metatune.objectives import prepare

    base = [f"model.name={tiny_llama}", f"data.path={catalogued}", "training.objective=tag"]
    prepared = prepare(load_config(sets=base + [f"training.output_dir={tmp_path}", "tag.field_balance=0.5"]))
    weights = prepared.info.tagging["field_weights"]
    # the most frequent span field weighs 1; a thesis's codirector (rarer than authors) more
    assert min(weights.values()) == 1.0 and weights["codirector"] > weights["creator"]
    assert set(weights) <= set(prepared.info.tagging["scheme"]["fields"])


@pytest.fixture(scope="module")
def catalogued(tmp_path_factory):
    out = tmp_path_factory.mktemp("catalogued")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_sample.py"),
            "--catalogued",
            "--per-type",
            "6",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out / "sample.json"


def test_a_tag_run_on_the_catalogued_sample_produces_every_declared_field(tmp_path, tiny_llama, catalogued):
    from metatune.config import load_config
    from metatune.doctypes import TypeRegistry
    from metatune.objectives import open_run
    from metatune.training.run import train

    config = load_config(
        sets=[
            f"model.name={tiny_llama}",
            f"data.path={catalogued}",
            f"training.output_dir={tmp_path / 'run'}",
            "training.objective=tag",
            "data.max_input_tokens=320",
            "training.max_steps=40",
            "training.learning_rate=2e-3",
            "training.per_device_train_batch_size=8",
            "training.warmup_ratio=0",
            "training.logging_steps=5",
            "training.eval_each_epoch=false",
            "training.bf16=false",
        ]
    )
    run = train(config)
    info = json.loads((run / "metatune.json").read_text(encoding="utf-8"))
    assert info["tagging"]["field_weights"] == {}  # tag.field_balance is 0 by default
    produced = {f: p["how"] for f, p in info["tagging"]["produced"].items()}
    types = TypeRegistry.load().types
    declared = {f for t in ("Tesis", "Articulo", "Libro", "Objeto de conferencia") for f in types[t].fields}
    # every field of every trained type is accounted for, but those the config leaves out
    assert set(produced) == declared - set(config.data.exclude_fields)
    assert produced["title"] == "span" and produced["creator"] == "span" and produced["language"] == "detected"
    assert produced["rights"] == "classified" and produced["rightsurl"] == "classified"
    # six theses name too many degrees to be a closed list: without a span either, not produced
    assert produced["degree.name"] == "not produced"
    scheme = info["tagging"]["scheme"]
    assert set(scheme["surnames"]) == {"creator", "director", "codirector", "compiler"}
    # the training split's person names with a given name spelled out, for names the page prints with initials
    trained = json.loads(catalogued.read_text(encoding="utf-8"))["training"]
    persons = {n for r in trained for f in scheme["surnames"] for n in r.get(f) or []}
    assert scheme["names"] and set(scheme["names"]) <= persons
    assert all(re.search(r", \w\w", n) for n in scheme["names"])
    assert scheme["date_form"] == ["-", ""]
    card = (run / "README.md").read_text(encoding="utf-8")
    assert "`rights`: classified" in card
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < 0.5 * losses[0], losses
    tagger = open_run(run)
    data = json.loads(catalogued.read_text(encoding="utf-8"))["training"][:4]
    for extraction in tagger.extract([r["original_text"] for r in data], [r["type"] for r in data]):
        # a classified field is always one of the catalogue's values (the repository's default when the
        # page says nothing)
        assert extraction.data["rights"] in scheme["classes"]["rights"]


def test_the_catalogued_samples_conference_years_are_read_from_the_event_and_the_card_says_so():
    from metatune.config import load_config
    from metatune.data import load_for_training
    from metatune.formatting import InputFormat
    from metatune.objectives.tag.objective import TagObjective, tag_scheme

    config = load_config(sets=[f"data.path={REPO / 'data' / 'sample-catalogued' / 'sample.json'}"])
    registry, dataset = load_for_training(config.data, False)
    scheme, produced, _ = tag_scheme(
        dataset.split("training"), registry, config.data.fallback_type, InputFormat.from_settings(config.data)
    )
    assert scheme.date_hosts == (("date", "event"),) and produced["date"] == "span"
    # the names a page's initials are written as: every mention, so the often named come first
    mentions = Counter(
        n for r in dataset.split("training") for f in scheme.surnames for n in r.get(f) or [] if ", " in n
    )
    assert Counter(scheme.names) == Counter({n: k for n, k in mentions.items() if spelled_out(n)})
    assert max(Counter(scheme.names).values()) > 1
    tagging = {"scheme": scheme.to_dict(), "produced": {"date": {"how": "span"}, "title": {"how": "span"}}}
    note = TagObjective().card(card_info(tagging), "run").note
    assert "* `date`: span; with no span of its own, the first date inside `event`\n* `title`: span\n" in note


DEGREES = TagScheme(
    ("title", "degree.name"),
    ("Tesis",),
    mapped=(("degree.name", ("Licenciado en Química", "Licenciado en Física", "Doctor en Ingeniería")),),
)


@pytest.mark.parametrize(
    ("page", "written"),
    [
        ("Lic. en Física", "Licenciado en Física"),
        ("Licenciatura en Química", "Licenciado en Química"),
        ("Doctorado en Ingeniería", "Doctor en Ingeniería"),
        ("Maestría en Redes de Datos", "Maestría en Redes de Datos"),  # no training value: the page's phrase
    ],
)
def test_a_degree_the_page_writes_short_is_tagged_there_and_written_as_catalogued(tiny_tokenizer, page, written):
    text = f"Un estudio de las cosas\nTesis presentada para obtener el grado de {page}\nLa Plata, 2021"
    record = {"title": "Un estudio de las cosas", "degree.name": written}
    assert round_trip(tiny_tokenizer, DEGREES, record, text, ["title", "degree.name"])["degree.name"] == [written]
    assert TagScheme.from_dict(DEGREES.to_dict()) == DEGREES


def test_a_degree_span_run_on_into_a_lower_case_word_is_written_as_the_degree_it_holds():
    assert DEGREES.written_as("degree.name", "Doctorado en Ingeniería de") == "Doctor en Ingeniería"
    assert DEGREES.written_as("degree.name", "Maestría en Redes de") == "Maestría en Redes"
    # a lower-case word that ends a training value stays: "Química" ends one, "en" ends none, "química" does
    assert DEGREES.written_as("degree.name", "Lic. en química") == "Licenciado en Química"


def test_the_catalogued_samples_degree_names_are_mapped_and_the_card_says_so():
    from metatune.config import load_config
    from metatune.data import load_for_training
    from metatune.formatting import InputFormat
    from metatune.objectives.tag.objective import TagObjective, tag_scheme

    config = load_config(sets=[f"data.path={REPO / 'data' / 'sample-catalogued' / 'sample.json'}"])
    registry, dataset = load_for_training(config.data, False)
    training = dataset.split("training")
    scheme, produced, coverage = tag_scheme(
        training, registry, config.data.fallback_type, InputFormat.from_settings(config.data)
    )
    degrees = [r["degree.name"] for r in training if r.get("degree.name")]
    # 4 of the 75 degrees are on their page as catalogued; 66 written short or inflected ("Lic. en Química")
    assert produced["degree.name"] == "mapped" and coverage["degree.name"] == [len(degrees), 66]
    assert dict(scheme.mapped)["degree.name"][0] == Counter(degrees).most_common(1)[0][0]
    assert "B-degree.name" in scheme.labels and "degree.name=" not in scheme.labels
    # the licences stay classified: the page has a short label, a URL or nothing, never the words
    assert produced["rights"] == "classified"
    tagging = {"produced": {"degree.name": {"how": "mapped", "values": 75, "in_text": 66}}}
    note = TagObjective().card(card_info(tagging), "run").note
    assert "* `degree.name`: mapped (in the text for 66 of 75 training values)" in note


def test_page_order_names_and_verbatim_fields_keep_the_grobid_headers_scheme_as_it_was():
    from conftest import GROBID

    if not GROBID.is_file():
        pytest.skip("the GROBID header corpus is not here")
    from metatune.config import load_config
    from metatune.data import load_for_training
    from metatune.formatting import InputFormat
    from metatune.objectives.tag.objective import tag_scheme

    config = load_config(REPO / "configs" / "grobid-headers-tag.yaml", sets=[f"data.path={GROBID}"])
    registry, dataset = load_for_training(config.data, False)
    scheme, produced, _ = tag_scheme(
        dataset.split("training"), registry, config.data.fallback_type, InputFormat.from_settings(config.data)
    )
    # the labels of runs trained before the catalogue record: every field a span, names as on the page
    assert set(produced.values()) == {"span"}
    assert (scheme.surnames, scheme.classes, scheme.date_form, scheme.date_hosts) == ((), (), ("/", ""), ())
    assert scheme.names == () and scheme.mapped == ()
    assert scheme.labels[:3] == ["O", "B-title", "I-title"] and scheme.labels[-1] == "TYPE=Articulo"
    assert len(scheme.labels) == 16


def test_footnote_markers_glued_to_names_are_not_part_of_them(tiny_tokenizer):
    scheme = TagScheme(("creator",), ("Tesis",), lists=("creator",))
    text = "Ana Pérez1, Juan Smith†,2 and Olga Paz*"
    _, offsets = token_offsets(tiny_tokenizer, text, 100)
    words = [(0, 10), (12, 24), (29, 38)]  # each name with its marker, as a tagger might label it
    logits = torch.full((1 + len(offsets), len(scheme.labels)), -5.0)
    for i, (s, _) in enumerate(offsets, 1):
        inside = [k for k, (a, b) in enumerate(words) if a <= s < b]
        if inside:
            first = all(not (words[inside[0]][0] <= s2 < s) for s2, _ in offsets[: i - 1])
            logits[i, scheme.begin("creator") + (0 if first else 1)] = 5.0
        else:
            logits[i, 0] = 5.0
    _, values = decode(logits, offsets, text, scheme, allowed_transitions(scheme))
    assert values["creator"] == ["Ana Pérez", "Juan Smith", "Olga Paz"]


def test_a_name_span_loses_its_markers_and_a_lone_initial_is_no_name():
    from metatune.objectives.tag.labels import person_name

    assert person_name("Pérez1,2") == "Pérez" and person_name("Smith†") == "Smith"
    assert person_name("42 T. Aushev") == "T. Aushev" and person_name("* Ana Ruiz") == "Ana Ruiz"
    assert person_name("A") == "" and person_name("J. K.") == ""
    assert person_name("Wu Li") == "Wu Li" and person_name("Ng, A.") == "Ng, A."


def test_initials_labelled_apart_begin_the_name_that_follows_them(tiny_tokenizer):
    scheme = TagScheme(("creator",), ("Articulo",), lists=("creator",))
    text = "S. E. Lee, 35 H. Aihara, 42 A. M. Bakich, 37 a Ana Ruiz"
    _, offsets = token_offsets(tiny_tokenizer, text, 100)
    # as the model labelled them: each name's initials one span, its surname another ("H." + "Aihara");
    # "a" is an affiliation mark, not an initial
    spans = [(0, 9), (14, 16), (17, 23), (28, 33), (34, 40), (45, 46), (47, 55)]
    logits = torch.full((1 + len(offsets), len(scheme.labels)), -5.0)
    for i, (s, _) in enumerate(offsets, 1):
        inside = [k for k, (a, b) in enumerate(spans) if a <= s < b]
        if inside:
            first = all(not (spans[inside[0]][0] <= s2 < s) for s2, _ in offsets[: i - 1])
            logits[i, scheme.begin("creator") + (0 if first else 1)] = 5.0
        else:
            logits[i, 0] = 5.0
    _, values = decode(logits, offsets, text, scheme, allowed_transitions(scheme))
    assert values["creator"] == ["S. E. Lee", "H. Aihara", "A. M. Bakich", "Ana Ruiz"]


PARTICLES = TagScheme(
    ("title", "creator", "compiler"),
    ("Libro",),
    lists=("creator", "compiler"),
    surnames=("creator", "compiler"),
    names=(
        "de la Fuente, Ana",
        "de la Torre, Luis",
        "de San Martín, Silvina",
        "de Olmos, Diego",
        "del Valle, Ana",
        "del Río, Luis",
        "van Basten, Marco",  # one name alone teaches no particle
    ),
)


def decode_spans(tokenizer, scheme: TagScheme, text: str, spans: list[tuple[str, str, set[str]]]) -> dict:
    """What a tagger writes whose labels are exactly `spans`, each (words as written, field, its words
    labelled surname), found in text order: B- on a span's first token, I- on the others."""
    _, offsets = token_offsets(tokenizer, text, 511)
    logits = torch.full((1 + len(offsets), len(scheme.labels)), -5.0)
    logits[1:, 0] = 5.0
    cursor = 0
    for phrase, field, surname in spans:
        begin = text.index(phrase, cursor)
        cursor = begin + len(phrase)
        inside = [i for i, (s, _) in enumerate(offsets) if begin <= s < cursor]
        for i in inside:
            word_start = max(text.rfind(" ", 0, offsets[i][0] + 1), text.rfind("\n", 0, offsets[i][0] + 1)) + 1
            word = re.match(r"[^\s,;]+", text[word_start:])[0]
            label = scheme.begin(field, word in surname) + (i != inside[0])
            logits[1 + i, 0] = -5.0
            logits[1 + i, label] = 5.0
    return decode(logits, offsets, text, scheme, allowed_transitions(scheme), [])[1]


def test_the_particles_are_the_lower_case_words_that_begin_two_training_surnames():
    assert PARTICLES.particles == (("de", "la"), ("de",), ("del",))  # longest first
    assert NAMES.particles == ()


def test_a_surname_first_name_takes_the_particle_the_model_left_before_it(tiny_tokenizer):
    text = "Un libro de cosas\nAutor/a: de la Fuente, Julieta\nTesis de Martín Pérez\n"
    spans = [("la Fuente, Julieta", "creator", {"la", "Fuente"}), ("Martín Pérez", "creator", {"Pérez"})]
    # "de" before a name that begins with its given name is not a particle of it
    assert decode_spans(tiny_tokenizer, PARTICLES, text, spans)["creator"] == ["de la Fuente, Julieta", "Pérez, Martín"]
    assert decode_spans(tiny_tokenizer, NAMES, text, spans)["creator"] == ["la Fuente, Julieta", "Pérez, Martín"]


def test_a_particle_labelled_as_a_given_name_goes_with_the_surname(tiny_tokenizer):
    text = "Un libro de cosas\nJulieta de la Fuente y Ana del Valle\n"
    spans = [("Julieta de la Fuente", "creator", {"Fuente"}), ("Ana del Valle", "creator", {"Valle"})]
    assert decode_spans(tiny_tokenizer, PARTICLES, text, spans)["creator"] == [
        "de la Fuente, Julieta",
        "del Valle, Ana",
    ]


def test_a_name_the_page_writes_surname_first_is_read_by_its_comma_even_when_split_there(tiny_tokenizer):
    text = "Un libro de cosas\nCompilación: Pérez Esquivel, Julieta; de la Fuente, Nicolás\n"
    spans = [
        ("Pérez Esquivel", "compiler", {"Esquivel"}),  # "Pérez" left a given name
        ("Julieta", "compiler", set()),  # the given names begun as a name of their own
        ("de la Fuente", "compiler", {"de", "la", "Fuente"}),
        ("Nicolás", "compiler", set()),
    ]
    assert decode_spans(tiny_tokenizer, PARTICLES, text, spans)["compiler"] == [
        "Pérez Esquivel, Julieta",
        "de la Fuente, Nicolás",
    ]


def test_names_listed_with_commas_in_the_pages_order_stay_apart(tiny_tokenizer):
    text = "Un libro de cosas\nMaría Laura Villagra, Nicolás Iturbe y Paula Castellucci\n"
    spans = [
        ("María Laura Villagra", "creator", {"Villagra"}),
        ("Nicolás Iturbe", "creator", {"Iturbe"}),
        ("Paula Castellucci", "creator", {"Castellucci"}),
    ]
    assert decode_spans(tiny_tokenizer, PARTICLES, text, spans)["creator"] == [
        "Villagra, María Laura",
        "Iturbe, Nicolás",
        "Castellucci, Paula",
    ]


LINE = "Un libro de cosas\nCompilación: Pérez Esquivel, Julieta; de la Fuente, Nicolás\n"


def decode_line(tokenizer, scheme: TagScheme, dtype=torch.float32) -> dict:
    """The line's first compiler labelled a compiler with confidence, its second a creator by a hair
    (creator 1.0 against compiler 0.5 in the logits of each of its tokens)."""
    _, offsets = token_offsets(tokenizer, LINE, 511)
    logits = torch.full((1 + len(offsets), len(scheme.labels)), -5.0)
    logits[1:, 0] = 5.0
    for phrase, scores in [
        ("Pérez Esquivel, Julieta", {"compiler": 5.0}),
        ("de la Fuente, Nicolás", {"creator": 1.0, "compiler": 0.5}),
    ]:
        begin = LINE.index(phrase)
        inside = [i for i, (s, _) in enumerate(offsets) if begin <= s < begin + len(phrase)]
        for i in inside:
            logits[1 + i, 0] = -5.0
            for field, score in scores.items():
                logits[1 + i, scheme.begin(field) + (i != inside[0])] = score
    return decode(logits.to(dtype), offsets, LINE, scheme, allowed_transitions(scheme), [])[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # a bf16 reading's logits too
def test_items_of_one_list_line_share_the_field_under_which_they_are_most_likely(tiny_tokenizer, dtype):
    from dataclasses import replace

    # the training split never writes a creator beside a compiler on one line: the line is one field's
    assert decode_line(tiny_tokenizer, replace(PARTICLES, mixed_lists=()), dtype) == {
        "compiler": ["Pérez Esquivel, Julieta", "de la Fuente, Nicolás"]
    }
    # where it does, or for runs saved before the rule, each item keeps the model's field
    split = {"compiler": ["Pérez Esquivel, Julieta"], "creator": ["de la Fuente, Nicolás"]}
    assert decode_line(tiny_tokenizer, replace(PARTICLES, mixed_lists=(("compiler", "creator"),)), dtype) == split
    assert decode_line(tiny_tokenizer, PARTICLES, dtype) == split


def test_the_list_fields_written_side_by_side_on_one_line_are_read_from_the_training_split():
    from metatune.alignment import Span
    from metatune.objectives.tag.objective import mixed_list_fields

    text = "Ana Pérez, Universidad de Nadie; Luis Gómez\nKeywords: uno, dos\nBeto Ruiz\nIndex"
    at = text.index
    aligned = [
        {
            ("creator", 0): Span(0, 9),
            ("affiliation", 0): Span(at("Universidad"), at(";")),
            ("creator", 1): Span(at("Luis"), at("\nKey")),
            ("keywords", 0): Span(at("uno"), at(", dos")),
            ("keywords", 1): Span(at("dos"), at("\nBeto")),
            ("creator", 2): Span(at("Beto"), at("\nIndex")),  # after a line break: not side by side
            ("title", 0): None,
        }
    ]
    records = [{"original_text": text}]
    lists = ("creator", "affiliation", "keywords")
    assert mixed_list_fields(records, aligned, lists) == (("affiliation", "creator"),)
    assert mixed_list_fields(records, aligned, ("creator", "keywords")) == ()
