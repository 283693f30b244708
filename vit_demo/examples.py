"""Example images for the page, drawn at run time from whatever CIFAR-10 source this machine has.

The repository holds no image of the data set: the gallery is written to a server-side folder
from the data directory or torchvision's download cache, at once when a copy is on this machine,
or after a download in a background thread (a Space), so that the page never waits for it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

from PIL import Image

from .data import CLASSES, DataUnavailable, Split, class_balanced_indices, data_problem, load_cifar10

READY, DOWNLOADING, FAILED, ABSENT = "ready", "downloading", "failed", "absent"
DOWNLOAD_FAILED = ("Downloading CIFAR-10 failed, so this server has no example images and cannot "
                   "fine-tune.")
log = logging.getLogger(__name__)


class ExampleGallery:
    """``per_class`` CIFAR-10 test images of every class as PNG files in ``folder``, and where
    their source stands: ``ready``, ``downloading``, ``failed`` (the download did not end well)
    or ``absent`` (no copy here and no download asked for). ``message`` says why there are no
    images in a visitor's words; ``detail`` says it for the person running the server."""

    def __init__(self, folder: Path | None = None, per_class: int = 2):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="vit-demo-examples-"))
        self.per_class = per_class
        # Known before any data: the k-th test image of each class, in class order.
        self.names = [f"{label} {k + 1}" for label in CLASSES for k in range(per_class)]
        self._lock = threading.Lock()
        # set only by ``_set``; paths: one PNG per example, in the order of ``names``, once ready
        self.state, self.paths, self.message, self.detail = ABSENT, [], "", ""

    def fill(self, load_test: Callable[[], Split]) -> None:
        """Write the examples from the test split ``load_test`` returns; on ``DataUnavailable``
        the gallery stays empty with its message, on any other error with ``DOWNLOAD_FAILED``."""
        try:
            test = load_test()
        except DataUnavailable as exc:
            self._set(FAILED if self.state == DOWNLOADING else ABSENT, [],
                      f"No example images: {exc.visitor}.", str(exc))
            return
        except Exception as exc:  # a network error, a bad archive: one line in the log
            detail = f"downloading CIFAR-10 failed: {type(exc).__name__}: {exc}"
            log.warning("%s (restarting the app tries again)", detail)
            self._set(FAILED, [], DOWNLOAD_FAILED, detail)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in class_balanced_indices(test.y, self.per_class).tolist():
            path = self.folder / f"cifar10-test-{i:05d}-{CLASSES[int(test.y[i])]}.png"
            Image.fromarray(test.x[i].numpy()).save(path)  # the exact 32x32 pixels of the test set
            paths.append(path)
        self._set(READY, paths, "")
        log.info("CIFAR-10: ready (%d example images)", len(paths))

    def fill_in_background(self, load_test: Callable[[], Split]) -> threading.Thread:
        """``fill`` in a daemon thread, ``downloading`` until it ends; returns the thread."""
        self._set(DOWNLOADING, [], "Downloading CIFAR-10 (170 MB); the example images appear "
                                   "when it is done.")
        log.info("CIFAR-10: downloading in the background (170 MB)")
        thread = threading.Thread(target=self.fill, args=(load_test,), name="cifar10-download",
                                  daemon=True)
        thread.start()
        return thread

    def path_of(self, name: str) -> Path:
        """The file of the example called ``name``; ``ValueError`` (a message for the person) while
        there is none."""
        if name not in self.names:
            raise ValueError(f"Unknown example {name!r}.")
        if self.state != READY:
            raise ValueError(self.message or "No example images on this server.")
        return self.paths[self.names.index(name)]

    def _set(self, state: str, paths: list[Path], message: str, detail: str = "") -> None:
        with self._lock:
            self.state, self.paths, self.message, self.detail = state, paths, message, detail


def open_gallery(data_dir=None, download: bool = False, folder: Path | None = None,
                 per_class: int = 2, load_test: Callable[[], Split] | None = None) -> ExampleGallery:
    """The gallery from the local CIFAR-10 copy, written now; without one and with ``download``,
    downloaded in the background by ``load_test`` (default: torchvision's archive, which brings
    the training split too); else empty, saying why."""
    gallery = ExampleGallery(folder, per_class)
    if not data_problem("test", data_dir) or not download:
        gallery.fill(partial(load_cifar10, "test", data_dir, download=False))
    else:
        gallery.fill_in_background(load_test or partial(load_cifar10, "test", data_dir, download=True))
    return gallery
