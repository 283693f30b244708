"""The example gallery is drawn at run time from the local CIFAR-10 copy or a background download,
or explains its absence; on a Space Gradio caches what an example shows."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from vit_demo.data import CLASSES, Split
from vit_demo.examples import (ABSENT, DOWNLOAD_FAILED, DOWNLOADING, FAILED, READY, ExampleGallery,
                               open_gallery)

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_exact_test_images(gallery: ExampleGallery, test: Split) -> None:
    """Two images of every class, each the exact pixels of the test image its name gives, in
    the order of ``gallery.names`` ("airplane 1", "airplane 2", "automobile 1", ...)."""
    assert gallery.state == READY and gallery.message == ""
    assert len(gallery.paths) == len(gallery.names) == 2 * len(CLASSES)
    for name, path in zip(gallery.names, gallery.paths):
        _, _, index, label = path.stem.split("-")
        i = int(index)
        assert name.split()[0] == label == CLASSES[int(test.y[i])]
        assert np.array_equal(np.asarray(Image.open(path)), test.x[i].numpy())
        assert gallery.path_of(name) == path


def test_gallery_holds_exact_test_images_two_per_class(cifar_test, data_dir, tmp_path):
    gallery = open_gallery(data_dir, folder=tmp_path)
    assert_exact_test_images(gallery, cifar_test)
    assert [int(p.stem.split("-")[2]) for p in gallery.paths[:2]] == [
        i for i in range(len(cifar_test)) if cifar_test.y[i] == 0][:2]  # the first two airplanes


def test_gallery_without_a_source_is_empty_and_says_why(tmp_path, monkeypatch):
    from vit_demo.ui.common import gallery_note

    monkeypatch.delenv("VIT_DEMO_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gallery = open_gallery(tmp_path / "no-data-here")
    assert gallery.state == ABSENT and gallery.paths == []
    # the visitor reads that it is missing; the operator which file and variable
    assert gallery.message == "No example images: CIFAR-10 is not on this server."
    assert gallery.detail.startswith("CIFAR-10 (test) is not available")
    assert "VIT_DEMO_DATA_DIR" in gallery.detail
    note = gallery_note(gallery)
    assert note.startswith("No example images") and note.endswith("Drop a photo of your own instead.")
    assert str(tmp_path) not in note


class FakeDownload:
    """A download that waits until ``finish()`` and then returns ``test`` or raises ``error``."""

    def __init__(self, test: Split | None = None, error: Exception | None = None):
        self.test, self.error = test, error
        self.started, self.released = threading.Event(), threading.Event()

    def __call__(self) -> Split:
        self.started.set()
        assert self.released.wait(60), "the test never released the fake download"
        if self.error is not None:
            raise self.error
        return self.test

    def finish(self) -> None:
        self.released.set()


def test_a_download_fills_the_gallery_in_the_background(cifar_test, tmp_path):
    fake = FakeDownload(cifar_test)
    gallery = open_gallery(tmp_path / "empty", download=True, folder=tmp_path / "examples",
                           load_test=fake)
    assert fake.started.wait(10)
    assert gallery.state == DOWNLOADING and gallery.paths == []
    with pytest.raises(ValueError, match="Downloading CIFAR-10"):
        gallery.path_of("cat 1")
    fake.finish()
    thread = next(t for t in threading.enumerate() if t.name == "cifar10-download")
    thread.join(30)
    assert_exact_test_images(gallery, cifar_test)


def test_a_failed_download_says_so_without_a_path(tmp_path):
    secret = tmp_path / "server" / "cache"
    fake = FakeDownload(error=OSError(f"[Errno 28] No space left on device: '{secret}'"))
    gallery = ExampleGallery(tmp_path / "examples")
    thread = gallery.fill_in_background(fake)
    fake.finish()
    thread.join(30)
    assert gallery.state == FAILED and gallery.paths == []
    assert gallery.message == DOWNLOAD_FAILED
    with pytest.raises(ValueError) as exc:
        gallery.path_of("dog 2")
    assert str(exc.value) == DOWNLOAD_FAILED and str(tmp_path) not in str(exc.value)


def page_text(url: str) -> str:
    """The page's configuration (every component's initial value) as JSON text."""
    with urllib.request.urlopen(f"{url}config", timeout=30) as response:
        return json.dumps(json.load(response))


def top_label(client: Client, path, model: str = "scratch") -> str:
    left, _, _ = client.predict(handle_file(str(path)), model, api_name="/classify")
    return left["label"]


@pytest.fixture()
def examples_cache(tmp_path, monkeypatch) -> Path:
    """Gradio's cache of what the examples show, in a folder of this test's own (a stale cache
    from another run would be reused)."""
    folder = tmp_path / "gradio-examples-cache"
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(folder))
    return folder


def test_the_app_serves_while_cifar10_downloads_then_the_examples_appear(
        tiny_weights, cifar_test, tmp_path, examples_cache):
    """As on a Space: no local copy, a (fake, slow) download at start, Gradio's example cache."""
    from vit_demo.ui import build_demo, create_context, serve_locally
    from vit_demo.ui.common import gallery_note
    from vit_demo.ui.finetune import DOWNLOADING_NOTE, readiness

    fake = FakeDownload(cifar_test)
    no_data = tmp_path / "no-cifar10-here"
    ctx = create_context(tiny_weights, str(no_data), allow_hub=False, download_data=True,
                         cache_examples=True, download=fake)
    assert fake.started.wait(10)
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    client = Client(url, verbose=False)
    try:
        # the page is up and answers while the download runs
        photo = tmp_path / "photo.png"
        Image.fromarray(cifar_test.x[5].numpy()).save(photo)
        assert top_label(client, photo) in CLASSES
        assert ctx.gallery.state == DOWNLOADING
        page = page_text(url)
        assert "Downloading CIFAR-10..." in page and DOWNLOADING_NOTE in page
        assert DOWNLOADING_NOTE in readiness(ctx, "scratch")
        assert "cat 1" in page  # the examples are there by name
        with pytest.raises(Exception, match="Downloading CIFAR-10"):
            client.predict(0, api_name="/classify_example")
        with pytest.raises(Exception, match="while CIFAR-10 downloads"):
            client.predict("scratch", 3000, 1, 0, 16, 1e-3, False, 0, "early", 200, 200,
                           api_name="/finetune")
        assert not list(examples_cache.rglob("*.png"))  # a failed example is not cached

        fake.finish()
        next(t for t in threading.enumerate() if t.name == "cifar10-download").join(30)
        assert_exact_test_images(ctx.gallery, cifar_test)
        assert gallery_note(ctx.gallery) == "" and DOWNLOADING_NOTE not in readiness(ctx, "scratch")
        for k in (0, 7, 19):  # an airplane, a cat, a truck
            image, choice, left, right, notes = client.predict(k, api_name="/classify_example")
            expected = ctx.gallery.paths[k]
            assert np.array_equal(np.asarray(Image.open(image).convert("RGB")),
                                  np.asarray(Image.open(expected)))
            assert choice == "scratch" and right["label"] is None and "Scratch ViT" in notes
            assert left["label"] == top_label(client, expected)
        assert len(list(examples_cache.rglob("*.png"))) == 3  # Gradio cached the three
        assert str(ctx.gallery.folder) not in page_text(url)
    finally:
        client.close()
        demo.close()


def test_cached_examples_show_what_classify_answers(tiny_weights, data_dir, examples_cache):
    """Examples written before the page is built, their outputs cached by Gradio (lazily)."""
    from vit_demo.ui import build_demo, create_context, serve_locally

    ctx = create_context(tiny_weights, data_dir, allow_hub=False, cache_examples=True)
    assert ctx.gallery.state == READY
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    client = Client(url, verbose=False)
    try:
        for k in (2, 11, 16):
            expected = top_label(client, ctx.gallery.paths[k])
            first = client.predict(k, api_name="/classify_example")
            choice, left, right, _ = first
            assert choice == "scratch" and right["label"] is None
            assert left["label"] == expected
            assert client.predict(k, api_name="/classify_example") == first
        logs = list(examples_cache.rglob("log.csv"))
        assert len(logs) == 1 and len(logs[0].read_text().strip().splitlines()) == 1 + 3
    finally:
        client.close()
        demo.close()
