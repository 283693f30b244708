"""A visitor's first visit, in a real browser: ``python app.py`` started as a person starts it,
with no CIFAR-10 on the machine and no Hugging Face hub, visited tab by tab at 1280 and 400 px.

- The page's visible text (accordions closed) has no operator words: no environment variable,
  exception class, shell command, file name or server path; no bare "Error".
- Fine-tune: Start is off, with the reason beside it.
- Inside the model: no empty figure box; no label or button over a figure's title; on the
  phone every figure is at least 300 px wide.
- Compare: on the phone every table fits the screen's width; a tap opens the confusion matrix
  at its full size (1.5 times the phone's view at least).
- A photo dropped in Classify is the photo of Attention and Inside the model.
- The server's terminal: no traceback (a refused request is one line), at most one line about
  the hub, and one sentence on what is missing offline and what still works.

Screenshots land in ``artifacts/browser/visitor-*.png`` (gitignored).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from test_browser import PHONE, browser, open_page, open_tab, page_width_overflow, screenshot  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
WIDTHS = [{"width": 1280, "height": 1000}, PHONE]
TABS = ("Classify", "Attention", "Compare", "Fine-tune", "Inside the model")
# What only the person running the server should read: variables, commands, files, exceptions.
OPERATOR_WORDS = re.compile(r"VIT_DEMO_|HF_HUB|HF_HOME|\$[A-Z_]{3,}|hf download|python -m|pip |"
                            r"scripts/|\.safetensors|\.npz|\.json\b|[A-Za-z]+(?:Error|Exception)\b|"
                            r"\bError\b|Traceback|torchvision|huggingface_hub|/tmp/|/home/")
START_S = 180  # importing torch and gradio on a busy CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``python app.py`` with an empty home (no CIFAR-10, no Hugging Face cache) and the hub
    off; yields (url, the file its terminal output goes to)."""
    home = tmp_path_factory.mktemp("bare-home")
    log_path = home / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIT_DEMO_", "HF_"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", VIT_DEMO_DOWNLOAD_DATA="1", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(1)
        yield url, log_path
    finally:
        server.terminate()
        server.wait(30)


def visible_text(page) -> str:
    return page.locator("body").inner_text()


def assert_plain(page, where: str) -> None:
    found = OPERATOR_WORDS.findall(visible_text(page))
    assert not found, (where, found, visible_text(page))


def photo(tmp_path: Path) -> Path:
    """A drawn (not CIFAR-10) picture: a yellow sun on a blue sky."""
    path = tmp_path / "visitor-photo.png"
    img = Image.new("RGB", (200, 150), (90, 140, 220))
    img.paste((250, 220, 60), (70, 40, 130, 100))
    img.save(path)
    return path


@pytest.mark.parametrize("viewport", WIDTHS, ids=["1280", "400"])
def test_a_visitor_meets_plain_words_and_only_what_can_run(browser, bare_server, viewport,
                                                           tmp_path):
    url, _ = bare_server
    phone = viewport["width"] <= PHONE["width"]
    context, page = open_page(browser, url, viewport)
    name = f"visitor-{viewport['width']}"
    try:
        page.locator("#model-status .model-badge").first.wait_for()
        for tab in TABS:
            panel = open_tab(page, tab)
            page.wait_for_timeout(500)
            assert_plain(page, tab)
            assert page_width_overflow(page) <= 0, tab

        panel = open_tab(page, "Classify")  # a refused request: a toast in plain words
        panel.get_by_role("button", name="Classify").click()
        page.get_by_test_id("toast-body").filter(has_text="Add an image first").wait_for()

        panel = open_tab(page, "Fine-tune")
        start = panel.locator("#finetune-start")
        assert start.is_disabled()
        reason = panel.locator("#finetune-start-reason")
        assert "CIFAR-10 is not on this server" in reason.inner_text()
        for empty in ("loss", "accuracy", "log", "files"):  # no job yet: no empty boxes
            assert not panel.locator(f"#finetune-{empty}").is_visible(), empty
        screenshot(page, f"{name}-finetune")

        picture = photo(tmp_path)
        panel = open_tab(page, "Classify")
        panel.locator("input[type=file]").first.set_input_files(str(picture))
        panel.locator(f"img[src*='{picture.name}']").first.wait_for(state="attached")
        for tab in ("Attention", "Inside the model"):  # the photo carried over
            open_tab(page, tab).locator(f"img[src*='{picture.name}']").first.wait_for(
                state="attached")

        panel = open_tab(page, "Inside the model")
        figures = panel.locator(".inside-figure").filter(visible=True)
        figures.first.scroll_into_view_if_needed()  # the page loads images as they come near
        figures.first.locator("img").wait_for()
        page.wait_for_function("[...document.querySelectorAll('.inside-figure')]"
                               ".filter(f => f.offsetParent).length === 3")  # one model: three
        screenshot(page, f"{name}-inside")
        for i in range(figures.count()):
            figure = figures.nth(i)
            img = figure.locator("img")
            assert img.count() == 1 and img.get_attribute("src"), i  # no empty box
            assert figure.get_by_test_id("block-label").filter(visible=True).count() == 0
            # its buttons sit above the picture (whose top holds the title), not over it
            picture_top = img.evaluate("i => i.getBoundingClientRect().top + "
                                       "parseFloat(getComputedStyle(i).paddingTop)")
            buttons = figure.locator(".icon-button").filter(visible=True).all()
            assert buttons, i
            for button in buttons:
                box = button.bounding_box()
                assert box["y"] + box["height"] <= picture_top + 1, (i, box, picture_top)
            if phone:
                assert img.bounding_box()["width"] >= 300, i
        assert_plain(page, "Inside the model, drawn")

        panel = open_tab(page, "Compare")
        panel.locator("#compare-summary table").wait_for()
        screenshot(page, f"{name}-compare")
        for table in panel.locator("table").all():
            box = table.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], box
        # a tap opens the confusion matrix at its full size; a tap beside it closes it
        matrix = panel.locator("#compare-figures img").first
        shown = matrix.evaluate("i => [i.clientWidth, i.naturalWidth]")
        matrix.click()
        assert matrix.evaluate("i => i.clientWidth") == shown[1] > shown[0] * (1.5 if phone else 0)
        screenshot(page, f"{name}-confusion-open")
        page.mouse.click(5, viewport["height"] - 5)
        assert matrix.evaluate("i => i.clientWidth") == shown[0]
    finally:
        screenshot(page, name)
        context.close()


def test_the_terminal_is_quiet(bare_server, browser):
    """After the visits above: no traceback, at most one line about the hub, the model loads
    and the refused requests one line each."""
    _, log_path = bare_server
    text = log_path.read_text()
    assert "Traceback" not in text, text
    assert len([line for line in text.splitlines() if re.search(r"\bhub\b", line, re.I)]) <= 1, text
    assert "Scratch ViT (CIFAR-10): ready" in text and "ViT-B/16" in text
    assert "refused: Add an image first" in text, text
    assert ("Offline: CIFAR-10 (the example images and the fine-tune tab) and ViT-B/16 are "
            "missing; the scratch ViT works on your own photos") in text, text


def test_inside_side_by_side_stacks_on_a_phone(browser, vitb16_app, monkeypatch):
    """Both models ready: Inside shows both by default; on a 400 px phone the two columns
    stack (each model's figure under the other's), every figure at least 300 px wide."""
    from vit_demo.registry import ModelKind
    from vit_demo.ui import inside as inside_tab

    monkeypatch.setitem(inside_tab.DISTANCE_IMAGES, ModelKind.TIMM, 2)  # seconds, not minutes
    context, page = open_page(browser, vitb16_app[0], PHONE)
    try:
        panel = open_tab(page, "Inside the model")
        # Fig. 7's model choice, below the walkthrough's
        assert panel.get_by_label("Model").last.input_value().endswith("side by side")
        panel.locator("#inside-filters-left").scroll_into_view_if_needed()  # images load when near
        page.wait_for_function("[...document.querySelectorAll('.inside-figure img')]"
                               ".filter(i => i.offsetParent && i.complete).length === 6")
        screenshot(page, "visitor-400-inside-both")
        for name in ("filters", "positions", "distance"):
            left = panel.locator(f"#inside-{name}-left img").bounding_box()
            right = panel.locator(f"#inside-{name}-right img").bounding_box()
            assert left["width"] >= 300 and right["width"] >= 300, name
            assert right["y"] >= left["y"] + left["height"], name  # stacked, not side by side
        assert page_width_overflow(page) <= 0
    finally:
        context.close()
