"""The folder of fine-tuned checkpoints: names the server makes unique, and a cap.

Every fine-tuned model is a checkpoint pair (``NAME.safetensors`` + ``NAME.json``) in its own
folder, never the shipped ``weights/``. Its name, which is also its model key, is the visitor's
label plus a random suffix, so no request can name (and so overwrite) another model. The store
keeps at most ``keep`` checkpoints; adding one more deletes the oldest. It starts from what is
in the folder (a restart keeps the newest ``keep`` checkpoints there and deletes the rest, and
the half-written files of a killed process), so the cap holds across restarts.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from ..checkpoint import list_models, model_path
from ..storage import oldest_first, remove_partial


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
        remove_partial(self.folder)
        pairs = oldest_first(self.tensors_path(name) for name in list_models(self.folder))
        self._written: list[str] = []  # the folder's checkpoints, oldest first
        for path in pairs:
            self._delete(keep_newest(self._written, path.stem, keep))

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
        self._delete(evicted)
        return evicted

    def _delete(self, names: list[str]) -> None:
        for old in names:  # the card first, so that it is never listed half-deleted
            model_path(self.folder, old, ".json").unlink(missing_ok=True)
            self.tensors_path(old).unlink(missing_ok=True)
