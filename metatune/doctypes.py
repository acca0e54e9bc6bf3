"""Document types as data: fields, prompt wording, example JSON and JSON schema per type.

The built-in table lives in metatune/configs/doctypes.yaml; a user YAML file in the same format adds
types or replaces them by name.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from metatune.config import read_yaml
from metatune.errors import MetatuneError
from metatune.paths import CONFIG_DIR

BUILTIN_TYPES_FILE = CONFIG_DIR / "doctypes.yaml"
GENERAL = "general"


def _fold(name: str) -> str:
    """Compare type names ignoring case, accents and surrounding space ("Artículo" == "articulo")."""
    decomposed = unicodedata.normalize("NFKD", name.strip().lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@dataclass(frozen=True)
class FieldSelection:
    """Which fields a run writes for a type: the one answer, used by formatting, encoding, the run's
    description and the extractors (data.include_fields / data.exclude_fields, saved in metatune.json)."""

    include: tuple[str, ...] | None = None  # None: the type's own fields
    exclude: tuple[str, ...] = ()

    @classmethod
    def of(cls, include, exclude) -> FieldSelection:
        return cls(None if include is None else tuple(include), tuple(exclude))

    def fields(self, doc_type: DocType) -> list[str]:
        """The type's own fields (or those of `include` the type has), minus `exclude`."""
        names = list(doc_type.fields) if self.include is None else [f for f in self.include if f in doc_type.fields]
        return [f for f in names if f not in self.exclude]


@dataclass
class DocType:
    name: str
    noun: str
    fields: dict[str, str]  # field name -> "string" | "array"
    example: dict
    aliases: list[str] = field(default_factory=list)

    def prompt(self, fields: list[str], example: bool = True) -> str:
        """The instruction: names the fields and (with `example`) shows one example JSON of the output shape."""
        text = (
            f"Extraé los metadatos bibliográficos de {self.noun} que sigue. "
            f"Campos posibles: {', '.join(fields)}. "
            "Respondé solo con un objeto JSON; omití los campos que no aparecen en el texto."
        )
        if not example:
            return text
        shown = {f: self.example[f] for f in fields if f in self.example}
        return f"{text} Ejemplo de formato: {json.dumps(shown, ensure_ascii=False)}"

    def template(self, fields: list[str]) -> dict:
        """NuExtract-style template: every field with an empty value of its kind."""
        return {f: [] if self.fields.get(f) == "array" else "" for f in fields}

    def json_schema(self, fields: list[str]) -> dict:
        def kind(f: str) -> dict:
            if self.fields.get(f) == "array":
                return {"type": "array", "items": {"type": "string"}}
            return {"type": "string"}

        return {
            "title": self.name,
            "type": "object",
            "properties": {f: kind(f) for f in fields},
            "additionalProperties": False,
        }

    def to_dict(self) -> dict:
        return {"noun": self.noun, "fields": self.fields, "example": self.example, "aliases": self.aliases}


class TypeRegistry:
    """Looks document types up by name or alias."""

    def __init__(self, types: dict[str, DocType]):
        if GENERAL not in types:
            raise MetatuneError(f"the document type table has no '{GENERAL}' type")
        self.types = types
        self._lookup = {}
        for t in types.values():
            for alias in [t.name, *t.aliases]:
                self._lookup[_fold(alias)] = t

    @classmethod
    def load(cls, user_file: str | Path | None = None) -> TypeRegistry:
        raw = _read_yaml(BUILTIN_TYPES_FILE)
        if user_file:
            for name, spec in _read_yaml(Path(user_file)).items():
                # a user type replaces the built-in one of the same name ("Artículo" replaces "Articulo")
                for old in [k for k in raw if _fold(k) == _fold(str(name))]:
                    del raw[old]
                raw[str(name)] = spec
        return cls.from_dict(raw, source=str(user_file or BUILTIN_TYPES_FILE))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "types") -> TypeRegistry:
        types = {}
        for name, spec in raw.items():
            spec = _check_spec(name, spec, source)
            fields, example = {}, {}
            parent = spec.pop("extends", None)
            if parent:
                if parent not in raw:
                    raise MetatuneError(f"{source}: type '{name}' extends unknown type '{parent}'")
                parent_spec = _check_spec(parent, raw[parent], source)
                fields.update(parent_spec.get("fields") or {})
                example.update(parent_spec.get("example") or {})
            fields.update(spec.get("fields") or {})
            example.update(spec.get("example") or {})
            bad = {f: k for f, k in fields.items() if k not in ("string", "array")}
            if bad:
                raise MetatuneError(f"{source}: type '{name}': field kinds must be 'string' or 'array', got {bad}")
            if not fields:
                raise MetatuneError(f"{source}: type '{name}' has no fields")
            types[name] = DocType(
                name=name,
                noun=spec.get("noun", "el documento"),
                fields=fields,
                example=example,
                aliases=list(spec.get("aliases") or []),
            )
        return cls(types)

    def to_dict(self) -> dict:
        return {name: t.to_dict() for name, t in self.types.items()}

    def find(self, name: str | None) -> DocType | None:
        if not isinstance(name, str):
            return None
        return self._lookup.get(_fold(name))

    @property
    def general(self) -> DocType:
        return self.types[GENERAL]


TYPE_KEYS = {"noun", "fields", "example", "aliases", "extends"}


def _check_spec(name: str, spec: object, source: str) -> dict:
    """One type's definition as a dict, with the shape of every key checked."""
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise MetatuneError(f"{source}: type '{name}': expected a mapping of {', '.join(sorted(TYPE_KEYS))}")
    unknown = sorted(set(spec) - TYPE_KEYS)
    if unknown:
        raise MetatuneError(
            f"{source}: type '{name}': unknown key '{unknown[0]}' (expected {', '.join(sorted(TYPE_KEYS))})"
        )
    for key, kind in (("fields", dict), ("example", dict), ("aliases", list)):
        if spec.get(key) is not None and not isinstance(spec[key], kind):
            raise MetatuneError(f"{source}: type '{name}': '{key}' must be a {'mapping' if kind is dict else 'list'}")
    return dict(spec)


def _read_yaml(path: Path) -> dict:
    return read_yaml(path, "document types file", "a mapping of type name to its definition")
