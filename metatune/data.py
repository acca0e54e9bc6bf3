"""Reading datasets: the SEDICI layout, a flat JSON list or JSON Lines; validation; seeded splits.

Every problem is reported as `file: record split[i]: field 'x': what is wrong`.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from metatune.doctypes import TypeRegistry
from metatune.errors import MetatuneError
from metatune.files import write_atomic
from metatune.text import clean_text

SPLITS = ("training", "validation", "test")
SPLIT_ALIASES = {"train": "training", "valid": "validation", "dev": "validation", "eval": "validation"}
SPLIT_RATIOS = (0.8, 0.1, 0.1)


@dataclass
class Problem:
    where: str  # "training[3]"
    field: str | None
    message: str

    def render(self, path: str | Path) -> str:
        field = f": field '{self.field}'" if self.field else ""
        return f"{path}: record {self.where}{field}: {self.message}"


# Among equally plausible guesses, the Western code pages win: a Spanish file in cp1252 and in
# cp1250 often scores the same, but only cp1252 reads "ñ" as "ñ" and not "ń".
WESTERN = {"cp1252", "latin_1", "iso8859_15"}


def read_text(path: Path) -> str:
    """UTF-8 first; anything else is decoded after detecting its encoding."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        matches = list(from_bytes(raw))
        if not matches:
            raise MetatuneError(f"{path}: not UTF-8 and its text encoding cannot be detected") from None
        best = min(matches, key=lambda m: (m.chaos, -m.coherence, not WESTERN & set(m.could_be_from_charset)))
        return str(best)


def parse_file(path: Path) -> dict[str, list] | list:
    """The file's records as given: a dict of splits, or one flat list."""
    text = read_text(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _parse_jsonl(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values one after another: JSON Lines
            return _parse_jsonl(path, text)
        raise MetatuneError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        splits = {SPLIT_ALIASES.get(k, k): v for k, v in data.items() if SPLIT_ALIASES.get(k, k) in SPLITS}
        if not splits:
            raise MetatuneError(
                f"{path}: expected a list of records or an object with 'training', 'validation' and 'test' lists"
            )
        for name, records in splits.items():
            if not isinstance(records, list):
                raise MetatuneError(f"{path}: split '{name}' is not a list of records")
        return splits
    raise MetatuneError(f"{path}: expected a list of records or an object of splits")


def _parse_jsonl(path: Path, text: str) -> list:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise MetatuneError(f"{path}: invalid JSON on line {n}, column {e.colno}: {e.msg}") from None
    return records


def record_type(record: dict) -> object:
    """`type`, or SEDICI's `dc.type` when `type` is absent or empty."""
    value = record.get("type")
    return value if value not in (None, "") else record.get("dc.type", value)


def clean_record(record: object) -> None:
    """The record's text and string values through clean_text, in place: the model trains on text as
    `metatune extract` gives it ("François", not "Franc¸ois"), and its targets are spelled the same way."""
    if not isinstance(record, dict):
        return
    for key, value in record.items():
        if isinstance(value, str) and key != "id":
            record[key] = clean_text(value)
        elif isinstance(value, list):
            record[key] = [clean_text(v) if isinstance(v, str) else v for v in value]


def check_record(record: object, where: str, registry: TypeRegistry, fallback_type: str | None) -> list[Problem]:
    if not isinstance(record, dict):
        return [Problem(where, None, f"expected an object, got {type(record).__name__}")]
    problems = []
    text = record.get("original_text")
    if "original_text" not in record:
        problems.append(Problem(where, "original_text", "missing"))
    elif not isinstance(text, str):
        problems.append(Problem(where, "original_text", f"expected text, got {type(text).__name__}"))
    elif not text.strip():
        problems.append(Problem(where, "original_text", "empty text"))
    doc_type = record_type(record)
    if registry.find(doc_type) is None and fallback_type is None:
        key = "dc.type" if record.get("type") in (None, "") and "dc.type" in record else "type"
        known = ", ".join(registry.types)
        shown = "missing" if doc_type is None else f"unknown document type {doc_type!r}"
        problems.append(Problem(where, key, f"{shown} (known: {known}; or set data.fallback_type)"))
    for key in ("title",):
        if key in record and record[key] is not None and not isinstance(record[key], str):
            problems.append(Problem(where, key, f"expected text, got {type(record[key]).__name__}"))
    return problems


def split_records(records: list[dict], seed: int, ratios=SPLIT_RATIOS) -> dict[str, list[dict]]:
    """Seeded split, stratified by document type: each type is divided by `ratios` (training,
    validation, test; 80/10/10) on its own."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_type[str(record_type(r))].append(r)
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for t in sorted(by_type):
        group = by_type[t][:]
        rng.shuffle(group)
        n = len(group)
        n_val = round(n * ratios[1])
        n_test = round(n * ratios[2])
        if n >= 3:  # every split asked for gets at least one document of each type that can spare one
            n_val = max(n_val, 1) if ratios[1] else 0
            n_test = max(n_test, 1) if ratios[2] else 0
        n_train = n - n_val - n_test
        out["training"] += group[:n_train]
        out["validation"] += group[n_train : n_train + n_val]
        out["test"] += group[n_train + n_val :]
    return out


def screening_split(training: list[dict], fraction: float, seed: int) -> dict[str, list[dict]]:
    """A split for choosing between levers without looking at the real validation split: a seeded,
    type-stratified `fraction` of the training records becomes the validation split, the rest stays
    training, and the test split is empty (the file's validation and test records are left out)."""
    if not 0 < fraction < 1:
        raise MetatuneError(f"--screen must be a fraction between 0 and 1, got {fraction}")
    return split_records(training, seed, (1 - fraction, fraction, 0.0))


@dataclass
class Dataset:
    path: Path
    splits: dict[str, list[dict]]
    was_split: bool  # True when the file was one list and metatune split it
    warnings: list[str] = field(default_factory=list)  # worth a look, not wrong (duplicate ids)

    def split(self, name: str) -> list[dict]:
        name = SPLIT_ALIASES.get(name, name)
        if name not in SPLITS:
            raise MetatuneError(f"unknown split '{name}' (choose from {', '.join(SPLITS)})")
        records = self.splits.get(name) or []
        if not records:
            raise MetatuneError(f"{self.path}: split '{name}' is empty")
        return records


def validate_file(path: str | Path, registry: TypeRegistry, fallback_type: str | None = None, seed: int = 42):
    """Read and check a dataset file; returns the dataset and every problem found."""
    path = Path(path)
    if not path.exists():
        raise MetatuneError(f"{path}: dataset file not found")
    if path.is_dir():
        raise MetatuneError(f"{path}: is a directory, expected a dataset file")
    parsed = parse_file(path)
    was_split = isinstance(parsed, list)
    splits = {"all": parsed} if was_split else parsed
    if not any(splits.values()):
        raise MetatuneError(f"{path}: no records")
    problems = []
    where = {}  # id(record) -> "split[i]" as in the file
    for name, records in splits.items():
        for i, record in enumerate(records):
            where[id(record)] = f"{name}[{i}]"
            clean_record(record)
            problems += check_record(record, f"{name}[{i}]", registry, fallback_type)
    if was_split:
        splits = split_records(parsed, seed) if not problems else {}
    warnings = documents_in_two_splits(splits, where) + duplicate_ids(splits, where)
    return Dataset(path, splits, was_split, warnings), problems


def documents_in_two_splits(splits: dict[str, list], where: dict[int, str]) -> list[str]:
    """One line for each record whose text is also in another split: evaluated on what it was trained on?"""
    first: dict[str, tuple[str, object]] = {}
    found = []
    for name, records in splits.items():
        for record in records:
            text = record.get("original_text") if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                continue
            seen_in, seen = first.setdefault(text.strip(), (name, record))
            if seen_in != name:
                found.append(
                    f"record {where[id(record)]} has the same text as {where[id(seen)]}: "
                    f"one document in two splits ({seen_in}, {name})"
                )
    return found


def duplicate_ids(splits: dict[str, list], where: dict[int, str]) -> list[str]:
    """One line for each `id` that several records share."""
    places: dict[str, list[str]] = defaultdict(list)
    for records in splits.values():
        for record in records:
            if isinstance(record, dict) and record.get("id") not in (None, ""):
                places[str(record["id"])].append(where[id(record)])
    return [f"id {key!r} is shared by records {', '.join(found)}" for key, found in places.items() if len(found) > 1]


def load_dataset(path: str | Path, registry: TypeRegistry, fallback_type: str | None = None, seed: int = 42) -> Dataset:
    """Read a dataset; the first problem is raised as a one-line error."""
    dataset, problems = validate_file(path, registry, fallback_type, seed)
    if problems:
        more = f" (and {len(problems) - 1} more problems; run `metatune data validate`)" if len(problems) > 1 else ""
        raise MetatuneError(problems[0].render(dataset.path) + more)
    return dataset


TOKEN_VARIABLES = ("TOKEN_HUGGING_FACE", "HF_TOKEN")


def load_for_training(settings, need_validation: bool = True) -> tuple[TypeRegistry, Dataset]:
    """The type registry and the dataset of a `data:` config section (metatune.config.DataSettings),
    downloaded when configured, every record checked, and the splits training needs non-empty."""
    registry = TypeRegistry.load(settings.types_file)
    if settings.fallback_type and registry.find(settings.fallback_type) is None:
        raise MetatuneError(f"data.fallback_type: unknown document type {settings.fallback_type!r}")
    path = ensure_local(settings.path, settings.hub_dataset, settings.hub_filename)
    dataset = load_dataset(path, registry, settings.fallback_type, settings.split_seed)
    dataset.split("training")
    if need_validation:
        dataset.split("validation")
    return registry, dataset


def hub_token() -> str | None:
    """The Hub token from TOKEN_HUGGING_FACE or HF_TOKEN, in the environment or else in a .env file
    found from the working directory upwards. Never printed, never put into os.environ."""
    from dotenv import dotenv_values, find_dotenv

    for name in TOKEN_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    env_file = find_dotenv(usecwd=True)
    values = dotenv_values(env_file) if env_file else {}
    return next((values[name] for name in TOKEN_VARIABLES if values.get(name)), None)


def ensure_local(path: str | Path, hub_dataset: str | None, hub_filename: str | None = None) -> Path:
    """The dataset file on disk, downloading it from the Hub when it is missing and a repo is configured."""
    path = Path(path)
    if path.exists() or not hub_dataset:
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    token = hub_token()
    filename = hub_filename or path.name
    print(f"{path}: not on disk; downloading {filename} from the Hub dataset {hub_dataset}")
    try:
        downloaded = hf_hub_download(repo_id=hub_dataset, filename=filename, repo_type="dataset", token=token)
    except (HfHubHTTPError, OSError, ValueError) as e:
        reason = str(e).replace(token, "***") if token else str(e)  # redact before cutting: no token halves
        reason = " ".join(reason.split())[:200]
        raise MetatuneError(
            f"{path}: not on disk and the download of {filename} from '{hub_dataset}' failed: {type(e).__name__}: {reason}"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temporary file of its own per process: under `accelerate launch` every process may get here at once
    write_atomic(path, Path(downloaded).read_bytes())  # cache it where the config says the dataset lives
    return path


def write_split(dataset: Dataset, out: Path) -> None:
    if out.is_dir() or not out.parent.is_dir():
        raise MetatuneError(f"{out}: cannot write there ({'a directory' if out.is_dir() else 'no such directory'})")
    write_atomic(out, json.dumps(dataset.splits, ensure_ascii=False, indent=1))


def alignment_coverage(
    dataset: Dataset, registry: TypeRegistry, fallback_type: str | None = None
) -> dict[str, list[int]]:
    """Per field, [values, values found in their document's text]: what a run can copy or label verbatim."""
    from metatune.alignment import align_record

    coverage: dict[str, list[int]] = {}
    for records in dataset.splits.values():
        for record in records:
            doc_type = registry.find(record_type(record)) or registry.find(fallback_type)
            fields = [f for f in doc_type.fields if f != "language"] if doc_type else []
            for (name, _), span in align_record(record["original_text"], record, fields).items():
                counts = coverage.setdefault(name, [0, 0])
                counts[0] += 1
                counts[1] += span is not None
    return coverage
