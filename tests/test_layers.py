"""The import contract of docs/design.md: modules import only from their own layer or the layers
below it, and no two modules import each other, directly or round about (imports inside functions
count too)."""

import ast
import graphlib
import re
from fnmatch import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "metatune"

# Lowest first. A new module must be placed here.
LAYERS = [
    # foundations: settings, files, text and scores that know nothing of models
    [
        "metatune",
        "errors",
        "paths",
        "console",
        "files",
        "faults",
        "text",
        "config",
        "precision",
        "quantization",
        "metrics",
        "extraction",
        "language",
        "alignment",
        "noise",
    ],
    # documents: types, records, examples, tokens; input and output formats
    [
        "doctypes",
        "data",
        "formatting",
        "encoding",
        "objectives.tag.labels",
        "objectives.tag.lines",
        "pdf",
        "documents",
        "formats",
        "compat",
        "report",
        "run_info",
    ],
    # base models, and their preparation for training
    ["attention", "models", "peft_setup"],
    # saved runs
    ["card", "export", "push"],
    # what uses a run or makes one
    ["objectives", "objectives.*", "inference", "training", "training.*"],
    # the commands
    ["evaluate", "extract", "folder_run", "ray_engine", "service", "bench", "bench.*"],
    ["cli", "__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    name = ".".join(p for p in parts if p != "__init__")
    return name or "metatune"


def layer_of(name: str) -> int:
    for level, patterns in enumerate(LAYERS):
        if any(fnmatch(name, p) for p in patterns):
            return level
    raise AssertionError(f"metatune.{name} is in no layer of tests/test_layers.py: place it there")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
            if node.module == "metatune":  # from metatune import x: x may be a module
                modules += [f"metatune.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        for m in modules:
            if m == "metatune" or m.startswith("metatune."):
                name = m.removeprefix("metatune.") if m != "metatune" else "metatune"
                if (
                    name == "metatune"
                    or (PACKAGE / f"{name.replace('.', '/')}.py").is_file()
                    or (PACKAGE / name.replace(".", "/")).is_dir()
                ):
                    found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_every_import_points_down_or_sideways():
    upward = [
        f"metatune.{m} (layer {layer_of(m)}) imports metatune.{d} (layer {layer_of(d)})"
        for m, deps in sorted(graph().items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    # a package imports its own submodules (bench/__init__ re-exports them); that is not a cycle
    edges = {
        m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")} for m, deps in graph().items()
    }
    graphlib.TopologicalSorter(edges).prepare()  # raises CycleError naming the cycle


def test_the_contract_sees_lazy_imports():
    # imported inside TagObjective.extractor
    assert "objectives.tag.extractor" in imports(PACKAGE / "objectives" / "tag" / "objective.py")


def test_only_the_objectives_know_an_objectives_own_modules():
    # everything else reaches an objective through the registry (metatune.objectives: open_run,
    # prepare, open_run, card, the Objective and Extractor protocols); the exception says why it needs more
    allowed = {"inference": "keeps the names that model cards of older runs import (Extractor)"}
    reaching = sorted(
        f"metatune.{m} imports metatune.{d}"
        for m, deps in graph().items()
        if not m.startswith("objectives") and m not in allowed
        for d in deps
        if d.startswith("objectives.") and d != "objectives.base"
    )
    assert not reaching, "\n".join(reaching)


def test_only_the_objectives_name_an_objective_or_its_settings():
    # outside metatune/objectives/ no module branches on one objective, sets its own settings
    # (`generate.anchor_min_words`, `config.tag...`), reads which objective a config or a run has
    # (`config.training.objective`, `info.objective`) or walks the registry (`OBJECTIVES`): what differs per
    # objective is reached through the registry's functions. The config declares the sections; a run
    # saved before the seam is a generate run.
    from metatune.objectives import OBJECTIVES

    allowed = {"config", "run_info"}
    names = "|".join(OBJECTIVES)
    setting = re.compile(rf"(?<![\w.])(?:{names})\.[a-z_]+|^(?:{names})$")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if module.startswith("objectives") or module in allowed:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in OBJECTIVES and id(node) not in called:
                found.append(f"metatune.{module}:{node.lineno} reads .{node.attr}")
            elif isinstance(node, ast.Attribute) and node.attr == "objective":
                found.append(f"metatune.{module}:{node.lineno} reads which objective (.objective)")
            elif isinstance(node, ast.alias) and node.name == "OBJECTIVES":
                found.append(f"metatune.{module} imports the registry's OBJECTIVES")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and setting.search(node.value):
                found.append(f"metatune.{module}:{node.lineno} names {setting.search(node.value).group()!r}")
    assert not found, "\n".join(found)
