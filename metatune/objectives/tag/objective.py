"""The tag objective's training side: token labels from values aligned to the text, a
token-classification head, a loss over every labelled token; and its model card."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from functools import partial

import torch
from accelerate import PartialState

from metatune import attention
from metatune.alignment import DATE_FIELDS, PERSON_FIELDS, Span, align_record, locate_date
from metatune.card import CardParts
from metatune.config import Config, ExtractionSettings
from metatune.data import record_type
from metatune.encoding import IGNORE_INDEX
from metatune.errors import MetatuneError
from metatune.faults import resident_memory
from metatune.formatting import InputFormat
from metatune.models import read_both_ways, read_first_layers_forward
from metatune.noise import noisy_text
from metatune.objectives.base import Objective, describe
from metatune.objectives.tag.adaptation import adapt, check_adaptable
from metatune.objectives.tag.labels import (
    NOT_TAGGED,
    PRECISIONS,
    TagCollator,
    TagScheme,
    class_prompts,
    encode_tagged,
    ends_a_sentence,
    label_weight_table,
    line_bounds,
    list_neighbours,
    on_whole_lines,
    spelled_out,
    start_with_the_type_position,
    tag_loss_for,
    transition_counts,
    weighted,
)
from metatune.objectives.tag.lines import LINE_STARTS, LineHead, line_starts
from metatune.objectives.tag.restore import RESTORER_FILE, fit_on_model
from metatune.peft_setup import load_trainable
from metatune.precision import use_bf16
from metatune.text import collapse_whitespace
from metatune.training.common import (
    LoopParts,
    Prepared,
    TrainerParts,
    activation_bytes,
    micro_batches,
    padded_training_bytes,
)

SPAN_MIN_ALIGNED = 0.9  # a field whose values are this often in the text is tagged even when they repeat
CLASSIFIED_MAX_VALUES = 64  # a closed list: at most this many distinct values, each seen twice on average
DATE_HOST_MIN = 0.05  # the share of a date field's values that must sit inside a field's span to read it there
WHOLE_LINES_MIN = 0.95  # the share of a field's aligned spans that must fill whole lines to decode it that way
WHOLE_LINES_SPANS = 20  # the fewest aligned spans (in texts with line breaks) that can teach it
# the share of a field's aligned spans that must end a sentence to be continued to one (paper headers:
# abstracts 95%, the rest of a footnote mark or an alignment a character short; titles 4%)
SENTENCES_MIN = 0.9


def alignments(records, registry, fallback_type, fmt: InputFormat) -> list[dict[tuple[str, int], Span | None]]:
    """Each record's values aligned to its text (alignment.align_record), over the fields its type
    trains on that a tagger could find in the text."""
    out = []
    for record in records:
        fields = fmt.selection.fields(registry.find(record_type(record)) or registry.find(fallback_type))
        out.append(align_record(record["original_text"], record, [f for f in fields if f not in NOT_TAGGED]))
    return out


def field_classes(
    records, aligned: list[dict], types: list[str], registry, fallback_type, fmt: InputFormat
) -> tuple[dict[str, str], dict[str, list[int]]]:
    """How a run produces each field its training types declare, and per field [values, aligned].

    `span`: mostly in the text, tagged. `mapped`: a closed list (a degree name) whose values the text
    mostly writes short or inflected ("Lic. en Física" for "Licenciado en Física"): that phrase is
    tagged and written as the training value it abbreviates (its coverage counts those phrases).
    `classified`: another closed list (a licence), mostly not in the text, a value label read after
    the document. `detected`: the language. `not produced`: neither, with its coverage saying why.
    """
    coverage: dict[str, list[int]] = {}
    values: dict[str, list] = {}
    declared = dict.fromkeys(f for t in types for f in fmt.selection.fields(registry.types[t]))
    for record, spans in zip(records, aligned):
        fields = fmt.selection.fields(registry.find(record_type(record)) or registry.find(fallback_type))
        for (field, _), span in spans.items():
            c = coverage.setdefault(field, [0, 0])
            c[0] += 1
            c[1] += span is not None
        for field in fields:
            if record.get(field):
                values.setdefault(field, []).append(record[field])
    produced = {}
    for field in declared:
        total, aligned = coverage.get(field, (0, 0))
        seen = values.get(field, [])
        closed = all(isinstance(v, str) for v in seen) and 0 < len(set(seen)) <= min(
            CLASSIFIED_MAX_VALUES, len(seen) / 2
        )
        if field in NOT_TAGGED:
            produced[field] = "detected"
        elif total and aligned >= SPAN_MIN_ALIGNED * total or (aligned >= total / 2 and not closed):
            produced[field] = "span" if aligned else "not produced"
        elif closed and total and (short := written_short(records, field)) >= total / 2:
            produced[field] = "mapped"
            coverage[field][1] = short
        else:
            produced[field] = "classified" if closed else "not produced"
    return produced, coverage


def written_short(records, field: str) -> int:
    """How many records' texts hold their value of `field` as written or written short (alignment's
    `abbreviated`)."""
    return sum(
        align_record(r["original_text"], {field: r[field]}, [field], abbreviated=(field,))[(field, 0)] is not None
        for r in records
        if isinstance(r.get(field), str) and r[field]
    )


def date_form(records) -> tuple[str, str]:
    """The training dates' separator ("-", "/" or ".") and their precision when they all share one."""
    dates = [
        r["date"]
        for r in records
        if isinstance(r.get("date"), str) and re.fullmatch(r"\d{4}([-/.]\d\d){0,2}", r["date"])
    ]
    if not dates:
        return ("/", "")
    separators = Counter(c for d in dates for c in d[4:5])
    precisions = {PRECISIONS[len(re.findall(r"\d+", d)) - 1] for d in dates}
    return (separators.most_common(1)[0][0] if separators else "/", precisions.pop() if len(precisions) == 1 else "")


def date_hosts(records, aligned: list[dict], fields: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(date field, host) pairs: a tagged field whose aligned span holds at least DATE_HOST_MIN of a
    date field's training values that have no span of their own (a conference paper's year, written
    only in its event line, where the event's span already took it)."""
    held: Counter = Counter()
    dates: Counter = Counter()
    for record, spans in zip(records, aligned):
        for (field, i), span in spans.items():
            if field not in DATE_FIELDS or field not in fields:
                continue
            dates[field] += 1
            value = record[field][i] if isinstance(record[field], list) else record[field]
            if span is not None or (at := locate_date(record["original_text"], value)) is None:
                continue
            for (host, _), s in spans.items():
                if host in fields and s is not None and s.start <= at.start and at.end <= s.end:
                    held[(field, host)] += 1
    return tuple(pair for pair, n in sorted(held.items()) if n >= DATE_HOST_MIN * dates[pair[0]])


def whole_line_fields(records, aligned: list[dict], fields: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """(field, longest line) pairs: the tagged fields whose aligned spans, in the training texts that
    have line breaks (a collapsed copy has none), begin their line and end their line at least
    WHOLE_LINES_MIN of the time (a title, in paper headers), with the longest line such a span covers."""
    spans_of: Counter = Counter()
    whole: Counter = Counter()
    longest: dict[str, int] = {}
    for record, spans in zip(records, aligned):
        text = record["original_text"]
        if "\n" not in text:
            continue
        for (field, _), span in spans.items():
            if field not in fields or span is None:
                continue
            spans_of[field] += 1
            if on_whole_lines(text, span.start, span.end):
                whole[field] += 1
                first, last = line_bounds(text, span.start, span.end)
                longest[field] = max(longest.get(field, 0), *map(len, text[first:last].split("\n")))
    return tuple(
        (f, longest[f])
        for f in fields
        if spans_of[f] >= WHOLE_LINES_SPANS and whole[f] >= WHOLE_LINES_MIN * spans_of[f]
    )


def sentence_fields(records, aligned: list[dict], fields: tuple[str, ...]) -> tuple[str, ...]:
    """The tagged fields whose aligned spans end a sentence (., ! or ?) at least SENTENCES_MIN of the
    time, of at least WHOLE_LINES_SPANS spans (an abstract, in paper headers)."""
    spans_of: Counter = Counter()
    ending: Counter = Counter()
    for record, spans in zip(records, aligned):
        for (field, _), span in spans.items():
            if field in fields and span is not None:
                spans_of[field] += 1
                ending[field] += ends_a_sentence(record["original_text"][span.start : span.end])
    return tuple(f for f in fields if spans_of[f] >= WHOLE_LINES_SPANS and ending[f] >= SENTENCES_MIN * spans_of[f])


def mixed_list_fields(records, aligned: list[dict], lists: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The pairs of list fields (sorted) whose aligned items the training split writes side by side on
    one line with only a separator between (an author and an affiliation on one line, say)."""
    mixed = set()
    for record, spans in zip(records, aligned):
        items = [(f, span.start, span.end) for (f, _), span in spans.items() if f in lists and span is not None]
        items.sort(key=lambda item: item[1])
        for a, b in list_neighbours(record["original_text"], items):
            if a != b:
                mixed.add(tuple(sorted((a, b))))
    return tuple(sorted(mixed))


def field_weights(coverage: dict[str, list[int]], fields: tuple[str, ...], balance: float) -> dict[str, float]:
    """Each span field's weight in the loss (config `tag.field_balance`), from its aligned training
    values; empty when `balance` is 0."""
    aligned = {f: coverage[f][1] for f in fields if coverage.get(f, [0, 0])[1]}
    if not balance or not aligned:
        return {}
    most = max(aligned.values())
    return {f: round((most / n) ** balance, 3) for f, n in aligned.items()}


def tag_scheme(records, registry, fallback_type, fmt: InputFormat) -> tuple[TagScheme, dict[str, str], dict]:
    """The labels of a run (every span field some type of the records is trained on, the types to tell
    apart, the closed lists), how each declared field is produced, and the training split's alignment."""
    types = sorted({(registry.find(record_type(r)) or registry.find(fallback_type)).name for r in records})
    aligned = alignments(records, registry, fallback_type, fmt)
    produced, coverage = field_classes(records, aligned, types, registry, fallback_type, fmt)
    fields = tuple(f for f, how in produced.items() if how in ("span", "mapped"))
    lists = tuple(f for f in fields if any(isinstance(r.get(f), list) for r in records))
    repeats = any(len(set(v)) < len(v) for r in records for f in lists if isinstance(v := r.get(f), list))
    surnames = tuple(
        f for f in fields if f in PERSON_FIELDS and catalogued_names(v for r in records for v in as_items(r.get(f)))
    )
    names = sorted(n for r in records for f in surnames for n in as_items(r.get(f)) if spelled_out(n))

    def closed_list(how: str) -> tuple:
        return tuple(
            (f, tuple(v for v, _ in Counter(r[f] for r in records if r.get(f)).most_common()))
            for f, h in produced.items()
            if h == how
        )

    classes, mapped = closed_list("classified"), closed_list("mapped")
    hosts = date_hosts(records, aligned, fields)
    scheme = TagScheme(
        fields,
        tuple(types),
        lists,
        repeats,
        surnames,
        classes,
        date_form(records),
        hosts,
        one_span=True,
        bridges=True,
        trailing_notices=True,
        names=tuple(names),
        mapped=mapped,
        whole_lines=whole_line_fields(records, aligned, fields),
        sentences=sentence_fields(records, aligned, fields),
        mixed_lists=mixed_list_fields(records, aligned, lists),
    )
    return scheme, produced, coverage


def as_items(value) -> list:
    return value if isinstance(value, list) else [value] if value else []


def catalogued_names(names) -> bool:
    """Whether most names are written "Surname, Given" (a catalogue's form, not the page's order)."""
    names = [n for n in names if isinstance(n, str)]
    return bool(names) and sum(", " in n for n in names) > len(names) / 2


def encode_split(records, registry, fallback_type, fmt, scheme, tokenizer, max_input_tokens, coverage, delay=0):
    """Token-label features per record (labels `delay` tokens late; a copy's line targets where it
    carries its original's line starts, metatune.objectives.tag.lines); `coverage` (field -> [values,
    aligned]) is updated."""
    encoded = []
    prompts = class_prompts(tokenizer, scheme)
    for record in records:
        doc_type = registry.find(record_type(record)) or registry.find(fallback_type)
        if doc_type.name not in scheme.types:  # a type only the validation split has: nothing to learn from
            continue
        features, counts = encode_tagged(
            record,
            record["original_text"],
            doc_type.name,
            fmt.selection.fields(doc_type),
            scheme,
            tokenizer,
            max_input_tokens,
            prompts,
            delay,
            record.get(LINE_STARTS),
        )
        encoded.append(features)
        for name, (total, aligned) in counts.items():
            c = coverage.setdefault(name, [0, 0])
            c[0] += total
            c[1] += aligned
    return encoded


def collapsed_copies(
    records: list[dict], fraction: float, seed: int, noisy: float = 0.0, lines: bool = False
) -> list[dict]:
    """Copies of a seeded `fraction` of the records whose text has every run of whitespace made one
    space; their values align to that text as to the original (alignment folds whitespace). A seeded
    `noisy` share of the copies also gets margin stamps and glued line ends (metatune.noise). With
    `lines`, each copy also carries where its original's lines start in its text (LINE_STARTS)."""
    rng, noise = random.Random(seed), random.Random(seed + 1)  # the same copies with and without noise
    copies = []
    for record in [r for r in records if rng.random() < fraction]:
        text = noisy_text(record, noise) if noise.random() < noisy else collapse_whitespace(record["original_text"])
        copy = dict(record, original_text=text)
        if lines:
            copy[LINE_STARTS] = line_starts(record["original_text"], text)
        copies.append(copy)
    return copies


def restorer_copies(records: list[dict], config: Config) -> list[dict]:
    """What the line restorer (tag.restore_lines) is fitted on: a copy of every record without line
    breaks, the training copies' share of them noisy, each with where its original's lines started."""
    return collapsed_copies(records, 1.0, config.training.seed, config.tag.augment_noise, True)


def adapt_backbone(config: Config, model, tokenizer, train: list[dict], bidirectional: bool) -> dict:
    """Runs the MNTP stage (`tag.adaptation_epochs`, metatune.objectives.tag.adaptation) on the
    encoded training texts; returns what metatune.json records of it (empty when off)."""
    epochs = config.tag.adaptation_epochs
    if not epochs:
        return {}
    if not bidirectional:
        raise MetatuneError(
            f"tag.adaptation_epochs adapts a decoder that reads both ways: '{config.model.name}' with "
            f"tag.attention={config.tag.attention} is not one"
        )
    check_adaptable(model, config.model.name)
    texts = [x["input_ids"] for x in train]
    t = config.training
    # forward passes of as many texts as the tagger's (padded batches, unless memory says one at a time)
    per_forward, accumulation = micro_batches(
        config, False, False, padded_training_bytes(model, [len(x) for x in texts], t.per_device_train_batch_size)
    )
    start = time.perf_counter()
    device = PartialState().device
    with attention.training_memory(model, device.type, partial(activation_bytes, model)):
        losses = adapt(
            model,
            tokenizer,
            texts,
            epochs,
            config.tag.adaptation_learning_rate,
            per_forward * accumulation,
            use_bf16(config),
            t.seed,
            device,
            per_forward,
            t.group_by_length,
        )
    tenth = max(1, len(losses) // 10)
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    seconds = round(time.perf_counter() - start, 1)
    # what the stage freed goes back to the system before tagging decides, from the memory available,
    # whether it can train on padded batches (19 GB were still held after it on a 24 GB machine, and
    # tagging fell back to one document per forward pass)
    held = resident_memory()
    attention.give_back_freed_memory()
    print(
        f"Adapted to read both ways: {len(losses)} steps in {seconds:.0f} s, "
        f"MNTP loss {first:.3f} -> {last:.3f} (first and last tenth); resident memory "
        f"{gib(held)} -> {gib(resident_memory())} GiB"
    )
    return {
        "epochs": epochs,
        "steps": len(losses),
        "seconds": seconds,
        "loss_first_tenth": round(first, 4),
        "loss_last_tenth": round(last, 4),
    }


def gib(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**30:.1f}"


def count_targets(batch: dict) -> torch.Tensor:
    return batch["labels"].ne(IGNORE_INDEX).sum()


def example_losses_for(
    scheme: TagScheme, class_weight: float, field_weights: dict[str, float] | None = None, lines: LineHead | None = None
):
    """The custom loop's losses: per document, the weighted cross-entropy summed over its labelled tokens
    (as `tag_loss_for`, with the line-start head's loss when there is one), and their number."""
    table = label_weight_table(scheme, class_weight, field_weights)

    def example_losses(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        line_losses = 0
        if lines is not None:
            labels, line_losses = lines.loss(labels.to(logits.device))
        ce = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        )
        ce = weighted(ce, labels.flatten(), table)
        return ce.view(labels.shape).sum(1) + line_losses, labels.ne(IGNORE_INDEX).sum(1)

    return example_losses


def use_matmul_attention(model, name: str, seq2seq: bool) -> None:
    """`tag.attention_kernel=matmul`: the decoder trains with metatune.attention's kernel."""
    if not seq2seq:
        try:
            model.set_attn_implementation(attention.NAME)
            return
        except ValueError:  # a model that does not take transformers' attention interface
            pass
    raise MetatuneError(
        f"tag.attention_kernel=matmul needs a decoder that takes transformers' attention interface; "
        f"'{name}' is not one: set tag.attention_kernel=sdpa"
    )


class TagObjective(Objective):
    name = "tag"

    def prepare(self, config: Config, registry, dataset, need_validation: bool) -> Prepared:
        d = config.data
        if config.model.lora.enabled or config.model.quantization != "none":
            raise MetatuneError(
                "training.objective=tag trains the full model: set model.lora.enabled=false and model.quantization=none"
            )
        originals = dataset.split("training")
        tag = config.tag
        train_records = originals + collapsed_copies(
            originals, tag.augment_collapsed, config.training.seed, tag.augment_noise, bool(tag.line_starts)
        )
        val_records = dataset.split("validation") if need_validation else []
        fmt = InputFormat.from_settings(d)
        scheme, produced, field_coverage = tag_scheme(train_records, registry, d.fallback_type, fmt)
        weights = field_weights(field_coverage, scheme.fields, config.tag.field_balance)
        model, tokenizer, seq2seq = load_trainable(
            config.model, labels=scheme.labels, layers=config.tag.layers, frozen=config.tag.frozen_layers
        )
        if seq2seq and config.tag.label_delay:
            raise MetatuneError(
                f"tag.label_delay gives a model that reads forward a look ahead; '{config.model.name}' is an "
                "encoder-decoder whose encoder reads both ways: set tag.label_delay=0"
            )
        if config.tag.attention_kernel == "matmul":
            use_matmul_attention(model, config.model.name, seq2seq)
        lines = LineHead(tag.line_starts, len(scheme.labels)) if tag.line_starts else None
        if lines is not None:
            lines.attach(model)
        coverage: dict[str, list[int]] = {}
        args = (registry, d.fallback_type, fmt, scheme, tokenizer, d.max_input_tokens)
        train = encode_split(train_records, *args, coverage, config.tag.label_delay)
        validation = encode_split(val_records, *args, {}, config.tag.label_delay)
        # every training text collapsed (with the training copies' share of PDF noise), with where its
        # lines started: what the line restorer is fitted on
        restoring = (
            encode_split(restorer_copies(originals, config), *args, {}, tag.label_delay) if tag.restore_lines else None
        )
        fitted = []

        def finish(trained) -> dict:
            done = {"line_starts": lines.detach(trained)} if lines else {}
            if restoring is not None:
                restorer, done["line_restoration"] = fit_on_model(
                    trained, restoring, use_bf16(config), config.training.seed
                )
                fitted.append(restorer)
                r = done["line_restoration"]
                print(
                    f"Line restorer fitted on {r['documents']} collapsed training texts in {r['seconds']:.0f} s: "
                    f"threshold {r['threshold']}, held-out line starts precision {r['held_out']['precision']}, "
                    f"recall {r['held_out']['recall']}"
                )
            return done

        print(
            "Aligned values (training split): "
            + ", ".join(f"{f} {a}/{t}" for f, (t, a) in coverage.items())
            + " (values not found in the text are left unlabelled)"
        )
        bidirectional = not seq2seq and config.tag.attention == "bidirectional"
        # frozen layers keep reading forward, as pretrained (read both ways untrained, 15 of 30 cost
        # GROBID's five 7 points: docs/benchmarks.md)
        causal_layers = config.tag.frozen_layers if bidirectional else 0
        if bidirectional:
            read_both_ways(model)
            read_first_layers_forward(model, causal_layers)
        adaptation = adapt_backbone(config, model, tokenizer, train, bidirectional)
        start_with_the_type_position(tokenizer)  # the saved tokenizer; training encodes without special tokens
        tagging = {
            "scheme": scheme.to_dict(),
            "bidirectional": bidirectional,
            "causal_layers": causal_layers,
            "label_delay": config.tag.label_delay,
            "alignment": {f: {"values": t, "aligned": a} for f, (t, a) in coverage.items()},
            "not_tagged": {"language": "detected from the text (py3langid)"},
            "transitions": config.tag.transitions,
            "windows": config.tag.windows,
            "transition_counts": transition_counts(train, scheme),
            **({"adaptation": adaptation} if adaptation else {}),
            "field_weights": weights,
            "produced": {
                f: {"how": how} | ({"values": c[0], "in_text": c[1]} if (c := field_coverage.get(f)) else {})
                for f, how in produced.items()
            },
        }
        info = describe(config, registry, fmt, seq2seq).model_copy(update={"tagging": tagging})
        stats = {
            "train_examples": len(train),
            "validation_examples": len(validation),
            "train_tokens": sum(len(x["input_ids"]) for x in train),
            "train_labelled_tokens": sum(sum(1 for t in x["labels"] if t > 0) for x in train),
            "attention": model.config._attn_implementation,
        }
        collate = TagCollator(tokenizer.pad_token_id, lines.label_count if lines else 0)
        return Prepared(
            config,
            model,
            tokenizer,
            seq2seq,
            train,
            validation,
            info,
            TrainerParts(collate, tag_loss_for(scheme, config.tag.class_weight, weights, lines)),
            LoopParts(collate, example_losses_for(scheme, config.tag.class_weight, weights, lines), count_targets),
            stats=stats,
            finish=finish if lines or restoring is not None else None,
            files={RESTORER_FILE: lambda work: fitted[0].save(work / RESTORER_FILE)} if restoring is not None else {},
            # Runtimes that load the run with transformers read it both ways too: its config says
            # `is_causal: false`, and eager attention, which (unlike SDPA, that asks the attention
            # modules, causal in code) masks nothing but padding. metatune's Tagger loads it with SDPA.
            config_keys={"attn_implementation": "eager"} if bidirectional else {},
        )

    def extractor(self, run_dir, settings: ExtractionSettings, device: str | None = None):
        from metatune.objectives.tag.extractor import Tagger

        return Tagger.from_run(run_dir, settings, device)

    def input_tokens(self, info) -> int:
        return info.limits.max_input_tokens * (info.tagging or {}).get("windows", 1)

    def card(self, info, name: str) -> CardParts:
        produced = (info.tagging or {}).get("produced", {})
        hosts = dict((info.tagging or {}).get("scheme", {}).get("date_hosts", ()))
        fields = "".join(
            f"* `{f}`: {p['how']}"
            + (f" (in the text for {p['in_text']} of {p['values']} training values)" if "values" in p else "")
            + (f"; with no span of its own, the first date inside `{hosts[f]}`" if f in hosts else "")
            + "\n"
            for f, p in produced.items()
        )
        limit, windows = info.limits.max_input_tokens, (info.tagging or {}).get("windows", 1)
        limits = f"input limit {limit} tokens" + (
            f" per window, up to {windows} overlapping windows" if windows > 1 else " (the document is cut there)"
        )
        layers = info.setting("tag", "layers", 0)
        stage = (info.tagging or {}).get("adaptation")
        settings = [("tag.layers", f"{layers} (the first layers of the base model's)")] if layers else []
        if delay := (info.tagging or {}).get("label_delay", 0):
            settings.append(
                (
                    "tag.label_delay",
                    f"{delay} (read forward, each token's label comes {delay} positions later, after {delay} filler "
                    f"tokens that follow the text: the label a pipeline gives a token belongs to the token {delay} "
                    "before it)",
                )
            )
        if stage:
            took = f", {stage['seconds']:.0f} s" if "seconds" in stage else ""  # runs before 2026-12-04 lack it
            settings.append(
                (
                    "tag.adaptation_epochs",
                    f"{stage['epochs']} (masked next-token prediction read both ways before tagging: {stage['steps']} "
                    f"steps{took}, loss {stage['loss_first_tenth']} -> {stage['loss_last_tenth']})",
                )
            )
        if lines := (info.training or {}).get("line_starts"):
            settings.append(
                (
                    "tag.line_starts",
                    f"{lines['weight']} (in the copies without line breaks, where the page's lines started was "
                    f"learned by a head of training only, not saved: loss {lines['loss_first_tenth']} -> "
                    f"{lines['loss_last_tenth']})",
                )
            )
        if restoration := (info.training or {}).get("line_restoration"):
            held = restoration["held_out"]
            settings.append(
                (
                    "tag.restore_lines",
                    f"true (a text without line breaks gets them back before it is tagged, where a probe on the "
                    f"last hidden states finds that a line started: `line_restorer.safetensors`, threshold "
                    f"{restoration['threshold']}, on held-out training texts precision {held['precision']}, "
                    f"recall {held['recall']})",
                )
            )
        return CardParts(
            pipeline_tag="token-classification",
            settings=settings,
            how="by labelling the tokens of the text that hold each value",
            limits=limits,
            note=(
                (
                    "How each field is produced: `span` (tagged in the text), `mapped` (tagged where the text "
                    "writes it short or inflected, written as the training value it abbreviates), `classified` "
                    "(a value of the training data's closed list, read at the end of the input), `detected` "
                    "(the language), `not produced`.\n\n" + fields + "\n"
                    if fields
                    else ""
                )
                + "The first position of the input (the tokenizer's first special token) carries the document "
                "type's label; the other tokens carry BIO labels of the fields (`id2label`). A transformers "
                "token-classification pipeline reads the run as metatune does and gives, token for token, "
                "the labels of the same logits; metatune's Tagger adds Viterbi decoding over valid label "
                "sequences, word boundaries and the JSON record.\n\n"
                "```python\n"
                "from transformers import pipeline\n\n"
                f'tagger = pipeline("token-classification", model="{name}")\n'
                "```"
            ),
        )
