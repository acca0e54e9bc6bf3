"""Reading datasets: SEDICI layout, flat lists (seeded stratified split), JSON Lines, encodings, the Hub."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from metatune.config import DataSettings
from metatune.data import ensure_local, hub_token, load_dataset, load_for_training, split_records, validate_file
from metatune.doctypes import TypeRegistry
from metatune.errors import MetatuneError

from conftest import SAMPLE

TOKEN = "hf_SecretTokenValue1234567890"


@pytest.fixture(scope="module")
def registry():
    return TypeRegistry.load()


@pytest.fixture(scope="module")
def sample():
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


def all_records(sample) -> list[dict]:
    return [r for split in ("training", "validation", "test") for r in sample[split]]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def ids(records) -> list[str]:
    return [r["id"] for r in records]


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(MetatuneError) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- layouts ----------------------------------------------------------------------------------------


def test_sedici_layout(registry, sample):
    dataset = load_dataset(SAMPLE, registry)
    assert not dataset.was_split
    assert {k: len(v) for k, v in dataset.splits.items()} == {"training": 24, "validation": 4, "test": 4}
    assert ids(dataset.split("training")) == ids(sample["training"])
    record = dataset.split("validation")[0]
    assert record["original_text"] and record["title"] and record["type"] in registry.types  # metadata at top level


def test_dc_type_and_split_aliases(tmp_path, registry, sample):
    moved = [{**{k: v for k, v in r.items() if k != "type"}, "dc.type": r["type"]} for r in sample["training"]]
    path = write_json(tmp_path / "d.json", {"train": moved, "dev": sample["validation"], "test": sample["test"]})
    dataset = load_dataset(path, registry)
    assert len(dataset.split("training")) == 24 and len(dataset.split("validation")) == 4
    assert dataset.split("training")[0]["dc.type"] == "Tesis"
    moved[0]["type"] = ""  # an empty `type` next to a `dc.type`: the latter counts
    moved[1].update({"type": None, "dc.type": "Revista"})
    write_json(path, {"training": moved, "validation": sample["validation"]})
    _, problems = validate_file(path, registry)
    assert [(p.where, p.field) for p in problems] == [("training[1]", "dc.type")]
    assert "'Revista'" in problems[0].message


def check_stratified_split(splits: dict[str, list[dict]], records: list[dict]) -> None:
    assert sorted(ids(r for s in splits.values() for r in s)) == sorted(ids(records))  # each record exactly once
    per_type = Counter(r["type"] for r in records)
    for doc_type, n in per_type.items():
        counts = {name: sum(r["type"] == doc_type for r in split) for name, split in splits.items()}
        if n >= 3:
            assert min(counts.values()) >= 1, (doc_type, counts)  # every type in every split
        if n >= 3:
            expected = max(1, round(n * 0.1))
            assert counts["validation"] == counts["test"] == expected
            assert counts["training"] == n - 2 * expected


def test_flat_list_is_split_80_10_10_stratified_and_seeded(tmp_path, registry, sample):
    records = all_records(sample)
    path = write_json(tmp_path / "flat.json", records)
    dataset = load_dataset(path, registry, seed=42)
    assert dataset.was_split
    assert {k: len(v) for k, v in dataset.splits.items()} == {"training": 24, "validation": 4, "test": 4}
    check_stratified_split(dataset.splits, records)

    same = load_dataset(path, registry, seed=42)
    assert all(ids(same.splits[s]) == ids(dataset.splits[s]) for s in dataset.splits)
    other = load_dataset(path, registry, seed=7)
    assert ids(other.splits["test"]) != ids(dataset.splits["test"])
    check_stratified_split(other.splits, records)


def test_split_with_uneven_type_counts(sample):
    base = all_records(sample)
    records = []
    for doc_type, n in (("Tesis", 3), ("Articulo", 5), ("Libro", 11), ("Objeto de conferencia", 40), ("general", 2)):
        pool = [r for r in base if r["type"] == doc_type] or base[:1]
        records += [dict(pool[i % len(pool)], id=f"{doc_type}-{i}", type=doc_type) for i in range(n)]
    splits = split_records(records, seed=3)
    check_stratified_split(splits, records)
    total = len(records)
    assert abs(len(splits["training"]) - 0.8 * total) <= 5
    assert sum(r["type"] == "Objeto de conferencia" for r in splits["test"]) == 4  # 10% of 40


def test_json_lines(tmp_path, registry, sample):
    records = all_records(sample)
    lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n"
    for name in ("d.jsonl", "d.json"):  # a .json file holding JSON Lines is read as JSON Lines too
        path = tmp_path / name
        path.write_text(lines, encoding="utf-8")
        dataset = load_dataset(path, registry)
        assert dataset.was_split and sum(len(v) for v in dataset.splits.values()) == len(records)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(records[0]) + '\n{"type": \n', encoding="utf-8")
    assert error(load_dataset, path, registry).startswith(f"{path}: invalid JSON on line 2")


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_non_utf8_file_is_decoded(tmp_path, registry, encoding):
    text = (
        "Universidad Nacional de La Plata. Facultad de Informática. Tesis de Maestría. "
        "Año 2019. Autor: José Muñoz. Diseño de señales para niños en el área pública."
    )
    title = "Diseño de señales para niños"
    if encoding == "cp1252":
        text += " Costo: 50 € — «edición» ‘única’."
    records = [
        {"type": "Tesis", "original_text": text, "title": title, "creator": ["Muñoz, José"]},
        {"type": "Articulo", "original_text": "Educación y género en Córdoba.", "title": "Educación"},
        {"type": "Libro", "original_text": "Economía política del agua.", "title": "Economía"},
    ]
    path = tmp_path / "d.json"
    path.write_bytes(json.dumps(records, ensure_ascii=False, indent=1).encode(encoding))
    with pytest.raises(UnicodeDecodeError):
        path.read_text(encoding="utf-8")
    dataset = load_dataset(path, registry)
    got = {r["title"]: r for s in dataset.splits.values() for r in s}
    assert got[title]["original_text"] == text and got[title]["creator"] == ["Muñoz, José"]
    assert "Educación" in got and "Economía" in got


def test_utf8_with_bom(tmp_path, registry, sample):
    path = tmp_path / "d.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(sample, ensure_ascii=False).encode("utf-8"))
    assert len(load_dataset(path, registry).split("training")) == 24


# --- problems ----------------------------------------------------------------------------------------


def test_every_problem_is_reported_with_file_record_and_field(tmp_path, registry, sample):
    training = [dict(r) for r in sample["training"][:4]]
    del training[0]["original_text"]
    training[1]["original_text"] = "   \n"
    training[2]["original_text"] = 42
    training[3]["type"] = "Revista"
    path = write_json(tmp_path / "d.json", {"training": training, "validation": sample["validation"], "test": []})
    dataset, problems = validate_file(path, registry)
    rendered = [p.render(path) for p in problems]
    assert rendered == [
        f"{path}: record training[0]: field 'original_text': missing",
        f"{path}: record training[1]: field 'original_text': empty text",
        f"{path}: record training[2]: field 'original_text': expected text, got int",
        f"{path}: record training[3]: field 'type': unknown document type 'Revista' "
        "(known: general, Tesis, Libro, Articulo, Objeto de conferencia; or set data.fallback_type)",
    ]
    message = error(load_dataset, path, registry)
    assert message == rendered[0] + " (and 3 more problems; run `metatune data validate`)"


def test_fallback_type_accepts_unknown_types(tmp_path, registry, sample):
    training = [dict(r, type="Revista") for r in sample["training"]]
    path = write_json(tmp_path / "d.json", {"training": training, "validation": sample["validation"]})
    assert "unknown document type 'Revista'" in error(load_dataset, path, registry)
    assert len(load_dataset(path, registry, fallback_type="general").split("training")) == 24
    missing = [{k: v for k, v in r.items() if k != "type"} for r in sample["training"]]
    path = write_json(tmp_path / "m.json", {"training": missing, "validation": sample["validation"]})
    assert "field 'type': missing" in error(load_dataset, path, registry)


def test_file_level_errors(tmp_path, registry):
    assert error(load_dataset, tmp_path / "nope.json", registry) == f"{tmp_path / 'nope.json'}: dataset file not found"
    assert "is a directory" in error(load_dataset, tmp_path, registry)
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": [{"type": "Tesis",, }]}', encoding="utf-8")
    assert error(load_dataset, bad, registry).startswith(f"{bad}: invalid JSON at line 1, column")
    for data in ({"records": []}, 3, {"training": {"a": 1}}):
        write_json(bad, data)
        assert error(load_dataset, bad, registry).startswith(f"{bad}: ")
    write_json(bad, [1, "two"])
    assert "record all[0]: expected an object, got int" in error(load_dataset, bad, registry)


def test_empty_split(tmp_path, registry, sample):
    path = write_json(tmp_path / "d.json", {"training": sample["training"], "validation": []})
    dataset = load_dataset(path, registry)
    assert error(dataset.split, "validation") == f"{path}: split 'validation' is empty"
    assert error(dataset.split, "test") == f"{path}: split 'test' is empty"
    settings = DataSettings(path=str(path))
    assert "split 'validation' is empty" in error(load_for_training, settings)
    _, loaded = load_for_training(settings, need_validation=False)  # training without validation is fine
    assert len(loaded.split("training")) == 24


# --- the Hub ------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, sample):
    """huggingface_hub.hf_hub_download replaced: records its arguments, 'downloads' the sample."""
    import huggingface_hub

    calls = []
    cache = tmp_path / "hub-cache"

    def download(**kwargs):
        calls.append(kwargs)
        cache.mkdir(exist_ok=True)
        out = cache / Path(kwargs["filename"]).name
        write_json(out, sample)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    for name in ("TOKEN_HUGGING_FACE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return calls


@pytest.mark.parametrize("variable", ["TOKEN_HUGGING_FACE", "HF_TOKEN"])
def test_hub_download_with_token_from_the_environment(
    tmp_path, fake_hub, monkeypatch, capfd, caplog, variable, registry
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(variable, TOKEN)
    target = tmp_path / "data" / "nested" / "sedici.json"
    settings = DataSettings(path=str(target), hub_dataset="unlp/sedici")
    _, dataset = load_for_training(settings)
    assert fake_hub == [{"repo_id": "unlp/sedici", "filename": "sedici.json", "repo_type": "dataset", "token": TOKEN}]
    assert target.is_file() and dataset.path == target  # cached where the config says
    assert len(dataset.split("training")) == 24
    assert [p.name for p in target.parent.iterdir()] == ["sedici.json"]  # no temporary file left
    load_for_training(settings)
    assert len(fake_hub) == 1  # the second time it is read from disk
    out, err = capfd.readouterr()
    assert "unlp/sedici" in out
    assert TOKEN not in out + err + caplog.text


def test_hub_token_from_a_dot_env_file(tmp_path, fake_hub, monkeypatch, capfd, caplog):
    import os

    caplog.set_level(logging.DEBUG)
    assert hub_token() is None
    (tmp_path / ".env").write_text(f"OTHER=1\nTOKEN_HUGGING_FACE={TOKEN}\n", encoding="utf-8")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # .env is looked for from the working directory upwards
    path = ensure_local(tmp_path / "d.json", "unlp/sedici", hub_filename="remote/name.json")
    assert fake_hub[0]["token"] == TOKEN and fake_hub[0]["filename"] == "remote/name.json"
    assert path == tmp_path / "d.json" and path.is_file()
    assert "TOKEN_HUGGING_FACE" not in os.environ and "OTHER" not in os.environ  # read, not exported
    monkeypatch.setenv("HF_TOKEN", "hf_FromTheEnvironment")
    assert hub_token() == "hf_FromTheEnvironment"  # the environment wins over .env
    out, err = capfd.readouterr()
    assert TOKEN not in out + err + caplog.text


def test_hub_download_failure_is_one_line_without_the_token(tmp_path, monkeypatch, capfd):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    def fail(**kwargs):
        response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/api/datasets/unlp/private"))
        raise HfHubHTTPError(f"401 Unauthorized for token {kwargs['token']}\nmore details", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    target = tmp_path / "d.json"
    message = error(ensure_local, target, "unlp/private")
    assert message.startswith(f"{target}: not on disk and the download of d.json from 'unlp/private' failed")
    assert "401 Unauthorized" in message and TOKEN not in message
    assert not target.exists() and list(tmp_path.iterdir()) == []
    out, err = capfd.readouterr()
    assert TOKEN not in out + err


def test_no_hub_dataset_means_file_not_found(tmp_path, fake_hub, registry):
    settings = DataSettings(path=str(tmp_path / "missing.json"))
    assert error(load_for_training, settings) == f"{tmp_path / 'missing.json'}: dataset file not found"
    assert fake_hub == []


def test_a_file_without_records_is_not_ok(tmp_path, registry):
    for content in ([], {"training": [], "validation": [], "test": []}):
        path = write_json(tmp_path / "empty.json", content)
        with pytest.raises(MetatuneError, match=r"empty.json: no records$"):
            validate_file(path, registry)


def test_duplicate_ids_and_a_document_in_two_splits_are_warned_about(tmp_path, registry, sample):
    data = json.loads(json.dumps(sample))
    data["validation"][1]["id"] = data["training"][0]["id"]
    data["test"][2]["original_text"] = data["training"][5]["original_text"]
    dataset, problems = validate_file(write_json(tmp_path / "d.json", data), registry)
    assert problems == []
    assert dataset.warnings == [
        "record test[2] has the same text as training[5]: one document in two splits (training, test)",
        f"id {data['training'][0]['id']!r} is shared by records training[0], validation[1]",
    ]

    flat = [r for s in ("training", "validation", "test") for r in sample[s]]
    flat.append(dict(flat[0]))  # the same document twice in a flat list: it may land in two splits
    dataset, problems = validate_file(write_json(tmp_path / "flat.json", flat), registry)
    assert f"id {flat[0]['id']!r} is shared by records all[0], all[32]" in dataset.warnings


def test_writes_never_follow_a_planted_temporary_name(tmp_path, registry):
    from metatune.data import write_split

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    out = tmp_path / "out.json"
    (tmp_path / "out.json.tmp").symlink_to(victim)
    write_split(load_dataset(SAMPLE, registry), out)
    assert victim.read_text(encoding="utf-8") == "keep me"
    assert json.loads(out.read_text(encoding="utf-8"))["training"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.json.tmp", "victim.txt"]  # no temporary left


def test_write_atomic(tmp_path):
    import os

    from metatune.files import UMASK, write_atomic

    path = tmp_path / "a.txt"
    write_atomic(path, "uno")
    write_atomic(path, b"dos")
    assert path.read_text() == "dos" and os.stat(path).st_mode & 0o777 == 0o666 & ~UMASK
    with pytest.raises(TypeError):
        write_atomic(path, 3)
    assert path.read_text() == "dos" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
