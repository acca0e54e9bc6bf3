"""What PDF tools without line structure do to a page's text: to train on it and to measure against it.

The training data's text came from pdfplumber, which keeps the page's lines. Other tools and services
do not: the original SEDICI orchestrator sends the first words joined by single spaces; pdfminer-
and pdftotext-style extractors join a line to the next without a space where they miss the break
(`of` + `the` gives `ofthe`, `regu-` + `lation` gives `regu-lation`), and put what sits in the page's
margins where it falls: arXiv's vertical stamp (`arXiv:2104.08663v3 [cs.CL] 17 Jun 2021`), a
preprint server's notice, a journal's running head, a page number. `pdf_noise` makes a text look
like that, seeded, without touching the values a record holds (`keep`): nothing is put inside a
value, and no line end at a value's first or last word is glued to its neighbour. The margin texts
carry no DOI and no year but the arXiv stamp's date (a stamp's DOI would be the paper's own).
"""

from __future__ import annotations

import random
import re

from metatune.alignment import align_record

GLUED_SHARE = 0.15  # of the line breaks between two words, joined without a space
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
ARXIV_CATEGORIES = ["cs.CL", "cs.LG", "cs.CV", "cs.IR", "q-bio.GN", "physics.optics", "astro-ph.GA", "stat.ML"]
_BREAK = re.compile(r"[^\S\n]*\n\s*")


def _arxiv(rng: random.Random) -> str:
    year, month = rng.randint(2009, 2025), rng.randint(1, 12)
    return (
        f"arXiv:{year % 100:02d}{month:02d}.{rng.randint(1, 29999):05d}v{rng.randint(1, 4)} "
        f"[{rng.choice(ARXIV_CATEGORIES)}] {rng.randint(1, 28)} {MONTHS[month - 1]} {year}"
    )


def _journal(rng: random.Random) -> str:
    first = rng.randint(1, 2000)
    return f"Vol. {rng.randint(1, 90)}, No. {rng.randint(1, 12)}, pp. {first}-{first + rng.randint(5, 30)}"


def _page(rng: random.Random) -> str:
    return str(rng.randint(1, 400))


MARGINS = [
    _arxiv,
    lambda rng: (
        "bioRxiv preprint. The copyright holder for this preprint is the author/funder, who has granted "
        "bioRxiv a license to display the preprint in perpetuity."
    ),
    _journal,
    _page,
    lambda rng: "Preprint. Under review.",
    lambda rng: "This article is protected by copyright. All rights reserved.",
    lambda rng: "Accepted manuscript",
]


def pdf_noise(text: str, rng: random.Random, keep: list[tuple[int, int]] = ()) -> str:
    """`text` as a tool without line structure gives it: one or two margin texts (MARGINS) at the
    start or at line breaks outside the `keep` ranges (character offsets, end exclusive), GLUED_SHARE
    of the line breaks between two letters or digits joined without a space (never at the edge of a
    `keep` range), every other run of whitespace one space."""
    keep = list(keep)

    def inside(i: int) -> bool:
        return any(start < i < end for start, end in keep)

    def at_edge(start: int, end: int) -> bool:
        return any(start <= s <= end or start <= e <= end for s, e in keep)

    breaks = list(_BREAK.finditer(text))
    slots = [-1] + [i for i, b in enumerate(breaks) if not inside(b.start())]  # -1: before the text
    chosen = rng.sample(slots, min(len(slots), rng.randint(1, 2)))
    margins = {slot: MARGINS[rng.randrange(len(MARGINS))](rng) for slot in chosen}
    pieces, last = [margins.get(-1, "")], 0
    for i, b in enumerate(breaks):
        pieces.append(text[last : b.start()])
        between_words = (
            0 < b.start() and b.end() < len(text) and text[b.start() - 1].isalnum() and text[b.end()].isalnum()
        )
        if i in margins:
            pieces.append(f" {margins[i]} ")
        elif between_words and not at_edge(b.start(), b.end()) and rng.random() < GLUED_SHARE:
            pieces.append("")
        else:
            pieces.append(" ")
        last = b.end()
    pieces.append(text[last:])
    return " ".join("".join(pieces).split())


def noisy_text(record: dict, rng: random.Random) -> str:
    """A record's `original_text` through pdf_noise, the places of all its values (alignment.align_record)
    kept whole."""
    text = record["original_text"]
    spans = align_record(text, record, [f for f in record if f not in ("original_text", "id")])
    return pdf_noise(text, rng, [(s.start, s.end) for s in spans.values() if s is not None])
