#!/usr/bin/env python3
"""Count the error classes of a tag or generate evaluation: what kind of wrong each wrong value is.

    python scripts/error_classes.py RUN/eval/predictions.jsonl [MORE/predictions.jsonl ...]

Reads the `predictions.jsonl` that `metatune evaluate --report` writes and prints, per file, a table
of counts with one example each (values compared with evaluate's soft matching: case, accents and
punctuation folded):

* title: banner or extra words (the reference title inside a longer prediction), cut (the
  prediction inside the reference), other wrong, missing;
* authors: a predicted name that joins two reference names (merged), one that is part of a
  reference name (cut), one already matched (repeated), one that matches no reference name
  (spurious), and reference names missed;
* affiliations: documents whose affiliations match as one text but not item by item (split wrong);
* doi, keywords: documents whose reference has them and the prediction has none (missed).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from metatune.metrics import normalize


def fold(value) -> str:
    return re.sub(r"[\W_]+", "", normalize(value if isinstance(value, str) else " ".join(value)))


def items(value) -> list[str]:
    return [v for v in (value if isinstance(value, list) else [value] if value else []) if isinstance(v, str)]


def classes(row: dict) -> list[tuple[str, str]]:
    pred, ref = row.get("prediction") or {}, row["reference"]
    found: list[tuple[str, str]] = []
    if ref.get("title"):
        p, r = fold(pred.get("title") or ""), fold(ref["title"])
        if not p:
            found.append(("title missing", ref["title"]))
        elif p != r:
            kind = "title with banner or extra words" if r in p else "title cut" if p in r else "title other wrong"
            found.append((kind, f"{pred['title']!r} for {ref['title']!r}"))
    refs = [fold(n) for n in items(ref.get("creator"))]
    left = list(refs)
    for name in items(pred.get("creator")):
        f = fold(name)
        if f in left:
            left.remove(f)
        elif f in refs:
            found.append(("author name repeated", name))
        elif sum(r in f for r in refs) >= 2:
            found.append(("author names merged", name))
        elif any(f and f in r for r in refs):
            found.append(("author name cut", name))
        else:
            found.append(("author name spurious", name))
    found += [("author name missed", r) for r in left]
    p_aff, r_aff = items(pred.get("originPlaceInfo")), items(ref.get("originPlaceInfo"))
    if r_aff and fold(p_aff) == fold(r_aff) and sorted(map(fold, p_aff)) != sorted(map(fold, r_aff)):
        found.append(("affiliations split wrong", f"{len(p_aff)} items for {len(r_aff)}"))
    for field in ("doi", "keywords"):
        if items(ref.get(field)) and not items(pred.get(field)):
            found.append((f"{field} missed", row.get("id", "")))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.predictions:
        counts: Counter = Counter()
        example: dict[str, str] = {}
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for row in rows:
            for kind, what in classes(row):
                counts[kind] += 1
                example.setdefault(kind, what)
        print(f"\n{path} ({len(rows)} documents)\n\n| error class | count | example |\n|---|---:|---|")
        for kind, n in sorted(counts.items()):
            print(f"| {kind} | {n} | {example[kind][:110].replace('|', '/')} |")


if __name__ == "__main__":
    main()
