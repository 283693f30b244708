"""Nothing from the page or the API reaches files beyond the uploads, the examples and the
weights folder (which only the app itself reads), no checkpoint is ever unpickled, and no
visitor can change what others see or learn the server's paths.

Covered: model keys that look like paths, file payloads that name server files instead of
uploads, Gradio's file route (including every file in the weights folder), checkpoint names,
pickles dressed as safetensors files, fine-tunes aimed at the shipped model, images sent inline
that would take gigabytes to decode, server paths in responses, and resume-state folders.
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import save_tiny_scratch
from vit_demo.card import Tensors, load_model_tensors, read_card
from vit_demo.checkpoint import CheckpointError, load_tensors, model_path, sha256
from vit_demo.registry import SCRATCH_CHECKPOINT, ModelUnavailable, Registry
from vit_demo.storage import work_dir

REPO = Path(__file__).resolve().parent.parent


class CreatesFile:
    """Unpickling this creates ``path``: the file's existence proves the pickle ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def write_payload(kind: str, path: Path, marker: Path) -> None:
    """A plain pickle or a ``torch.save`` zip at ``path`` that creates ``marker`` when loaded."""
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"payload": CreatesFile(marker)}))
    else:
        torch.save({"weight": torch.zeros(2), "payload": CreatesFile(marker)}, path)


def unpickle(kind: str, path: Path) -> None:
    """What the app must never do: load ``path`` the unsafe way."""
    if kind == "pickle":
        pickle.loads(path.read_bytes())
    else:
        with open(path, "rb") as f:  # a file object: torch 2.15 treats *.safetensors paths apart
            torch.load(f, weights_only=False)


def sse_result(url: str, api_name: str, data: list) -> tuple[str, str]:
    """Call ``api_name`` over Gradio's plain HTTP API, as any script could, bypassing
    gradio_client; returns (last event type, its data)."""
    with httpx.Client(timeout=60) as http:
        event_id = http.post(f"{url}gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
        body = http.get(f"{url}gradio_api/call/{api_name}/{event_id}").text
    events = [line.split(":", 1)[1].strip() for line in body.splitlines() if line.startswith("event:")]
    payloads = [line.split(":", 1)[1].strip() for line in body.splitlines() if line.startswith("data:")]
    return events[-1], payloads[-1]


@pytest.fixture()
def cifar_png(cifar_test, tmp_path) -> Path:
    path = tmp_path / "cifar.png"
    Image.fromarray(cifar_test.x[2].numpy()).save(path)
    return path


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "..", SCRATCH_CHECKPOINT,
                                 f"../weights/{SCRATCH_CHECKPOINT}", "scratch/../../x",
                                 "file:///etc/passwd"])
def test_classify_refuses_model_keys_that_are_paths(client, cifar_png, key):
    with pytest.raises(AppError, match="Unknown model"):
        client.predict(handle_file(str(cifar_png)), key, api_name="/classify")


def test_classify_refuses_file_payloads_that_were_not_uploaded(app, tiny_weights, cifar_png):
    url, _ = app
    with open(cifar_png, "rb") as f:  # the control: the same call with an upload completes
        uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("cifar.png", f)},
                              timeout=60).json()[0]
    file_data = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
    assert sse_result(url, "classify", [file_data, "scratch"])[0] == "complete"
    for path in ("/etc/passwd", str(tiny_weights / f"{SCRATCH_CHECKPOINT}.safetensors"),
                 str(REPO / "app.py")):
        file_data = {"path": path, "meta": {"_type": "gradio.FileData"}}
        event, data = sse_result(url, "classify", [file_data, "scratch"])
        assert event == "error", (path, event, data)
        assert "root:" not in data and "Cannot use this file" not in data  # never opened


def test_file_route_serves_uploads_only(app, tiny_weights, cifar_png):
    url, _ = app
    with httpx.Client(timeout=60) as http:
        with open(cifar_png, "rb") as f:
            uploaded = http.post(f"{url}gradio_api/upload", files={"files": ("cifar.png", f)}).json()[0]
        assert http.get(f"{url}gradio_api/file={uploaded}").content == cifar_png.read_bytes()
        upload_dir = Path(uploaded).parent
        refused = ["/etc/passwd", str(tiny_weights / f"{SCRATCH_CHECKPOINT}.safetensors"),
                   str(tiny_weights / f"{SCRATCH_CHECKPOINT}.json"), str(REPO / "app.py"),
                   str(REPO / "weights" / f"{SCRATCH_CHECKPOINT}.safetensors"),
                   str(REPO / "vit_demo" / "checkpoint.py"), f"{upload_dir}/../../../etc/passwd",
                   f"{upload_dir}/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "../../../../etc/passwd"]
        for target in refused:
            for prefix in ("gradio_api/file=", "file="):
                response = http.get(f"{url}{prefix}{target}")
                assert response.status_code in (403, 404), (prefix, target, response.status_code)
                assert b"root:" not in response.content


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, data_dir):
    """The app launched with ``launch_kwargs`` as app.py does (through ``serve_locally``), on a weights folder holding a
    checkpoint pair, a half-written temporary file, a stray file and a link out of the folder.
    Yields (url, weights folder)."""
    from vit_demo.ui import build_demo, create_context, serve_locally

    weights = tmp_path_factory.mktemp("served-weights")
    save_tiny_scratch(weights, SCRATCH_CHECKPOINT)
    (weights / f".{SCRATCH_CHECKPOINT}.safetensors.k2j4.tmp").write_bytes(b"half-written")
    (weights / "operator-notes.txt").write_text("not for the public\n")
    (weights / "passwd.json").symlink_to("/etc/passwd")
    ctx = create_context(weights, data_dir, allow_hub=False)
    demo = build_demo(ctx)
    yield serve_locally(demo, ctx), weights
    demo.close()


def test_file_route_serves_nothing_from_the_weights_folder(served_app):
    url, weights = served_app
    with httpx.Client(timeout=60) as http:
        for path in sorted(weights.iterdir()):
            response = http.get(f"{url}gradio_api/file={path}")
            # 404 for a half-written file (limits.HidePartial), 403 (Gradio) for the others
            assert response.status_code in (403, 404), (path.name, response.status_code)
            assert path.read_bytes()[:64] not in response.content


@pytest.mark.parametrize("name", ["../vit-scratch-cifar10", "..", "a/b", "/etc/passwd",
                                  "..\\windows", ".hidden", "a..b", "x\x00y", "", "n" * 101,
                                  "name/", "~root"])
def test_model_path_refuses_names_that_leave_the_folder(tmp_path, name):
    with pytest.raises(CheckpointError, match="invalid checkpoint name"):
        model_path(tmp_path, name, ".safetensors")


def test_model_path_keeps_plain_names_inside(tmp_path):
    path = model_path(tmp_path, "vit-b16-cifar10_ft.2", ".json")
    assert path == tmp_path.resolve() / "vit-b16-cifar10_ft.2.json"


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickles_named_safetensors_are_refused_unexecuted(tmp_path, tiny_weights, kind):
    marker = tmp_path / "unpickled-and-ran"
    weights = tmp_path / "weights"
    weights.mkdir()
    tensors_file = weights / "evil.safetensors"
    write_payload(kind, tensors_file, marker)
    card = read_card(tiny_weights, SCRATCH_CHECKPOINT)
    card = replace(card, name="evil", tensors=Tensors(tensors_file.name, sha256(tensors_file), 1))
    (weights / "evil.json").write_text(card.to_json())  # a real card that vouches for the file

    with pytest.raises(CheckpointError, match="not a valid safetensors file.*never unpickled"):
        load_tensors(tensors_file)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model_tensors(weights, "evil")
    registry = Registry(tmp_path / "shipped", allow_hub=False, finetune_dir=weights)  # a fine-tune
    assert "evil" in registry.keys()
    with pytest.raises(ModelUnavailable, match="not a valid safetensors file"):
        registry.get("evil")
    assert not marker.exists()
    unpickle(kind, tensors_file)  # the control: the payload is live, had anything loaded it
    assert marker.exists()


def _png_of(width: int, height: int) -> bytes:
    """A valid greyscale PNG of ``width`` x ``height`` black pixels, made row by row (it is a
    few hundred KB, its pixels a hundred megabytes and more)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_inline_images_over_the_pixel_limit_are_refused_before_decoding(app):
    """A data: URL in the API's JSON is decoded by Gradio before any handler: the process-wide
    pixel limit refuses it from the header. 169 MP alone, then four 81 MP at once."""
    import base64
    import threading
    from concurrent.futures import ThreadPoolExecutor

    url, _ = app
    huge = "data:image/png;base64," + base64.b64encode(_png_of(13_000, 13_000)).decode()
    big = "data:image/png;base64," + base64.b64encode(_png_of(9_000, 9_000)).decode()
    peak, baseline, done = [0.0], _rss_mb(), threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        event, data = sse_result(url, "classify", [{"url": huge, "meta": {"_type": "gradio.FileData"}}, "scratch"])
        assert event == "error", data
        with ThreadPoolExecutor(2) as pool:  # two at a time: within one client's share (3)
            results = list(pool.map(lambda _: sse_result(url, "classify", [
                {"url": big, "meta": {"_type": "gradio.FileData"}}, "scratch"]), range(4)))
        assert all(event == "error" for event, _ in results), results
    finally:
        done.set()
        sampler.join()
    assert peak[0] - baseline < 200, f"memory rose {peak[0] - baseline:.0f} MB"


def test_a_finetune_cannot_replace_the_shipped_model(app, client):
    url, ctx = app
    shipped = {p.name: p.read_bytes() for p in ctx.registry.weights_dir.iterdir()}
    for name in ("scratch", "vit-b16", "both"):
        with pytest.raises(AppError, match="is a model key of the app"):
            client.predict(base="scratch", name=name, api_name="/finetune")
    state = client.predict(base="scratch", name=SCRATCH_CHECKPOINT, train_images=32, steps=1,
                           batch_size=16, val_images=0, test_images=10, api_name="/finetune")[5]
    assert state["status"] == "done" and state["model_key"] != SCRATCH_CHECKPOINT
    assert state["model_key"].startswith(f"{SCRATCH_CHECKPOINT}-")
    assert {p.name: p.read_bytes() for p in ctx.registry.weights_dir.iterdir()} == shipped
    assert ctx.registry.get("scratch").source == f"weights/{SCRATCH_CHECKPOINT}.safetensors"


def test_no_response_names_a_server_path(app, client, cifar_png):
    """Everything a client receives: statuses, results, job states, error messages."""
    import os
    import tempfile

    url, ctx = app
    texts = [json.dumps(client.predict(api_name="/status"))]
    texts.append(json.dumps(client.predict(handle_file(str(cifar_png)), "both", api_name="/classify")))
    for args in ({"base": "nope"}, {"train_images": 45_000, "epochs": 100, "batch_size": 1024}):
        with pytest.raises(AppError) as info:
            client.predict(**args, api_name="/finetune")
        texts.append(str(info.value))
    event, data = sse_result(url, "classify", [None, "scratch"])
    texts.append(data)
    state = client.predict(api_name="/finetune_status")
    texts.append(json.dumps(state[5]))
    texts.append(state[0] + state[3])
    for secret in {str(REPO), str(ctx.registry.weights_dir.resolve()), str(ctx.store.folder),
                   tempfile.gettempdir() + "/vit-demo", os.path.expanduser("~") + "/"}:
        for text in texts:
            assert secret not in text, (secret, text[:300])


def test_resume_state_folder_is_reused_and_files_within_the_cap_stay(tmp_path, data_dir):
    """One resume folder for every start of the app (a restart finds, and counts, what the
    last run left: tests/test_restarts.py); a state file within the cap stays."""
    from vit_demo.finetune.request import FinetuneRequest
    from vit_demo.finetune.runner import DONE, JobRunner
    from vit_demo.finetune.store import FinetuneStore

    weights = tmp_path / "weights"
    save_tiny_scratch(weights, SCRATCH_CHECKPOINT)

    def runner(state_dir=None) -> JobRunner:
        registry = Registry(weights, allow_hub=False, finetune_dir=tmp_path / "ft")
        return JobRunner(registry, FinetuneStore(tmp_path / "ft", 3), data_dir, state_dir=state_dir)

    assert runner().state_dir == runner().state_dir == work_dir("resume")
    shared = tmp_path / "state"
    shared.mkdir()
    foreign = shared / "another-instance.safetensors"
    foreign.write_bytes(b"not ours")
    mine = runner(shared)
    mine.start(FinetuneRequest(train_images=32, batch_size=16, steps=2, val_images=0,
                               test_images=10, name="own"), owner="me")
    assert mine.wait(timeout=60).status == DONE
    assert foreign.read_bytes() == b"not ours"
    assert [p.name for p in shared.iterdir()] == [foreign.name]


def test_api_rough_edges_are_smoothed(app, client):
    """Optional parameters are optional; a nameless upload is the client's mistake (400)."""
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    rollout = {p["parameter_name"]: p for p in endpoints["/rollout"]["parameters"]}
    assert rollout["head"]["parameter_has_default"] and rollout["head"]["parameter_default"] is None
    assert [name for name, p in rollout.items() if not p["parameter_has_default"]] == ["image"]
    url, _ = app
    with httpx.Client(timeout=60) as http:
        response = http.post(f"{url}gradio_api/upload", files={"files": ("", b"\x89PNG....")})
        assert response.status_code == 400 and "file name" in response.text
