"""Nothing from the page or the API reaches files beyond the uploads, the examples and the
weights folder (which only the app itself reads), and no checkpoint is ever unpickled.

Covered: model keys that look like paths, file payloads that name server files instead of
uploads, Gradio's file route (including every file in the weights folder), checkpoint names,
and pickles dressed as safetensors files.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import save_tiny_scratch
from vit_demo.checkpoint import (CheckpointError, load_model_tensors, load_tensors, model_path,
                                 sha256)
from vit_demo.registry import SCRATCH_CHECKPOINT, ModelUnavailable, Registry

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
            assert response.status_code == 403, (path.name, response.status_code)
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
    card = json.loads((tiny_weights / f"{SCRATCH_CHECKPOINT}.json").read_text())
    card.update(name="evil", tensors={"file": tensors_file.name, "sha256": sha256(tensors_file)})
    (weights / "evil.json").write_text(json.dumps(card))  # a real card that vouches for the file

    with pytest.raises(CheckpointError, match="not a valid safetensors file.*never unpickled"):
        load_tensors(tensors_file)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model_tensors(weights, "evil")
    registry = Registry(weights, allow_hub=False)  # as the app meets it: a fine-tune in weights/
    assert "evil" in registry.keys()
    with pytest.raises(ModelUnavailable, match="not a valid safetensors file"):
        registry.get("evil")
    assert not marker.exists()
    unpickle(kind, tensors_file)  # the control: the payload is live, had anything loaded it
    assert marker.exists()
