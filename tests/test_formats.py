"""Catalogue formats: BibTeX, TEI (GROBID's teiHeader), Dublin Core XML and the DSpace CSV."""

import csv
import io
import json
import xml.etree.ElementTree as ET

import pytest

from metatune.formats import DC, OAI_DC, TEI, render

NS = {"tei": TEI, "dc": DC, "oai_dc": OAI_DC}
DC_ELEMENTS = {
    "title",
    "creator",
    "subject",
    "description",
    "publisher",
    "contributor",
    "date",
    "type",
    "format",
    "identifier",
    "source",
    "language",
    "relation",
    "coverage",
    "rights",
}


def sample_records() -> list[dict]:
    """One record per type, from the bundled sample's reference metadata."""
    from conftest import SAMPLE

    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    by_type = {}
    for r in data["test"]:
        meta = {k: v for k, v in r.items() if k not in ("id", "type", "original_text")}
        by_type.setdefault(r["type"], {"source": r["id"] + ".pdf", "type": r["type"], "metadata": meta})
    return list(by_type.values())


def test_bibtex_entries_parse_back_with_their_types_and_people():
    from pybtex.database import parse_string

    records = sample_records()
    records[0]["metadata"]["title"] = "Redes {sociales & 100% datos_abiertos"  # LaTeX specials, an unbalanced brace
    bib = parse_string(
        render(records + [{"source": "x", "type": "general", "metadata": None, "error": "no JSON"}], "bibtex"), "bibtex"
    )
    entries = list(bib.entries.values())
    assert [e.type for e in entries] == ["mastersthesis", "article", "book", "inproceedings"]  # the failed one left out
    thesis, article, book, paper = entries
    tesis_meta = records[0]["metadata"]
    assert [str(p) for p in thesis.persons["author"]] == tesis_meta["creator"]
    assert thesis.fields["director"] == " and ".join(tesis_meta["director"])  # a name list, as biblatex writes one
    assert thesis.fields["school"] == tesis_meta["degree.grantor"] and thesis.fields["year"] == tesis_meta["date"][:4]
    assert thesis.fields["title"] == r"Redes (sociales \& 100\% datos\_abiertos"
    assert article.fields["journal"] == records[1]["metadata"]["journalTitle"]
    assert article.fields["issn"] == records[1]["metadata"]["issn"]
    assert book.fields["publisher"] == records[2]["metadata"]["publisher"]
    assert paper.fields["booktitle"] == records[3]["metadata"]["event"]
    assert len(set(bib.entries)) == 4  # citation keys are unique


def test_two_documents_of_one_author_year_and_title_get_distinct_keys():
    record = sample_records()[0]
    keys = [line for line in render([record, record, record], "bibtex").splitlines() if line.startswith("@")]
    assert len(set(keys)) == 3


def test_tei_is_a_grobid_style_header():
    record = sample_records()[1]  # an article
    meta = record["metadata"]
    root = ET.fromstring(render([record], "tei", single=True))
    assert root.tag == f"{{{TEI}}}TEI"
    header = root.find("tei:teiHeader", NS)
    assert header.get("{http://www.w3.org/XML/1998/namespace}lang") == meta["language"]
    file_desc = header.find("tei:fileDesc", NS)
    for required in ("tei:titleStmt/tei:title", "tei:publicationStmt", "tei:sourceDesc/tei:biblStruct"):
        assert file_desc.find(required, NS) is not None, required
    assert file_desc.find("tei:titleStmt/tei:title", NS).text == meta["title"]
    bibl = file_desc.find("tei:sourceDesc/tei:biblStruct", NS)
    authors = bibl.findall("tei:analytic/tei:author/tei:persName", NS)
    surname, forenames = meta["creator"][0].split(", ")
    assert authors[0].find("tei:surname", NS).text == surname
    assert [f.text for f in authors[0].findall("tei:forename", NS)] == forenames.split()
    assert bibl.find("tei:monogr/tei:title[@level='j']", NS).text == meta["journalTitle"]
    assert bibl.find("tei:monogr/tei:idno[@type='ISSN']", NS).text == meta["issn"]
    assert bibl.find("tei:monogr/tei:imprint/tei:date", NS).get("when") == meta["date"]
    terms = [t.text for t in header.findall("tei:profileDesc/tei:textClass/tei:keywords/tei:term", NS)]
    assert terms == meta["keywords"]
    assert header.find("tei:profileDesc/tei:abstract/tei:div/tei:p", NS).text == meta["abstract"]
    assert root.find("tei:text/tei:body", NS) is not None


def test_several_documents_are_a_tei_corpus():
    root = ET.fromstring(render(sample_records(), "tei"))
    assert root.tag == f"{{{TEI}}}teiCorpus"
    assert len(root.findall("tei:TEI", NS)) == 4
    thesis = root.findall("tei:TEI", NS)[0]
    directors = thesis.findall(".//tei:monogr/tei:editor[@role='director']/tei:persName/tei:surname", NS)
    assert [d.text for d in directors] == [n.split(",")[0] for n in sample_records()[0]["metadata"]["director"]]


def test_dublin_core_uses_only_the_fifteen_elements():
    records = sample_records()
    root = ET.fromstring(render(records[:1], "dc", single=True))
    assert root.tag == f"{{{OAI_DC}}}dc"
    names = {child.tag.split("}")[1] for child in root}
    assert names <= DC_ELEMENTS and {"title", "creator", "date", "type"} <= names
    assert all(child.tag.startswith(f"{{{DC}}}") for child in root)
    assert [c.text for c in root.findall("dc:contributor", NS)] == records[0]["metadata"]["director"]
    assert root.find("dc:type", NS).text == "Thesis"
    several = ET.fromstring(render(records, "dc"))
    assert [r.get("source") for r in several] == [r["source"] for r in records]
    assert "ISBN:" + records[2]["metadata"]["isbn"] in [e.text for e in several[2][0].findall("dc:identifier", NS)]


def test_dspace_csv_rows():
    records = sample_records()
    rows = list(csv.DictReader(io.StringIO(render(records, "csv"))))
    assert len(rows) == 4
    thesis, article = rows[0], rows[1]
    assert thesis["id"] == "+" and thesis["collection"] == "" and thesis["dc.type"] == "Tesis"
    assert thesis["dc.title"] == records[0]["metadata"]["title"]
    assert thesis["sedici.contributor.director"] == "||".join(records[0]["metadata"]["director"])
    assert thesis["thesis.degree.name"] == records[0]["metadata"]["degree.name"]
    assert article["sedici.relation.journalTitle"] == records[1]["metadata"]["journalTitle"]
    assert article["thesis.degree.name"] == ""


def cli(monkeypatch, capsys, *args):
    from conftest import run_main

    return run_main(monkeypatch, capsys, *args)


@pytest.fixture
def fixed_model(monkeypatch):
    """The run's model answers every document with the same metadata (the tiny run's fields: date, language)."""
    from metatune.extraction import Extraction
    from metatune.objectives.generate.extractor import Extractor

    monkeypatch.setattr(
        Extractor,
        "extract",
        lambda self, texts, types=None, *a, **k: [
            Extraction("general", {"date": "2019", "language": "es"}, "{}") for _ in texts
        ],
    )


def test_extract_writes_the_format_asked_for(tiny_run, tmp_path, monkeypatch, capsys, fixed_model):
    doc = tmp_path / "doc.txt"
    doc.write_text("Universidad Nacional de La Plata. 2019.", encoding="utf-8")
    out = tmp_path / "doc.tei.xml"
    status, _, _ = cli(monkeypatch, capsys, "extract", tiny_run, doc, "--format", "tei", "--out", out)
    assert status == 0
    root = ET.fromstring(out.read_text(encoding="utf-8"))
    assert root.find("tei:teiHeader/tei:fileDesc/tei:publicationStmt/tei:date", NS).get("when") == "2019"
    status, stdout, _ = cli(monkeypatch, capsys, "extract", tiny_run, doc, doc, "--format", "csv")
    assert status == 0
    assert stdout.splitlines() == ["id,collection,dc.type,dc.date.issued,dc.language", "+,,,2019,es", "+,,,2019,es"]


def test_an_unknown_format_is_a_one_line_error(tiny_run, tmp_path, monkeypatch, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("texto", encoding="utf-8")
    status, out, err = cli(monkeypatch, capsys, "extract", tiny_run, doc, "--format", "marc", "--out", tmp_path / "o")
    assert status == 2
    assert err.strip() == "error: --format: unknown format 'marc' (known: json, bibtex, tei, dc, csv)"
    assert not (tmp_path / "o").exists()


def test_the_service_answers_in_the_format_asked_for(tiny_run, fixed_model):
    from fastapi.testclient import TestClient

    from metatune.objectives.generate.extractor import Extractor
    from metatune.service import create_app

    with TestClient(create_app(Extractor.from_run(tiny_run), batch_wait_ms=0)) as client:
        r = client.post("/extract?format=dc", json={"text": "Universidad Nacional de La Plata. 2019."})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
        assert ET.fromstring(r.text).find("dc:date", NS).text == "2019"
        r = client.post("/extract?format=bibtex", json={"text": "Universidad Nacional de La Plata. 2019."})
        assert r.status_code == 200 and r.text.startswith("@misc{2019,") and 'year = "2019"' in r.text
        r = client.post("/extract?format=marc", json={"text": "x"})
        assert r.status_code == 422
        assert r.json()["error"].startswith("invalid request: query.format: Input should be 'json', 'bibtex'")


def test_the_service_says_when_there_is_nothing_to_write_in_a_catalogue_format():
    from fastapi.testclient import TestClient

    from metatune.doctypes import TypeRegistry
    from metatune.extraction import Extraction
    from metatune.service import create_app

    class NoJson:
        run_dir, info, default_type, device = None, {}, "general", "cpu"
        registry = TypeRegistry.load()

        def extract(self, texts, types, batch_size):
            return [Extraction("general", None, "sin json", "no JSON object in the output") for _ in texts]

    with TestClient(create_app(NoJson(), batch_wait_ms=0)) as client:
        r = client.post("/extract?format=tei", json={"text": "Un documento"})
        assert r.status_code == 500
        assert r.json() == {"error": "cannot write tei: the model's output was not JSON (no JSON object in the output)"}
        r = client.post("/extract", json={"text": "Un documento"})
        assert r.status_code == 200 and r.json()["metadata"] is None
