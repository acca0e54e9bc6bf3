"""Requests written for the original SEDICI LLM service, understood by metatune.

The original orchestrator sends `/consume-llm` one string: its own instruction for the document's
type (a sentence naming the fields, "Here is a JSON Example format:", an example object, "Now,
extract the information from the following text ...:") immediately followed by the document. A
metatune run has its own, saved prompt for every type, so that instruction must not be read as part
of the document: `split_instruction` recognises it, says which type it asks for, and returns the
document alone.

Recognition is generic, not tied to the original wording: a leading block that talks about
extraction / metadata / JSON and holds an example object (JSON or a Python dict, possibly inside a
tuple) is an instruction; after the example, a short lead-in ending in ':' ("Documento:",
"... from the following text ...:") is part of it. The type is the one the instruction names
(`Tesis`, `artículo`, ...), else the one whose own fields it lists (director/degree.name: Tesis;
journalTitle/issn: Articulo; issn/event alone: Objeto de conferencia; none: general).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from metatune.doctypes import GENERAL, TypeRegistry, _fold

MAX_LEAD = 2000  # characters of instruction before the example object
MAX_EXAMPLE = 8000  # characters of the example object itself
MAX_TAIL = 300  # characters of the lead-in after the example ("Document:")
INSTRUCTION_WORDS = re.compile(r"json|metadat|extra[ie]|campos|fields", re.IGNORECASE)
LEAD_IN_WORDS = re.compile(r"text|document|json|format|extra", re.IGNORECASE)
WORD = re.compile(r"[A-Za-z][A-Za-z0-9_.]*")
KEY = re.compile(r"""["']([^"'\n]{1,60})["']\s*:""")


@dataclass
class Split:
    document: str
    doc_type: str | None  # the type the instruction asks for; None when there was no instruction
    instruction: str = ""


def _object_end(text: str, start: int) -> int | None:
    """Index just past the object opened at text[start] ('{'), honouring both quote styles."""
    depth, quote, escape = 0, None, False
    for i in range(start, min(len(text), start + MAX_EXAMPLE)):
        c = text[i]
        if quote:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def split_instruction(text: str, registry: TypeRegistry) -> Split:
    """The document without a leading extraction instruction, and the type that instruction asks for."""
    brace = text.find("{", 0, MAX_LEAD)
    if brace < 0 or not INSTRUCTION_WORDS.search(text[:brace]):
        return Split(text, None)
    end = _object_end(text, brace)
    if end is None:
        return Split(text, None)
    rest = text[end:]
    closers = re.match(r"[\s,)\]]*", rest).end()  # `({...},)`: the example printed as a Python tuple
    lead_in = re.match(rf"[^\n:{{}}]{{0,{MAX_TAIL}}}:[ \t]*\n?", rest[closers:])
    if lead_in and LEAD_IN_WORDS.search(lead_in.group()):
        closers += lead_in.end()
    instruction, document = text[: end + closers], text[end + closers :].strip()
    if not document:
        return Split(text, None)
    return Split(document, instruction_type(instruction, text[brace:end], registry), instruction)


def instruction_type(instruction: str, example: str, registry: TypeRegistry) -> str:
    """The type an instruction names, else the type whose own fields (those beyond general's) it lists."""
    prose = instruction.replace(example, " ")  # the example's values are content, not field names or types
    folded = _fold(prose)
    for doc_type in registry.types.values():
        if doc_type.name == GENERAL:
            continue
        for name in [doc_type.name, *doc_type.aliases]:
            if re.search(rf"\b{re.escape(_fold(name))}\b", folded):
                return doc_type.name
    named = {_fold(w).rstrip(".") for w in WORD.findall(prose)}
    named |= {_fold(k).rstrip(".") for k in KEY.findall(example)}
    general = set(registry.general.fields)
    specific = {_fold(f): f for t in registry.types.values() for f in t.fields if f not in general}
    asked = {specific[w] for w in named if w in specific}
    best, best_score = GENERAL, (0, 0)
    for doc_type in registry.types.values():
        own = set(doc_type.fields) - general
        if not own:
            continue
        # explain every field asked for, then leave as few of the type's fields unasked as possible
        score = (len(asked & own) - len(asked - own), -len(own - asked))
        if score[0] > 0 and score > best_score:
            best, best_score = doc_type.name, score
    return best
