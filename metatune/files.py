"""Files written whole or not at all: a temporary file or directory of a new, unpredictable name
beside the target, renamed over it when complete.

Unpredictable names (tempfile) matter: a fixed `<out>.tmp` could be a symlink someone planted, and
writing to it would write wherever it points.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: changing the umask to read it is not thread-safe


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to `path` through a temporary file in the same directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes it 0600; give it the mode any new file gets
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_dir_beside(path: str | Path) -> Path:
    """A new empty directory next to `path`, to fill and then rename to `path`."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp.chmod(0o777 & ~UMASK)
    return tmp


def usual_modes(directory: str | Path) -> None:
    """Gives every file and folder under `directory` the mode a new one gets (some writers use 0600)."""
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~UMASK)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~UMASK)
