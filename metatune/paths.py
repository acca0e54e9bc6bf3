"""Where the project's own files live."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The files the library reads at run time (presets, document types) ship inside the package,
# so an installed wheel finds them as a checkout does.
CONFIG_DIR = PACKAGE_DIR / "configs"
PRESET_DIR = CONFIG_DIR / "presets"
# The checkout (sample data, ../shared): only the benchmarks read it, and an installed package has none.
REPO_DIR = PACKAGE_DIR.parent
CACHE_DIR = Path.home() / ".cache" / "metatune"
