"""Loading a saved run never runs code from it, or from the paths its metatune.json names, unless the
command was given --trust-remote-code (issue 11.3)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from metatune.cli import main
from metatune.config import ExtractionSettings

from conftest import SAMPLE


def planted_base(tmp_path: Path) -> tuple[Path, Path]:
    """A model directory whose config.json maps its classes to a Python file that leaves a marker."""
    base, marker = tmp_path / "base", tmp_path / "code-ran"
    base.mkdir()
    (base / "config.json").write_text(
        json.dumps(
            {
                "model_type": "planted",
                "auto_map": {"AutoConfig": "planted.PlantedConfig", "AutoModelForCausalLM": "planted.PlantedModel"},
            }
        )
    )
    (base / "planted.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return base, marker


def planted_run(tiny_run: Path, tmp_path: Path, adapter_only: bool) -> tuple[Path, Path]:
    """A copy of a run whose base model is the planted directory, with trust_remote_code: true."""
    base, marker = planted_base(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    info = json.loads((run / "metatune.json").read_text(encoding="utf-8"))
    info["config"]["model"].update(name=str(base), trust_remote_code=True)
    info["base_model"] = str(base)
    if adapter_only:
        info["lora"] = {
            "adapter": "adapter",
            "merged": False,
            "base": str(base),
            "r": 8,
            "alpha": 16,
            "target_modules": ["q_proj"],
        }
    (run / "metatune.json").write_text(json.dumps(info), encoding="utf-8")
    return run, marker


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["metatune", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["extract", "evaluate", "serve"])
def test_a_planted_adapter_base_does_not_run(command, tiny_run, tmp_path, monkeypatch, capsys):
    run, marker = planted_run(tiny_run, tmp_path, adapter_only=True)
    doc = tmp_path / "doc.txt"
    doc.write_text("Una tesis de la Universidad Nacional de La Plata", encoding="utf-8")
    args = {
        "extract": [run, doc],
        "evaluate": [run, "--data", SAMPLE, "--report", tmp_path / "report"],
        "serve": [run, "--port", "1"],
    }[command]
    code, err = cli(monkeypatch, capsys, command, *args)
    assert code == 2 and not marker.exists()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: cannot load model '{tmp_path / 'base'}'")
    assert "--trust-remote-code" in err
    assert not (tmp_path / "report").exists()


def test_a_planted_zero_shot_base_does_not_run(tiny_run, tmp_path, monkeypatch, capsys):
    run, marker = planted_run(tiny_run, tmp_path, adapter_only=False)
    code, err = cli(
        monkeypatch,
        capsys,
        "evaluate",
        run,
        "--data",
        SAMPLE,
        "--baseline",
        "zero-shot",
        "--report",
        tmp_path / "report",
        "--limit",
        "1",
    )
    assert code == 2 and not marker.exists()
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the fine-tuned model's loading bar
    assert last.startswith("error: cannot load model") and "--trust-remote-code" in last


def test_trust_remote_code_is_an_explicit_choice(tiny_run, tmp_path):
    from metatune.objectives.generate.extractor import Extractor

    run, marker = planted_run(tiny_run, tmp_path, adapter_only=True)
    with pytest.raises(AttributeError, match="PlantedConfig"):  # the planted file defines no model...
        Extractor.from_run(run, ExtractionSettings(trust_remote_code=True))
    assert marker.read_text() == "ran"  # ...but it ran, because the caller asked for it
