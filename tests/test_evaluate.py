"""`metatune evaluate`: references as training built them, hand-computed scores, the report on disk."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metatune.config import ExtractionSettings
from metatune.doctypes import TypeRegistry
from metatune.errors import MetatuneError
from metatune.evaluate import evaluate_outputs, load_items, run_evaluate, score_predictions, write_report
from metatune.extraction import Extraction
from metatune.metrics import MATCHINGS
from metatune.objectives.generate.json_output import parse_output
from metatune.run_info import InputSpec, RunInfo, TokenLimits

approx = pytest.approx
REPO = Path(__file__).resolve().parent.parent


def run_info(include=("title", "creator", "date")) -> RunInfo:
    """A run's description with the parts evaluation reads."""
    return RunInfo(
        architecture="causal",
        types=TypeRegistry.load().to_dict(),
        input=InputSpec(include_fields=list(include), exclude_fields=["keywords"]),
        limits=TokenLimits(max_input_tokens=512, max_target_tokens=256),
        config={"data": {"split_seed": 42}},
    )


@pytest.fixture
def dataset(tmp_path) -> Path:
    test = [
        {
            "id": "a",
            "type": "Tesis",
            "original_text": "texto a",
            "title": "Un estudio",
            "creator": ["Pérez, Juan", "García, Ana"],
            "date": "2019-12-03",
            "language": "es",
            "keywords": ["x"],
        },
        {
            "id": "b",
            "type": "Articulo",
            "original_text": "texto b",
            "title": "Otro libro",
            "creator": ["Gómez, Ana"],
            "date": "2020-01-15",
        },
        {"id": "c", "type": "libro", "original_text": "texto c", "title": "Un libro", "creator": ["Ruiz, Eva"]},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"training": test[:1], "validation": test[:1], "test": test}), encoding="utf-8")
    return path


RAWS = [
    'Aquí están los metadatos: {"title": "Un Estudio", "creator": ["Juan Pérez"], "date": "2019"} y nada más',
    '{"title": "Otro libro", "date": "2020-01',  # cut at the token limit: repaired
    "lo siento, no puedo",  # no JSON at all
]


def extractions(raws: list[str]) -> list[Extraction]:
    """What an extractor returns for these raw outputs, parsed (nothing snapped)."""
    parsed = [parse_output(raw) for raw in raws]
    return [
        Extraction("Articulo", p.data, raw, p.error, notes={"repaired": True} if p.repaired else {})
        for p, raw in zip(parsed, raws)
    ]


def test_references_are_the_training_targets(dataset):
    items = load_items(run_info(), dataset, "test")
    assert [i.doc_type for i in items] == ["Tesis", "Articulo", "Libro"]  # aliases resolved
    # language is not an included field, keywords is excluded: neither is expected of the model
    assert items[0].reference == {
        "title": "Un estudio",
        "creator": ["Pérez, Juan", "García, Ana"],
        "date": "2019-12-03",
    }
    assert items[2].reference == {"title": "Un libro", "creator": ["Ruiz, Eva"]}
    assert [i.id for i in items] == ["a", "b", "c"]
    assert len(load_items(run_info(), dataset, "test", limit=2)) == 2


def test_scores_match_hand_computed_values(dataset):
    items = load_items(run_info(), dataset, "test")
    m, rows = evaluate_outputs(items, extractions(RAWS), seconds=1.5)
    f = m["fields"]
    # title  strict: tp 1 (b), fp 1 (a), fn 2 (a, c) -> P 1/2, R 1/3, F1 0.4
    #        soft:   tp 2 (a, b), fn 1 (c)           -> P 1, R 2/3, F1 0.8
    assert (f["title"]["strict"]["precision"], f["title"]["strict"]["recall"]) == (approx(0.5), approx(1 / 3))
    assert f["title"]["strict"]["f1"] == approx(0.4)
    assert f["title"]["soft"]["f1"] == approx(0.8)
    assert f["title"]["strict"]["support"] == 3
    # creator soft: a pairs "Juan Pérez" with "Pérez, Juan" (Jaccard 1/2), b and c miss
    #   tp .5, fp .5, fn .5 + 1 + 1 -> P .5, R 1/6, F1 0.25; strict: nothing matches
    assert f["creator"]["soft"]["precision"] == approx(0.5)
    assert f["creator"]["soft"]["recall"] == approx(1 / 6)
    assert f["creator"]["soft"]["f1"] == approx(0.25)
    assert f["creator"]["strict"]["f1"] == 0.0
    # date: "2019" vs 2019/12/03 and "2020-01" vs 2020/01/15 are wrong under every matching
    assert all(f["date"][mt]["f1"] == 0.0 for mt in MATCHINGS)
    assert f["date"]["soft"]["support"] == 2
    assert f["first_author"]["soft"]["f1"] == approx(0.5)  # a right (P 1); b and c have none predicted (R 1/3)
    # micro strict: tp 1, fp 4, fn 7; soft: tp 2.5, fp 2.5, fn 5.5
    assert m["micro"]["strict"]["f1"] == approx(2 * 0.2 * 0.125 / 0.325)
    assert m["micro"]["soft"]["precision"] == approx(0.5)
    assert m["micro"]["soft"]["recall"] == approx(2.5 / 8)
    assert m["macro"]["soft"]["f1"] == approx((0.8 + 0.25 + 0.0) / 3)
    assert m["by_type"]["Tesis"]["fields"]["title"]["soft"]["f1"] == 1.0
    assert m["by_type"]["Libro"]["fields"]["title"]["soft"]["recall"] == 0.0
    assert (m["documents"], m["parse_failures"], m["seconds"]) == (3, 1, 1.5)
    assert set(f) == {"title", "creator", "date", "first_author"}

    assert rows[1]["prediction"] == {"title": "Otro libro", "date": "2020-01"} and rows[1]["repaired"]
    assert rows[2]["prediction"] is None and rows[2]["parse_error"] == "no JSON object found in output"
    assert rows[0] | {"prediction": None} == {
        "index": 0,
        "id": "a",
        "type": "Tesis",
        "prediction": None,
        "raw": RAWS[0],
        "parse_error": None,
        "reference": items[0].reference,
    }


def test_fields_nobody_expected_or_wrote_are_left_out_but_hallucinations_count(dataset):
    items = load_items(run_info(include=("title", "creator", "date", "isbn", "director")), dataset, "test")
    m = score_predictions(items, [{"title": "Un estudio"}, {"title": "Otro libro", "isbn": "123"}, None])
    assert "director" not in m["fields"]  # neither in a reference nor in a prediction
    assert m["fields"]["isbn"]["strict"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_report_files(dataset, tmp_path):
    items = load_items(run_info(), dataset, "test")
    metrics, rows = evaluate_outputs(items, extractions(RAWS))
    write_report(tmp_path / "r", metrics, rows)
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    lines = (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]
    assert "| title | 40.0 | 80.0 |" in (tmp_path / "r" / "metrics.md").read_text()
    assert (tmp_path / "r" / "f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """The shared tiny run copied: an evaluation writes into the run (its card), which other tests read."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_evaluate_a_trained_run_end_to_end(run_copy, tmp_path, capsys):
    from conftest import SAMPLE

    report = tmp_path / "report"
    metrics = run_evaluate(
        run_copy,
        SAMPLE,
        split="test",
        report=report,
        settings=ExtractionSettings(batch_size=3),
        baseline="zero-shot",
        progress=False,
    )
    out = capsys.readouterr().out
    assert "| field | strict | soft | levenshtein | ratcliff | support |" in out
    assert "fine-tuned vs zero-shot" in out

    saved = json.loads((report / "metrics.json").read_text())
    assert {"fields", "micro", "macro", "by_type", "parse_failures", "documents", "seconds"} <= set(saved)
    assert set(saved["fields"]) <= {"date", "language"}  # the run writes only these
    assert saved["documents"] == 4 and saved["run"]["split"] == "test"
    assert set(saved["by_type"]) == {"Tesis", "Articulo", "Libro", "Objeto de conferencia"}
    for scores in saved["fields"].values():
        assert set(scores) == set(MATCHINGS)
        assert set(scores["soft"]) == {"precision", "recall", "f1", "support"}

    # the metrics are those of the predictions written beside them
    rows = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["reference"] for r in rows)
    items = load_items(RunInfo.read(run_copy), SAMPLE, "test")
    again = score_predictions(items, [r["prediction"] for r in rows])
    assert again["micro"] == saved["micro"] and again["fields"] == saved["fields"]
    assert saved["parse_failures"] == sum(r["prediction"] is None for r in rows)
    # the generate objective's own counts: repairs as the rows note them, every written token
    assert saved["run"]["repaired"] == sum(r.get("repaired", False) for r in rows)
    assert saved["run"]["generated_tokens"] >= len(rows)

    # the run's type classifier on the same texts (the fields above were generated with the true types)
    from metatune.objectives.generate.type_classifier import TypeClassifier

    classifier = TypeClassifier.load(run_copy)
    correct = {i.doc_type: int(classifier.predict(i.text)[0] == i.doc_type) for i in items}  # one of each type
    types = saved["type_accuracy"]
    assert {t: (row["n"], row["correct"]) for t, row in types["by_type"].items()} == {
        t: (1, c) for t, c in correct.items()
    }
    assert types["overall"] == {"n": 4, "correct": sum(correct.values()), "accuracy": sum(correct.values()) / 4}
    assert "| true type | n | correct | accuracy |" in out
    assert f"| **overall** | 4 | {sum(correct.values())} | {sum(correct.values()) * 25:.1f} |" in out
    assert "| true type | n | correct | accuracy |" in (report / "metrics.md").read_text()

    for name in ("metrics.md", "f1.png", "baseline/metrics.json", "baseline/predictions.jsonl", "comparison.md"):
        assert (report / name).is_file(), name
    baseline = json.loads((report / "baseline" / "metrics.json").read_text())
    assert baseline["run"]["baseline"] == "zero-shot" and baseline["documents"] == 4
    assert "type_accuracy" not in baseline  # the classifier is the run's, scored once
    assert [json.loads(x)["id"] for x in (report / "baseline" / "predictions.jsonl").read_text().splitlines()] == [
        r["id"] for r in rows
    ]
    assert metrics["micro"] == saved["micro"]


def test_user_mistakes_are_one_line_errors_and_write_nothing(tiny_run, dataset, tmp_path):
    with pytest.raises(MetatuneError, match="unknown split 'tset'"):
        run_evaluate(tiny_run, dataset, split="tset")
    with pytest.raises(MetatuneError, match="dataset file not found"):
        run_evaluate(tiny_run, tmp_path / "nope.json")
    with pytest.raises(MetatuneError, match="unknown baseline 'few-shot'"):
        run_evaluate(tiny_run, dataset, baseline="few-shot")
    with pytest.raises(MetatuneError, match="not a metatune run"):
        run_evaluate(tmp_path, dataset)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(MetatuneError, match="not an evaluation report"):
        run_evaluate(tiny_run, dataset, report=other)
    assert [p.name for p in other.iterdir()] == ["todo.txt"]
    assert not (tiny_run / "eval-test").exists()


def test_cli_prints_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "metatune", "evaluate", str(tmp_path), "--data", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}: not a metatune run (no metatune.json)"


@pytest.mark.slow
def test_evaluate_on_the_grobid_headers(run_copy, tmp_path):
    """The real annotated headers load and score (types, list fields, English text) end to end."""
    from conftest import GROBID

    if not GROBID.is_file():
        pytest.skip(f"{GROBID} is absent")
    metrics = run_evaluate(
        run_copy,
        GROBID,
        split="validation",
        report=tmp_path / "r",
        settings=ExtractionSettings(batch_size=6),
        limit=6,
        progress=False,
    )
    assert metrics["documents"] == 6 and set(metrics["by_type"]) == {"Articulo"}
    assert set(metrics["fields"]) <= {"date", "language"}
    assert metrics["fields"]["language"]["strict"]["support"] == 6  # every header has its language
    rows = [json.loads(x) for x in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert [r["reference"]["language"] for r in rows] == ["en"] * 6
