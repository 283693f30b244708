"""Take the README's screenshots: the app with the shipped weights, a drawn (not CIFAR-10) image
dropped into the classify and attention tabs, in Debian's chromium.

    python scripts/screenshot.py [--out docs]

The example gallery is left out (no data directory is passed), so no image of the data set
appears in the pictures.
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


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from vit_demo.ui import build_demo, create_context, serve_locally

    image = drawn_airplane(Path(tempfile.mkdtemp()) / "airplane.png")
    ctx = create_context(allow_hub=False)
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    args.out.mkdir(parents=True, exist_ok=True)
    shots = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url)
            for tab, button in (("Classify", "Classify"), ("Attention", "Show attention")):
                page.get_by_role("tab", name=tab).click()
                panel = page.get_by_role("tabpanel")
                panel.locator("input[type=file]").first.set_input_files(str(image))
                panel.get_by_role("button", name=button).click()
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(3000)
                shot = args.out / f"screenshot-{tab.lower()}.png"
                page.screenshot(path=str(shot), full_page=True)
                shots.append(shot)
            browser.close()
    finally:
        demo.close()
    for shot in shots:
        print(shot)
    return shots


if __name__ == "__main__":
    main()
