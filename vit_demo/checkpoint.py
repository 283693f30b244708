"""Checkpoint files: safetensors written atomically, read only from one folder, never unpickled.

A model named ``NAME`` is the pair ``NAME.safetensors`` + ``NAME.json`` (its card, see ``card``)
inside the weights directory. The card is written last, so a pair without a card is an
unfinished write and is not listed. Nothing here unpickles: safetensors holds tensors and
string metadata only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

WEIGHTS_DIR_ENV = "VIT_DEMO_WEIGHTS_DIR"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class CheckpointError(ValueError):
    """A checkpoint is missing, outside the weights folder, or disagrees with its card."""


def default_weights_dir() -> Path:
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "weights"


def model_path(weights_dir: Path, name: str, suffix: str) -> Path:
    """``weights_dir/name+suffix``, refusing any name that could lead outside the folder."""
    if not NAME_RE.match(name) or ".." in name:
        raise CheckpointError(f"invalid checkpoint name {name!r}: use letters, digits, '_', '-', '.'")
    root = Path(weights_dir).resolve()
    path = (root / f"{name}{suffix}").resolve()
    if path.parent != root:
        raise CheckpointError(f"{name!r} is outside the weights folder")
    return path


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; checkpoints are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Atomically write tensors (and JSON-able metadata, stored as one string) to safetensors."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"json": json.dumps(metadata)} if metadata is not None else None
    _atomic_write(Path(path), lambda tmp: save_file(flat, tmp, metadata=meta))


def load_tensors(path: Path, expected_shapes: dict[str, tuple[int, ...]] | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors and JSON metadata of a safetensors file; ``expected_shapes`` (when given)
    must match the file's tensors key for key, checked before any tensor is read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if expected_shapes is not None:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                _check_shapes(Path(path).stem, shapes, expected_shapes)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"{Path(path).name} is not a valid safetensors file ({exc}); weights "
                              "are read only as safetensors, never unpickled") from exc
    return tensors, (json.loads(meta["json"]) if "json" in meta else None)


def tensor_count(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return len(list(f.keys()))


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def list_models(weights_dir: Path) -> list[str]:
    """Names of complete checkpoints (both files present) in the weights folder, if it exists."""
    root = Path(weights_dir)
    return sorted(p.stem for p in root.glob("*.json")
                  if NAME_RE.match(p.stem) and (root / f"{p.stem}.safetensors").is_file())


def _check_shapes(name: str, found: dict, expected: dict) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = [(k, found[k], tuple(expected[k])) for k in sorted(set(found) & set(expected))
             if tuple(found[k]) != tuple(expected[k])]
    parts = [f"{len(wrong)} tensor(s) with other shapes than the card's architecture "
             f"(e.g. {k}: file {list(f)}, card {list(e)})" for k, f, e in wrong[:1]]
    parts += [f"{what} {keys[:3]}" for what, keys in (("missing", missing), ("unexpected", extra)) if keys]
    if parts:
        raise CheckpointError(f"checkpoint {name!r} does not match its card: " + "; ".join(parts))
