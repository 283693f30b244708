"""The eval framing is bounded by what it keeps, not by what the photo would become: a
1 x 1,000,000 px photo (1 KB as a PNG) would be resized to 32 x 32,000,000 px (3 GB) before the
crop. The framing of ordinary photos against a PIL resize + centre crop written out here, with
timm's formula for the sizes; a long thin photo's cost bounded in a fresh process; its answer
through a launched app, on every path that frames an image."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from vit_demo.data import CIFAR10_DATA_CONFIG, DataConfig
from vit_demo.inference import FULL_RESIZE_PIXELS, frame
from vit_demo.overlay import crop_box, photo_overlay

REPO = Path(__file__).resolve().parent.parent
VITB16_CFG = DataConfig((3, 224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.9)


def reference_frame(img: Image.Image, cfg: DataConfig) -> np.ndarray:
    """timm's eval transform written out: the short side to floor(input / crop_pct), the long
    side in proportion (truncated), the whole photo resized, then the centre crop."""
    size = cfg.input_size[1]
    short = math.floor(size / cfg.crop_pct)
    w, h = img.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resample = Image.BICUBIC if cfg.interpolation == "bicubic" else Image.BILINEAR
    resized = img.resize(new, resample)
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def smooth_photo(w: int, h: int) -> Image.Image:
    """A photo of smooth colour gradients (no noise for the bicubic filter to overshoot on)."""
    ys, xs = np.mgrid[0:h, 0:w]
    rgb = np.stack([xs / max(w - 1, 1), ys / max(h - 1, 1),
                    0.5 + 0.5 * np.sin(xs / 7 + ys / 11)], axis=-1)
    return Image.fromarray(np.rint(rgb * 255).astype(np.uint8))


@pytest.mark.parametrize("cfg", [CIFAR10_DATA_CONFIG, VITB16_CFG], ids=["32px", "224px"])
@pytest.mark.parametrize("size", [(32, 32), (450, 300), (300, 450), (640, 480), (97, 33), (1, 1)])
def test_ordinary_photos_are_framed_as_timm_frames_them(size, cfg):
    img = smooth_photo(*size)
    np.testing.assert_array_equal(np.asarray(frame(img, cfg)), reference_frame(img, cfg))


@pytest.mark.parametrize("size, cfg", [((2, 20_000), CIFAR10_DATA_CONFIG),
                                       ((20_000, 2), CIFAR10_DATA_CONFIG),
                                       ((3, 500), VITB16_CFG), ((500, 3), VITB16_CFG)])
def test_long_thin_photos_resize_only_the_crop_with_the_same_pixels(size, cfg):
    """Beyond FULL_RESIZE_PIXELS only the kept region is resized: the reference still resizes
    the whole photo (a few tens of MB here), and the pixels agree up to rounding."""
    img = smooth_photo(*size)
    short = math.floor(cfg.input_size[1] / cfg.crop_pct)
    assert short * int(short * max(size) / min(size)) > FULL_RESIZE_PIXELS  # the bounded path
    got = np.asarray(frame(img, cfg)).astype(int)
    assert got.shape == (*cfg.input_size[1:], 3)
    assert np.abs(got - reference_frame(img, cfg)).max() <= 2


BOUND_SCRIPT = """
import json, sys, time
from vit_demo.data import CIFAR10_DATA_CONFIG, DataConfig
from vit_demo.inference import open_image, preprocess
from vit_demo.overlay import crop_box, photo_overlay
import numpy as np

def status_mb(field):  # this process's own figures (ru_maxrss may carry its parent's peak)
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024

configs = [CIFAR10_DATA_CONFIG, DataConfig((3, 224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.9)]
preprocess(open_image(sys.argv[2]), configs[1])  # warm up torch's and Pillow's code paths
before, start = status_mb("VmRSS"), time.perf_counter()
img = open_image(sys.argv[1])
out = {"means": []}
for cfg in configs:
    x = preprocess(img, cfg)
    out["means"].append(float(x.mean()))
    box = crop_box(img.size, cfg.input_size[1:], cfg.crop_pct)
out["overlay"] = photo_overlay(np.asarray(img), np.ones((4, 4)), box).shape
out["seconds"] = time.perf_counter() - start
out["peak_mb"] = status_mb("VmHWM") - before
print(json.dumps(out))
"""


def grey_png(tmp_path: Path, size: tuple[int, int], name: str) -> Path:
    path = tmp_path / name
    Image.new("L", size, 128).save(path, optimize=True)
    return path


@pytest.mark.parametrize("size", [(1, 1_000_000), (1_000_000, 1)])
def test_a_long_thin_png_costs_under_a_second_and_100_mb(tmp_path, size):
    """Decoding, framing for both input sizes and the photo overlay, in a fresh process: its
    peak resident memory (VmHWM) over its memory before the image; the answer is its grey."""
    path = grey_png(tmp_path, size, "thin.png")
    assert path.stat().st_size < 4096
    warm = grey_png(tmp_path, (64, 48), "warm.png")
    done = subprocess.run([sys.executable, "-c", BOUND_SCRIPT, str(path), str(warm)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["seconds"] <= 1.0, out
    assert out["peak_mb"] <= 100, out
    grey = 128 / 255
    expected = [float(np.mean([(grey - m) / s for m, s in zip(cfg.mean, cfg.std)]))
                for cfg in (CIFAR10_DATA_CONFIG, VITB16_CFG)]
    np.testing.assert_allclose(out["means"], expected, atol=1e-5)
    assert sorted(out["overlay"]) == [1, 3, 768]  # the photo shrunk to 768 px, map on one pixel


def test_the_overlay_of_a_crop_thinner_than_a_shown_pixel_covers_one_pixel():
    photo = np.full((1, 100_000, 3), 200, np.uint8)
    box = crop_box((100_000, 1), (32, 32), 1.0)  # one photo pixel wide
    out = photo_overlay(photo, np.ones((8, 8)), box, "gray", opacity=0.0)
    assert out.shape == (1, 768, 3)
    undimmed = np.flatnonzero(out[0, :, 0] == 200)
    assert len(undimmed) == 1 and abs(undimmed[0] - 384) <= 1  # the middle, not dimmed


def test_every_framing_path_answers_a_long_thin_png(client, tmp_path):
    """/classify, /rollout (the map on the photo) and /inside (the distance figure of the image)
    through the launched app, with the 1 x 1,000,000 px grey PNG."""
    path = handle_file(str(grey_png(tmp_path, (1, 1_000_000), "thin.png")))
    left, _, notes = client.predict(path, "scratch", api_name="/classify")
    assert len(left["confidences"]) == 5 and "Scratch ViT" in notes
    picture, *_ = client.predict(path, "scratch", "grad", "mean", 0.0, 0, "predicted", -1, None,
                                 "jet", 0.5, False, "photo", False, api_name="/rollout")
    assert Image.open(picture).size == (1, 768)
    *pictures, _, values = client.predict("scratch", path, api_name="/inside")
    assert values["scratch"]["attention_distance"]["source"] == "your image"
    assert pictures[2] is not None
