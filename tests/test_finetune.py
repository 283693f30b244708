"""The fine-tune job: request validation, the runner (resume after Stop, stops in every
phase, the budget, the cap), and the tab end to end through a launched app with gradio_client,
on CIFAR-10 images and a tiny scratch model.

Everything runs offline on the CPU in seconds; every wait has a deadline so that a hang fails.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from conftest import save_tiny_scratch
from vit_demo.adapters import ModelKind
from vit_demo.card import Metrics, ModelCard, read_card
from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES
from vit_demo.finetune import job as job_module
from vit_demo.finetune import runner as runner_module
from vit_demo.finetune.request import FinetuneRequest, InvalidRequest
from vit_demo.finetune.runner import CANCELLED, DONE, RUNNING, TESTING, JobRunner, NotYourJob
from vit_demo.finetune.store import FinetuneStore
from vit_demo.model import PRESETS
from vit_demo.registry import SCRATCH_CHECKPOINT, Registry, load_checkpoint
from vit_demo.settings import Settings
from vit_demo.train import confusion_matrix

JOB_TIMEOUT = 120  # seconds for any one job through the app
FIELDS = ("base", "train_images", "epochs", "steps", "batch_size", "lr", "freeze_backbone",
          "seed", "name", "val_images", "test_images")


def form(**changes) -> dict:
    """The /finetune arguments by name: a tiny scratch job unless changed."""
    return {"base": "scratch", "train_images": 3000, "epochs": 1, "steps": 0, "batch_size": 16,
            "lr": 1e-3, "freeze_backbone": False, "seed": 0, "name": "ft-e2e",
            "val_images": 200, "test_images": 200, **changes}


def _state(outputs: tuple | list) -> dict:
    """The JSON state among a tab output tuple."""
    return outputs[5]


@pytest.fixture(scope="module")
def ft_app(tmp_path_factory, data_dir):
    """An app of its own (its own weights folder, fine-tune folder and job runner), with the
    tiny scratch model as the shipped checkpoint. Yields (url, weights_dir, context)."""
    from vit_demo.ui import build_demo, create_context, serve_locally

    weights = tmp_path_factory.mktemp("ft-weights")
    save_tiny_scratch(weights, SCRATCH_CHECKPOINT)
    ctx = create_context(weights, data_dir, allow_hub=True,
                         finetune_dir=tmp_path_factory.mktemp("ft-finetuned"))
    demo = build_demo(ctx)
    yield serve_locally(demo, ctx), weights, ctx
    demo.close()


@pytest.fixture(scope="module")
def ft_client(ft_app, tmp_path_factory):
    c = Client(ft_app[0], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    yield c
    c.close()


def _stop_and_wait(client: Client, timeout: float = 30) -> dict:
    """Stop whatever this client runs and wait until no job is active; the final state."""
    state = _state(client.predict(api_name="/finetune_stop"))
    deadline = time.monotonic() + timeout
    while state["status"] in ("starting", "running", "stopping", "saving", "testing"):
        assert time.monotonic() < deadline, f"the job did not end: {state}"
        time.sleep(0.2)
        state = _state(client.predict(api_name="/finetune_status"))
    return state


def _runner(tmp_path: Path, data_dir, **settings) -> JobRunner:
    weights = tmp_path / "weights"
    save_tiny_scratch(weights, SCRATCH_CHECKPOINT)
    finetuned = tmp_path / "finetuned"
    registry = Registry(weights, allow_hub=False, finetune_dir=finetuned)
    settings = Settings(**settings)
    return JobRunner(registry, FinetuneStore(finetuned, settings.keep_finetuned), data_dir,
                     settings, state_dir=tmp_path / "state")


def _wait_for(runner: JobRunner, condition, what: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT
    while not condition(runner.snapshot()):
        state = runner.snapshot()
        assert time.monotonic() < deadline and state.active, (what, state.status, state.error)
        time.sleep(0.005)


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
    ({"name": "both"}, "is a model key of the app"),
    ({"name": "x" * 41}, "is not allowed: use up to 40"),
    ({"base": ""}, "base must be"),
    ({"base": "x/../y"}, "is not a model key"),
    ({"freeze_backbone": "yes"}, "freeze backbone must be true or false"),
])
def test_request_refuses_invalid_fields(changes, message):
    with pytest.raises(InvalidRequest) as info:
        FinetuneRequest(**form(**changes))
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


def test_runner_check_refuses_unknown_bases_and_jobs_over_the_budget(tmp_path, data_dir):
    runner = _runner(tmp_path, data_dir, max_job_s=600)
    assert runner.check(FinetuneRequest()) < 600
    with pytest.raises(InvalidRequest, match="base 'missing' is not a model of this app"):
        runner.check(FinetuneRequest(base="missing"))
    day = FinetuneRequest(train_images=45_000, epochs=100, batch_size=1024)
    with pytest.raises(InvalidRequest, match=r"about [\d,]+ s here; a job may take at most 600 s"):
        runner.check(day)


def test_runner_stop_keeps_resume_state_and_restart_resumes(tmp_path, data_dir):
    runner = _runner(tmp_path, data_dir)
    request = FinetuneRequest(train_images=400, batch_size=16, steps=400, lr=1e-3, name="resumed",
                              val_images=0, test_images=50)
    assert request.train_config().checkpoint_every == 100
    runner.start(request, owner="me")
    _wait_for(runner, lambda s: s.step >= 110, "step 110")
    runner.stop(owner="me")
    state = runner.wait(timeout=30)
    assert state.status == CANCELLED, state.error
    stopped = state.step
    assert 110 <= stopped < 400
    assert list((tmp_path / "state").glob("*.safetensors")), "the resume state was not kept"
    assert not list((tmp_path / "finetuned").glob("*")), "a stopped job wrote a model"
    runner.start(request, owner="me")
    state = runner.wait(timeout=JOB_TIMEOUT)
    assert state.status == DONE, state.error
    resumed = [line for line in state.log if "resumed at step" in line]
    assert resumed and f"resumed at step {(stopped // 100) * 100}" in resumed[0]
    assert state.history[0]["step"] == (stopped // 100) * 100 + 1
    assert not list((tmp_path / "state").glob("*.safetensors")), "the resume state was not removed"
    assert state.model_key.startswith("resumed-") and runner.registry.get(state.model_key)
    runner.join(timeout=10)


def test_evaluation_sees_a_stop_between_batches(cifar_test):
    class StopsAfterOneBatch(torch.nn.Module):
        def forward(self, x):
            cancel.set()
            return torch.zeros(len(x), 10)

    import threading

    cancel = threading.Event()
    confusion = confusion_matrix(StopsAfterOneBatch(), cifar_test.subset(torch.arange(100)),
                                 CIFAR10_DATA_CONFIG, torch.device("cpu"), batch_size=10,
                                 cancel=cancel)
    assert confusion.sum() == 10


@pytest.fixture()
def slow_batches(monkeypatch):
    """Evaluate 10 images a batch, so that each phase lasts long enough to be stopped in."""
    monkeypatch.setattr(job_module, "eval_batch_size", lambda kind, device: 10)


@pytest.mark.parametrize("phase", ["validation", "training", "test"])
def test_stop_lands_within_seconds_in_every_phase(tmp_path, data_dir, slow_batches, phase):
    runner = _runner(tmp_path, data_dir)
    request = FinetuneRequest(train_images=2000, batch_size=16, epochs=5, val_images=5000,
                              test_images=10_000, name="phases")
    runner.start(request, owner="me")
    if phase == "validation":  # the validation before the first step
        _wait_for(runner, lambda s: s.status == RUNNING, "running")
        assert not runner.snapshot().history
    elif phase == "training":
        _wait_for(runner, lambda s: s.step >= 5, "step 5")
    else:
        _wait_for(runner, lambda s: s.status == TESTING, "testing")
    asked = time.monotonic()
    runner.stop(owner="me")
    state = runner.wait(timeout=30)
    took = time.monotonic() - asked
    assert took < 3.0, f"stopping in {phase} took {took:.2f} s"
    if phase == "test":  # trained already: the model is kept, untested
        assert state.status == DONE and state.metrics is None
        assert "stopped during the test: the model is kept" in state.log[-1]
        _, _, _, card = load_checkpoint(runner.store.folder, state.model_key)
        assert card.metrics == Metrics() and card.recipe.train_images == 2000
    else:
        assert state.status == CANCELLED and not list(runner.store.folder.glob("*"))


def test_only_the_starting_session_may_stop(tmp_path, data_dir):
    runner = _runner(tmp_path, data_dir)
    runner.start(FinetuneRequest(train_images=2000, batch_size=16, epochs=3, name="mine"),
                 owner="alice")
    _wait_for(runner, lambda s: s.step >= 1, "step 1")
    with pytest.raises(NotYourJob, match="started by another visitor"):
        runner.stop(owner="mallory")
    assert runner.snapshot().status == RUNNING
    runner.stop(owner="alice")
    assert runner.wait(timeout=30).status == CANCELLED


def test_budget_is_enforced_while_running(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(runner_module, "estimate_s", lambda request, device, setup=True: 0.0)
    monkeypatch.setattr(runner_module, "WARMUP_STEPS", 10 ** 9)  # no projection: the timer
    runner = _runner(tmp_path, data_dir, max_job_s=2)
    started = time.monotonic()
    runner.start(FinetuneRequest(train_images=8000, batch_size=16, epochs=50, name="long"),
                 owner="me")
    state = runner.wait(timeout=30)
    assert state.status == CANCELLED and time.monotonic() - started < 6
    assert any("reached its budget of 2 s" in line for line in state.log)
    assert "stopped at its time budget" in state.log[-1]


def test_the_projected_end_counts_what_is_done_and_every_evaluation_to_come():
    from vit_demo.finetune.policy import projected_s

    request = FinetuneRequest(train_images=3000, epochs=3, batch_size=16, val_images=200,
                              test_images=500)
    # 1.4 epochs done: validations at the ends of epochs 2 and 3 to come, then the test
    assert projected_s(40.0, 100.0, request, 1.4, 50.0) == pytest.approx(40 + 100 + (2 * 200 + 500) / 50)
    no_val = FinetuneRequest(train_images=3000, epochs=3, batch_size=16, val_images=0,
                             test_images=500)
    assert projected_s(0.0, 10.0, no_val, 0.0, 100.0) == pytest.approx(10 + 5)


def test_a_job_whose_measured_speed_overruns_its_budget_stops_after_the_warm_up(
        tmp_path, data_dir, monkeypatch):
    """The estimate before the start is rough; after a few timed steps the job's end is
    projected from the speed measured here, and a job that would overrun is stopped then,
    saying the measured rate, instead of at the budget with nothing kept."""
    monkeypatch.setattr(runner_module, "estimate_s", lambda request, device, setup=True: 0.0)
    runner = _runner(tmp_path, data_dir, max_job_s=30)
    started = time.monotonic()
    runner.start(FinetuneRequest(train_images=8000, batch_size=16, epochs=50, val_images=200,
                                 name="too-long"), owner="me")
    state = runner.wait(timeout=60)
    assert state.status == "failed" and time.monotonic() - started < 25, state.log
    assert "images/s measured here" in state.error and "over its budget of 30 s" in state.error
    assert state.step == 1 + runner_module.WARMUP_STEPS
    assert not list(runner.store.folder.glob("too-long*"))


def test_the_cap_holds_after_ten_jobs(tmp_path, data_dir):
    runner = _runner(tmp_path, data_dir, keep_finetuned=3)
    keys = []
    for i in range(10):
        runner.start(FinetuneRequest(train_images=16, batch_size=16, steps=1, val_images=0,
                                     test_images=10, seed=i, name="cap"), owner="me")
        state = runner.wait(timeout=JOB_TIMEOUT)
        assert state.status == DONE, state.error
        keys.append(state.model_key)
        runner.registry.get(state.model_key)
    assert len(set(keys)) == 10
    assert runner.registry.finetuned() == sorted(keys[-3:])
    assert sorted(p.name for p in runner.store.folder.iterdir()) == sorted(
        f"{k}{suffix}" for k in keys[-3:] for suffix in (".json", ".safetensors"))
    assert set(runner.registry._loaded) == set(keys[-3:]), "evicted models stay in memory"
    assert any("removed the oldest fine-tuned model" in line for line in state.log)


# -- through the app -----------------------------------------------------------------------

def test_finetune_end_to_end(ft_app, ft_client, cifar_test, tmp_path):
    _, weights, ctx = ft_app
    shipped = {p.name: p.read_bytes() for p in weights.iterdir()}
    job = ft_client.submit(**form(), api_name="/finetune")
    final = job.result(timeout=JOB_TIMEOUT)
    states = [_state(o) for o in job.outputs()]
    steps = [s["step"] for s in states]
    assert len(states) >= 3, steps
    assert steps == sorted(steps) and len(set(steps)) >= 3, steps
    state = _state(final)
    assert state["status"] == DONE, state["error"]
    assert state["total_steps"] == 3000 // 16 == state["step"]
    key = state["model_key"]
    assert key.startswith("ft-e2e-") and len(key) == len("ft-e2e-") + 6
    assert 0.0 <= state["metrics"]["test_accuracy"] <= 1.0
    assert state["metrics"]["test_images"] == 200
    assert any(s["status"] == RUNNING and s["eta_s"] is not None and s["images_per_s"] > 0
               for s in states)
    assert "owner" not in state

    # Checkpoint and card in the fine-tune folder, loadable as the registry loads them.
    folder = ctx.store.folder
    card = read_card(folder, key)
    assert card.kind is ModelKind.SCRATCH
    assert card.model_config == PRESETS["cifar10-64x2/4"]
    assert card.data_config == CIFAR10_DATA_CONFIG
    assert card.classes == CLASSES
    assert card.recipe.config.lr == 1e-3 and card.recipe.base == "scratch"
    assert card.recipe.train_images == 3000 and card.recipe.config.batch_size == 16
    assert card.metrics.test.accuracy == state["metrics"]["test_accuracy"]
    assert card.date and card.training.device == "CPU"
    load_checkpoint(folder, key)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left"

    # The download: the files the app served are the ones it wrote.
    served = {Path(p).name: Path(p) for p in final[4]}
    assert served[f"{key}.safetensors"].read_bytes() == (folder / f"{key}.safetensors").read_bytes()
    assert ModelCard.from_json(served[f"{key}.json"].read_text()).name == key

    # The new model is selectable at once in the Classify tab; the shipped files are untouched.
    png = tmp_path / "img.png"
    Image.fromarray(cifar_test.x[0].numpy()).save(png)
    left, right, notes = ft_client.predict(handle_file(str(png)), key, api_name="/classify")
    assert left["label"] in CLASSES and not right and key in notes
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == shipped

    # A page load (or any client) sees the finished job.
    assert _state(ft_client.predict(api_name="/finetune_status"))["status"] == DONE


def test_second_start_is_refused_and_other_sessions_cannot_stop(ft_app, ft_client):
    _, weights, ctx = ft_app
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    job = ft_client.submit(**form(name="ft-prev", train_images=3000, epochs=4),
                           api_name="/finetune")
    other = Client(ft_app[0], verbose=False)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (job.outputs() and _state(job.outputs()[-1])["step"] >= 3):
            assert time.monotonic() < deadline and not job.done(), "no progress arrived"
            time.sleep(0.1)

        with pytest.raises(Exception, match="already running") as info:
            other.predict(**form(name="another"), api_name="/finetune")
        assert "stop it" in str(info.value)
        with pytest.raises(Exception, match="started by another visitor"):
            other.predict(api_name="/finetune_stop")
        status = _state(other.predict(api_name="/finetune_status"))
        assert status["status"] == RUNNING and status["request"]["name"] == "ft-prev"

        stop_at = time.monotonic()
        stopped = ft_client.predict(api_name="/finetune_stop")
        assert _state(stopped)["status"] in ("stopping", CANCELLED)
        final = _state(job.result(timeout=30))
        took = time.monotonic() - stop_at
    finally:
        state = _stop_and_wait(ft_client)
        other.close()
    assert final["status"] == CANCELLED == state["status"]
    assert took < 5, f"stopping took {took:.1f} s"
    assert final["step"] < final["total_steps"] and final["model_key"] is None
    assert "no model was written" in final["log"][-1]
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before


def test_invalid_fields_are_refused_with_clear_messages(ft_app, ft_client):
    cases = [
        (form(train_images=-5), "train images must be from 1"),
        (form(train_images="many"), "train images must be a whole number from 1 to 45,000 (got 'many')"),
        (form(lr=0), "learning rate must be in (0, 0.1]"),
        (form(name="../../etc/x"), "is not allowed"),
        (form(name="vit-b16"), "is a model key of the app"),
        (form(batch_size=500, train_images=100), "batch size (500) is larger"),
        (form(base="nope"), "base 'nope' is not a model of this app"),
        (form(train_images=45_000, epochs=100, batch_size=1024), "a job may take at most 600 s"),
    ]
    for args, message in cases:
        with pytest.raises(Exception) as info:
            ft_client.predict(**args, api_name="/finetune")
        assert message in str(info.value), str(info.value)
    assert _state(ft_client.predict(api_name="/finetune_status"))["status"] != RUNNING


def test_optional_parameters_take_the_form_defaults(ft_app, ft_client):
    params = {p["parameter_name"]: p for p in
              ft_client.view_api(print_info=False, return_format="dict")
              ["named_endpoints"]["/finetune"]["parameters"]}
    assert list(params) == list(FIELDS)
    assert all(p["parameter_has_default"] for p in params.values())


def test_vit_b16_base_offline_is_refused_before_it_starts(ft_app, ft_client):
    """Hub off and the base not cached: no job starts (nothing to fail later on every page)."""
    before = _state(ft_client.predict(api_name="/finetune_status"))
    args = form(base="vit-b16", name="vit-b16-offline", train_images=32, batch_size=16,
                freeze_backbone=True, val_images=0, test_images=10)
    with pytest.raises(Exception) as info:
        ft_client.submit(**args, api_name="/finetune").result(timeout=JOB_TIMEOUT)
    text = str(info.value)
    assert "ViT-B/16's pretrained weights are not on this server" in text, text
    assert "HF_HUB_OFFLINE" not in text and "VIT_DEMO" not in text  # the operator's words stay in the log
    after = _state(ft_client.predict(api_name="/finetune_status"))
    assert after["id"] == before["id"] and after["status"] == before["status"]
    assert not list(ft_app[2].store.folder.glob("vit-b16-offline*"))


def test_vit_b16_base_offline_tells_the_visitor_and_the_operator_apart():
    from vit_demo.finetune.job import JobError, build_base
    from vit_demo.finetune.request import FinetuneRequest

    request = FinetuneRequest(base="vit-b16", train_images=32, batch_size=16, freeze_backbone=True,
                              val_images=0, test_images=10, name="offline")
    with pytest.raises(JobError) as info:
        build_base(request, None)
    assert "HF_HUB_OFFLINE=1" in str(info.value) and "VIT_DEMO_FINETUNE_BASE" in str(info.value)
    assert info.value.visitor.startswith("ViT-B/16's pretrained weights are not on this server")
    assert "HF_" not in info.value.visitor and "VIT_DEMO" not in info.value.visitor


def test_the_tab_turns_start_off_while_the_data_is_missing(tmp_path, data_dir, monkeypatch):
    from types import SimpleNamespace

    from vit_demo.examples import ExampleGallery
    from vit_demo.ui.finetune import operator_note, readiness

    no_download = ExampleGallery(tmp_path / "examples")
    assert readiness(SimpleNamespace(data_dir=data_dir, gallery=no_download), "scratch") == ""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no torchvision archive either
    missing = SimpleNamespace(data_dir=str(tmp_path / "empty"), gallery=no_download)
    text = readiness(missing, "scratch")
    assert text == "Start is off: CIFAR-10 is not on this server, and a job trains and tests on it."
    detail = operator_note(missing)  # the operator's accordion: which files, which variable
    assert "CIFAR-10 (train) is not available" in detail and "CIFAR-10 (test)" in detail
    assert "VIT_DEMO_DATA_DIR" in detail and str(tmp_path) not in detail


def test_a_failed_job_is_red_only_on_the_page_that_started_it():
    from vit_demo.finetune.runner import FAILED, STARTING, JobState
    from vit_demo.ui.finetune import progress_html

    failed = JobState(id=3, status=FAILED, error="CIFAR-10 is not on this server",
                      request={"base": "scratch", "name": "x"}, device="cpu", owner="me")
    mine, others = progress_html(failed, mine=True), progress_html(failed, mine=False)
    assert "#b91c1c" in mine and "CIFAR-10 is not on this server" in mine and "failed" in mine
    assert "#b91c1c" not in others and "not on this server" not in others
    assert "failed" not in others and "<b>ended</b>" in others
    starting = JobState(id=4, status=STARTING, request={"base": "vit-b16", "name": "y"},
                        device="cpu", log=["12:00:00 getting ViT-B/16's pretrained weights"])
    assert "getting ViT-B/16&#x27;s pretrained weights..." in progress_html(starting)
