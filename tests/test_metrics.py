import pytest

from metatune.metrics import MATCHINGS, normalize_date, score_documents
from metatune.report import bar_chart, catalogue_form_lines, markdown_table

approx = pytest.approx


def prf(metrics, field, matching):
    row = metrics["fields"][field][matching]
    return row["precision"], row["recall"], row["f1"]


def test_exact_match_scores_one_everywhere():
    m = score_documents([({"title": "Un estudio"}, {"title": "Un estudio"}, "article")])
    for matching in MATCHINGS:
        assert prf(m, "title", matching) == (1.0, 1.0, 1.0)
        assert m["fields"]["title"][matching]["support"] == 1
    assert m["documents"] == 1


def test_case_and_punctuation_miss_strict_but_hit_soft():
    # strict: tp 0, fp 1, fn 1 -> P = R = F1 = 0; soft ignores case and the final dot
    m = score_documents([({"title": "Un Estudio."}, {"title": "un estudio"}, "article")])
    assert prf(m, "title", "strict") == (0.0, 0.0, 0.0)
    assert prf(m, "title", "soft") == (1.0, 1.0, 1.0)


def test_typo_passes_levenshtein_only():
    # "analisis de datos" vs "analysis de datos" (17 chars, one substitution):
    # Levenshtein similarity 16/17 = 0.94 >= 0.8, Ratcliff 2*16/34 = 0.94 < 0.95
    m = score_documents([({"title": "Análisis de datos"}, {"title": "Analysis de datos"}, "article")])
    assert m["fields"]["title"]["levenshtein"]["f1"] == 1.0
    for matching in ("strict", "soft", "ratcliff"):
        assert m["fields"]["title"][matching]["f1"] == 0.0


def test_person_names_ignore_name_order_and_author_order():
    pred = {"creator": ["Juan Carlos Pérez", "Ana García"]}
    ref = {"creator": ["García, Ana", "Pérez, Juan Carlos"]}
    m = score_documents([(pred, ref, "thesis")])
    # strict: no identical strings, jaccard 0; the others pair both names, jaccard 1
    assert prf(m, "creator", "strict") == (0.0, 0.0, 0.0)
    for matching in ("soft", "levenshtein", "ratcliff"):
        assert prf(m, "creator", matching) == (1.0, 1.0, 1.0)
    # first authors differ (Pérez vs García) under every matching
    for matching in MATCHINGS:
        assert m["fields"]["first_author"][matching]["f1"] == 0.0


def test_jaccard_three_predicted_two_reference_authors():
    pred = {"creator": ["Pérez, Juan", "García, Ana", "López, Luis"]}
    ref = {"creator": ["Pérez, Juan", "Ana García"]}
    m = score_documents([(pred, ref, "article")])
    # soft: 2 matched, jaccard 2 / (3 + 2 - 2) = 2/3 -> tp 2/3, fp 1/3, fn 1/3
    assert prf(m, "creator", "soft") == approx((2 / 3, 2 / 3, 2 / 3))
    # strict: only "Pérez, Juan" is identical, jaccard 1 / (3 + 2 - 1) = 1/4
    assert prf(m, "creator", "strict") == approx((0.25, 0.25, 0.25))
    # first author "Pérez, Juan" on both sides
    assert prf(m, "first_author", "strict") == (1.0, 1.0, 1.0)
    assert m["fields"]["first_author"]["strict"]["support"] == 1


def test_scalar_against_list_is_a_one_item_list():
    # jaccard 1 / (1 + 2 - 1) = 1/2
    m = score_documents([({"keywords": "Datos"}, {"keywords": ["datos", "metadatos"]}, "article")])
    assert prf(m, "keywords", "soft") == approx((0.5, 0.5, 0.5))
    assert prf(m, "keywords", "strict") == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2019-03-05", "2019/03/05"),
        ("05/03/2019", "2019/03/05"),
        ("2019/3", "2019/03"),
        ("marzo de 2019", "2019/03"),
        ("March 2019", "2019/03"),
        ("5 de marzo de 2019", "2019/03/05"),
        ("2019", "2019"),
    ],
)
def test_normalize_date(text, expected):
    assert normalize_date(text) == expected


def test_dates_in_different_formats():
    items = [
        ({"date": "05/03/2019"}, {"date": "2019-03-05"}, "article"),
        ({"date": "marzo de 2019"}, {"date": "2019/3"}, "article"),
        ({"date": "2019"}, {"date": "2019-03"}, "article"),  # different precision: a miss
    ]
    m = score_documents(items)
    # soft: tp 2, fp 1, fn 1 -> P = R = F1 = 2/3; strict matches nothing
    assert prf(m, "date", "soft") == approx((2 / 3, 2 / 3, 2 / 3))
    assert prf(m, "date", "strict") == (0.0, 0.0, 0.0)
    assert m["fields"]["date"]["soft"]["support"] == 3


def test_false_positive_for_field_not_in_reference():
    items = [
        ({"title": "A", "publisher": "Ed. X"}, {"title": "A"}, "article"),
        ({"title": "B", "publisher": "Ed. Y"}, {"title": "B", "publisher": "Ed. Y"}, "article"),
    ]
    m = score_documents(items)
    # publisher: tp 1, fp 1, fn 0 -> P 1/2, R 1, F1 2/3; support 1
    assert prf(m, "publisher", "strict") == approx((0.5, 1.0, 2 / 3))
    assert m["fields"]["publisher"]["strict"]["support"] == 1


def test_empty_values_count_as_absent():
    m = score_documents([({"title": "", "keywords": []}, {"title": "A", "keywords": [], "abstract": None}, "x")])
    # title: fn 1; keywords and abstract absent on both sides: nothing counted
    assert m["fields"]["title"]["strict"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["fields"]["keywords"]["strict"]["support"] == 0
    assert m["micro"]["strict"]["support"] == 1


def test_none_prediction_is_all_false_negatives():
    ref = {"title": "A", "creator": ["Pérez, Juan"], "id": "doc-1", "original_text": "..."}
    m = score_documents([(None, ref, "article")])
    assert set(m["fields"]) == {"title", "creator", "first_author"}  # id/original_text ignored
    for field in ("title", "creator", "first_author"):
        assert prf(m, field, "soft") == (0.0, 0.0, 0.0)
    # micro pools title + creator only (first_author excluded): tp 0, fn 2
    assert m["micro"]["soft"]["support"] == 2
    assert m["micro"]["soft"]["recall"] == 0.0


def test_micro_and_macro_differ():
    items = [
        ({"title": "A"}, {"title": "A"}, "article"),
        ({"title": "B"}, {"title": "B"}, "article"),
        ({"title": "C", "publisher": "X"}, {"title": "C", "publisher": "Y"}, "article"),
        ({"isbn": "123"}, {}, "article"),
    ]
    m = score_documents(items, fields=["title", "publisher", "isbn"])
    # strict: title tp 3 (F1 1); publisher tp 0, fp 1, fn 1 (F1 0); isbn fp 1, support 0
    # micro: tp 3, fp 2, fn 1 -> P 3/5, R 3/4, F1 2*0.6*0.75/1.35 = 2/3
    assert m["micro"]["strict"] == approx({"precision": 0.6, "recall": 0.75, "f1": 2 / 3, "support": 4})
    # macro: mean over title and publisher (isbn has no support) -> 0.5 each
    assert m["macro"]["strict"] == approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4})
    assert m["fields"]["isbn"]["strict"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_by_type_split():
    items = [
        ({"title": "Tesis", "director": "Ruiz, Ana"}, {"title": "Tesis", "director": "Ana Ruiz"}, "thesis"),
        ({"title": "Otro artículo"}, {"title": "Un artículo"}, "article"),
    ]
    m = score_documents(items)
    assert set(m["by_type"]) == {"thesis", "article"}
    thesis, article = m["by_type"]["thesis"], m["by_type"]["article"]
    assert set(thesis) == {"fields", "micro", "macro"}
    # thesis: both fields right under soft -> micro tp 2 -> 1.0
    assert thesis["micro"]["soft"]["f1"] == 1.0
    assert thesis["fields"]["director"]["soft"]["support"] == 1
    # article: title wrong, director not in its reference (support 0)
    assert article["micro"]["soft"]["f1"] == 0.0
    assert article["fields"]["director"]["soft"]["support"] == 0
    # overall soft: title tp 1 fp 1 fn 1 (F1 1/2), director F1 1 -> macro 3/4, micro tp 2 fp 1 fn 1 -> 2/3
    assert m["macro"]["soft"]["f1"] == approx(0.75)
    assert m["micro"]["soft"]["f1"] == approx(2 / 3)


def test_markdown_table_and_bar_chart(tmp_path):
    items = [({"title": "A", "creator": ["Pérez, J."]}, {"title": "a", "creator": ["J. Pérez"]}, "article")]
    m = score_documents(items)
    table = markdown_table(m).splitlines()
    assert table[0] == "| field | strict | soft | levenshtein | ratcliff | support |"
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| title",
        "| creator",
        "| first_author",
        "| **micro**",
        "| **macro**",
    ]
    assert table[2] == "| title | 0.0 | 100.0 | 100.0 | 100.0 | 1 |"
    png = bar_chart(m, tmp_path / "f1.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_micro_over_chosen_fields_pools_only_those():
    from metatune.metrics import score_documents

    items = [
        ({"title": "A", "creator": ["X"], "date": "2020"}, {"title": "A", "creator": ["X", "Y"], "date": "2021"}, "t"),
        ({"title": "B"}, {"title": "C", "creator": ["Z"]}, "t"),
    ]
    scores = score_documents(items, ["title", "creator", "date"], chosen=["title", "first_author"])
    chosen = scores["micro_chosen"]
    assert chosen["fields"] == ["title", "first_author"]
    # title: tp 1, fp 1, fn 1; first author: tp 1 (X), fn 1 (Z) -> P 2/3, R 2/4
    assert chosen["strict"]["precision"] == pytest.approx(2 / 3) and chosen["strict"]["recall"] == pytest.approx(0.5)
    assert chosen["strict"]["support"] == 4
    assert "micro_chosen" not in score_documents(items, ["title"])


def test_the_catalogue_form_counts_soft_matches_written_as_the_reference_writes_them():
    items = [
        (
            {"creator": ["Juan Pérez", "ruiz,  ana", "Nadie"], "director": ["Paz, Olga"], "date": "2019/03/01"},
            {"creator": ["Pérez, Juan", "Ruiz, Ana"], "director": ["Paz, Olga"], "date": "2019-03-01"},
            "Tesis",
        ),
        ({"date": "2020"}, {"date": "2020"}, "Tesis"),
    ]
    form = score_documents(items, ["creator", "director", "date"])["catalogue_form"]
    # "Juan Pérez" soft-matches but is in the page's order; case and spaces do not count; "Nadie" matched nothing
    assert form["names"] == {"matched": 3, "same_form": 2, "rate": approx(2 / 3)}
    assert form["dates"] == {"matched": 2, "same_form": 1, "rate": 0.5}
    lines = catalogue_form_lines(score_documents(items, ["creator", "director", "date"]))
    assert lines == (
        "names in the reference's form: 2 of 3 soft-matched (66.7%)\n"
        "dates in the reference's form: 1 of 2 soft-matched (50.0%)\n"
    )
