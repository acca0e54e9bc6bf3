"""The `metatune` command."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from metatune.config import ExtractionSettings
from metatune.errors import MetatuneError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fine-tune language models to extract bibliographic metadata."
)
data_app = typer.Typer(no_args_is_help=True, help="Check and split dataset files.")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from metatune import __version__

        typer.echo(f"metatune {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit")
    ] = False,
):
    """Fine-tune language models to extract bibliographic metadata."""


def extraction_settings(options: dict) -> ExtractionSettings:
    """The ExtractionSettings of a command's options (evaluate, extract and serve declare the same ones)."""
    return ExtractionSettings(**{f.name: options[f.name] for f in dataclasses.fields(ExtractionSettings)})


def _print_json(value) -> None:
    import json

    typer.echo(json.dumps(value, ensure_ascii=False, indent=2))


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a setting: section.key=value")] = [],
    model: Annotated[str | None, typer.Option(help="Preset name, Hub id or local path")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset file")] = None,
    output: Annotated[str | None, typer.Option(help="Directory for the saved run")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the unfinished run from its last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace what the output directory holds")] = False,
):
    """Fine-tune a model and save the run."""
    from metatune.config import load_config
    from metatune.data import load_for_training
    from metatune.export import check_output

    cfg = load_config(config, set_, model=model, data=data, output=output)
    # the quick checks first: a mistake in the data or the output is reported before torch is imported
    check_output(Path(cfg.training.output_dir), overwrite)
    load_for_training(cfg.data, need_validation=cfg.training.eval_each_epoch)

    from metatune.training.distributed import close_processes
    from metatune.training.run import train as run_training

    run_training(cfg, resume=resume, overwrite=overwrite)
    close_processes()


@app.command()
def models(json_: Annotated[bool, typer.Option("--json", help="Print a JSON list")] = False):
    """List the model presets."""
    from metatune.config import preset_file, preset_names, read_yaml

    presets = []
    for name in preset_names():
        spec = read_yaml(preset_file(name))
        source = spec["source"] if isinstance(spec["source"], str) else f"{spec['source']['package']} (GGUF)"
        presets.append({"name": name, "source": source, "description": spec.get("description", "")})
    if json_:
        return _print_json(presets)
    for p in presets:
        typer.echo(f"{p['name']:<14} {p['source']:<44} {p['description']}")


@data_app.command("validate")
def data_validate(
    path: Path,
    types_file: Annotated[Path | None, typer.Option(help="YAML adding or replacing document types")] = None,
    fallback_type: Annotated[str | None, typer.Option(help="Type for records whose type is unknown")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON on standard output")] = False,
):
    """Report every problem in a dataset file."""
    from collections import Counter

    from metatune.data import alignment_coverage, record_type, validate_file
    from metatune.doctypes import TypeRegistry

    registry = TypeRegistry.load(types_file)
    dataset, problems = validate_file(path, registry, fallback_type)
    if json_:
        report = {"path": str(path), "ok": not problems, "problems": [p.render(path) for p in problems]}
        if not problems:
            report["splits"] = {
                name: {"records": len(records), "types": dict(Counter(str(record_type(r)) for r in records))}
                for name, records in dataset.splits.items()
            }
            report["warnings"] = [
                f"split '{n}' is empty" for n in ("training", "validation", "test") if not dataset.splits.get(n)
            ] + list(dataset.warnings)
            coverage = alignment_coverage(dataset, registry, fallback_type)
            report["found_in_text"] = {f: {"found": a, "total": t} for f, (t, a) in (coverage or {}).items()}
        _print_json(report)
    for p in problems:
        typer.echo(p.render(path), err=True)
    if problems:
        raise MetatuneError(f"{path}: {len(problems)} problem(s) found")
    if json_:
        return
    for name, records in dataset.splits.items():
        types = Counter(str(record_type(r)) for r in records)
        typer.echo(f"{name}: {len(records)} records ({', '.join(f'{t}: {n}' for t, n in sorted(types.items()))})")
    for name in ("training", "validation", "test"):
        if not dataset.splits.get(name):
            typer.echo(f"warning: split '{name}' is empty", err=True)
    for warning in dataset.warnings:
        typer.echo(f"warning: {path}: {warning}", err=True)
    coverage = alignment_coverage(dataset, registry, fallback_type)
    if coverage:
        typer.echo(
            "found in the text (what a run can copy or label verbatim): "
            + ", ".join(f"{f} {a}/{t} ({100 * a / t:.0f}%)" for f, (t, a) in coverage.items())
        )
    typer.echo(f"{path}: OK")


@data_app.command("split")
def data_split(
    path: Path,
    out: Annotated[Path | None, typer.Option(help="Where to write (default: NAME.split.json beside the input)")] = None,
    seed: int = 42,
    overwrite: bool = False,
    types_file: Annotated[Path | None, typer.Option(help="YAML adding or replacing document types")] = None,
    fallback_type: Annotated[str | None, typer.Option(help="Type for records whose type is unknown")] = None,
    screen: Annotated[
        float | None,
        typer.Option(
            help="Instead: hold out this fraction of the training split as the validation split, to choose "
            "levers without looking at the real validation split (its validation and test records are left out)"
        ),
    ] = None,
):
    """Write a seeded, type-stratified 80/10/10 split in the SEDICI layout."""
    from metatune.data import SPLITS, load_dataset, screening_split, split_records, write_split
    from metatune.doctypes import TypeRegistry

    dataset = load_dataset(path, TypeRegistry.load(types_file), fallback_type=fallback_type, seed=seed)
    if screen is not None:
        dataset.splits = screening_split(dataset.split("training"), screen, seed)
    elif not dataset.was_split:  # already in splits: re-split all records together
        dataset.splits = split_records([r for s in SPLITS for r in dataset.splits.get(s, [])], seed)
    out = out or path.with_name(path.stem + (".screen.json" if screen is not None else ".split.json"))
    if out.exists() and not overwrite:
        raise MetatuneError(f"{out}: already exists; pass --overwrite to replace it")
    write_split(dataset, out)
    typer.echo(f"{out}: " + ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()))


# The extraction options of evaluate, extract and serve, declared once (config.ExtractionSettings checks them).
NumBeams = Annotated[int, typer.Option(help="Beam search width (1: greedy)")]
MaxNewTokens = Annotated[
    int | None, typer.Option(help="Most tokens the model writes per document (default: the run's max_target_tokens)")
]
Dtype = Annotated[
    str,
    typer.Option(
        help="Weights precision: auto (as saved, or bfloat16 where the run's extractor finds it fast and safe), "
        "float32, bfloat16, float16"
    ),
]
BatchSize = Annotated[int, typer.Option(help="Documents extracted together")]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(help="Let the run's model (or its base model) run Python code of its own: only for runs you trust"),
]
Snap = Annotated[
    bool | None,
    typer.Option(
        "--snap/--no-snap",
        help="Replace values found (nearly) in the text by the text's own words (default: the run's own setting)",
    ),
]
PromptLookup = Annotated[
    int,
    typer.Option(
        help="Prompt-lookup decoding: propose up to N tokens copied from the document per step, checked in one pass (greedy, causal runs; one document at a time); 0: off"
    ),
]


@app.command()
def evaluate(
    run_dir: Path,
    data: Annotated[Path, typer.Option(help="Dataset file with the reference metadata")],
    split: Annotated[str, typer.Option(help="Split to evaluate: training, validation or test")] = "test",
    report: Annotated[Path | None, typer.Option(help="Report directory (default: RUN_DIR/eval-SPLIT)")] = None,
    num_beams: NumBeams = 1,
    batch_size: BatchSize = 8,
    baseline: Annotated[str | None, typer.Option(help="Also evaluate the base model untrained: zero-shot")] = None,
    max_new_tokens: MaxNewTokens = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N documents of the split")] = None,
    micro_fields: Annotated[
        str | None,
        typer.Option(
            help="Also a micro average over these comma-separated fields (GROBID's five: title,creator,first_author,keywords,abstract)"
        ),
    ] = None,
    collapse_whitespace: Annotated[
        bool,
        typer.Option("--collapse-whitespace", help="Evaluate on the texts with every run of whitespace made one space"),
    ] = False,
    pdf_noise: Annotated[
        bool,
        typer.Option(
            "--pdf-noise",
            help="Evaluate on the texts as PDF tools without line structure give them: whitespace collapsed, "
            "a margin stamp or running head, some line ends glued (seeded)",
        ),
    ] = False,
    dtype: Dtype = "auto",
    trust_remote_code: TrustRemoteCode = False,
    snap: Snap = None,
    prompt_lookup: PromptLookup = 0,
    json_: Annotated[
        bool,
        typer.Option("--json", help="Print the summary as JSON on standard output (the tables go to standard error)"),
    ] = False,
):
    """Score a run field by field on a dataset split; write metrics, predictions, table and chart."""
    from contextlib import redirect_stdout

    from metatune.evaluate import run_evaluate

    settings = extraction_settings(locals())
    with redirect_stdout(sys.stderr if json_ else sys.stdout):
        metrics = run_evaluate(
            run_dir,
            data,
            split=split,
            report=report,
            settings=settings,
            baseline=baseline,
            limit=limit,
            micro_fields=[f.strip() for f in micro_fields.split(",") if f.strip()] if micro_fields else None,
            collapse=collapse_whitespace,
            noise=pdf_noise,
        )
    if json_:
        _print_json(
            {
                key: metrics[key]
                for key in (
                    "documents",
                    "parse_failures",
                    "seconds",
                    "micro",
                    "micro_chosen",
                    "macro",
                    "fields",
                    "run",
                )
                if key in metrics
            }
        )


@app.command()
def extract(
    run_dir: Path,
    inputs: Annotated[list[str], typer.Argument(help="PDF or text files, folders of them, or - for standard input")],
    type_: Annotated[
        str | None,
        typer.Option(
            "--type",
            help="Document type of every input (default: the one the run predicts from each text)",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write JSON (one document) or JSON Lines here")] = None,
    batch_size: BatchSize = 8,
    num_beams: NumBeams = 1,
    max_new_tokens: MaxNewTokens = None,
    dtype: Dtype = "auto",
    trust_remote_code: TrustRemoteCode = False,
    snap: Snap = None,
    prompt_lookup: PromptLookup = 0,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="json, bibtex, tei (GROBID-style teiHeader), dc (Dublin Core XML) or csv (DSpace metadata import)",
        ),
    ] = "json",
    out_dir: Annotated[
        Path | None,
        typer.Option(help="Write one file per input here, each as soon as it is done; a rerun skips those written"),
    ] = None,
    force: Annotated[bool, typer.Option(help="Redo documents already in --out-dir or in the JSON Lines --out")] = False,
    engine: Annotated[
        str,
        typer.Option(help="local (this process) or ray (a Ray cluster, or a local Ray: pip install 'metatune[ray]')"),
    ] = "local",
    workers: Annotated[int, typer.Option(help="--engine ray: actors that each load the model once")] = 1,
    cpus_per_worker: Annotated[float, typer.Option(help="--engine ray: CPUs (and torch threads) per actor")] = 1.0,
    address: Annotated[
        str | None, typer.Option(help="--engine ray: the cluster to join (ray start's address); default: a local Ray")
    ] = None,
):
    """Extract metadata from documents with a saved run."""
    from metatune.extract import run_extract

    settings = extraction_settings(locals())
    code = run_extract(
        run_dir,
        inputs,
        doc_type=type_,
        out=out,
        settings=settings,
        fmt=format_,
        out_dir=out_dir,
        force=force,
        engine=engine,
        ray_options={"workers": workers, "cpus_per_worker": cpus_per_worker, "address": address},
    )
    if code:
        raise typer.Exit(code)


@app.command()
def serve(
    run_dir: Path,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8002,
    max_bytes: Annotated[
        int | None,
        typer.Option(help="Largest request body accepted, in bytes (env METATUNE_MAX_BYTES; default 10 MB)"),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Most requests extracted together")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="How long the first request of a batch waits for others")] = 10.0,
    max_queue: Annotated[
        int, typer.Option(help="Most requests waiting for the model; more are answered 503 with Retry-After")
    ] = 64,
    num_beams: NumBeams = 1,
    max_new_tokens: MaxNewTokens = None,
    dtype: Dtype = "auto",
    trust_remote_code: TrustRemoteCode = False,
    snap: Snap = None,
    prompt_lookup: PromptLookup = 0,
):
    """Serve a run over HTTP (FastAPI): /extract, /extract/pdf, /consume-llm, /health, /docs.

    Set METATUNE_API_TOKEN to require `Authorization: Bearer <token>`."""
    from metatune.service import serve as run_server

    settings = extraction_settings(locals())
    run_server(
        run_dir,
        host=host,
        port=port,
        max_bytes=max_bytes,
        settings=settings,
        batch_wait_ms=batch_wait_ms,
        max_queue=max_queue,
    )


@app.command()
def push(
    run_dir: Path,
    repo_id: Annotated[str, typer.Argument(help="Hub model repository, owner/name (created if missing)")],
    private: Annotated[bool, typer.Option(help="Create the repository private")] = False,
    message: Annotated[str | None, typer.Option(help="Commit message")] = None,
):
    """Upload a saved run (weights, tokenizer, model card) to the Hugging Face Hub. Token: HF_TOKEN."""
    from metatune.objectives import card
    from metatune.push import push as push_run

    url = push_run(run_dir, repo_id, private, message, card=card)
    typer.echo(f"Pushed {run_dir} to {url}")


@app.command()
def bench(
    output: Annotated[Path, typer.Option(help="Directory for bench-<date>.json and .md")] = Path("benchmarks/results"),
    model: Annotated[str, typer.Option(help="Preset name, Hub id or local path")] = "smollm2-135m",
    data: Annotated[
        str | None, typer.Option(help="Dataset file (default: ../shared/data/grobid-headers, else the sample)")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps timed on each side")] = 3,
    extract_docs: Annotated[int, typer.Option(help="Documents in the extraction timing")] = 8,
    extract_batch_size: Annotated[int, typer.Option(help="Batch size of the Extractor")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Generation limit in the extraction timing")] = 128,
    memory: Annotated[bool, typer.Option(help="Measure peak memory of training (full, LoRA) in subprocesses")] = True,
    other_runs: Annotated[
        bool,
        typer.Option(
            help="Also time every other training.objective than the race's: training MFU, extraction vs one forward pass"
        ),
    ] = True,
    extract_run: Annotated[
        Path | None, typer.Option(help="Time extraction with this saved run (default: the base model)")
    ] = None,
    set_: Annotated[
        list[str], typer.Option("--set", help="Override a setting of metatune's side: section.key=value")
    ] = [],
):
    """Time training and extraction against the original approach on this machine (docs/benchmarks.md)."""
    from metatune.bench import BenchSettings, run_bench, write_results

    settings = BenchSettings(
        output,
        model,
        data,
        steps,
        extract_docs,
        extract_batch_size,
        max_new_tokens,
        memory,
        sets=set_,
        extract_run=extract_run,
        other_runs=other_runs,
    )
    json_path, md_path = write_results(run_bench(settings), output)
    typer.echo(md_path.read_text(encoding="utf-8"))
    typer.echo(f"Wrote {json_path} and {md_path}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP threads that sleep while they wait, instead of spinning: on a CPU other programs also
    # use, spinning threads hold cores their partners need (2.6x slower steps measured; see
    # docs/performance.md). Read once, when torch loads, so it must be set before that.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from metatune.faults import Stopped, close_progress_bars, fault_message, quiet_expected_warnings

    quiet_expected_warnings()
    try:
        app()
    except MetatuneError as e:
        close_progress_bars()
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except Stopped as e:
        close_progress_bars()
        typer.echo(str(e), err=True)
        sys.exit(e.exit_code)
    except Exception as e:
        message = fault_message(e, None)  # a write fault where no command expected one: still one line
        if message is None:
            raise
        close_progress_bars()
        typer.echo(f"error: {message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
