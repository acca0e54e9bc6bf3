"""A wheel of the project carries what the library reads at run time: installed from it, with no
checkout in sight, metatune finds its model presets and its document types."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from metatune.config import load_preset

REPO = Path(__file__).resolve().parent.parent

CHECK = """
import json
import metatune
from metatune.config import load_preset, preset_file, preset_names
from metatune.doctypes import BUILTIN_TYPES_FILE, TypeRegistry

print(json.dumps({
    "package": metatune.__file__,
    "presets": preset_names(),
    "preset_file": str(preset_file("smollm2-135m")),
    "preset": load_preset("smollm2-135m"),
    "doctypes_file": str(BUILTIN_TYPES_FILE),
    "types": sorted(TypeRegistry.load().to_dict()),
}))
"""


def pip(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-index", "--quiet"], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_installed_wheel_reads_its_presets_and_document_types(tmp_path):
    # Built from a copy of the sources, so that the checkout's build/ and egg-info are neither used nor touched.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "metatune", src / "metatune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip("wheel", ".", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), cwd=src)
    (wheel,) = (tmp_path / "dist").glob("metatune-*.whl")
    site = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    shutil.rmtree(src)  # nothing left to read but the installed package

    # The package installed in --target comes first on the path, before the venv's editable checkout.
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)

    installed = site / "metatune"
    assert Path(found["package"]).parent == installed
    assert found["presets"] == sorted(p.stem for p in (REPO / "metatune" / "configs" / "presets").glob("*.yaml"))
    assert Path(found["preset_file"]) == installed / "configs" / "presets" / "smollm2-135m.yaml"
    assert found["preset"] == load_preset("smollm2-135m") and found["preset"]["training"]
    assert Path(found["doctypes_file"]) == installed / "configs" / "doctypes.yaml"
    assert "general" in found["types"] and len(found["types"]) > 1
