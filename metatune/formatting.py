"""Records to examples: what the model reads (instruction + document text) and what it must write.

The input is kept in three parts so that encoding can truncate the document alone, never the
instruction around it. Inference builds its inputs with the same functions, from the run's
metatune.json, so a saved model always sees what it saw in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from metatune.alignment import anchor
from metatune.doctypes import DocType, FieldSelection, TypeRegistry

SCHEMA_PREFIX = "<|input|>\n### Template:\n{schema}\n### Text:\n"
SCHEMA_SUFFIX = "\n<|output|>\n"
SCHEMA_END = "<|end-output|>"
DOC_MARKER = "\u0000DOCUMENT\u0000"  # stands for the document while the chat template is applied


@dataclass
class InputFormat:
    """How inputs are built; saved in metatune.json so inference can rebuild them exactly."""

    style: str = "prompt"  # "prompt" | "schema"
    include_fields: list[str] | None = None
    exclude_fields: tuple[str, ...] = ()
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template when it has one
    anchor_min_words: int = 0  # long verbatim values written as anchors (metatune.alignment.anchor); 0: off
    anchor_words: int = 5
    prompt_example: bool = True  # the instruction shows one example JSON of the output

    @classmethod
    def from_settings(cls, data, target=None) -> InputFormat:
        """From config.DataSettings and the settings that shape a written target (anchor_min_words,
        anchor_words, prompt_example; None: every value whole, the example shown)."""
        return cls(
            data.input_style,
            data.include_fields,
            tuple(data.exclude_fields),
            data.chat_template,
            target.anchor_min_words if target else 0,
            target.anchor_words if target else 5,
            target.prompt_example if target else True,
        )

    @property
    def selection(self) -> FieldSelection:
        return FieldSelection.of(self.include_fields, self.exclude_fields)


@dataclass
class Example:
    prefix: str  # instruction and everything before the document text
    document: str  # the only part that may be truncated
    suffix: str  # everything after the document, up to where the answer starts
    target: str  # the JSON the model must write ("" at inference)
    doc_type: str


def has_value(value: object) -> bool:
    return value not in (None, "", [], {})


def target_json(record: dict, fields: list[str], fmt: InputFormat | None = None) -> dict:
    """The values the model must write; long verbatim text values as anchors when `fmt` asks for them."""
    target = {f: record[f] for f in fields if has_value(record.get(f))}
    if fmt is not None and fmt.anchor_min_words > 0:
        for field, value in target.items():
            if isinstance(value, str):
                target[field] = anchor(record["original_text"], value, fmt.anchor_min_words, fmt.anchor_words)
    return target


def dump_target(target: dict, style: str) -> str:
    text = json.dumps(target, ensure_ascii=False)
    return text + SCHEMA_END if style == "schema" else text


def prompt_parts(doc_type: DocType, fmt: InputFormat, tokenizer=None) -> tuple[str, str]:
    """The (prefix, suffix) that surround a document of this type in this input style."""
    fields = fmt.selection.fields(doc_type)
    if fmt.style == "schema":
        schema = json.dumps(doc_type.template(fields), ensure_ascii=False, indent=4)
        return SCHEMA_PREFIX.format(schema=schema), SCHEMA_SUFFIX
    instruction = doc_type.prompt(fields, fmt.prompt_example)
    if fmt.chat_template and tokenizer is not None and tokenizer.chat_template:
        messages = [
            {"role": "system", "content": instruction},
            {"role": "user", "content": "Documento:\n" + DOC_MARKER},
        ]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prefix, _, suffix = rendered.partition(DOC_MARKER)
        return prefix, suffix
    return instruction + "\n\nDocumento:\n", "\n\nJSON:\n"


def build_prompts(registry: TypeRegistry, fmt: InputFormat, tokenizer=None) -> dict[str, dict[str, str]]:
    """Prefix and suffix for every type, rendered once; saved in metatune.json for inference."""
    out = {}
    for name, doc_type in registry.types.items():
        prefix, suffix = prompt_parts(doc_type, fmt, tokenizer)
        out[name] = {"prefix": prefix, "suffix": suffix}
    return out


def make_examples(
    record: dict,
    doc_type: DocType,
    registry: TypeRegistry,
    fmt: InputFormat,
    prompts: dict[str, dict[str, str]],
    general_example: bool = False,
) -> list[Example]:
    """One example per record (plus one asking only the general fields, when asked for)."""
    types = [doc_type]
    if general_example and doc_type is not registry.general:
        types.append(registry.general)
    out = []
    for t in types:
        target = dump_target(target_json(record, fmt.selection.fields(t), fmt), fmt.style)
        parts = prompts[t.name]
        out.append(Example(parts["prefix"], record["original_text"], parts["suffix"], target, t.name))
    return out
