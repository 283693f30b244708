"""The example gallery is drawn at run time from the local CIFAR-10 copy, or explains its absence."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vit_demo.data import CLASSES
from vit_demo.examples import build_gallery


def test_gallery_holds_exact_test_images_two_per_class(cifar_test, data_dir, tmp_path):
    gallery = build_gallery(data_dir, folder=tmp_path)
    assert gallery.reason == "" and len(gallery.paths) == 2 * len(CLASSES)
    seen = []
    for path in gallery.paths:
        _, _, index, label = path.stem.split("-")
        i = int(index)
        assert CLASSES[int(cifar_test.y[i])] == label
        assert np.array_equal(np.asarray(Image.open(path)), cifar_test.x[i].numpy())
        seen.append(label)
    assert sorted(seen) == sorted(CLASSES * 2)


def test_gallery_without_a_source_is_empty_and_says_why(tmp_path, monkeypatch):
    monkeypatch.delenv("VIT_DEMO_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gallery = build_gallery(tmp_path / "no-data-here")
    assert gallery.paths == []
    assert gallery.reason.startswith("No example images: CIFAR-10 (test) is not available")
    assert "VIT_DEMO_DATA_DIR" in gallery.reason
