"""Gradio's cache folder (uploads, returned files) stays within ``cache_mb``: the oldest files
go first, the examples and fresh files never, and uploads are refused while nothing can go."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from vit_demo.settings import Settings
from vit_demo.ui import cache_budget
from vit_demo.ui.cache_budget import FULL, prune

pytestmark = pytest.mark.usefixtures("one_thread")


def write(folder: Path, name: str, size: int, changed: float) -> str:
    """A file of ``size`` bytes in its own sub-folder, as Gradio stores one, modified at ``changed``."""
    path = folder / f"hash-{name}" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (changed, changed))
    return str(path)


def test_prune_deletes_the_oldest_until_within_budget_sparing_kept_and_fresh_files(tmp_path):
    t = time.time()  # modification times after it stand above the files' status-change time
    old1, kept, old2, old3 = (write(tmp_path, n, 400, t + dt) for n, dt in
                              [("c.png", 100), ("a.png", 200), ("b.png", 300), ("d.png", 400)])
    fresh = write(tmp_path, "e.png", 4000, t + 900)
    now, grace = t + 1000, 500  # c, a, b, d are 600-900 s old; e 100 s

    assert prune(tmp_path, 10_000, {kept}, now, grace) == (5600, [])
    assert prune(tmp_path, 4900, {kept}, now, grace) == (4800, [old1, old2])  # 5600 - 2 x 400
    assert prune(tmp_path, 0, {kept}, now, grace) == (4400, [old3])  # kept and fresh stay
    assert sorted(str(p) for p in tmp_path.rglob("*") if p.is_file()) == sorted([kept, fresh])
    assert not Path(old1).parent.exists()  # the folders it emptied are gone


@pytest.fixture()
def small_cache_app(tiny_weights, data_dir, tmp_path, monkeypatch):
    """The app with a 1 MiB cache budget and its own Gradio cache folder. Yields (url, demo,
    cache folder)."""
    from vit_demo.ui import build_demo, create_context, serve_locally

    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    ctx = create_context(tiny_weights, data_dir, allow_hub=False, settings=Settings(cache_mb=1))
    demo = build_demo(ctx)
    yield serve_locally(demo, ctx), demo, cache
    demo.close()


def test_uploads_are_refused_while_the_cache_is_full_of_fresh_files_then_room_is_made(
        small_cache_app, cifar_test, tmp_path, monkeypatch):
    url, demo, cache = small_cache_app
    examples = {p for block in demo.blocks.values() for p in getattr(block, "keep_in_cache", ())}
    assert examples and all(p.startswith(str(cache)) for p in examples)  # the gallery's images
    with httpx.Client(timeout=60) as http:
        def upload(i: int) -> httpx.Response:
            return http.post(f"{url}gradio_api/upload",
                             files={"files": (f"big{i}.bin", os.urandom(600 * 1024))})

        first, second = upload(1).json()[0], upload(2).json()[0]
        time.sleep(cache_budget.CHECK_EVERY_S)
        refused = upload(3)
        assert refused.status_code == 507 and refused.json() == {"detail": FULL}
        assert Path(first).exists() and Path(second).exists()

        monkeypatch.setattr(cache_budget, "GRACE_S", 0.0)  # as if two minutes had gone by
        time.sleep(cache_budget.CHECK_EVERY_S)
        picture = tmp_path / "cifar.png"
        Image.fromarray(cifar_test.x[0].numpy()).save(picture)
        client = Client(url, verbose=False)
        try:
            labels = client.predict(handle_file(str(picture)), "scratch", api_name="/classify")[0]
        finally:
            client.close()
    assert len(labels["confidences"]) > 0
    assert not Path(first).exists() and Path(second).exists()  # the oldest went, enough room
    assert first not in demo.upload_file_set and second in demo.upload_file_set
    assert all(Path(p).exists() for p in examples)
