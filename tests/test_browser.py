"""End to end in a real browser: Playwright drives Debian's chromium against the launched app.

- Classify: a CIFAR-10 test image goes in through the file input; the top label the page shows
  must be the one the model gives when called directly. A text file gets a readable message.
- Attention: the overlay the page shows is the one ``/rollout`` makes for the same image and
  the tab's default settings, and its prediction is the model's.
- Inside the model: opening the tab draws the scratch model's three figures, the same pictures
  ``/inside`` gives, with a reading under each.
- Attention: the deletion and insertion scores of the map stand right beside it.
- Walkthrough (in Inside the model), on a phone: the four figures are the ones ``/walkthrough``
  gives for the same image, each at least 300 px wide, with a reading under each.
- One image for the visit: a photo dropped in Classify is the photo of the Attention tab.
- First look: at 400 px (a phone) the page is no wider than the screen and the tabs and the drop
  zone start within the first 1,200 px; the model status is a row of badges whose state is the
  registry's at page load (an unavailable model never shows "loading"), with no exception text;
  the default model is the scratch one while ViT-B/16 is unavailable.
- Compare: at 1280 and 400 px every confusion matrix is shown whole (not cropped), at its own
  aspect ratio, and the table headers do not break inside a word.
- Fine-tune: a job started from the form runs and stops on Stop, writing no checkpoint. It runs
  in an app of its own (own weights and resume-state folders), so the shared app stays as it was.

Screenshots of every step land in ``artifacts/browser/`` (gitignored; CI can keep them).
Chromium: ``$VIT_DEMO_CHROMIUM``, else ``chromium`` on the PATH (``scripts/test.sh`` installs
Debian's package when it is missing).

To cover another tab: ``panel = open_tab(page, "Tab name")``, then find components in it with
``block(panel, "component label")`` and form fields with ``panel.get_by_label(...)``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from conftest import save_tiny_scratch
from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES
from vit_demo.registry import SCRATCH_CHECKPOINT

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # generous: CI machines may be busy training
LEFT_LABEL = "Scratch ViT (CIFAR-10)"  # left output of the classify tab: the chosen model
ATTENTION_LEFT = "#attention-left"  # the attention tab's left map (its title is beside it)
PHONE = {"width": 400, "height": 800}
FIRST_SCREENS_PX = 1200  # the tabs and the drop zone must start within this on a phone
WALKTHROUGH_FIGURES = ("patches", "tokens", "attention", "lens")  # their element ids: walkthrough-NAME


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


def open_page(browser, url: str, viewport: dict | None = None):
    """(context, page) on ``url``, loaded (1280 x 1000 unless ``viewport`` says otherwise)."""
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url)
    page.get_by_role("tab", name="Classify").wait_for()
    return context, page


@pytest.fixture()
def page(browser, app, request) -> Iterator:
    """A fresh page on the shared app; its final state is saved as ``<test name>.png``."""
    context, page = open_page(browser, app[0])
    yield page
    screenshot(page, request.node.name)
    context.close()


@pytest.fixture(scope="module")
def finetune_app(tmp_path_factory, data_dir) -> Iterator[tuple[str, Path]]:
    """An app of its own for fine-tune jobs: the tiny scratch model in its own weights folder,
    its own fine-tune folder. Yields (url, weights folder)."""
    from vit_demo.ui import build_demo, create_context, serve_locally

    weights = tmp_path_factory.mktemp("browser-ft-weights")
    save_tiny_scratch(weights, SCRATCH_CHECKPOINT)
    ctx = create_context(weights, data_dir, allow_hub=False,
                         finetune_dir=tmp_path_factory.mktemp("browser-ft-finetuned"))
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    yield url, weights
    client = Client(url, verbose=False)  # a test that failed half-way may have left a job running
    client.predict(api_name="/finetune_stop")
    client.close()
    demo.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_tab(page, name: str):
    """Select tab ``name`` (from the "More tabs" menu if the screen is too narrow for it);
    returns its panel (Gradio keeps one tab panel shown)."""
    tab = page.get_by_role("tab", name=name)
    if tab.count():
        tab.click()
    else:
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button", has_text=name).click()
    return page.get_by_role("tabpanel").filter(visible=True)


def block(scope, label: str):
    """The component in ``scope`` whose label reads exactly ``label`` (Gradio's block-label
    element sits directly inside the component's block)."""
    exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
    return scope.get_by_test_id("block-label").filter(has_text=exact).locator("xpath=..")


def upload_image(scope, label: str, path: Path) -> None:
    """Put ``path`` into the image input ``label`` and wait until the server has it (the
    preview points at the uploaded copy; a file that is no picture shows a broken one)."""
    image = block(scope, label)
    image.locator("input[type=file]").set_input_files(str(path))
    image.locator(f"img[src*='{path.name}']").wait_for(state="attached")


def shown_image(page, image_block) -> np.ndarray:
    """The pixels of the picture an output image component shows, fetched as the page does
    (scrolled to first: the page loads images lazily)."""
    img = image_block.locator("img").first
    img.wait_for(state="attached")
    img.scroll_into_view_if_needed()
    img.wait_for()
    response = page.request.get(img.get_attribute("src"))
    assert response.ok, response.status
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def direct_top_label(model: torch.nn.Module, x: torch.Tensor) -> str:
    """The scratch model's top class for a uint8 (32, 32, 3) image, normalised by hand."""
    mean = torch.tensor(CIFAR10_DATA_CONFIG.mean).view(3, 1, 1)
    std = torch.tensor(CIFAR10_DATA_CONFIG.std).view(3, 1, 1)
    inp = ((x.permute(2, 0, 1).float() / 255 - mean) / std).unsqueeze(0)
    with torch.no_grad():
        return CLASSES[int(model(inp).argmax(-1))]


def save_cifar(tmp_path: Path, cifar_test, index: int) -> Path:
    path = tmp_path / f"cifar10-test-{index}.png"
    Image.fromarray(cifar_test.x[index].numpy()).save(path)
    return path


@pytest.mark.parametrize("index", [0, 1])
def test_classify_tab_shows_the_models_top_label(page, app, cifar_test, tmp_path, index):
    _, ctx = app
    path = save_cifar(tmp_path, cifar_test, index)
    panel = open_tab(page, "Classify")
    upload_image(panel, "Image", path)
    screenshot(page, f"classify-{index}-uploaded")
    panel.get_by_role("button", name="Classify").click()
    shown = block(panel, LEFT_LABEL).get_by_test_id("label-output-value")
    shown.wait_for()
    screenshot(page, f"classify-{index}-result")
    expected = direct_top_label(ctx.registry.get("scratch").model, cifar_test.x[index])
    assert shown.inner_text().strip() == expected


def test_classify_tab_explains_an_unusable_file(page, tmp_path):
    path = tmp_path / "not-a-picture.png"
    path.write_text("a text file with an image's name\n")
    panel = open_tab(page, "Classify")
    upload_image(panel, "Image", path)
    panel.get_by_role("button", name="Classify").click()
    toast = page.get_by_test_id("toast-body").filter(has_text="Cannot use this file")
    toast.wait_for()
    screenshot(page, "classify-unusable-file-toast")
    assert "not an image format the app can read" in toast.inner_text()


def test_attention_tab_shows_the_overlay_and_prediction(page, app, client, cifar_test, tmp_path):
    _, ctx = app
    path = save_cifar(tmp_path, cifar_test, 2)
    panel = open_tab(page, "Attention")
    upload_image(panel, "Image", path)
    panel.get_by_role("button", name="Show attention").click()
    overlay = panel.locator(ATTENTION_LEFT)
    shown = shown_image(page, overlay)
    prediction = block(panel, "Prediction").first.get_by_test_id("label-output-value")
    prediction.wait_for()
    screenshot(page, "attention-result")
    # The API with the same image and every other input at the tab's defaults (the head
    # field's default is empty: all heads).
    expected_path = client.predict(handle_file(str(path)), head=None, api_name="/rollout")[0]
    np.testing.assert_array_equal(shown, np.asarray(Image.open(expected_path).convert("RGB")))
    expected = direct_top_label(ctx.registry.get("scratch").model, cifar_test.x[2])
    assert prediction.inner_text().strip() == expected


def test_inside_tab_shows_the_figures_when_opened(page, client):
    panel = open_tab(page, "Inside the model")
    shown = [shown_image(page, panel.locator(f"#inside-{name}-left"))
             for name in ("filters", "positions", "distance")]
    screenshot(page, "inside-opened")
    expected = client.predict("scratch", None, api_name="/inside")[:3]
    for got, path in zip(shown, expected, strict=True):
        np.testing.assert_array_equal(got, np.asarray(Image.open(path).convert("RGB")))
    assert panel.get_by_text("Look for smooth colour blobs").is_visible()


def test_walkthrough_shows_its_figures_on_a_phone(browser, app, client, cifar_test, tmp_path,
                                                  request):
    path = save_cifar(tmp_path, cifar_test, 8)
    context, page = open_page(browser, app[0], PHONE)
    try:
        panel = open_tab(page, "Inside the model")
        upload_image(panel, "Image", path)
        panel.get_by_role("button", name="Walk through").click()
        figures = [panel.locator(f"#walkthrough-{name}") for name in WALKTHROUGH_FIGURES]
        shown = [shown_image(page, figure) for figure in figures]
        block(panel, "5. Answer").get_by_test_id("label-output-value").wait_for()
        expected = client.predict(handle_file(str(path)), "scratch", api_name="/walkthrough")[:4]
        for got, expected_path in zip(shown, expected, strict=True):
            np.testing.assert_array_equal(got, np.asarray(Image.open(expected_path).convert("RGB")))
        for figure in figures:
            assert figure.locator("img").first.bounding_box()["width"] >= 300
        assert panel.get_by_text("Each row is the answer the model would give").is_visible()
        assert page_width_overflow(page) <= 0
    finally:
        screenshot(page, request.node.name)
        context.close()


def test_attention_scores_stand_beside_the_map(page, tmp_path, cifar_test):
    path = save_cifar(tmp_path, cifar_test, 5)
    panel = open_tab(page, "Attention")
    upload_image(panel, "Image", path)
    panel.get_by_role("button", name="Show attention").click()
    overlay = panel.locator(ATTENTION_LEFT)
    overlay.locator("img").first.wait_for()
    scores = panel.locator(f"{ATTENTION_LEFT}-faithfulness")
    scores.get_by_text("centre first").wait_for()
    screenshot(page, "attention-scores")
    text = scores.inner_text()
    for words in ("this map", "random order", "centre first", "deletion", "insertion"):
        assert words in text
    assert len(re.findall(r"\b[01]\.\d{3}\b", text)) == 6  # two scores for each of three orders
    assert re.search(r"explains the prediction (better|no better) than a centre guess", text)
    assert overlay.get_by_test_id("block-label").filter(visible=True).count() == 0  # nothing on the map
    map_box, scores_box = overlay.bounding_box(), scores.bounding_box()
    assert 0 <= scores_box["y"] - (map_box["y"] + map_box["height"]) < 80  # right below the map
    assert scores_box["x"] < map_box["x"] + map_box["width"] and map_box["x"] < scores_box["x"] + scores_box["width"]


def test_a_photo_dropped_in_classify_is_the_photo_in_attention(page, tmp_path, cifar_test):
    path = save_cifar(tmp_path, cifar_test, 6)
    upload_image(open_tab(page, "Classify"), "Image", path)
    attention = open_tab(page, "Attention")
    block(attention, "Image").locator(f"img[src*='{path.name}']").wait_for(state="attached")
    screenshot(page, "shared-image-in-attention")
    attention.get_by_role("button", name="Show attention").click()  # usable there as it is
    attention.locator(f"{ATTENTION_LEFT} img").first.wait_for()
    # and back: a photo dropped in Attention replaces it in Classify
    other = save_cifar(tmp_path, cifar_test, 7)
    upload_image(attention, "Image", other)
    block(open_tab(page, "Classify"), "Image").locator(f"img[src*='{other.name}']").wait_for(
        state="attached")


def test_an_example_picked_in_attention_is_the_photo_in_classify(page):
    attention = open_tab(page, "Attention")
    attention.locator("[data-testid=examples] img, .gallery img").nth(3).click()
    image = block(attention, "Image").locator("img").first
    image.wait_for()
    name = Path(image.get_attribute("src").split("?")[0]).name  # e.g. cifar10-test-00025-bird.png
    assert name.startswith("cifar10-test-")
    block(open_tab(page, "Classify"), "Image").locator(f"img[src*='{name}']").wait_for(state="attached")


def page_width_overflow(page) -> int:
    """How many pixels the page is wider than the screen (0 when it fits)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def test_first_screen_on_a_phone(browser, app, request):
    context, page = open_page(browser, app[0], PHONE)
    try:
        badges = page.locator("#model-status .model-badge")
        badges.first.wait_for()
        screenshot(page, "phone-first-screen")
        assert page_width_overflow(page) <= 0
        assert page.get_by_role("tab").count() == 5  # all five tabs fit: no "More tabs" menu
        tab_top = page.get_by_role("tab", name="Classify").bounding_box()["y"]
        drop_top = block(page.get_by_role("tabpanel").filter(visible=True), "Image").bounding_box()["y"]
        assert tab_top < FIRST_SCREENS_PX and drop_top < FIRST_SCREENS_PX, (tab_top, drop_top)
        for tab in ("Attention", "Compare", "Fine-tune"):
            open_tab(page, tab)
            page.wait_for_timeout(300)
            assert page_width_overflow(page) <= 0, tab
    finally:
        screenshot(page, request.node.name)
        context.close()


def test_attention_result_fits_a_phone(browser, app, cifar_test, tmp_path, request):
    context, page = open_page(browser, app[0], PHONE)
    try:
        panel = open_tab(page, "Attention")
        upload_image(panel, "Image", save_cifar(tmp_path, cifar_test, 8))
        panel.get_by_role("button", name="Show attention").click()
        panel.locator(f"{ATTENTION_LEFT}-faithfulness").get_by_text("centre first").wait_for()
        assert page_width_overflow(page) <= 0
        map_box = panel.locator(ATTENTION_LEFT).bounding_box()
        assert map_box["x"] >= 0 and map_box["x"] + map_box["width"] <= PHONE["width"]
    finally:
        screenshot(page, request.node.name)
        context.close()


def test_model_status_is_current_and_plain_at_page_load(browser, app):
    """The hub load failed long ago (offline): the first thing the page says is "unavailable",
    never "loading"; the reason is short, the details one click away, no exception text."""
    _, ctx = app
    ctx.registry.load_in_background("vit-b16").join()
    assert ctx.registry.status("vit-b16").state == "unavailable"
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    states = []
    page.expose_function("record", lambda state: states.append(state))
    page.add_init_script("""new MutationObserver(() => {
        const b = document.querySelector('#model-status [data-model="vit-b16"]');
        if (b) window.record(b.dataset.state);
    }).observe(document, {subtree: true, childList: true, attributes: true});""")
    try:
        page.goto(app[0])
        badge = page.locator('#model-status [data-model="vit-b16"]')
        badge.wait_for()
        page.wait_for_timeout(1500)
        assert set(states) == {"unavailable"}, states
        assert "weights not on this server" in badge.inner_text()
        body = page.locator("body").inner_text()
        assert "Error" not in body and "LocalEntryNotFound" not in body
        choice = open_tab(page, "Classify").get_by_label("Model")
        assert choice.input_value() == "Scratch ViT (CIFAR-10)"  # not "both": ViT-B/16 is missing
        page.get_by_text("For the person running this server").click()
        details = page.locator("#operator")
        details.get_by_text("network access").first.wait_for()
        screenshot(page, "operator-details-open")
        assert "Error" not in details.inner_text()
    finally:
        context.close()


@pytest.fixture(scope="module")
def measured_app(tmp_path_factory, cifar_test) -> Iterator[str]:
    """An app whose scratch model's card holds measured figures (200 test images), so the
    compare tab draws a confusion matrix. Yields its URL."""
    from vit_demo.card import read_card
    from vit_demo.evaluate import model_metrics, store_metrics
    from vit_demo.ui import build_demo, create_context, serve_locally

    weights = tmp_path_factory.mktemp("browser-measured-weights")
    model = save_tiny_scratch(weights, SCRATCH_CHECKPOINT, seed=1)
    store_metrics(weights, read_card(weights, SCRATCH_CHECKPOINT),
                  model_metrics(model, cifar_test.subset(torch.arange(200)), CIFAR10_DATA_CONFIG,
                                len(CLASSES), latency_runs=2))
    ctx = create_context(weights, None, allow_hub=False)
    demo = build_demo(ctx)
    yield serve_locally(demo, ctx)
    demo.close()


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 1000}, PHONE], ids=["1280", "400"])
def test_compare_figures_are_whole(browser, measured_app, viewport, request):
    """Each confusion matrix is drawn at its own aspect ratio, inside the page, not cropped
    (object-fit cover would fill a box of another shape by cutting it); headers stay whole."""
    context, page = open_page(browser, measured_app, viewport)
    try:
        panel = open_tab(page, "Compare")
        images = panel.locator("#compare-figures img")
        images.first.wait_for()
        page.wait_for_function("[...document.querySelectorAll('#compare-figures img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        screenshot(page, f"compare-{viewport['width']}")
        for i in range(images.count()):
            img = images.nth(i)
            facts = img.evaluate("""i => ({fit: getComputedStyle(i).objectFit, w: i.clientWidth,
                h: i.clientHeight, nw: i.naturalWidth, nh: i.naturalHeight,
                right: i.getBoundingClientRect().right})""")
            assert facts["fit"] != "cover"
            assert facts["w"] > 0 and abs(facts["w"] / facts["h"] - facts["nw"] / facts["nh"]) < 0.02, facts
            assert facts["w"] <= facts["nw"] and facts["right"] <= viewport["width"], facts
            assert facts["w"] >= min(facts["nw"], 0.8 * viewport["width"]) - 40, facts  # readable size
        assert page_width_overflow(page) <= 0
        # header cells: one line each, as wide as their words (no break inside a word); on a
        # phone the rows stack, each cell under its header's words
        for th in panel.locator("#compare-summary th").filter(visible=True).all():
            lines = th.evaluate("e => Math.round(e.getBoundingClientRect().height / "
                                "parseFloat(getComputedStyle(e).lineHeight))")
            assert lines == 1, th.inner_text()
    finally:
        screenshot(page, request.node.name)
        context.close()


def test_finetune_tab_starts_and_stops_a_job(browser, finetune_app, request):
    url, weights = finetune_app
    context, page = open_page(browser, url)
    try:
        panel = open_tab(page, "Fine-tune")
        for label, value in [("Training images", "3000"), ("Epochs", "10"), ("Batch size", "16"),
                             ("Validation images (0: none)", "0"), ("Test images", "10"),
                             ("Name of the new model (the server adds a suffix)", "browser-ft")]:
            panel.get_by_label(label, exact=True).fill(value)
        panel.get_by_role("button", name="Start").click()
        panel.get_by_text(re.compile(r"step [1-9]\d*/1870")).wait_for()  # running, past step 0
        for shown in ("loss", "accuracy", "log"):  # hidden while empty, shown once the job runs
            panel.locator(f"#finetune-{shown}").wait_for()
        screenshot(page, "finetune-running")
        panel.get_by_role("button", name="Stop").click()
        panel.locator("b", has_text=re.compile(r"^cancelled$")).wait_for()
        log = panel.get_by_label("Log", exact=True)
        assert "no model was written" in log.input_value()
        assert not list(weights.glob("browser-ft*"))
    finally:
        screenshot(page, request.node.name)
        context.close()
