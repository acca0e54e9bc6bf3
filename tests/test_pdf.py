"""PDF text as training text is: ligatures and detached accents come back as plain letters."""

from __future__ import annotations

import os

import pytest

from metatune.data import clean_record
from metatune.errors import MetatuneError
from metatune.pdf import pdf_text
from metatune.text import clean_text


def pdf_with(text: str | None) -> bytes:
    """A one-page PDF writing `text` glyph by glyph in DejaVu Sans (matplotlib's copy), which has the
    ligature glyphs U+FB00-FB06 and the spacing accents; None: a page with a picture and no text."""
    import matplotlib
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    if text is None:
        pdf.set_fill_color(90, 90, 90)
        pdf.rect(20, 20, 120, 80, style="F")
    else:
        pdf.add_font("DejaVu", fname=os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"))
        pdf.set_font("DejaVu", size=12)
        pdf.multi_cell(0, 7, text)
    return bytes(pdf.output())


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Pierre-Franc¸ois Dutot", "Pierre-François Dutot"),  # cedilla after its letter (pdfplumber, pypdf)
        ("Gre´gory Mounie´", "Grégory Mounié"),  # acute after its letter (pdfplumber)
        ("´ecole, d´eveloppement", "école, développement"),  # before it, where nothing before can carry it
        ("Ve ´ronique Pauli, Mu ¨nster", "Véronique Pauli, Münster"),  # after a space (grobid-headers data)
        ("Universite ´Paul-Sabatier", "Université Paul-Sabatier"),  # the accent took the space's place
        ("F´ısica, Lemaˆıtre, na¨ıve", "Física, Lemaître, naïve"),  # TeX's accent on a dotless i, either side
        ("an eﬃcient ﬁt, ﬂows, oﬀ, baﬄe", "an efficient fit, flows, off, baffle"),
        ("Jose\u0301 Pe\u0301rez", "José Pérez"),  # combining marks: NFC
    ],
)
def test_clean_text_joins_what_pdf_text_layers_split(raw, clean):
    assert clean_text(raw) == clean
    assert clean_text(clean) == clean


@pytest.mark.parametrize(
    "text",
    [
        "cd ~/path && x^2 + a^b",  # ASCII look-alikes are never accents
        "the `best' result",
        "O´Donnell, D´Alessandro, L´Aquila",  # an apostrophe typed as an acute accent
        "25 ˚C, ´ alone, ¨",
        "p ¼ .02, Smith², 20 µs, Java™",  # compatibility characters stay: only ligatures are spelled out
        "Universidad Nacional de La Plata\nTesis de posgrado\n",
    ],
)
def test_clean_text_leaves_ordinary_text_alone(text):
    assert clean_text(text) == text


def test_a_pdf_with_ligatures_and_detached_accents_reads_as_plain_letters():
    text = pdf_text(pdf_with("Pierre-Franc¸ois Gre´gory\nAn eﬃcient ﬁeld study"), "paper.pdf")
    assert text == "Pierre-François Grégory\nAn efficient field study"


def test_a_pdf_without_a_text_layer_says_so():
    with pytest.raises(MetatuneError) as caught:
        pdf_text(pdf_with(None), "scan.pdf")
    assert str(caught.value) == "scan.pdf: has no text layer (scanned or image-only PDF); OCR is not supported"


def test_not_a_pdf_is_one_line():
    with pytest.raises(MetatuneError, match=r"^notes\.pdf: cannot read the PDF: [^\n]+$"):
        pdf_text(b"plain text, not a PDF", "notes.pdf")


def test_a_password_protected_pdf_is_refused():
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="secret")
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(0, 10, "Confidential")
    with pytest.raises(MetatuneError, match=r"^locked\.pdf: the PDF is encrypted with a password$"):
        pdf_text(bytes(pdf.output()), "locked.pdf")


def test_training_records_are_cleaned_like_extraction_text():
    record = {
        "id": "a´b",
        "original_text": "Ve ´ronique Pauli\nAn eﬃcient method",
        "creator": ["Pauli, Ve ´ronique", 3],
        "title": "An eﬃcient method",
    }
    clean_record(record)
    assert record == {
        "id": "a´b",
        "original_text": "Véronique Pauli\nAn efficient method",
        "creator": ["Pauli, Véronique", 3],
        "title": "An efficient method",
    }
