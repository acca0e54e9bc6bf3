"""`metatune extract`, PDF text, schema checks, and the Extractor's batched generation that stops at '}'."""

import json
from pathlib import Path

import pytest
import torch

from metatune.config import ExtractionSettings
from metatune.doctypes import FieldSelection, TypeRegistry
from metatune.errors import MetatuneError
from metatune.formats import conform
from metatune.objectives.generate.extractor import Extractor, JsonObjectEnd, closes_object, output_type
from metatune.pdf import MAX_CHARS, chars_for, pdf_text


def make_pdf(path, text: str | None = None):
    """A one-page PDF with `text`, or with only a drawing (no text layer) when text is None."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    if text is None:
        pdf.set_fill_color(90, 90, 90)
        pdf.rect(20, 20, 120, 80, style="F")
    else:
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, text.encode("latin-1", "replace").decode("latin-1"))
    pdf.output(str(path))
    return path


def heavy_pdf(pages: int, operators: int, form: bool = False) -> bytes:
    """A few kilobytes that cost pypdf minutes: `pages` pages sharing one compressed content stream
    of `operators` text operators that show nothing; with `form`, that stream is a form XObject the
    pages draw (so the pages' own content is tiny)."""
    import zlib

    heavy = zlib.compress(b"BT /F1 12 Tf 72 700 Td\n" + b"() Tj\n" * operators + b"ET\n", 9)
    font, stream = 3 + pages, 4 + pages
    resources = b"/Font << /F1 %d 0 R >>" % font + (b" /XObject << /X0 %d 0 R >>" % stream if form else b"")
    if form:
        contents = b"%d 0 R" % (5 + pages)
        extra = [
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >> "
            b"/Length %d /Filter /FlateDecode >>\nstream\n" % (font, len(heavy)) + heavy + b"\nendstream",
            b"<< /Length 6 >>\nstream\n/X0 Do\nendstream",
        ]
    else:
        contents = b"%d 0 R" % stream
        extra = [b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(heavy) + heavy + b"\nendstream"]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (3 + i) for i in range(pages)) + b"] /Count %d >>" % pages,
    ]
    objects += [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << "
        + resources
        + b" >> /Contents "
        + contents
        + b" >>"
    ] * pages
    objects += [b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>", *extra]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(
        b"%010d 00000 n \n" % o for o in offsets
    )
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def sample_texts():
    from conftest import SAMPLE

    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    records = data["test"] + data["validation"]
    return [r["original_text"] for r in records], [r["type"] for r in records]


def cli(monkeypatch, capsys, *args, stdin: str | None = None):
    """Runs the real `metatune` entry point in this process: (exit status, stdout, stderr)."""
    from conftest import run_main

    return run_main(monkeypatch, capsys, *args, stdin=stdin)


# --- stopping at the end of the JSON object ---------------------------------------------------


@pytest.mark.parametrize(
    "text, closed",
    [
        ('{"a": 1}', True),
        ('{"a": "}"', False),  # a brace inside a string
        ('{"a": "x\\"}"', False),  # an escaped quote keeps the string open
        ('{"a": "x\\\\"}', True),  # an escaped backslash does not
        ('{"a": {"b": [1, {"c": 2}]}', False),
        ('{"a": {"b": [1, {"c": 2}]}}', True),
        ('Aquí va "el" JSON: {"a": 1} y más', True),  # prose and quotes before the object
        ('} "{" {', False),
    ],
)
def test_closes_object(text, closed):
    assert closes_object(text) is closed


def test_criterion_stops_each_row_at_the_token_closing_its_object(tiny_tokenizer):
    texts = ['{"t": "a}b", "c": ["{"]}\nmás texto {', 'Respuesta: {"d": "2019"} fin']
    rows = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    prompt = [7, 8, 9]
    longest = max(map(len, rows))
    for incremental in (True, False):
        stop = JsonObjectEnd(tiny_tokenizer, len(prompt), incremental=incremental)
        first_done = [None, None]
        for k in range(1, longest + 1):
            # rows run out of text: pad them with a token that changes nothing once finished
            ids = torch.tensor([prompt + (r + [tiny_tokenizer.pad_token_id] * longest)[:k] for r in rows])
            done = stop(ids, None).tolist()
            for i, d in enumerate(done):
                if d and first_done[i] is None:
                    first_done[i] = k
                assert d == (first_done[i] is not None)  # a finished row stays finished
        for i, (_text, row) in enumerate(zip(texts, rows)):
            k = first_done[i]
            assert closes_object(tiny_tokenizer.decode(row[:k])) and not closes_object(
                tiny_tokenizer.decode(row[: k - 1])
            )
            if incremental:
                assert stop.stop_at[i] == len(prompt) + k
        if incremental:  # several tokens per call (prompt-lookup decoding): the same stops
            chunked = JsonObjectEnd(tiny_tokenizer, len(prompt))
            for k in range(3, longest + 3, 3):
                chunked(
                    torch.tensor([prompt + (r + [tiny_tokenizer.pad_token_id] * (longest + 3))[:k] for r in rows]), None
                )
            assert chunked.stop_at == stop.stop_at


def test_batched_greedy_equals_one_at_a_time(tiny_run):
    extractor = Extractor.from_run(tiny_run)
    texts, types = sample_texts()
    together = extractor.extract(texts, types, batch_size=8)
    mixed = extractor.extract(texts, types, batch_size=3)
    alone = [extractor.extract([t], [ty], batch_size=1)[0] for t, ty in zip(texts, types)]
    assert [r.raw for r in together] == [r.raw for r in alone] == [r.raw for r in mixed]
    assert [r.counts for r in together] == [r.counts for r in alone]
    assert len({r.raw for r in alone}) > 1  # the documents get different outputs


def test_generation_stops_where_the_object_closes(tiny_run):
    """Against plain greedy generation kept from ending (no EOS): ours is its prefix up to the '}'."""
    extractor = Extractor.from_run(tiny_run, ExtractionSettings(max_new_tokens=40))
    texts, types = sample_texts()
    ours = extractor.extract(texts, types, batch_size=4)
    closed = 0
    for text, doc_type, result in zip(texts, types, ours):
        ids = torch.tensor([extractor.input_ids(text, doc_type)])
        plain_ids = extractor.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=40,
            min_new_tokens=40,
            do_sample=False,
            pad_token_id=extractor.tokenizer.pad_token_id,
        )
        plain = extractor.tokenizer.decode(plain_ids[0, ids.shape[1] :], skip_special_tokens=True)
        assert plain.startswith(result.raw)
        if closes_object(result.raw):
            closed += 1
            assert result.raw.rstrip().endswith("}") and len(plain) > len(result.raw)
    assert closed > 0  # the trained run does close its objects


def test_dtype_keeps_the_saved_precision_unless_asked(tiny_run):
    assert Extractor.from_run(tiny_run).model.dtype == torch.float32  # saved in float32
    assert Extractor.from_run(tiny_run, ExtractionSettings(dtype="bfloat16")).model.dtype == torch.bfloat16
    with pytest.raises(MetatuneError, match="unknown dtype 'fp8' \\(choose from auto, float32, bfloat16, float16\\)"):
        Extractor.from_run(tiny_run, ExtractionSettings(dtype="fp8"))


def test_beam_search_stops_at_the_object_too(tiny_run):
    extractor = Extractor.from_run(tiny_run, ExtractionSettings(num_beams=3))
    texts, types = sample_texts()
    results = extractor.extract(texts[:4], types[:4], batch_size=4)
    assert any(closes_object(r.raw) for r in results)
    for r in results:
        if closes_object(r.raw):
            assert r.raw.rstrip().endswith("}")
            assert r.counts["tokens"] == len(extractor.tokenizer(r.raw, add_special_tokens=False)["input_ids"])


# --- schema and type ----------------------------------------------------------------------------


def test_conform_converts_or_drops_what_violates_the_schema():
    tesis = TypeRegistry.load().find("Tesis")
    schema = tesis.json_schema(["title", "creator", "date", "director"])
    data = {
        "title": 2019,
        "creator": "Pérez, Juan",
        "director": [{"name": "x"}],
        "journalTitle": "Revista",
        "date": "",
        "codirector": [],
        "language": ["es", ""],
    }
    clean, fixes = conform(data, schema)
    assert clean == {"title": "2019", "creator": ["Pérez, Juan"]}
    assert fixes == {
        "title": "converted: a number to text",
        "creator": "converted: a single string to a list",
        "director": "dropped: {'name': 'x'} is not of type 'string'",
        "journalTitle": "dropped: not a field of type 'Tesis'",
        "language": "dropped: not a field of type 'Tesis'",
    }
    assert conform({"title": ["a", "b"]}, schema) == (
        {"title": "a; b"},
        {"title": "converted: a list of texts joined with '; '"},
    )
    assert conform({"title": ["a", 1]}, schema) == ({}, {"title": "dropped: ['a', 1] is not of type 'string'"})


def test_type_comes_from_the_output_when_it_names_a_known_type():
    registry = TypeRegistry.load()
    assert output_type(registry, {"type": "tesis", "title": "x"}, "general") == "Tesis"
    assert output_type(registry, {"type": "poema"}, "general") == "general"
    assert output_type(registry, {"type": ["Libro"]}, "Articulo") == "Articulo"
    assert output_type(registry, None, "general") == "general"


# --- PDF ----------------------------------------------------------------------------------------


def test_pdf_text(tmp_path):
    path = make_pdf(tmp_path / "tesis.pdf", "Universidad Nacional de La Plata\nTesis de posgrado\nLa Plata, 2019")
    text = pdf_text(path)
    assert "Universidad Nacional de La Plata" in text and "2019" in text
    assert pdf_text(path.read_bytes(), "upload.pdf") == text


def test_a_pdf_of_heavy_pages_is_refused_at_once():
    """11 KB, 30 pages sharing 3.6 MB of text operators: its pages are skipped, not parsed (minutes)."""
    import time

    data = heavy_pdf(30, 600_000)
    assert len(data) < 12_000
    began = time.perf_counter()
    with pytest.raises(
        MetatuneError, match=r"^heavy.pdf: no text read from the PDF: the content of its first pages is too large"
    ):
        pdf_text(data, "heavy.pdf")
    assert time.perf_counter() - began < 10


def test_reading_a_pdf_is_bounded_in_time_and_done_in_another_process():
    """The same operators drawn through a form XObject get past the content budget: the time limit
    stops them, and this process spends no CPU on them (a server's model keeps its cores and lock)."""
    import time

    data = heavy_pdf(30, 600_000, form=True)
    began, cpu = time.perf_counter(), time.process_time()
    with pytest.raises(MetatuneError, match=r"^heavy.pdf: cannot read the PDF: gave up after 2 s$"):
        pdf_text(data, "heavy.pdf", timeout=2)
    assert time.perf_counter() - began < 10
    assert time.process_time() - cpu < 1


def test_pdfs_are_read_one_after_another_by_one_child_and_one_out_of_time_is_replaced(tmp_path):
    """The child that read a PDF reads the next (no Python start and pdfplumber import per PDF); one
    stopped at the time limit is killed, and the PDF after it gets a fresh child; a child that died
    while idle is not used."""
    import os

    import metatune.pdf

    path = make_pdf(tmp_path / "tesis.pdf", "Universidad Nacional de La Plata\nTesis de posgrado")
    text = pdf_text(path)
    child = metatune.pdf._IDLE[-1].process
    idle = len(metatune.pdf._IDLE)
    assert pdf_text(path) == text
    assert metatune.pdf._IDLE[-1].process is child and len(metatune.pdf._IDLE) == idle and child.poll() is None
    with pytest.raises(MetatuneError, match=r"^heavy.pdf: cannot read the PDF: gave up after 2 s$"):
        pdf_text(heavy_pdf(30, 600_000, form=True), "heavy.pdf", timeout=2)
    assert child.poll() is not None and child not in [r.process for r in metatune.pdf._IDLE]
    assert pdf_text(path) == text
    fresh = metatune.pdf._IDLE[-1].process
    assert fresh is not child and fresh.poll() is None
    os.kill(fresh.pid, 9)
    fresh.wait()
    assert pdf_text(path.read_bytes(), "upload.pdf") == text
    assert all(r.process.poll() is None for r in metatune.pdf._IDLE)


def test_pdf_without_text_is_an_error_naming_the_file(tmp_path):
    path = make_pdf(tmp_path / "scan.pdf")
    with pytest.raises(
        MetatuneError, match=r"scan\.pdf: has no text layer \(scanned or image-only PDF\); OCR is not supported"
    ):
        pdf_text(path)
    (tmp_path / "fake.pdf").write_bytes(b"not a pdf at all")
    with pytest.raises(MetatuneError, match=r"fake\.pdf: cannot read the PDF"):
        pdf_text(tmp_path / "fake.pdf")


def pages_pdf(path, pages: int):
    """A PDF of `pages` pages of 1,499 characters each: page N writes only the word "pageN"."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=8)
    for n in range(1, pages + 1):
        pdf.add_page()
        pdf.multi_cell(0, 4, " ".join([f"page{n}"] * 250))
    pdf.output(str(path))
    return path


def test_a_pdf_is_parsed_only_as_far_as_the_run_reads(tiny_run, tmp_path, monkeypatch, capsys):
    """A run reading 256 tokens needs at most 1,536 characters: two pages of six are parsed."""
    from types import SimpleNamespace

    import metatune.pdf
    from metatune.objectives.tag import TagObjective
    from metatune.run_info import TokenLimits

    path = pages_pdf(tmp_path / "long.pdf", 6)
    assert all(f"page{n}" in pdf_text(path) for n in range(1, 7))
    part = pdf_text(path, max_chars=chars_for(256))
    assert "page2" in part and "page3" not in part
    assert chars_for(100_000) == MAX_CHARS  # never more than a PDF was read to before

    seen, real = [], metatune.pdf.pdf_text
    monkeypatch.setattr(
        metatune.pdf, "pdf_text", lambda source, *a, **k: seen.append(k.get("max_chars")) or real(source, *a, **k)
    )
    status, out, _ = cli(monkeypatch, capsys, "extract", tiny_run, path)
    assert status == 0 and json.loads(out)["source"] == str(path)
    assert seen == [chars_for(256)]  # the tiny run's data.max_input_tokens

    windows = SimpleNamespace(limits=TokenLimits(max_input_tokens=512, max_target_tokens=0), tagging={"windows": 3})
    assert TagObjective().input_tokens(windows) == 1536  # a tagger reads every window


# --- the command --------------------------------------------------------------------------------


def test_extract_a_folder_reports_the_pdf_without_text(tiny_run, tmp_path, monkeypatch, capsys):
    texts, _ = sample_texts()
    folder = tmp_path / "docs"
    folder.mkdir()
    make_pdf(folder / "a.pdf", texts[0])
    (folder / "b.txt").write_text(texts[1], encoding="utf-8")
    make_pdf(folder / "c.pdf")  # image only
    (folder / "ignored.png").write_bytes(b"\x89PNG")

    status, out, err = cli(monkeypatch, capsys, "extract", tiny_run, folder)
    assert status == 1
    assert f"error: {folder / 'c.pdf'}: has no text layer (scanned or image-only PDF)" in err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["source"] for r in records] == [str(folder / "a.pdf"), str(folder / "b.txt")]
    allowed = set(FieldSelection.of(["date", "language"], []).fields(TypeRegistry.load().general))
    for r, want in zip(records, ["Tesis", "Articulo"]):
        assert r["type"] == want  # no --type: the run's type classifier reads it from the text
        if r["metadata"] is None:
            assert r["error"] and "raw" in r
        else:
            assert set(r["metadata"]) <= allowed and all(isinstance(v, str) for v in r["metadata"].values())

    # the same document through the Extractor directly: the command adds only the schema check
    direct = Extractor.from_run(tiny_run).extract([texts[1]], [None])[0]
    assert records[1]["metadata"] == (
        None
        if direct.data is None
        else conform(direct.data, TypeRegistry.load().types["Articulo"].json_schema(sorted(allowed)))[0]
    )


def test_extract_stdin_with_a_type_to_a_file(tiny_run, tmp_path, monkeypatch, capsys):
    texts, _ = sample_texts()
    out_file = tmp_path / "out.json"
    status, out, err = cli(
        monkeypatch, capsys, "extract", tiny_run, "-", "--type", "tesis", "--out", out_file, stdin=texts[0]
    )
    assert status == 0 and out == ""
    record = json.loads(out_file.read_text(encoding="utf-8"))  # one document: one JSON object
    assert record["source"] == "-" and record["type"] == "Tesis"


@pytest.mark.parametrize(
    "args, message",
    [
        (["{empty}"], "{empty}: has no text layer (scanned or image-only PDF); OCR is not supported"),
        (["{missing}"], "{missing}: input not found"),
        (
            ["{empty}", "--type", "poema"],
            "--type: unknown document type 'poema' (known: general, Tesis, Libro, Articulo, Objeto de conferencia)",
        ),
    ],
)
def test_extract_mistakes_are_one_line_errors(tiny_run, tmp_path, monkeypatch, capsys, args, message):
    empty, missing = make_pdf(tmp_path / "empty.pdf"), tmp_path / "missing.txt"
    args = [a.format(empty=empty, missing=missing) for a in args]
    out_file = tmp_path / "out.jsonl"
    status, out, err = cli(monkeypatch, capsys, "extract", tiny_run, *args, "--out", out_file)
    assert status == 2
    assert err.strip().splitlines() == ["error: " + message.format(empty=empty, missing=missing)]
    assert not out_file.exists()


def test_snapping_follows_the_option_and_keeps_the_raw_output(tiny_run):
    from metatune.alignment import snap_record
    from metatune.objectives.generate.json_output import parse_output

    texts, types = sample_texts()
    assert Extractor.from_run(tiny_run).snap is True  # the run's generate.snap_to_source
    off = Extractor.from_run(tiny_run, ExtractionSettings(snap=False))
    assert off.snap is False
    for result, text in zip(Extractor.from_run(tiny_run).extract(texts, types), texts):
        parsed = parse_output(result.raw).data
        assert result.data == (snap_record(text, parsed) if parsed else parsed)
    assert [r.data for r in off.extract(texts, types)] == [parse_output(r.raw).data for r in off.extract(texts, types)]


def test_loop_start_finds_a_block_repeated_at_the_end():
    from metatune.objectives.generate.extractor import loop_start

    prose = list(range(100, 140))
    assert loop_start(prose) is None
    loop = prose + [1, 2, 3, 4] * 9  # a 4-token block, 36 tokens of repeats
    assert loop_start(loop) == len(prose) + 4  # the first copy stays, the repeats are cut
    assert loop_start(prose + [7] * 31) is None and loop_start(prose + [7] * 32) == len(prose) + 1
    assert loop_start(prose + [1, 2, 3, 4] * 2) is None  # two copies are not a loop


def test_a_row_caught_in_a_loop_stops_and_is_cut(tiny_tokenizer):
    from metatune.objectives.generate.extractor import JsonObjectEnd

    prompt = [5, 6]
    stop = JsonObjectEnd(tiny_tokenizer, len(prompt))
    word = tiny_tokenizer(' "abstract": "la la', add_special_tokens=False)["input_ids"]
    block = tiny_tokenizer(" la", add_special_tokens=False)["input_ids"]
    seq = prompt + tiny_tokenizer("{", add_special_tokens=False)["input_ids"] + word
    done = stop(torch.tensor([seq[: len(prompt) + 1]]), None)  # first call: one generated token
    for _ in range(40):
        seq += block
        done = stop(torch.tensor([seq]), None)
        if done[0]:
            break
    assert done[0] and stop.looped[0]
    kept = tiny_tokenizer.decode(seq[: stop.stop_at[0]])
    assert kept.count(" la") <= 3


def test_anchored_targets_in_training_and_their_expansion_at_extraction(tiny_run, tiny_llama, tmp_path, monkeypatch):
    """A run trained with anchors writes "head [...] tail"; extraction gives back the document's span."""
    from metatune.alignment import ANCHOR_MARK, Source
    from metatune.config import load_config
    from metatune.objectives import prepare

    from conftest import SAMPLE

    config = load_config(
        sets=[
            f"model.name={tiny_llama}",
            f"data.path={SAMPLE}",
            f"training.output_dir={tmp_path / 'r'}",
            "data.include_fields=[title, abstract]",
            "data.exclude_fields=[]",
            "data.max_input_tokens=1024",
            "data.max_target_tokens=1024",
            "generate.anchor_min_words=12",
            "data.anchor_words=4",
            "generate.prompt_example=false",
        ]
    )
    prepared = prepare(config, need_validation=False)
    assert prepared.info.input.anchor_min_words == 12 and prepared.info.input.prompt_example is False
    assert all("Ejemplo de formato" not in p["prefix"] for p in prepared.info.input.prompts.values())
    targets = [prepared.tokenizer.decode([t for t in x["labels"] if t != -100]) for x in prepared.train]
    assert sum(ANCHOR_MARK.strip() in t for t in targets) >= 20  # the abstracts (the titles are shorter)

    record = next(r for r in json.loads(SAMPLE.read_text(encoding="utf-8"))["test"] if r.get("abstract"))
    text, abstract = record["original_text"], record["abstract"]
    words = Source(text).snippet(Source(text).locate(abstract)).split()
    raw = json.dumps({"abstract": " ".join(words[:4]) + ANCHOR_MARK + " ".join(words[-4:])}, ensure_ascii=False)
    extractor = Extractor.from_run(tiny_run)
    extractor.anchored = True  # as a run trained with generate.anchor_min_words > 0 says in metatune.json
    monkeypatch.setattr(extractor, "generate_with_counts", lambda encoded, *a, **k: ([raw], [9], [False]))
    result = extractor.extract([text], [record["type"]])[0]
    assert result.raw == raw and result.data["abstract"] == " ".join(words)


def test_prompt_lookup_decoding_writes_what_plain_greedy_writes(tiny_run):
    """Prompt-lookup decoding checks its proposals with the model's own greedy choice, so in float64
    (where a forward pass over several tokens rounds as one token at a time does) the outputs are the
    plain ones, token for token; in float32 a near-tie may round the other way (docs/performance.md)."""
    from conftest import SAMPLE

    records = json.loads(SAMPLE.read_text(encoding="utf-8"))["validation"]
    texts, types = [r["original_text"] for r in records], [r["type"] for r in records]
    plain, lookup = (
        Extractor.from_run(tiny_run, ExtractionSettings(max_new_tokens=48)),
        Extractor.from_run(tiny_run, ExtractionSettings(max_new_tokens=48, prompt_lookup=8)),
    )
    for extractor in (plain, lookup):
        extractor.model.to(torch.float64)
    expected = plain.generate_with_counts([plain.input_ids(t, ty) for t, ty in zip(texts, types)], batch_size=1)
    forward, calls = lookup.model.forward, []
    lookup.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    got = lookup.generate_with_counts([lookup.input_ids(t, ty) for t, ty in zip(texts, types)], batch_size=4)
    del lookup.model.forward
    assert got == expected and sum(expected[1]) > 0
    assert len(calls) < sum(expected[1])  # proposals were taken: fewer forward passes than tokens written
    assert [e.data for e in lookup.extract(texts, types)] == [e.data for e in plain.extract(texts, types)]


def test_prompt_lookup_needs_greedy_causal_decoding(tiny_run):
    with pytest.raises(MetatuneError, match="num_beams 1"):
        Extractor.from_run(tiny_run, ExtractionSettings(num_beams=2, prompt_lookup=4))
    with pytest.raises(MetatuneError, match="0 \\(off\\) or more"):
        Extractor.from_run(tiny_run, ExtractionSettings(prompt_lookup=-1))


def test_standard_input_is_cleaned_like_files(monkeypatch):
    import io

    from metatune.documents import Item, read_item

    monkeypatch.setattr("sys.stdin", io.StringIO("Franc¸ois Dupont: an eﬃcient parser"))
    assert read_item(Item("-", None, Path("stdin"))) == "François Dupont: an efficient parser"
