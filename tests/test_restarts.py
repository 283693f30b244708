"""Disk that stays bounded across restarts: the fine-tune store and the resume states start from
what an earlier run left (the cap counts it, half-written files go), a restart makes no new
folders, "Inside the model" figures live in Gradio's bounded cache, and no half-written file is
ever served."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from conftest import save_tiny_scratch
from vit_demo.finetune.runner import JobRunner
from vit_demo.finetune.store import FinetuneStore
from vit_demo.registry import SCRATCH_CHECKPOINT, Registry
from vit_demo.settings import Settings
from vit_demo import storage

pytestmark = pytest.mark.usefixtures("one_thread")


def aged(path: Path, data: bytes, age_s: float) -> Path:
    """``path`` written with ``data`` and a modification time ``age_s`` seconds ago."""
    path.write_bytes(data)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_the_store_keeps_the_newest_after_a_restart_and_drops_partial_files(tmp_path):
    folder = tmp_path / "finetuned"
    folder.mkdir()
    for i in range(6):  # m0 the oldest
        aged(folder / f"m{i}.safetensors", b"w", 600 - 60 * i)
        aged(folder / f"m{i}.json", b"{}", 600 - 60 * i)
    partial = aged(folder / ".m9.safetensors.k2j3.tmp", b"half", 5)
    store = FinetuneStore(folder, keep=3)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"m{i}{s}" for i in (3, 4, 5) for s in (".json", ".safetensors"))
    assert not partial.exists()
    for name in ("n1", "n2"):  # written by this run: the oldest of the earlier ones go first
        aged(folder / f"{name}.safetensors", b"w", 0)
        aged(folder / f"{name}.json", b"{}", 0)
        store.added(name)
    assert sorted(p.stem for p in folder.glob("*.json")) == ["m5", "n1", "n2"]


def test_resume_states_of_earlier_runs_count_against_the_cap(tmp_path):
    weights, state = tmp_path / "weights", tmp_path / "state"
    save_tiny_scratch(weights, SCRATCH_CHECKPOINT)
    state.mkdir()
    for i in range(5):
        aged(state / f"{i:016x}.safetensors", b"s", 500 - 60 * i)
    partial = aged(state / ".0000.safetensors.x1.tmp", b"half", 1)
    registry = Registry(weights, allow_hub=False, finetune_dir=tmp_path / "finetuned")
    JobRunner(registry, FinetuneStore(tmp_path / "finetuned", 2), None, Settings(keep_finetuned=2),
              state_dir=state)
    assert sorted(p.name for p in state.iterdir()) == [f"{i:016x}.safetensors" for i in (3, 4)]
    assert not partial.exists()


def test_a_restart_reuses_the_app_s_folders(tiny_weights, data_dir, work_dir):
    """Two starts of the app (default folders) make no folder of their own: both use the work
    folder's ``finetuned`` and ``resume``, and nothing new appears in the system's temp folder
    for them."""
    import tempfile

    from vit_demo.ui import build_demo, create_context

    temp = Path(tempfile.gettempdir())
    before = {p.name for p in temp.iterdir() if p.name.startswith("vit-demo-")}
    folders = []
    for _ in range(2):
        ctx = create_context(tiny_weights, data_dir, allow_hub=False)
        build_demo(ctx)
        folders.append(ctx.store.folder)
    assert folders[0] == folders[1] == work_dir / "finetuned" == storage.work_dir("finetuned")
    assert (work_dir / "resume").is_dir()
    made = {p.name for p in temp.iterdir() if p.name.startswith("vit-demo-")} - before
    assert not [name for name in made if not name.startswith("vit-demo-examples-")], made


def test_inside_figures_are_written_into_gradio_s_cache(client, tmp_path):
    from gradio.utils import get_upload_folder

    from vit_demo.ui.inside import PNG_FOLDER, png_file

    path = Path(png_file(b"\x89PNG not really"))
    assert path.parent == Path(get_upload_folder()) / PNG_FOLDER
    assert png_file(b"\x89PNG not really") == str(path)  # once per content
    *pictures, _, _ = client.predict("scratch", None, api_name="/inside")
    assert all(Path(p).resolve().is_relative_to(Path(get_upload_folder()).resolve())
               for p in pictures[:3])


def test_no_half_written_or_hidden_file_is_served(app):
    url, ctx = app
    folder = ctx.store.folder
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / ".cat-1a2b3c.safetensors.q8w7.tmp"
    partial.write_bytes(b"half a checkpoint")
    visible = folder / "note.txt"
    visible.write_text("an ordinary file in the served folder")
    try:
        for path in (partial, folder / "x.tmp"):
            assert httpx.get(f"{url}gradio_api/file={path}", timeout=30).status_code == 404
        assert httpx.get(f"{url}gradio_api/file={visible}", timeout=30).status_code == 200
    finally:
        partial.unlink()
        visible.unlink()
