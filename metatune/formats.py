"""Extraction records in catalogue formats: JSON, BibTeX, a TEI header as GROBID writes it, Dublin
Core XML (OAI-DC) and a CSV for DSpace's batch metadata import with SEDICI's field names.

A record is what `document_record` makes of one extraction (`source`, `type`, `metadata` valid under
the type's JSON schema, ...). Records whose metadata could not be parsed (`metadata` null) appear
only in JSON. The field mapping is the table
FIELDS below, documented in docs/service.md#catalogue-formats.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from metatune import __version__
from metatune.formatting import has_value

FORMATS = ("json", "bibtex", "tei", "dc", "csv")
SUFFIXES = {"json": ".json", "bibtex": ".bib", "tei": ".tei.xml", "dc": ".dc.xml", "csv": ".csv"}
MEDIA_TYPES = {
    "json": "application/json",
    "bibtex": "application/x-bibtex",
    "tei": "application/tei+xml",
    "dc": "application/xml",
    "csv": "text/csv",
}

TEI = "http://www.tei-c.org/ns/1.0"
XML = "http://www.w3.org/XML/1998/namespace"
OAI_DC = "http://www.openarchives.org/OAI/2.0/oai_dc/"
DC = "http://purl.org/dc/elements/1.1/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
for prefix, uri in (("", TEI), ("oai_dc", OAI_DC), ("dc", DC), ("xsi", XSI)):
    ET.register_namespace(prefix, uri)


def conform(data: dict, schema: dict) -> tuple[dict, dict[str, str]]:
    """The metadata made valid under `schema`, and what was changed, field by field.

    Empty values are left out (as in the training targets). A string where a list of strings is
    expected is wrapped in a list; a number where a string is expected becomes a string, and a list
    of strings is joined with "; " (affiliations written as a list); anything else that does not
    validate is dropped.
    """
    from jsonschema import Draft202012Validator

    properties = schema["properties"]
    clean, fixes = {}, {}
    for key, value in data.items():
        if isinstance(value, list):
            value = [v for v in value if has_value(v)]
        if not has_value(value):
            continue
        if key not in properties:
            fixes[key] = f"dropped: not a field of type '{schema['title']}'"
            continue
        expected = properties[key].get("type")
        if expected == "array" and isinstance(value, str):
            value, fixes[key] = [value], "converted: a single string to a list"
        elif expected == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value, fixes[key] = str(value), "converted: a number to text"
        elif expected == "string" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value, fixes[key] = "; ".join(value), "converted: a list of texts joined with '; '"
        error = next(Draft202012Validator(properties[key]).iter_errors(value), None)
        if error is not None:
            fixes[key] = f"dropped: {error.message}"
            continue
        clean[key] = value
    return clean, fixes


def document_record(name: str, extraction, extractor) -> dict:
    """The output object of one document: source, type, schema-valid metadata, what was fixed and
    the notes the run's extractor made of the document."""
    doc_type = extractor.registry.types[extraction.doc_type]
    record = {"source": name, "type": doc_type.name, "metadata": None}
    if extraction.data is None:
        record["error"] = extraction.error
        record["raw"] = extraction.raw
        return record
    data = dict(extraction.data)
    if extractor.registry.find(data.get("type")) is doc_type:
        data.pop("type")  # the type the model named is the record's type
    record["metadata"], fixes = conform(data, doc_type.json_schema(extractor.fields(doc_type.name)))
    if fixes:
        record["schema_fixes"] = fixes
    record.update(extraction.notes)
    return record


@dataclass(frozen=True)
class Mapping:
    bibtex: str | None  # BibTeX field (None: not written; creator/director... are handled as persons)
    dc: str | None  # Dublin Core element (OAI-DC)
    dspace: str | None  # SEDICI's DSpace metadata field (CSV column)


FIELDS = {
    "title": Mapping("title", "title", "dc.title"),
    "creator": Mapping("author", "creator", "sedici.creator.person"),
    "date": Mapping("year", "date", "dc.date.issued"),
    "language": Mapping("language", "language", "dc.language"),
    "rights": Mapping("copyright", "rights", "sedici.rights.license"),
    "rightsurl": Mapping("license", "rights", "sedici.rights.uri"),
    "originPlaceInfo": Mapping("institution", "publisher", "mods.originInfo.place"),
    "keywords": Mapping("keywords", "subject", "sedici.subject.keyword"),
    "abstract": Mapping("abstract", "description", "dc.description.abstract"),
    "subject": Mapping("subject", "subject", "dc.subject"),
    "director": Mapping("director", "contributor", "sedici.contributor.director"),
    "codirector": Mapping("codirector", "contributor", "sedici.contributor.codirector"),
    "degree.name": Mapping("type", None, "thesis.degree.name"),
    "degree.grantor": Mapping("school", None, "thesis.degree.grantor"),
    "publisher": Mapping("publisher", "publisher", "dc.publisher"),
    "isbn": Mapping("isbn", "identifier", "sedici.identifier.isbn"),
    "compiler": Mapping("editor", "contributor", "sedici.contributor.compiler"),
    "journalTitle": Mapping("journal", "source", "sedici.relation.journalTitle"),
    "journalVolumeAndIssue": Mapping("volume", "source", "sedici.relation.journalVolumeAndIssue"),
    "issn": Mapping("issn", "identifier", "sedici.identifier.issn"),
    "event": Mapping("eventtitle", "relation", "sedici.relation.event"),
    "doi": Mapping("doi", "identifier", "sedici.identifier.doi"),
}
PERSONS = {"creator", "director", "codirector", "compiler"}
BIBTEX_TYPES = {"Articulo": "article", "Libro": "book", "Objeto de conferencia": "inproceedings", "general": "misc"}
DC_TYPES = {"Tesis": "Thesis", "Articulo": "Article", "Libro": "Book", "Objeto de conferencia": "Conference object"}
MULTI = "||"  # DSpace CSV: several values of one field


def values(metadata: dict, field: str) -> list[str]:
    value = metadata.get(field)
    if value in (None, "", []):
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _with_metadata(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("metadata") is not None]


# JSON


def to_json(records: list[dict], single: bool) -> str:
    if single:
        return json.dumps(records[0], ensure_ascii=False, indent=2)
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in records)


# BibTeX


def _ascii(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if c.isascii() and c.isalnum())


def _braces(text: str) -> str:
    """BibTeX needs balanced braces; metadata rarely means them, so unbalanced ones become parentheses."""
    depth = 0
    for c in text:
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0:
            break
    return text if depth == 0 else text.replace("{", "(").replace("}", ")")


def bibtex_type(record: dict) -> str:
    if record["type"] == "Tesis":
        degree = _ascii(" ".join(values(record["metadata"], "degree.name"))).lower()
        return "phdthesis" if degree.startswith("doctor") else "mastersthesis"
    return BIBTEX_TYPES.get(record["type"], "misc")


def to_bibtex(records: list[dict]) -> str:
    from pybtex.database import BibliographyData, Entry, Person

    entries = {}
    for record in _with_metadata(records):
        meta = record["metadata"]
        fields, persons = [], {}
        for name, mapping in FIELDS.items():
            found = values(meta, name)
            if not found or mapping.bibtex is None:
                continue
            if name in PERSONS:
                persons[mapping.bibtex] = [Person(_braces(v)) for v in found]
            elif name == "date":
                year = re.search(r"\d{4}", found[0])
                if year:
                    fields.append(("year", year.group()))
                fields.append(("date", _braces(found[0])))
            elif name == "event" and bibtex_type(record) == "inproceedings":
                fields.append(("booktitle", _braces(found[0])))
            else:
                fields.append((mapping.bibtex, _braces(", ".join(found))))
        if record["type"] == "Tesis" and "school" not in dict(fields) and values(meta, "originPlaceInfo"):
            fields.append(("school", _braces(values(meta, "originPlaceInfo")[0])))
        entries[_cite_key(meta, entries)] = Entry(bibtex_type(record), fields=fields, persons=persons)
    return BibliographyData(entries).to_string("bibtex") if entries else ""


def _cite_key(meta: dict, taken: dict) -> str:
    """surnameYEARword, as reference managers make them; a letter added when taken."""
    author = (values(meta, "creator") or [""])[0].split(",")[0].split()
    year = re.search(r"\d{4}", (values(meta, "date") or [""])[0])
    words = [w for w in re.findall(r"\w+", (values(meta, "title") or [""])[0]) if len(w) > 3]
    key = (
        _ascii(author[-1] if author else "").lower()
        + (year.group() if year else "")
        + _ascii(words[0] if words else "").lower()
    ) or "document"
    unique, n = key, 0
    while unique in taken:
        n += 1
        unique = key + chr(ord("a") + (n - 1) % 26) * ((n - 1) // 26 + 1)
    return unique


# TEI


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs) -> ET.Element:
    element = ET.SubElement(parent, f"{{{TEI}}}{tag}", attrs)
    if text is not None:
        element.text = text
    return element


def _pers_name(parent: ET.Element, name: str) -> None:
    """GROBID's persName: forenames (first, middle) and surname; "Surname, Forenames" as SEDICI writes names."""
    surname, comma, forenames = name.partition(",")
    if not comma:
        parts = name.split()
        surname, forenames = (parts[-1], " ".join(parts[:-1])) if parts else (name, "")
    pers = _sub(parent, "persName")
    for i, forename in enumerate(forenames.split()):
        _sub(pers, "forename", forename, type="first" if i == 0 else "middle")
    _sub(pers, "surname", surname.strip())


def _date(parent: ET.Element, value: str, text: bool = True) -> None:
    when = re.match(r"\d{4}(-\d{2}(-\d{2})?)?", value.strip())
    attrs = {"type": "published", "when": when.group()} if when else {"type": "published"}
    _sub(parent, "date", value if text else None, **attrs)


def tei_element(record: dict) -> ET.Element:
    """A TEI document whose teiHeader is laid out as GROBID's header model writes it."""
    meta, doc_type = record["metadata"], record["type"]
    lang = (values(meta, "language") or [None])[0]
    tei = ET.Element(f"{{{TEI}}}TEI")
    header = _sub(tei, "teiHeader")
    if lang:
        header.set(f"{{{XML}}}lang", lang)
    file_desc = _sub(header, "fileDesc")
    title = (values(meta, "title") or [""])[0]
    _sub(_sub(file_desc, "titleStmt"), "title", title, level="a", type="main")

    publication = _sub(file_desc, "publicationStmt")
    publisher = values(meta, "publisher") or values(meta, "degree.grantor") or values(meta, "originPlaceInfo")
    _sub(publication, "publisher", publisher[0] if publisher else None)
    availability = _sub(publication, "availability", status="restricted" if values(meta, "rights") else "unknown")
    licence = _sub(availability, "licence", (values(meta, "rights") or [None])[0])
    if values(meta, "rightsurl"):
        licence.set("target", values(meta, "rightsurl")[0])
    if values(meta, "date"):
        _date(publication, values(meta, "date")[0])

    bibl = _sub(_sub(file_desc, "sourceDesc"), "biblStruct")
    book = doc_type == "Libro"
    analytic = None if book else _sub(bibl, "analytic")
    for name in values(meta, "creator"):
        _pers_name(_sub(analytic if analytic is not None else bibl, "author"), name)
    if analytic is not None:
        _sub(analytic, "title", title, level="a", type="main")
    monogr = _sub(bibl, "monogr")
    if book:
        _sub(monogr, "title", title, level="m", type="main")
    for field, role in (("compiler", "editor"), ("director", "director"), ("codirector", "codirector")):
        for name in values(meta, field):
            _pers_name(_sub(monogr, "editor", role=role), name)
    if values(meta, "journalTitle"):
        _sub(monogr, "title", values(meta, "journalTitle")[0], level="j", type="main")
    if values(meta, "event"):
        _sub(monogr, "meeting", values(meta, "event")[0])
    for field, kind in (("issn", "ISSN"), ("isbn", "ISBN")):
        for value in values(meta, field):
            _sub(monogr, "idno", value, type=kind)
    imprint = _sub(monogr, "imprint")
    if values(meta, "publisher"):
        _sub(imprint, "publisher", values(meta, "publisher")[0])
    if values(meta, "journalVolumeAndIssue"):
        _sub(imprint, "biblScope", values(meta, "journalVolumeAndIssue")[0], unit="volume")
    if values(meta, "date"):
        _date(imprint, values(meta, "date")[0], text=False)
    for value in values(meta, "doi"):
        _sub(bibl, "idno", value, type="DOI")
    for field in ("degree.name", "degree.grantor", "originPlaceInfo"):
        for value in values(meta, field):
            _sub(bibl, "note", value, type=field)
    _sub(bibl, "note", doc_type, type="documentType")

    app_info = _sub(_sub(header, "encodingDesc"), "appInfo")
    application = _sub(app_info, "application", version=__version__, ident="metatune")
    _sub(application, "label", "metatune")
    profile = _sub(header, "profileDesc")
    if lang:
        _sub(_sub(profile, "langUsage"), "language", ident=lang)
    if values(meta, "keywords") or values(meta, "subject"):
        text_class = _sub(profile, "textClass")
        if values(meta, "keywords"):
            keywords = _sub(text_class, "keywords")
            for term in values(meta, "keywords"):
                _sub(keywords, "term", term)
        for subject in values(meta, "subject"):
            _sub(text_class, "classCode", subject, scheme="subject")
    if values(meta, "abstract"):
        _sub(_sub(_sub(profile, "abstract"), "div"), "p", values(meta, "abstract")[0])
    text = _sub(tei, "text")  # a header-only document: the body is empty, as GROBID's header service leaves it
    if lang:
        text.set(f"{{{XML}}}lang", lang)
    _sub(text, "body")
    return tei


def to_tei(records: list[dict], single: bool) -> str:
    documents = [tei_element(r) for r in _with_metadata(records)]
    if single and documents:
        root = documents[0]
    else:  # several documents: a teiCorpus of them
        root = ET.Element(f"{{{TEI}}}teiCorpus")
        _sub(_sub(_sub(_sub(root, "teiHeader"), "fileDesc"), "titleStmt"), "title", "metatune extraction")
        root.extend(documents)
    return _xml(root)


# Dublin Core


def dc_element(record: dict) -> ET.Element:
    """One oai_dc:dc record: the fifteen Dublin Core elements, repeated as needed."""
    meta = record["metadata"]
    root = ET.Element(
        f"{{{OAI_DC}}}dc", {f"{{{XSI}}}schemaLocation": f"{OAI_DC} http://www.openarchives.org/OAI/2.0/oai_dc.xsd"}
    )
    for name, mapping in FIELDS.items():
        if mapping.dc is None:
            continue
        for value in values(meta, name):
            if name in ("isbn", "issn"):
                value = f"{name.upper()}:{value}"
            elif name == "doi":
                value = f"doi:{value}"
            ET.SubElement(root, f"{{{DC}}}{mapping.dc}").text = value
    if record["type"] in DC_TYPES:
        ET.SubElement(root, f"{{{DC}}}type").text = DC_TYPES[record["type"]]
    return root


def to_dc(records: list[dict], single: bool) -> str:
    documents = [dc_element(r) for r in _with_metadata(records)]
    if single and documents:
        return _xml(documents[0])
    root = ET.Element("records")
    for record, document in zip(_with_metadata(records), documents):
        wrapper = ET.SubElement(root, "record", {"source": str(record.get("source", ""))})
        wrapper.append(document)
    return _xml(root)


def _xml(root: ET.Element) -> str:
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


# DSpace CSV


def csv_columns(records: list[dict]) -> list[str]:
    used = {f for r in _with_metadata(records) for f in r["metadata"] if values(r["metadata"], f)}
    return ["id", "collection", "dc.type"] + [m.dspace for f, m in FIELDS.items() if f in used and m.dspace]


def to_csv(records: list[dict], header: bool = True, columns: list[str] | None = None) -> str:
    """DSpace's `metadata-import` CSV: `+` for a new item, several values joined with `||`. The
    collection is left for the importer to fill (a handle of the repository)."""
    columns = columns or csv_columns(records)
    by_column = {m.dspace: f for f, m in FIELDS.items() if m.dspace}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for record in _with_metadata(records):
        row = {"id": "+", "collection": "", "dc.type": record["type"] if record["type"] in DC_TYPES else ""}
        for column in columns[3:]:
            row[column] = MULTI.join(v.replace(MULTI, "|") for v in values(record["metadata"], by_column[column]))
        writer.writerow([row.get(c, "") for c in columns])
    return out.getvalue()


def render(records: list[dict], fmt: str, single: bool = False) -> str:
    """The records in `fmt`; `single`: one document alone (JSON indented, a TEI or DC document as root)."""
    if fmt == "json":
        return to_json(records, single) + "\n"
    if fmt == "bibtex":
        return to_bibtex(records)
    if fmt == "tei":
        return to_tei(records, single) + "\n"
    if fmt == "dc":
        return to_dc(records, single) + "\n"
    if fmt == "csv":
        return to_csv(records)
    raise ValueError(fmt)
