"""The generate objective's output read as a JSON object, repaired when it is cut off or malformed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import json_repair

# Trailing markers that some models (NuExtract) or markdown answers leave behind.
_SUFFIXES = re.compile(r"(<\|end-output\|>|<\|im_end\|>|</s>|```)\s*$")


@dataclass
class ParseResult:
    data: dict | None
    error: str | None = None
    repaired: bool = False


def parse_output(text: str) -> ParseResult:
    start = (text or "").find("{")
    if start < 0:
        return ParseResult(None, "no JSON object found in output")
    body = text[start:]

    # raw_decode takes the first complete object and ignores whatever follows it.
    try:
        data, _ = json.JSONDecoder().raw_decode(body)
        if isinstance(data, dict):
            return ParseResult(data)
    except json.JSONDecodeError:
        pass

    # Usually truncated at the token limit: let json_repair close strings/brackets.
    while (stripped := _SUFFIXES.sub("", body.rstrip())) != body.rstrip():
        body = stripped
    try:
        data = json_repair.loads(body)
    except Exception as exc:  # json_repair is lenient, but never trust it fully
        return ParseResult(None, f"could not repair JSON: {exc}".splitlines()[0])
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # an object followed by more JSON-looking text
    if not isinstance(data, dict):
        return ParseResult(None, f"repaired output is {type(data).__name__}, not an object")
    return ParseResult(data, repaired=True)
