"""The fine-tune job: request validation, the runner (resume after Stop), and the tab end to end
through a launched app with gradio_client, on real CIFAR-10 images and a tiny scratch model.

Everything runs offline on the CPU in seconds; every wait has a deadline so that a hang fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import save_tiny_scratch
from vit_demo.checkpoint import load_card
from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES
from vit_demo.finetune import (CANCELLED, DONE, RUNNING, STATE_DIR_ENV, FinetuneRequest,
                               InvalidRequest, JobRunner, check_request)
from vit_demo.model import PRESETS
from vit_demo.models import SCRATCH_CHECKPOINT, VITB16_CHECKPOINT, Registry, load_checkpoint

JOB_TIMEOUT = 120  # seconds for any one job through the app
FIELDS = ("base", "train_images", "epochs", "steps", "batch_size", "lr", "freeze_backbone",
          "seed", "name", "overwrite", "val_images", "test_images")


def form(**changes) -> list:
    """The /finetune arguments in the form's order: a tiny scratch job unless changed."""
    values = {"base": "scratch", "train_images": 3000, "epochs": 1, "steps": 0, "batch_size": 16,
              "lr": 1e-3, "freeze_backbone": False, "seed": 0, "name": "ft-e2e",
              "overwrite": False, "val_images": 200, "test_images": 200, **changes}
    return [values[f] for f in FIELDS]


def _state(outputs: tuple | list) -> dict:
    """The JSON state among a tab output tuple."""
    return outputs[5]


@pytest.fixture(scope="module")
def ft_app(tmp_path_factory, data_dir):
    """An app of its own (its own weights folder, job runner and resume-state folder), with the
    tiny scratch model as the shipped checkpoint. Yields (url, weights_dir)."""
    from vit_demo.ui import build_demo, create_context, serve_locally

    weights = tmp_path_factory.mktemp("ft-weights")
    save_tiny_scratch(weights, SCRATCH_CHECKPOINT)
    mp = pytest.MonkeyPatch()
    mp.setenv(STATE_DIR_ENV, str(tmp_path_factory.mktemp("ft-state")))
    ctx = create_context(weights, data_dir, allow_hub=True)
    demo = build_demo(ctx)
    yield serve_locally(demo), weights
    demo.close()
    mp.undo()


@pytest.fixture(scope="module")
def ft_client(ft_app, tmp_path_factory):
    c = Client(ft_app[0], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    yield c
    c.close()


def _stop_and_wait(client: Client, timeout: float = 30) -> dict:
    """Stop whatever runs and wait until no job is active; the final state."""
    state = _state(client.predict(api_name="/finetune_stop"))
    deadline = time.monotonic() + timeout
    while state["status"] in ("starting", "running", "stopping", "saving"):
        assert time.monotonic() < deadline, f"the job did not end: {state}"
        time.sleep(0.2)
        state = _state(client.predict(api_name="/finetune_status"))
    return state


# -- the request ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"train_images": 0}, "train images must be from 1"),
    ({"train_images": 2.5}, "train images must be a whole number"),
    ({"train_images": None}, "train images must be a whole number"),
    ({"epochs": 0}, "epochs must be in (0, 100]"),
    ({"epochs": float("nan")}, "epochs must be a number"),
    ({"steps": -3}, "steps must be from 1"),
    ({"batch_size": 0}, "batch size must be from 1"),
    ({"batch_size": 64, "train_images": 10}, "batch size (64) is larger than the number of training images (10)"),
    ({"lr": 0}, "learning rate must be in (0, 0.1]"),
    ({"lr": "fast"}, "learning rate must be a number"),
    ({"seed": -1}, "seed must be from 0"),
    ({"val_images": 6000}, "validation images must be from 0 to 5,000"),
    ({"test_images": 5}, "test images must be from 10"),
    ({"name": ""}, "output name is empty"),
    ({"name": "../evil"}, "output name '../evil' is not allowed"),
    ({"name": "a/b"}, "output name 'a/b' is not allowed"),
    ({"name": "scratch"}, "is a model key of the app"),
    ({"base": ""}, "base must be"),
    ({"base": "x/../y"}, "is not a checkpoint name"),
    ({"freeze_backbone": "yes"}, "freeze backbone must be true or false"),
])
def test_request_refuses_invalid_fields(changes, message):
    with pytest.raises(InvalidRequest) as info:
        FinetuneRequest(**dict(zip(FIELDS, form(**changes))))
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_request_lists_every_problem_and_accepts_integral_floats():
    with pytest.raises(InvalidRequest) as info:
        FinetuneRequest(train_images=-1, lr=5, name="")
    text = str(info.value)
    assert "train images" in text and "learning rate" in text and "output name" in text
    req = FinetuneRequest(train_images=320.0, batch_size=32.0, steps=7.0)
    assert (req.train_images, req.batch_size, req.steps) == (320, 32, 7)
    assert isinstance(req.train_images, int) and req.total_steps() == 7
    assert FinetuneRequest(train_images=320, batch_size=32, epochs=2).total_steps() == 20


def test_check_request_guards_the_weights_folder(tmp_path):
    save_tiny_scratch(tmp_path, SCRATCH_CHECKPOINT)
    ok = FinetuneRequest(name="new-model")
    check_request(ok, tmp_path)
    cases = [
        (FinetuneRequest(name=SCRATCH_CHECKPOINT), "is the app's own model"),
        (FinetuneRequest(base="missing", name="x"), "base 'missing' is not a scratch checkpoint"),
        (FinetuneRequest(name=VITB16_CHECKPOINT, overwrite=True),
         "only the 'vit-b16' base can be saved under that name"),
        (FinetuneRequest(base="vit-b16", name=SCRATCH_CHECKPOINT, overwrite=True),
         "a ViT-B/16 cannot be saved under that name"),
    ]
    for request, message in cases:
        with pytest.raises(InvalidRequest, match="Cannot start") as info:
            check_request(request, tmp_path)
        assert message in str(info.value)
    check_request(FinetuneRequest(name=SCRATCH_CHECKPOINT, overwrite=True), tmp_path)
    empty = tmp_path / "empty"
    with pytest.raises(InvalidRequest, match="train it first"):
        check_request(ok, empty)


def test_runner_stop_keeps_resume_state_and_restart_resumes(tmp_path, data_dir):
    weights = tmp_path / "weights"
    save_tiny_scratch(weights, SCRATCH_CHECKPOINT)
    runner = JobRunner(Registry(weights, allow_hub=False), data_dir, state_dir=tmp_path / "state")
    request = FinetuneRequest(train_images=400, batch_size=16, steps=400, lr=1e-3, name="resumed",
                              val_images=0, test_images=50)
    assert request.train_config().checkpoint_every == 100
    runner.start(request)
    deadline = time.monotonic() + JOB_TIMEOUT
    while runner.snapshot().step < 110:
        assert time.monotonic() < deadline and runner.snapshot().active, runner.snapshot()
        time.sleep(0.01)
    runner.stop()
    state = runner.wait(timeout=30)
    assert state.status == CANCELLED, state.error
    stopped = state.step
    assert 110 <= stopped < 400
    assert list((tmp_path / "state").glob("*.safetensors")), "the resume state was not kept"
    assert not (weights / "resumed.json").exists()
    runner.start(request)
    state = runner.wait(timeout=JOB_TIMEOUT)
    assert state.status == DONE, state.error
    resumed = [line for line in state.log if "resumed at step" in line]
    assert resumed and f"resumed at step {(stopped // 100) * 100}" in resumed[0]
    assert state.history[0]["step"] == (stopped // 100) * 100 + 1
    assert not list((tmp_path / "state").glob("*.safetensors")), "the resume state was not removed"
    runner.join(timeout=10)


# -- through the app -----------------------------------------------------------------------

def test_finetune_end_to_end(ft_app, ft_client, cifar_test, tmp_path):
    _, weights = ft_app
    shipped = (weights / f"{SCRATCH_CHECKPOINT}.safetensors").read_bytes()
    job = ft_client.submit(*form(), api_name="/finetune")
    final = job.result(timeout=JOB_TIMEOUT)
    states = [_state(o) for o in job.outputs()]
    steps = [s["step"] for s in states]
    assert len(states) >= 3, steps
    assert steps == sorted(steps) and len(set(steps)) >= 3, steps
    state = _state(final)
    assert state["status"] == DONE, state["error"]
    assert state["total_steps"] == 3000 // 16 == state["step"]
    assert state["model_key"] == "ft-e2e"
    assert 0.0 <= state["metrics"]["test_accuracy"] <= 1.0
    assert state["metrics"]["test_images"] == 200
    assert any(s["status"] == RUNNING and s["eta_s"] is not None and s["images_per_s"] > 0
               for s in states)

    # Checkpoint and card, loadable as the registry loads them.
    assert Path(state["checkpoint"]) == (weights / "ft-e2e.safetensors").resolve()
    card = load_card(weights, "ft-e2e")
    assert card["arch"] == "scratch-vit"
    assert card["model_config"] == PRESETS["cifar10-64x2/4"].to_dict()
    assert card["data_config"] == CIFAR10_DATA_CONFIG.to_dict()
    assert card["classes"] == list(CLASSES)
    assert card["recipe"]["lr"] == 1e-3 and card["recipe"]["base"] == "scratch"
    assert card["recipe"]["train_images"] == 3000 and card["recipe"]["batch_size"] == 16
    assert card["metrics"]["test"]["accuracy"] == state["metrics"]["test_accuracy"]
    assert card["date"] and card["training"]["device"] == "CPU"
    load_checkpoint(weights, "ft-e2e")
    assert not [p.name for p in weights.iterdir() if p.name.startswith(".")], "temporary files left"

    # The download: the files the app served are the ones in the weights folder.
    served = {Path(p).name: Path(p) for p in final[4]}
    assert served["ft-e2e.safetensors"].read_bytes() == (weights / "ft-e2e.safetensors").read_bytes()
    assert json.loads(served["ft-e2e.json"].read_text())["name"] == "ft-e2e"

    # The new model is selectable at once in the Classify tab.
    png = tmp_path / "img.png"
    Image.fromarray(cifar_test.x[0].numpy()).save(png)
    left, right, notes = ft_client.predict(handle_file(str(png)), "ft-e2e", api_name="/classify")
    assert left["label"] in CLASSES and not right and "ft-e2e" in notes
    assert (weights / f"{SCRATCH_CHECKPOINT}.safetensors").read_bytes() == shipped

    # A page load (or any client) sees the finished job.
    assert _state(ft_client.predict(api_name="/finetune_status"))["status"] == DONE


def test_stop_refuses_second_start_and_keeps_previous_weights(ft_app, ft_client):
    _, weights = ft_app
    save_tiny_scratch(weights, "ft-prev", seed=1)
    before = {p.name: p.read_bytes() for p in weights.iterdir() if p.is_file()}
    job = ft_client.submit(*form(name="ft-prev", overwrite=True, train_images=8000, epochs=20),
                           api_name="/finetune")
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (job.outputs() and _state(job.outputs()[-1])["step"] >= 3):
            assert time.monotonic() < deadline and not job.done(), "no progress arrived"
            time.sleep(0.1)

        with pytest.raises(Exception, match="already running") as info:
            ft_client.predict(*form(name="another"), api_name="/finetune")
        assert "stop it" in str(info.value)
        status = _state(ft_client.predict(api_name="/finetune_status"))
        assert status["status"] == RUNNING and status["request"]["name"] == "ft-prev"

        stop_at = time.monotonic()
        stopped = ft_client.predict(api_name="/finetune_stop")
        assert _state(stopped)["status"] in ("stopping", CANCELLED)
        final = _state(job.result(timeout=30))
        took = time.monotonic() - stop_at
    finally:
        state = _stop_and_wait(ft_client)
    assert final["status"] == CANCELLED == state["status"]
    assert took < 5, f"stopping took {took:.1f} s"
    assert final["step"] < final["total_steps"] and final["checkpoint"] is None
    assert "nothing was written" in final["log"][-1]
    after = {p.name: p.read_bytes() for p in weights.iterdir() if p.is_file()}
    assert after == before, "the weights folder changed"


def test_invalid_fields_are_refused_with_clear_messages(ft_app, ft_client):
    cases = [
        (form(train_images=-5), "train images must be from 1"),
        (form(lr=0), "learning rate must be in (0, 0.1]"),
        (form(name="../../etc/x"), "is not allowed"),
        (form(batch_size=500, train_images=100), "batch size (500) is larger"),
        (form(base="nope"), "base 'nope' is not a scratch checkpoint"),
        (form(name=SCRATCH_CHECKPOINT), "is the app's own model"),
    ]
    for args, message in cases:
        with pytest.raises(Exception) as info:
            ft_client.predict(*args, api_name="/finetune")
        assert message in str(info.value), str(info.value)
    assert _state(ft_client.predict(api_name="/finetune_status"))["status"] != RUNNING


def test_vit_b16_base_offline_fails_clearly(ft_app, ft_client):
    _, weights = ft_app
    args = form(base="vit-b16", name="vit-b16-offline", train_images=32, batch_size=16,
                freeze_backbone=True, val_images=0, test_images=10)
    with pytest.raises(Exception) as info:
        ft_client.submit(*args, api_name="/finetune").result(timeout=JOB_TIMEOUT)
    text = str(info.value)
    assert "ViT-B/16 base is unavailable" in text and "HF_HUB_OFFLINE=1" in text, text
    assert "network access" in text
    state = _state(ft_client.predict(api_name="/finetune_status"))
    assert state["status"] == "failed" and "pretrained weights" in state["error"]
    assert not (weights / "vit-b16-offline.json").exists()
