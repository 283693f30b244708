"""The folders the app writes at run time, the same ones after every restart, so that what a
run leaves behind is found (and counted, trimmed, reused) by the next instead of piling up.

``work_dir(name)``: ``$VIT_DEMO_WORK_DIR/name``, by default under the system's temporary
folder (``/tmp/vit-demo/name``). Files ``checkpoint._atomic_write`` was writing when the process
died (``.NAME.XXXX.tmp``) are removed by ``remove_partial``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

WORK_ENV = "VIT_DEMO_WORK_DIR"
PARTIAL = ".*.tmp"  # checkpoint._atomic_write's temporary files


def work_dir(name: str) -> Path:
    """The app's folder ``name`` (made if missing), the same in every run."""
    root = Path(os.environ.get(WORK_ENV) or Path(tempfile.gettempdir()) / "vit-demo")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove_partial(folder: Path) -> list[Path]:
    """Delete the half-written files a killed process left in ``folder``; their paths."""
    partial = sorted(Path(folder).glob(PARTIAL))
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def oldest_first(paths) -> list[Path]:
    """``paths`` that exist, oldest modification first (ties by name)."""
    stamped = []
    for path in paths:
        try:
            stamped.append((path.stat().st_mtime, str(path), path))
        except FileNotFoundError:
            continue
    return [path for *_, path in sorted(stamped)]
