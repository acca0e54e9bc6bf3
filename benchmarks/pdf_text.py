"""PDF text extractors compared on a folder of real PDFs: what the model would be given to read.

    .venv/bin/python benchmarks/pdf_text.py /tmp/pdfs --pages 2

For each extractor (pypdf, pdfplumber as metatune and the SEDICI dataset call it, pdfminer.six's own
layout analysis) and each PDF, the text of the first `--pages` pages is read, in this process, and
the table gives:

* s/doc: median wall seconds per document;
* ligatures: characters U+FB00-U+FB06 ("ﬁ", "ﬃ") in the raw text, all documents together;
* accents: spacing accents next to a letter ("c¸", "e´", "´e") in the raw text, and after
  metatune.text.clean_text (the normalisation metatune applies to training and extraction text);
* glued: words of 25 or more letters, the sign of spaces lost between words;
* hyphens: line-end hyphenations ("algo-\\nrithm") left in the text;
* titles: documents whose title comes out in one piece, in order, in the first 1000 characters.
  Titles are read from `titles.json` in the folder ({"file.pdf": "Title", ...}) when it is there;
* words as metatune's: how much of the text's word sequence is the same as what metatune reads (its
  pdfplumber call), the mean difflib ratio over the documents: 100% is the same text.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import statistics
import time
from difflib import SequenceMatcher
from pathlib import Path

from metatune.text import ACCENTS, clean_text

LIGATURE = re.compile("[\ufb00-\ufb06]")
DETACHED = re.compile(rf"[^\W\d_][{''.join(ACCENTS)}]|[{''.join(ACCENTS)}] ?[^\W\d_]")
GLUED = re.compile(r"[^\W\d_]{25,}")
HYPHEN = re.compile(r"[^\W\d_]-\n[^\W\d_A-Z]")


def with_pypdf(data: bytes, pages: int) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages[:pages])


def with_pdfplumber(data: bytes, pages: int) -> str:
    import pdfplumber

    with pdfplumber.open(io.BytesIO(data)) as pdf:
        return "\n".join(page.extract_text() or "" for page in pdf.pages[:pages])


def with_metatune(data: bytes, pages: int) -> str:
    """pdfplumber as metatune.pdf calls it (a space where a gap exceeds 0.15 of the font size)."""
    import pdfplumber

    from metatune.pdf import X_TOLERANCE_RATIO

    with pdfplumber.open(io.BytesIO(data)) as pdf:
        return "\n".join(page.extract_text(x_tolerance_ratio=X_TOLERANCE_RATIO) or "" for page in pdf.pages[:pages])


def with_pypdfium2(data: bytes, pages: int) -> str:
    import pypdfium2

    pdf = pypdfium2.PdfDocument(data)
    try:
        return "\n".join(pdf[i].get_textpage().get_text_range() for i in range(min(pages, len(pdf))))
    finally:
        pdf.close()


def with_pdfminer(data: bytes, pages: int) -> str:
    from pdfminer.high_level import extract_text

    return extract_text(io.BytesIO(data), maxpages=pages)


EXTRACTORS = {
    "pypdf": with_pypdf,
    "pdfplumber": with_pdfplumber,
    "pdfplumber as metatune calls it": with_metatune,
    "pypdfium2": with_pypdfium2,
    "pdfminer.six": with_pdfminer,
}


def words(text: str) -> str:
    return " ".join(re.findall(r"\w+", clean_text(text).lower()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--pages", type=int, default=2, help="first pages read of each PDF")
    parser.add_argument("--show", action="store_true", help="print each document's first 300 characters")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # pypdf and pdfminer warn about every small defect
    files = sorted(args.folder.glob("*.pdf"))
    titles_file = args.folder / "titles.json"
    titles = json.loads(titles_file.read_text()) if titles_file.exists() else {}
    print(f"{len(files)} PDFs in {args.folder}, first {args.pages} pages each; {len(titles)} known titles\n")
    print(
        "| extractor | s/doc (median) | ligatures | accents raw | accents cleaned | glued | hyphens | titles in order "
        "| words as metatune's |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    reference = {path: words(with_metatune(path.read_bytes(), args.pages)) for path in files}
    for name, extract in EXTRACTORS.items():
        seconds, lig, raw, cleaned, glued, hyphens, found, same = [], 0, 0, 0, 0, 0, 0, []
        for path in files:
            data = path.read_bytes()
            start = time.perf_counter()
            text = extract(data, args.pages)
            seconds.append(time.perf_counter() - start)
            lig += len(LIGATURE.findall(text))
            raw += len(DETACHED.findall(text))
            cleaned += len(DETACHED.findall(clean_text(text)))
            glued += len(GLUED.findall(clean_text(text)))
            hyphens += len(HYPHEN.findall(text))
            title = titles.get(path.name)
            found += bool(title) and words(title) in words(text[:1000])
            same.append(SequenceMatcher(None, words(text).split(), reference[path].split(), autojunk=False).ratio())
            if args.show:
                print(f"{name} {path.name}: {text[:300]!r}")
        shown = f"{found}/{len(titles)}" if titles else "-"
        print(
            f"| {name} | {statistics.median(seconds):.3f} | {lig} | {raw} | {cleaned} | {glued} | {hyphens} | {shown} "
            f"| {statistics.mean(same):.1%} |"
        )


if __name__ == "__main__":
    main()
