"""End to end in a real browser: Playwright drives Debian's chromium against the launched app.

The classify tab gets a CIFAR-10 test image through its file input, and the top label the page
shows must be the one the model gives when called directly. Screenshots of every step land in
``artifacts/browser/`` (gitignored; CI can keep them). Chromium: ``$VIT_DEMO_CHROMIUM``, else
``chromium`` on the PATH (``scripts/test.sh`` installs Debian's package when it is missing).

To cover another tab, add a test that takes ``page``, calls ``open_tab(page, "Tab name")`` and
finds components with ``block(page, "component label")``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # generous: CI machines may be busy training
LEFT_LABEL = "Scratch ViT / chosen model"  # the classify tab's left gr.Label


def chromium_path() -> str:
    path = os.environ.get("VIT_DEMO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(f"no chromium at {path}: install Debian's package (apt-get install chromium; "
                    "scripts/test.sh does it) or set VIT_DEMO_CHROMIUM")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, app, request) -> Iterator:
    """A fresh page on the app, loaded; its final state is saved as ``<test name>.png``."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(app[0])
    page.get_by_role("button", name="Classify").wait_for()
    yield page
    screenshot(page, request.node.name)
    context.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def block(page, label: str):
    """The component whose label reads exactly ``label`` (Gradio's block-label element sits
    directly inside the component's block)."""
    exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
    return page.get_by_test_id("block-label").filter(has_text=exact).locator("xpath=..")


def upload_image(page, label: str, path: Path) -> None:
    """Put ``path`` into the image input ``label`` and wait until the server has it (the
    preview points at the uploaded copy; a file that is no picture shows a broken one)."""
    image = block(page, label)
    image.locator("input[type=file]").set_input_files(str(path))
    image.locator(f"img[src*='{path.name}']").wait_for(state="attached")


def direct_top_label(model: torch.nn.Module, x: torch.Tensor) -> str:
    """The scratch model's top class for a uint8 (32, 32, 3) image, normalised by hand."""
    mean = torch.tensor(CIFAR10_DATA_CONFIG.mean).view(3, 1, 1)
    std = torch.tensor(CIFAR10_DATA_CONFIG.std).view(3, 1, 1)
    inp = ((x.permute(2, 0, 1).float() / 255 - mean) / std).unsqueeze(0)
    with torch.no_grad():
        return CLASSES[int(model(inp).argmax(-1))]


@pytest.mark.parametrize("index", [0, 1])
def test_classify_tab_shows_the_models_top_label(page, app, cifar_test, tmp_path, index):
    _, ctx = app
    x = cifar_test.x[index]
    path = tmp_path / f"cifar10-test-{index}.png"
    Image.fromarray(x.numpy()).save(path)
    open_tab(page, "Classify")
    upload_image(page, "Image", path)
    screenshot(page, f"classify-{index}-uploaded")
    page.get_by_role("button", name="Classify").click()
    shown = block(page, LEFT_LABEL).get_by_test_id("label-output-value")
    shown.wait_for()
    screenshot(page, f"classify-{index}-result")
    assert shown.inner_text().strip() == direct_top_label(ctx.registry.get("scratch").model, x)


def test_classify_tab_explains_an_unusable_file(page, tmp_path):
    path = tmp_path / "not-a-picture.png"
    path.write_text("a text file with an image's name\n")
    open_tab(page, "Classify")
    upload_image(page, "Image", path)
    page.get_by_role("button", name="Classify").click()
    toast = page.get_by_test_id("toast-body").filter(has_text="Cannot use this file")
    toast.wait_for()
    screenshot(page, "classify-unusable-file-toast")
    assert "not an image format the app can read" in toast.inner_text()
