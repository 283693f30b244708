"""Small ways one visitor could trouble the server, through a launched app: a malformed session
id, an example index past the examples, a private example event that took any upload, fine-tune
errors that named the server's exception classes and paths, a finished checkpoint hashed anew
on every status call."""

from __future__ import annotations

import inspect
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client.exceptions import AppError

from vit_demo.finetune.job import BUG
from vit_demo.notices import notice_of
from vit_demo.ui import cache_budget
from vit_demo.ui.limits import BAD_SESSION, client_address, queued_events

pytestmark = pytest.mark.usefixtures("one_thread")


def config(url: str) -> dict:
    return httpx.get(f"{url}config", timeout=30).json()


def fn_index(url: str, api_name: str) -> int:
    return next(i for i, d in enumerate(config(url)["dependencies"]) if d.get("api_name") == api_name)


@pytest.mark.parametrize("session", ["", "a" * 65, "../x", 7])
def test_a_malformed_session_id_is_refused_not_a_server_error(app, session):
    url, _ = app
    answer = httpx.post(f"{url}gradio_api/queue/join", timeout=30,
                        json={"data": [], "fn_index": fn_index(url, "status"),
                              "session_hash": session})
    assert answer.status_code == 400 and answer.json() == {"detail": BAD_SESSION}


def test_an_example_index_past_the_examples_is_a_clear_error(app, client):
    url, ctx = app
    count = len(ctx.gallery.paths)
    for index in (count, 10_000, -1):
        with pytest.raises(AppError, match=f"There is no example {index}: choose 0 to {count - 1}"):
            client.predict(index, api_name="/classify_example")
    shown = client.predict(count - 1, api_name="/classify_example")  # the image's update
    assert Path(shown["value"]).read_bytes() == ctx.gallery.paths[count - 1].read_bytes()


def test_every_queued_event_that_reads_an_image_runs_in_a_shared_limit(app):
    """No event takes an upload outside the inference (or heavy) group: the one that showed an
    example (`/classify_example_1`) took any image; it now takes the example's index."""
    import gradio as gr

    from vit_demo.ui import build_demo

    demo = build_demo(app[1])
    assert "classify_example_1" not in [fn.api_name for fn in demo.fns.values()]
    image_events = [fn for fn in demo.fns.values() if fn.queue
                    and any(isinstance(block, gr.Image) for block in fn.inputs)]
    assert {fn.api_name for fn in image_events} >= {"classify", "rollout", "inside"}
    for fn in image_events:
        assert fn.concurrency_id in ("inference", "heavy"), fn.api_name
    groups = {fn.api_name: fn.concurrency_id for fn in image_events}
    assert groups["classify"] == "inference" and groups["rollout"] == groups["inside"] == "heavy"


def test_failures_show_no_exception_class_nor_server_path():
    assert notice_of(OSError(28, "No space left on device"), BUG).visitor == BUG
    shown = notice_of(ValueError('cannot read "/srv/app/finetuned/cat-1a2b3c.safetensors" '
                                 "nor C:\\data\\x.json"), BUG).visitor
    assert shown == 'cannot read "cat-1a2b3c.safetensors" nor x.json'


@pytest.fixture(scope="module")
def job_app(tiny_weights, data_dir, tmp_path_factory):
    """An app of its own for fine-tune jobs. Yields (client, context, demo)."""
    from gradio_client import Client

    from vit_demo.ui import build_demo, create_context, serve_locally

    ctx = create_context(tiny_weights, data_dir, allow_hub=False,
                         finetune_dir=tmp_path_factory.mktemp("fair-finetuned"))
    demo = build_demo(ctx)
    client = Client(serve_locally(demo, ctx), verbose=False)
    yield client, ctx, demo
    client.close()
    demo.close()


def test_a_failed_job_says_so_without_the_server_s_words(job_app, monkeypatch):
    from vit_demo.finetune import job as job_module

    client, ctx, demo = job_app

    def full_disk(path, tensors):
        raise OSError(28, f"No space left on device: '{path}'")

    monkeypatch.setattr(job_module, "save_tensors", full_disk)
    with pytest.raises(AppError, match="The job stopped on an error in the server"):
        client.predict("scratch", 32, 1, 0, 16, 1e-3, False, 0, "disk", 0, 10,
                       api_name="/finetune")
    state = client.predict(api_name="/finetune_status")[5]
    assert state["status"] == "failed" and state["error"] == BUG
    text = str(state)
    assert "OSError" not in text and str(ctx.store.folder) not in text and "/tmp/" not in text


def test_a_finished_checkpoint_is_hashed_once_not_on_every_status_call(tmp_path, monkeypatch):
    from gradio import processing_utils

    hashed = []
    real = processing_utils.hash_file
    monkeypatch.setattr(processing_utils, "hash_file", lambda p, *a, **k: hashed.append(p) or real(p, *a, **k))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(4096))
    first = cache_budget.served_copy(weights)
    assert [cache_budget.served_copy(weights) for _ in range(5)] == [first] * 5
    assert len(hashed) == 1 and Path(first).read_bytes() == weights.read_bytes()
    os.remove(first)  # the cache let it go: copied again
    assert Path(cache_budget.served_copy(weights)).read_bytes() == weights.read_bytes()
    assert len(hashed) == 2


def test_a_client_is_its_connection_or_the_proxy_s_last_forwarded_address():
    assert client_address("10.0.0.5", "6.6.6.6", behind_proxy=False) == "10.0.0.5"
    assert client_address("10.0.0.5", "6.6.6.6, 1.2.3.4", behind_proxy=True) == "1.2.3.4"
    assert client_address("10.0.0.5", None, behind_proxy=True) == "10.0.0.5"


def test_pages_watch_a_job_by_polling_outside_the_queue(job_app):
    """While a job runs, fifty page loads and polls (the events a page fires, sent as the page
    sends them) are answered at once with the running job, and hold none of the queue's
    workers: only the starter's own stream does. The only streaming event is /finetune."""
    client, ctx, demo = job_app
    streams = [fn.api_name for fn in demo.fns.values() if fn.inputs is not None
               and (fn.fn is not None and inspect.isasyncgenfunction(fn.fn))]
    assert streams == ["finetune"]
    url = client.src
    cfg = config(url)
    polls = [i for i, d in enumerate(cfg["dependencies"])
             if d["queue"] is False and len(d["outputs"]) == 7
             and any(t[1] in ("load", "tick") for t in d["targets"])]
    assert len(polls) == 2  # on page load, and the page's timer
    job = client.submit("scratch", 3000, 1, 600, 16, 1e-3, False, 0, "watched", 0, 10,
                        api_name="/finetune")
    try:
        deadline = time.monotonic() + 60
        while client.predict(api_name="/finetune_status")[5]["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with httpx.Client(timeout=30) as http, ThreadPoolExecutor(10) as pool:
            def page(i: int) -> dict:
                answer = http.post(f"{url}gradio_api/run/predict", json={
                    "fn_index": polls[i % 2], "data": [], "session_hash": f"page{i}"})
                assert answer.status_code == 200, answer.text
                return answer.json()["data"]

            for data in pool.map(page, range(50)):
                assert data[5]["status"] == "running" and data[6]["active"] is True
        assert sum(1 for running in demo._queue.active_jobs if running) <= 1
    finally:
        client.predict(api_name="/finetune_stop")
        job.result(timeout=120)



def test_one_client_may_have_only_so_many_requests_in_flight(tiny_weights, data_dir, monkeypatch):
    """Behind a proxy (as on a Space) a client is the last X-Forwarded-For address: with two
    slow requests in flight its third is refused (429) at once, whatever it puts in front in
    the header, while another client's request is answered."""
    from gradio_client import Client

    from vit_demo.settings import Settings
    from vit_demo.ui import build_demo, classify, create_context, serve_locally
    from vit_demo.ui.limits import PROXY_ENV

    def slow(ctx, image, choice):
        time.sleep(4)
        return None, None, "slow"

    monkeypatch.setattr(classify, "classify", slow)
    monkeypatch.setenv(PROXY_ENV, "1")
    ctx = create_context(tiny_weights, data_dir, allow_hub=False,
                         settings=Settings(client_requests=2))
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    flooder = Client(url, verbose=False, headers={"X-Forwarded-For": "1.1.1.1"})
    bystander = Client(url, verbose=False, headers={"X-Forwarded-For": "2.2.2.2"})
    try:
        jobs = [flooder.submit(None, "scratch", api_name="/classify") for _ in range(2)]
        deadline = time.monotonic() + 30
        while sum(1 for _ in queued_events(demo)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        index = fn_index(url, "classify")
        for forwarded in ("1.1.1.1", "2.2.2.2, 1.1.1.1"):  # a spoofed front entry changes nothing
            answer = httpx.post(f"{url}gradio_api/queue/join", timeout=30,
                                headers={"X-Forwarded-For": forwarded},
                                json={"data": [None, "scratch"], "fn_index": index,
                                      "session_hash": "flood3"})
            assert answer.status_code == 429 and "2 requests waiting or running" in answer.text
        upload = httpx.post(f"{url}gradio_api/upload", headers={"X-Forwarded-For": "1.1.1.1"},
                            files={"files": ("x.png", b"x" * 100)}, timeout=30)
        assert upload.status_code == 429  # nor may it fill the cache meanwhile
        assert bystander.predict(None, "scratch", api_name="/classify")[2] == "slow"
        assert [job.result(timeout=60)[2] for job in jobs] == ["slow", "slow"]
    finally:
        flooder.close()
        bystander.close()
        demo.close()



def test_the_server_keeps_the_state_of_so_many_pages(tiny_weights, data_dir):
    """Each new session id costs Gradio a copy of the page's state (about 250 KB): beyond
    ``sessions`` the least recently used are forgotten, however many ids a client makes up."""
    from vit_demo.settings import Settings
    from vit_demo.ui import build_demo, create_context, serve_locally

    ctx = create_context(tiny_weights, data_dir, allow_hub=False, settings=Settings(sessions=5))
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    try:
        index = fn_index(url, "status")
        with httpx.Client(timeout=30) as http:
            for i in range(30):
                answer = http.post(f"{url}gradio_api/run/predict", json={
                    "fn_index": index, "data": [], "session_hash": f"made-up-{i}"})
                assert answer.status_code == 200, answer.text
        assert 0 < len(demo.state_holder.session_data) <= 5
    finally:
        demo.close()
