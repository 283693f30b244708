"""Take the README's screenshots from the page as it is: the app with the shipped weights and
ViT-B/16 as a visitor sees it on a server without its weights (the hub offline), a drawn (not
CIFAR-10) image dropped once into the classify tab and used as it is in the other tabs, in
Debian's chromium, at 1280 px (a laptop) and 400 px (a phone):

- ``screenshot-{classify,attention,compare,inside,walkthrough}.png`` at 1280 px, each tab's
  result shown (the walkthrough: that section of the Inside the model tab);
- ``screenshot-phone-{classify,attention,compare,inside,walkthrough}.png``: the same at 400 px.

    python scripts/screenshot.py [--out docs]

The example gallery is left out (no data directory is passed), so no image of the data set
appears in the pictures, and nothing on the page names a path of this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def drawn_airplane(path: Path) -> Path:
    """A white airliner on a blue sky, drawn with PIL at 256 px."""
    img = Image.new("RGB", (256, 256), (96, 150, 220))
    d = ImageDraw.Draw(img)
    d.ellipse((30, 112, 226, 144), fill=(240, 240, 245))  # fuselage
    d.polygon([(110, 124), (150, 124), (100, 40), (85, 40)], fill=(225, 225, 232))  # far wing
    d.polygon([(110, 132), (150, 132), (100, 216), (85, 216)], fill=(235, 235, 240))  # near wing
    d.polygon([(40, 126), (58, 126), (40, 86), (28, 86)], fill=(225, 225, 232))  # tail fin
    img.save(path)
    return path


def run_classify(page, image: Path) -> None:
    """Drop ``image`` into the classify tab, classify it, and wait for the result."""
    page.get_by_role("tab", name="Classify").click()
    panel = page.get_by_role("tabpanel").filter(visible=True)
    panel.locator("input[type=file]").first.set_input_files(str(image))
    panel.locator(f"img[src*='{image.name}']").first.wait_for(state="attached")
    panel.get_by_role("button", name="Classify").click()
    panel.get_by_test_id("label-output-value").first.wait_for()


def run_walkthrough(page) -> object:
    """Walk the image already in the page through the scratch model; returns the section."""
    page.get_by_role("tab", name="Inside the model").click()
    section = page.locator("#walkthrough")
    section.get_by_role("button", name="Walk through").click()
    section.locator("#walkthrough-answer [data-testid=label-output-value]").wait_for()
    return section


def shoot(page, path: Path, shots: list[Path], section=None) -> None:
    """The whole page, or only ``section`` (a locator), as ``path``."""
    page.wait_for_timeout(1000)  # let the last updates settle
    if section is None:
        page.screenshot(path=str(path), full_page=True)
    else:
        section.screenshot(path=str(path))
    shots.append(path)


def shoot_tabs(page, image: Path, out: Path, prefix: str, shots: list[Path]) -> None:
    """Every tab with its result, the photo dropped once in Classify: ``{prefix}{tab}.png``."""
    run_classify(page, image)
    shoot(page, out / f"{prefix}classify.png", shots)
    page.get_by_role("tab", name="Attention").click()  # the same image, not dropped again
    panel = page.get_by_role("tabpanel").filter(visible=True)
    panel.get_by_role("button", name="Show attention").click()
    panel.locator("#attention-left-faithfulness").get_by_text("centre first").wait_for()
    shoot(page, out / f"{prefix}attention.png", shots)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-figures img").first.wait_for()
    shoot(page, out / f"{prefix}compare.png", shots)
    shoot(page, out / f"{prefix}walkthrough.png", shots, run_walkthrough(page))
    distance = page.locator("#inside-distance-left")
    distance.scroll_into_view_if_needed()  # the page loads images as they come near
    distance.locator("img").wait_for()
    shoot(page, out / f"{prefix}inside.png", shots)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from vit_demo.registry import VITB16
    from vit_demo.ui import build_demo, create_context, serve_locally

    image = drawn_airplane(Path(tempfile.mkdtemp()) / "airplane.png")
    ctx = create_context(allow_hub=True)  # HF_HUB_OFFLINE: ViT-B/16 fails as on a bare server
    ctx.registry.load_in_background(VITB16).join()
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    args.out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        args=CHROMIUM_ARGS)
            for width, height, prefix in ((1280, 900, "screenshot-"), (400, 860, "screenshot-phone-")):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.set_default_timeout(120_000)
                page.goto(url)
                shoot_tabs(page, image, args.out, prefix, shots)
                page.close()
            browser.close()
    finally:
        demo.close()
    for shot in shots:
        print(shot)
    return shots


if __name__ == "__main__":
    main()
