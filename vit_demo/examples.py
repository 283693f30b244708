"""Example images for the page, drawn at run time from whatever CIFAR-10 source this machine has.

The repository holds no image of the data set: the gallery is written to a temporary folder
from the data directory or torchvision's download cache; it downloads only when asked to.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .data import CLASSES, DataUnavailable, class_balanced_indices, load_cifar10


@dataclass(frozen=True)
class Gallery:
    paths: list[Path]  # one PNG per example, named after its index and class
    reason: str  # why there is no gallery, when paths is empty


def build_gallery(data_dir=None, per_class: int = 2, folder: Path | None = None,
                  download: bool = False) -> Gallery:
    """``per_class`` test images of every class, as PNG files; empty with a reason if no source.

    ``download``: fetch torchvision's archive when no local copy exists (for a Space, where
    the network is there; off by default so the app never waits on a download to start).
    """
    try:
        test = load_cifar10("test", data_dir, download=download)
    except DataUnavailable as exc:
        return Gallery([], f"No example images: {exc}")
    folder = Path(folder or tempfile.mkdtemp(prefix="vit-demo-examples-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in class_balanced_indices(test.y, per_class).tolist():
        label = CLASSES[int(test.y[i])]
        img = Image.fromarray(test.x[i].numpy())  # the exact 32x32 pixels of the test set
        path = folder / f"cifar10-test-{i:05d}-{label}.png"
        img.save(path)
        paths.append(path)
    return Gallery(paths, "")
