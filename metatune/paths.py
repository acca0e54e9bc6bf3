"""Where the project's own files live."""

from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_DIR / "configs"
PRESET_DIR = CONFIG_DIR / "presets"
CACHE_DIR = Path.home() / ".cache" / "metatune"
