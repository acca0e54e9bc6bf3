"""One normalisation for document text, applied alike to training records and to extraction inputs.

PDF text layers write some letters as two glyphs: a ligature (U+FB01 "ﬁ" for "fi") or a letter and a
separate spacing accent ("Franc¸ois", "Gre´gory", "Ve ´ronique", "F´ısica"). Both are turned into
plain letters, so "François" reads the same whichever way the PDF was made.
"""

from __future__ import annotations

import re
import unicodedata


def collapse_whitespace(text: str) -> str:
    """The text with every run of whitespace (line breaks included) made one space: what the original
    SEDICI orchestrator sends and what some PDF tools give."""
    return " ".join(text.split())


# Spacing accents as PDF text layers emit them, and the combining mark each one stands for. The ASCII
# look-alikes (^ ` ~) are left out: in real text they are far more often code, math, paths or quotes.
ACCENTS = {
    "\u00b4": "\u0301",  # ´ acute
    "\u02ca": "\u0301",  # ˊ modifier acute
    "\u00a8": "\u0308",  # ¨ diaeresis
    "\u00b8": "\u0327",  # ¸ cedilla
    "\u02c6": "\u0302",  # ˆ circumflex
    "\u02dc": "\u0303",  # ˜ tilde
    "\u02cb": "\u0300",  # ˋ grave
    "\u02c7": "\u030c",  # ˇ caron
    "\u02da": "\u030a",  # ˚ ring above
}
_A = "[" + "".join(ACCENTS) + "]"
_L = r"[^\W\d_]"
# Dotless i first: TeX writes "í" as an accent over "ı", and the accent may come before or after it.
_DOTLESS = re.compile(rf"(?P<a>{_A})ı|ı(?P<s> ?)(?P<b>{_A})")
# The accent after its letter (pdfplumber's order), maybe after a space: "c¸", "e´", "e ´".
_AFTER = re.compile(rf"(?P<pre>{_L}?)(?P<base>{_L})(?P<space> ?)(?P<a>{_A})(?=(?P<next>.?))", re.S)
# The accent before its letter, where nothing before it could carry it: "´ecole".
_BEFORE = re.compile(rf"(?P<a>{_A})(?P<base>[^\W\d_A-Z])")
_LIGATURES = re.compile("[\ufb00-\ufb06]")


def _compose(base: str, accent: str) -> str | None:
    """The precomposed letter, or None where Unicode has none (the accent then stays as it is)."""
    letter = unicodedata.normalize("NFC", base + ACCENTS[accent])
    return letter if len(letter) == 1 else None


def _after(m: re.Match) -> str:
    pre, base, space, nxt = m["pre"], m["base"], m["space"], m["next"]
    # "O´Donnell", "L´Aquila": an apostrophe typed as an accent, not an accented letter
    if not pre and not space and base.isupper() and nxt.isupper():
        return m[0]
    letter = _compose(base, m["a"])
    if letter is None:
        return m[0]
    # "Universite ´Paul": the accent took the place of the space between two words
    gap = " " if space and (nxt.isupper() or nxt == "(") else ""
    return pre + letter + gap


def clean_text(text: str) -> str:
    """Ligatures spelled out in letters, detached accents joined to their letter, then Unicode NFC.
    Anything else (a lone "´", "x^2", "~/path", superscripts, fractions) is left as it is."""
    text = _LIGATURES.sub(lambda m: unicodedata.normalize("NFKC", m[0]), text)
    if any(c in text for c in ACCENTS):
        text = _DOTLESS.sub(lambda m: _compose("i", m["a"] or m["b"]) or m[0], text)
        text = _AFTER.sub(_after, text)
        text = _BEFORE.sub(lambda m: _compose(m["base"], m["a"]) or m[0], text)
    return unicodedata.normalize("NFC", text)
