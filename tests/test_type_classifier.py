"""The document-type classifier: what it learns, its JSON file, and its use by a saved generate run."""

import json
import shutil
import time
from pathlib import Path

import pytest

from metatune.errors import MetatuneError
from metatune.objectives.generate.type_classifier import FILE, MAX_CHARS, TypeClassifier, accuracy, features

REPO = Path(__file__).resolve().parent.parent
HOLDOUT = REPO / "data" / "sample" / "holdout.txt"

TRAIN = [
    ("Tesis de posgrado para optar al título de Doctor. Director: Pérez. Codirector: Gómez.", "Tesis"),
    ("Tesis de grado, Licenciatura en Química. Directora: Ana Ruiz. Facultad de Ciencias.", "Tesis"),
    ("Trabajo de tesis doctoral. Dirección: Juan Sosa. Grado: Doctor en Física.", "Tesis"),
    ("Revista de Química, vol. 3, no. 2. ISSN 1234-5678. Artículo original recibido en marzo.", "Articulo"),
    ("Anales de Física, vol. 12. ISSN 9876-5432. Artículo de investigación, páginas 10-20.", "Articulo"),
    ("Cuadernos de Historia, vol. 7, no. 1, ISSN 1111-2222. Artículo.", "Articulo"),
]
HELD_OUT = [
    ("TESIS DE MAESTRÍA. Director: Luis Álvarez. Magíster en Educación.", "Tesis"),
    ("Revista Arte, vol. 5, no. 3 (2023). ISSN 4444-1111.", "Articulo"),
]


def fitted() -> TypeClassifier:
    return TypeClassifier.fit([t for t, _ in TRAIN], [y for _, y in TRAIN])


def test_features_fold_case_and_accents_into_unigrams_and_bigrams():
    assert features("Tesis de MAESTRÍA") == ["tesis", "de", "maestria", "tesis de", "de maestria"]
    assert features("x " * MAX_CHARS) == features("x " * (MAX_CHARS // 2))  # only the start is read


def test_learns_separable_texts_and_gets_held_out_ones_right():
    classifier = fitted()
    assert classifier.types == ["Articulo", "Tesis"]
    for text, label in TRAIN + HELD_OUT:
        predicted, probability = classifier.predict(text)
        assert predicted == label and probability > 0.9, text
    scores = accuracy(classifier, [t for t, _ in HELD_OUT], [y for _, y in HELD_OUT])
    assert scores["overall"] == {"n": 2, "correct": 2, "accuracy": 1.0}
    assert scores["by_type"]["Tesis"] == {"n": 1, "correct": 1, "accuracy": 1.0}


def test_json_round_trip_gives_identical_predictions(tmp_path):
    classifier = fitted()
    path = classifier.save(tmp_path)
    assert path == tmp_path / FILE
    raw = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, nothing to execute
    assert raw["types"] == ["Articulo", "Tesis"] and raw["documents"] == [3, 3]
    for again in (TypeClassifier.from_dict(classifier.to_dict()), TypeClassifier.load(tmp_path)):
        for text, _ in TRAIN + HELD_OUT + [("algo sin relación", None)]:
            assert again.scores(text) == classifier.scores(text)


def test_vocabulary_is_capped_to_the_most_frequent_features():
    texts, labels = [t for t, _ in TRAIN], [y for _, y in TRAIN]
    everything = TypeClassifier.fit(texts, labels).counts
    kept = TypeClassifier.fit(texts, labels, max_features=5).counts
    assert len(kept) == 5 and kept["de"] == [3, 3] and kept["issn"] == [3, 0]
    dropped = [sum(c) for f, c in everything.items() if f not in kept]
    assert min(sum(c) for c in kept.values()) >= max(dropped)


def test_one_type_always_answers_that_type():
    classifier = TypeClassifier.fit(["un artículo", "otro artículo de revista"], ["Articulo", "Articulo"])
    assert classifier.predict("Tesis de posgrado. Director: Pérez.") == ("Articulo", 1.0)
    assert classifier.predict("") == ("Articulo", 1.0)


def test_a_huge_text_is_bounded():
    classifier = fitted()
    text = "Tesis de posgrado. Director: Pérez. " + "palabra " * (10 * 1024 * 1024 // 8)
    began = time.perf_counter()
    assert classifier.predict(text)[0] == "Tesis"
    assert time.perf_counter() - began < 2


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(MetatuneError, match=r"type_classifier\.json: type classifier not found"):
        TypeClassifier.load(tmp_path)
    with pytest.raises(MetatuneError, match="is not a file name"):
        TypeClassifier.load(tmp_path, "../elsewhere.json")
    (tmp_path / FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(MetatuneError, match="cannot read the type classifier"):
        TypeClassifier.load(tmp_path)
    good = fitted().to_dict()
    for broken in (
        {**good, "format_version": 9},
        {**good, "documents": [3]},
        {**good, "counts": {"x": [1, -1]}},
        {**good, "types": []},
        [1, 2],
    ):
        with pytest.raises(MetatuneError, match="type classifier"):
            TypeClassifier.from_dict(broken)
    with pytest.raises(MetatuneError, match="no documents"):
        TypeClassifier.fit([], [])


# ---------------------------------------------------------------------------------------------
# A saved run


def test_a_generate_run_saves_its_classifier(tiny_run):
    info = json.loads((tiny_run / "metatune.json").read_text(encoding="utf-8"))
    assert info["type_classifier"] == FILE
    classifier = TypeClassifier.load(tiny_run)
    assert classifier.types == ["Articulo", "Libro", "Objeto de conferencia", "Tesis"]
    assert classifier.documents == [6, 6, 6, 6]  # the training split
    assert classifier.predict(HOLDOUT.read_text(encoding="utf-8"))[0] == "Tesis"


def test_extract_without_a_type_uses_the_predicted_types_prompt(tiny_run, monkeypatch):
    from metatune.objectives.generate.extractor import Extractor

    extractor = Extractor.from_run(tiny_run)
    asked = []
    build = extractor.input_ids
    monkeypatch.setattr(extractor, "input_ids", lambda text, doc_type: asked.append(doc_type) or build(text, doc_type))
    text = HOLDOUT.read_text(encoding="utf-8")
    result = extractor.extract([text, text], [None, "Libro"])
    assert asked == ["Tesis", "Libro"]
    assert [(r.doc_type, r.type_source) for r in result] == [("Tesis", "classifier"), ("Libro", "given")]
    assert extractor.input_ids(text, "Tesis") != extractor.input_ids(text, "general")  # the prompts differ


def test_extract_command_detects_the_type_and_type_overrides(tiny_run, monkeypatch, capsys):
    from conftest import run_main

    status, out, _ = run_main(monkeypatch, capsys, "extract", tiny_run, HOLDOUT)
    assert status == 0 and json.loads(out)["type"] == "Tesis"
    status, out, _ = run_main(monkeypatch, capsys, "extract", tiny_run, HOLDOUT, "--type", "Libro")
    assert status == 0 and json.loads(out)["type"] == "Libro"


def test_a_run_saved_before_the_classifier_keeps_its_default_type(tiny_run, tmp_path):
    from metatune.objectives.generate.extractor import Extractor

    old = tmp_path / "old-run"
    shutil.copytree(tiny_run, old, ignore=shutil.ignore_patterns(FILE, "eval-*"))
    info = json.loads((old / "metatune.json").read_text(encoding="utf-8"))
    del info["type_classifier"]
    (old / "metatune.json").write_text(json.dumps(info), encoding="utf-8")
    extractor = Extractor.from_run(old)
    assert extractor.type_classifier is None
    assert extractor.choose_type(HOLDOUT.read_text(encoding="utf-8"), None) == ("general", "default")
