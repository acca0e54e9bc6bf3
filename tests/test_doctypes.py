"""Document types as data: built-in table, prompts, JSON schemas, user YAML, aliases, target fields."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from metatune.config import DataSettings
from metatune.doctypes import FieldSelection, TypeRegistry
from metatune.errors import MetatuneError
from metatune.formatting import InputFormat, build_prompts, make_examples

from conftest import SAMPLE

DEFAULT_EXCLUDE = DataSettings().exclude_fields
GENERAL_FIELDS = ["title", "creator", "date", "language", "rights", "rightsurl", "originPlaceInfo"]


@pytest.fixture(scope="module")
def registry():
    return TypeRegistry.load()


def sample_record(doc_type: str) -> dict:
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return next(r for r in data["training"] if r["type"] == doc_type)


def example_json_in(prompt: str) -> dict:
    """The one JSON object the instruction shows."""
    found = re.findall(r"\{.*\}", prompt)
    assert len(found) == 1, prompt
    return json.loads(found[0])


def test_builtin_types_and_their_fields(registry):
    assert set(registry.types) == {"general", "Tesis", "Articulo", "Libro", "Objeto de conferencia"}
    expected = {
        "Tesis": ["director", "codirector", "degree.name", "degree.grantor"],
        "Libro": ["publisher", "isbn", "compiler"],
        "Articulo": ["journalTitle", "journalVolumeAndIssue", "issn", "event"],
        "Objeto de conferencia": ["issn", "event"],
        "general": [],
    }
    for name, own in expected.items():
        fields = FieldSelection.of(None, DEFAULT_EXCLUDE).fields(registry.types[name])
        assert fields[: len(GENERAL_FIELDS)] == GENERAL_FIELDS
        assert set(own) <= set(fields)
        assert not {"keywords", "abstract", "subject"} & set(fields)  # the default target leaves them out
    tesis = registry.types["Tesis"]
    assert tesis.fields["creator"] == "array" and tesis.fields["director"] == "array"
    assert tesis.fields["title"] == "string" and tesis.fields["degree.grantor"] == "string"
    assert {"keywords", "abstract", "subject"} <= set(registry.general.fields)  # known, just not asked for


def test_prompt_names_the_fields_and_shows_one_example(registry):
    for doc_type in registry.types.values():
        fields = FieldSelection.of(None, DEFAULT_EXCLUDE).fields(doc_type)
        prompt = doc_type.prompt(fields)
        assert doc_type.noun in prompt
        assert f"Campos posibles: {', '.join(fields)}." in prompt
        example = example_json_in(prompt)
        assert example and set(example) <= set(fields)
        assert "abstract" not in example and "keywords" not in example
    thesis_example = example_json_in(registry.types["Tesis"].prompt(["title", "director"]))
    assert set(thesis_example) == {"title", "director"} and isinstance(thesis_example["director"], list)


def test_prompt_without_example_keeps_the_instruction(registry):
    tesis = registry.types["Tesis"]
    short, full = tesis.prompt(["title", "director"], example=False), tesis.prompt(["title", "director"])
    assert full.startswith(short) and "Campos posibles: title, director." in short
    assert "{" not in short and "Ejemplo de formato" in full


def test_json_schema_accepts_real_targets_and_rejects_others(registry):
    for name in ("Tesis", "Articulo", "Libro", "Objeto de conferencia"):
        doc_type = registry.types[name]
        fields = FieldSelection.of(None, DEFAULT_EXCLUDE).fields(doc_type)
        schema = doc_type.json_schema(fields)
        assert schema["title"] == name and list(schema["properties"]) == fields
        record = sample_record(name)
        jsonschema.validate({f: record[f] for f in fields if f in record}, schema)
    schema = registry.types["Tesis"].json_schema(["title", "creator"])
    assert schema["properties"]["creator"] == {"type": "array", "items": {"type": "string"}}
    for bad in ({"title": ["a list"]}, {"creator": "Pérez, Juan"}, {"title": "x", "isbn": "1"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize(
    "spelling, name",
    [
        ("Artículo", "Articulo"),
        ("articulo", "Articulo"),
        ("  ARTICULO ", "Articulo"),
        ("journal article", "Articulo"),
        ("Tesis de doctorado", "Tesis"),
        ("thesis", "Tesis"),
        ("ponencia", "Objeto de conferencia"),
        ("objeto de conferencia", "Objeto de conferencia"),
        ("book", "Libro"),
        ("GENERAL", "general"),
    ],
)
def test_aliases(registry, spelling, name):
    assert registry.find(spelling).name == name


def test_unknown_names(registry):
    for name in ("Revista", "", None, 3, ["Tesis"]):
        assert registry.find(name) is None


def test_target_fields_are_configurable(registry):
    tesis = registry.types["Tesis"]
    record = dict(
        sample_record("Tesis"),
        **{"uri": "http://x", "identifier.uri": "http://y", "isRelatedWith": "z", "subject": ["s"]},
    )
    fmt = InputFormat("prompt", None, tuple(DEFAULT_EXCLUDE))
    prompts = build_prompts(registry, fmt)
    target = json.loads(make_examples(record, tesis, registry, fmt, prompts)[0].target)
    assert set(target) == set(fmt.selection.fields(tesis)) & set(record)
    assert {"title", "creator", "director", "degree.name"} <= set(target)
    assert not {"keywords", "abstract", "subject", "uri", "identifier.uri", "isRelatedWith"} & set(target)

    # include_fields picks fields (in its order), limited to those the type has
    assert FieldSelection.of(["date", "title", "isbn"], []).fields(tesis) == ["date", "title"]
    assert FieldSelection.of(["date", "title", "isbn"], []).fields(registry.types["Libro"]) == ["date", "title", "isbn"]
    fmt = InputFormat("prompt", ["title", "abstract"], ())
    prompts = build_prompts(registry, fmt)
    target = json.loads(make_examples(record, tesis, registry, fmt, prompts)[0].target)
    assert target == {"title": record["title"], "abstract": record["abstract"]}
    assert "Campos posibles: title, abstract." in prompts["Tesis"]["prefix"]


def test_general_examples_ask_only_the_general_fields(registry):
    record = sample_record("Tesis")
    fmt = InputFormat("prompt", None, tuple(DEFAULT_EXCLUDE))
    prompts = build_prompts(registry, fmt)
    tesis = registry.types["Tesis"]
    assert len(make_examples(record, tesis, registry, fmt, prompts)) == 1
    own, general = make_examples(record, tesis, registry, fmt, prompts, general_example=True)
    assert own.doc_type == "Tesis" and general.doc_type == "general"
    assert own.document == general.document == record["original_text"]
    assert "director" in json.loads(own.target)
    assert set(json.loads(general.target)) == set(GENERAL_FIELDS) & set(record)
    assert general.prefix == prompts["general"]["prefix"] and "director" not in general.prefix
    # a document of the general type gets no second, identical example
    assert len(make_examples(record, registry.general, registry, fmt, prompts, general_example=True)) == 1


def test_user_types_add_and_replace(tmp_path):
    path = tmp_path / "types.yaml"
    path.write_text(
        """
Informe:
  aliases: [informe técnico, report]
  noun: el informe
  extends: general
  fields: {institution: string, reviewers: array}
  example: {institution: Facultad de Informática}
Tesis:
  noun: la tesina
  fields: {title: string, creator: array, director: array}
  example: {title: Un título}
Artículo:
  extends: general
  fields: {doi: string}
""",
        encoding="utf-8",
    )
    registry = TypeRegistry.load(path)
    informe = registry.find("Informe Técnico")
    assert informe.name == "Informe" and registry.find("report") is informe
    assert informe.fields["reviewers"] == "array" and informe.fields["title"] == "string"  # general's, inherited
    assert informe.example["institution"] == "Facultad de Informática" and "creator" in informe.example
    assert "Campos posibles: title, creator" in informe.prompt(FieldSelection.of(None, DEFAULT_EXCLUDE).fields(informe))

    tesis = registry.find("Tesis")
    assert list(tesis.fields) == ["title", "creator", "director"] and tesis.noun == "la tesina"
    assert registry.find("thesis") is None  # the replaced type's aliases went with it

    # "Artículo" replaced the built-in "Articulo": one type, reachable by either spelling
    assert "Articulo" not in registry.types
    assert registry.find("articulo").name == "Artículo" and "journalTitle" not in registry.find("articulo").fields
    assert {"Libro", "Objeto de conferencia", "general"} <= set(registry.types)  # the rest untouched


@pytest.mark.parametrize(
    "text, message",
    [
        ("Informe:\n  fields: {title: text}\n", "field kinds must be 'string' or 'array'"),
        ("Informe:\n  extends: Reporte\n  fields: {title: string}\n", "extends unknown type 'Reporte'"),
        ("Informe:\n  noun: el informe\n", "has no fields"),
        ("Informe: [title, creator]\n", "expected a mapping"),
        ("Informe:\n  fields: [title]\n", "'fields' must be a mapping"),
        ("Informe:\n  fileds: {title: string}\n", "unknown key 'fileds'"),
        ("- Informe\n", "expected a mapping of type name"),
        ("Informe: {fields: {title: string}\n", "invalid YAML"),
    ],
)
def test_bad_types_file(tmp_path, text, message):
    path = tmp_path / "types.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MetatuneError) as e:
        TypeRegistry.load(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(path) in str(e.value)


def test_missing_types_file(tmp_path):
    with pytest.raises(MetatuneError, match="document types file not found"):
        TypeRegistry.load(tmp_path / "nope.yaml")


def test_registry_round_trips_through_metatune_json(registry):
    again = TypeRegistry.from_dict(json.loads(json.dumps(registry.to_dict())))
    assert again.to_dict() == registry.to_dict()
    assert again.find("Artículo").name == "Articulo"
