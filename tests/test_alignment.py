"""Source alignment: values found in the document text despite line breaks, hyphens, case and accents."""

from __future__ import annotations

import json

import pytest

from metatune.alignment import Source, abbreviates, align_record, date_spans, locate_date, name_forms, normalise_date

from conftest import GROBID, SAMPLE

TEXT = (
    "Journal of Things 12 (2020)\n"
    "DNA methylation--\nregulated   binding of\nTRANSCRIPTION factors\n"
    "José  Pérez-Gómez 1 , Ana María Ruiz 2\n"
    "Received 31 March 2011; published 5 Sep 2012\n"
    "Keywords: DNA methylation; chromatin\n"
)


def found(text: str, value: str, **kw) -> str | None:
    source = Source(text)
    span = source.locate(value, **kw)
    return None if span is None else text[span.start : span.end]


def test_line_breaks_hyphenation_spaces_and_case_do_not_matter():
    value = "DNA methylation--regulated binding of transcription factors"
    assert found(TEXT, value) == "DNA methylation--\nregulated   binding of\nTRANSCRIPTION factors"


def test_accents_and_other_unicode():
    assert found(TEXT, "Jose Perez-Gomez") == "José  Pérez-Gómez"
    assert found("e\ufb03cient methods", "efficient methods") == "e\ufb03cient methods"  # the ffi ligature


def test_a_value_absent_from_the_text_gives_nothing():
    assert found(TEXT, "Quantum chromodynamics at high energies") is None
    assert found(TEXT, "") is None


def test_matches_start_and_end_on_word_boundaries():
    assert found("the mitochondna of cells", "dna", fuzzy=False) is None
    assert found("the DNA of cells", "dna", fuzzy=False) == "DNA"


def test_a_value_occurring_twice_takes_the_first_free_occurrence():
    source = Source(TEXT)
    first, second = source.occurrences("DNA methylation")
    assert TEXT[first.start : first.end].startswith("DNA methylation") and first.start < second.start
    assert source.locate("DNA methylation", taken=[first]) == second


def test_an_aligned_span_keeps_the_punctuation_its_value_begins_and_ends_with():
    text = "¿Qué aprendemos de las redes?\nInstituto de Física (IFLP), La Plata\nResumen. Un texto breve. Otro.\n"
    record = {
        "title": "¿Qué aprendemos de las redes?",
        "originPlaceInfo": "Instituto de Física (IFLP)",
        "abstract": "Un texto breve. Otro.",
    }
    spans = align_record(text, record, list(record))
    got = {field: text[span.start : span.end] for (field, _), span in spans.items() if span}
    assert got == {
        "title": "¿Qué aprendemos de las redes?",
        "originPlaceInfo": "Instituto de Física (IFLP)",
        "abstract": "Un texto breve. Otro.",
    }
    # an edge the text does not have right there: the span stays as matched
    ((_, span),) = align_record("En La Plata, 2011", {"originPlaceInfo": "(La Plata)"}, ["originPlaceInfo"]).items()
    assert "En La Plata, 2011"[span.start : span.end] == "La Plata"
    # matching itself still reads letters and digits only: the bare search finds the words alone
    assert found(text, "(IFLP)", fuzzy=False) == "IFLP"


def test_longer_values_claim_their_place_first():
    """The keyword occurs in the title too; it is labelled in the keywords line."""
    record = {
        "title": "DNA methylation--regulated binding of transcription factors",
        "keywords": ["DNA methylation", "chromatin"],
    }
    spans = align_record(TEXT, record, ["title", "keywords"])
    assert TEXT[spans[("keywords", 0)].start :].startswith("DNA methylation; chromatin")
    assert not spans[("keywords", 0)].overlaps(spans[("title", 0)])


def test_near_matches_are_found_and_marked_inexact():
    text = "An abstract that says the con- struction of models is hard and worth a long study of its own."
    source = Source(text)
    span = source.locate("the con- structure of models is hard and worth a long study of its own")
    assert span is not None and not span.exact
    assert text[span.start : span.end].startswith("the con- struction")
    assert source.locate("Pérez", fuzzy=True) is None  # short values never match approximately


def test_catalogue_names_are_found_in_document_order():
    assert name_forms("Pérez-Gómez, José")[:2] == ["Pérez-Gómez, José", "José Pérez-Gómez"]
    spans = align_record(TEXT, {"creator": ["Pérez-Gómez, José", "Ruiz, Ana María"]}, ["creator"])
    assert [TEXT[s.start : s.end] for s in spans.values()] == ["José  Pérez-Gómez", "Ana María Ruiz"]


def test_a_catalogued_name_is_found_where_the_page_prints_initials():
    assert name_forms("Ruiz, Ana María") == ["Ruiz, Ana María", "Ana María Ruiz", "A. M. Ruiz", "Ruiz, A. M."]
    assert name_forms("Quiroga, M. L.") == ["Quiroga, M. L.", "M. L. Quiroga"]  # already initials
    assert name_forms("Madonna") == ["Madonna"]
    text = "Un estudio\nJ. Echeverry y Ruiz, A. M.\nDirector: Ing. H. García Márquez"
    record = {"creator": ["Echeverry, Julieta", "Ruiz, Ana María"], "director": ["García Márquez, Hernán"]}
    spans = align_record(text, record, ["creator", "director"])
    assert {key: text[s.start : s.end] for key, s in spans.items()} == {
        ("creator", 0): "J. Echeverry",
        ("creator", 1): "Ruiz, A. M.",
        ("director", 0): "H. García Márquez",
    }


def test_a_name_found_as_written_in_any_form_wins_over_a_near_match_of_another():
    # the catalogue's form "de la Fuente, M. L." nearly matches "de la Fuente\nLa" (the next line's word
    # taken for an initial); the page prints it as "M. L. de la Fuente"
    text = "Un estudio de las cosas\nM. L. de la Fuente\nLa Plata, 2021"
    span = align_record(text, {"creator": ["de la Fuente, M. L."]}, ["creator"])[("creator", 0)]
    assert (text[span.start : span.end], span.exact) == ("M. L. de la Fuente", True)


@pytest.mark.parametrize(
    ("page", "word", "writes"),
    [
        ("Lic.", "Licenciado", True),  # cut at a period
        ("Ing.", "Ingeniero", True),
        ("Dr.", "Doctor", True),  # a contraction: first letter, then some of the others in order
        ("Mg.", "Magister", True),
        ("Doctorado", "Doctor", True),  # the same stem
        ("Licenciatura", "Licenciado", True),
        ("Especialización", "Especialista", True),
        ("Física", "Fisica", True),  # folded
        ("en", "en", True),
        ("Lic", "Licenciado", False),  # three letters without a period are a word of their own
        ("Dr.", "Director", True),
        ("Rd.", "Doctor", False),  # a contraction keeps the first letter
        ("Química", "Física", False),
        ("Maestría", "Magister", False),  # another word, not a short form
        ("de", "en", False),
    ],
)
def test_a_word_written_short_or_inflected(page, word, writes):
    assert abbreviates(page, word) is writes


def test_a_value_is_found_where_the_page_writes_it_short():
    text = "Tesista: Lic. Ana Ruiz\nTesis presentada para obtener el grado de Lic. en Física\nLa Plata"
    span = Source(text).abbreviated("Licenciado en Física")
    assert text[span.start : span.end] == "Lic. en Física" and not span.exact
    assert Source(text).abbreviated("Licenciado en Química") is None
    assert Source(text).abbreviated("Licenciado en Física", [span]) is None  # taken
    # only fields asked for are searched that way, after the value as written and a near match
    record = {"degree.name": "Licenciado en Física"}
    assert align_record(text, record, ["degree.name"])[("degree.name", 0)] is None
    assert align_record(text, record, ["degree.name"], abbreviated=("degree.name",))[("degree.name", 0)] == span


def test_dates_are_found_by_their_normalised_form():
    assert [d for _, d in date_spans(TEXT)] == ["2020", "2011/03/31", "2012/09/05"]
    span = locate_date(TEXT, "2012/09/05")
    assert TEXT[span.start : span.end] == "5 Sep 2012"
    assert locate_date(TEXT, "1999") is None
    assert normalise_date("December 18, 2020") == "2020/12/18"
    assert normalise_date("13/31/2020") is None or normalise_date("13/31/2020") == "2020"


def test_snapped_values_are_always_text_of_the_source():
    source = Source(TEXT)
    for value in ("José Pérez-Gómez", "dna methylation regulated", "Ana Maria Ruiz"):
        span = source.locate(value)
        assert span is not None and source.snippet(span) in " ".join(TEXT.split())


@pytest.mark.parametrize("path", [SAMPLE, GROBID], ids=["sample", "grobid-headers"])
def test_every_record_aligns_fast_and_spans_hold_the_value(path):
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = json.loads(path.read_text(encoding="utf-8"))
    records = [r for split in data.values() for r in split]
    fields = ["title", "creator", "keywords", "abstract", "originPlaceInfo", "doi"]
    total = aligned = 0
    for record in records:
        text = record["original_text"]
        spans = align_record(text, record, fields)
        for (field, i), span in spans.items():
            total += 1
            if span is None:
                continue
            aligned += 1
            if span.exact:  # an exact span folds to exactly the value (or the name in document order)
                value = record[field][i] if isinstance(record[field], list) else record[field]
                assert Source(text[span.start : span.end]).folded in {Source(v).folded for v in name_forms(value)}
    assert total > 0 and aligned / total > (0.95 if path == GROBID else 0.3)


def test_snapping_replaces_retyped_values_by_the_source_text():
    from metatune.alignment import snap_record

    predicted = {
        "title": "DNA methylation-regulated binding of transcription factor",  # retyped, one letter short
        "creator": ["Jose Perez-Gomez", "Ruiz, Ana María"],  # the catalogue's "Surname, Name" is kept
        "keywords": ["dna methylation", "histone code"],  # the second is not in the text
        "date": "2012/09/05",
        "language": "en",
    }
    snapped = snap_record(TEXT, predicted)
    assert snapped == {
        "title": "DNA methylation-- regulated binding of TRANSCRIPTION factors",
        "creator": ["José Pérez-Gómez", "Ruiz, Ana María"],
        "keywords": ["DNA methylation", "histone code"],
        "date": "2012/09/05",
        "language": "en",
    }
    flat = " ".join(TEXT.split())
    for field in ("title", "keywords"):
        for value in snapped[field] if isinstance(snapped[field], list) else [snapped[field]]:
            assert value in flat or value in predicted[field]  # source text, or the prediction untouched


@pytest.mark.parametrize("path", [SAMPLE, GROBID], ids=["sample", "grobid-headers"])
def test_anchors_expand_back_to_the_source_span_of_every_value(path):
    from metatune.alignment import ANCHOR_MARK, anchor, expand

    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = json.loads(path.read_text(encoding="utf-8"))
    anchored = 0
    for record in (r for split in data.values() for r in split):
        text = record["original_text"]
        for field in ("title", "abstract", "originPlaceInfo"):
            for value in record.get(field) if isinstance(record.get(field), list) else [record.get(field)]:
                if not isinstance(value, str):
                    continue
                short = anchor(text, value, 20, 5)
                span = Source(text).locate(value)
                if short == value:
                    continue
                anchored += 1
                assert ANCHOR_MARK in short and len(short.split()) < len(value.split())
                assert expand(text, short) == Source(text).snippet(span)
    assert anchored > 0


def test_an_anchor_whose_ending_repeats_takes_more_words():
    from metatune.alignment import anchor, expand

    value = (
        " ".join(f"w{i}" for i in range(10))
        + " in the plane "
        + " ".join(f"v{i}" for i in range(10))
        + " in the plane."
    )
    text = f"Abstract. {value} Keywords: graphs"
    short = anchor(text, value, 10, 3)
    # "v9 in the plane" is the shortest ending that does not also occur inside the value
    assert short == "w0 w1 w2 w3 [...] v9 in the plane"
    assert expand(text, short) == value.rstrip(".")  # spans end on a word
    assert anchor(text, "w1 w2 w3", 10, 3) == "w1 w2 w3"  # short values stay literal
    assert expand(text, "w0 w1 [...] nowhere") == "w0 w1 nowhere"  # an end not in the text: no guess


def test_an_anchor_end_the_text_lacks_is_shortened_until_found():
    from metatune.alignment import ANCHOR_MARK, expand

    abstract = (
        "The software can be used either on personal computers or as part of automated analysis pipelines "
        "and is freely available for download."
    )
    text = f"Title\nAbstract\n{abstract}\nKeywords: software"
    # "for" where the text says "on": the tail is found without its first words
    anchored = "The software can be used" + ANCHOR_MARK + "for personal computers or as part of"
    assert expand(text, anchored) == "The software can be used either on personal computers or as part of"
    # a misremembered last word of the head: the head is found without its last words
    assert expand(text, "The software can be sold" + ANCHOR_MARK + "available for download") == abstract.rstrip(".")
    # ends that stay missing however short: no guess
    assert expand(text, "Nothing of this" + ANCHOR_MARK + "is in the text") == "Nothing of this is in the text"
