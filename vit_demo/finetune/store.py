"""The folder of fine-tuned checkpoints: names the server makes unique, and a cap.

Every fine-tuned model is a checkpoint pair (``NAME.safetensors`` + ``NAME.json``) in its own
folder, never the shipped ``weights/``. Its name, which is also its model key, is the visitor's
label plus a random suffix, so no request can name (and so overwrite) another model. The store
keeps at most ``keep`` of the checkpoints it wrote; adding one more deletes the oldest, and only
files it wrote itself.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from ..checkpoint import list_models, model_path


def keep_newest(written: list, item, keep: int) -> list:
    """Append ``item`` to ``written`` (oldest first; an earlier entry of it moves to the end),
    keep the newest ``keep`` and return the ones dropped, for the caller to delete."""
    if item in written:
        written.remove(item)
    written.append(item)
    dropped = written[:-keep]
    del written[:-keep]
    return dropped


class FinetuneStore:
    def __init__(self, folder: Path, keep: int):
        assert keep >= 1, keep
        self.folder = Path(folder)
        self.keep = keep
        self._lock = threading.Lock()
        self._written: list[str] = []  # names this store wrote, oldest first

    def tensors_path(self, name: str) -> Path:
        return model_path(self.folder, name, ".safetensors")

    def new_name(self, label: str) -> str:
        """``label-xxxxxx``: a name no checkpoint in the folder has."""
        taken = set(list_models(self.folder))
        while True:
            name = f"{label}-{secrets.token_hex(3)}"
            if name not in taken and not self.tensors_path(name).exists():
                return name

    def added(self, name: str) -> list[str]:
        """Record checkpoint ``name`` as written; delete the oldest beyond the cap; their names."""
        with self._lock:
            evicted = keep_newest(self._written, name, self.keep)
        for old in evicted:  # the card first, so that it is never listed half-deleted
            model_path(self.folder, old, ".json").unlink(missing_ok=True)
            self.tensors_path(old).unlink(missing_ok=True)
        return evicted
