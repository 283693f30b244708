"""From an uploaded file to top-k labels: decoding any image safely, preprocessing, prediction.

``open_image`` accepts what people drop into a browser (greyscale, RGBA, palette, 16-bit,
CMYK, animated, EXIF-rotated) and turns it into an RGB image; anything it cannot read well
raises ``BadImage`` with a message for the person, never a stack trace.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import DataConfig, preprocess_batch, resized_crop
from .registry import LoadedModel

MAX_FILE_BYTES = 20 * 1024 * 1024  # larger uploads are refused before decoding
MAX_PIXELS = 25_000_000  # decompression-bomb limit (width * height), e.g. 6000 x 4000
# What a browser or phone hands over (Pillow's JPEG reader also takes multi-picture JPEGs);
# other Pillow formats (EPS runs Ghostscript, PSD, FITS, ...) are never even identified.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
# Largest photo (width x height, after resizing) ``frame`` resizes whole before cropping.
FULL_RESIZE_PIXELS = 2 ** 23
_UNREADABLE = "the file is not an image format the app can read (PNG, JPEG, GIF, WebP, BMP, TIFF)"


def set_pixel_limit(max_pixels: int) -> None:
    """Make Pillow refuse, from the header and before decoding, any image over twice
    ``max_pixels`` wherever it is opened in this process (``open_image`` refuses the ones
    between, with their size): a guard for any path that decodes before our checks."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImage(ValueError):
    """The file is not an image the app can use; the message says why, for the person."""


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS,
               max_bytes: int = MAX_FILE_BYTES) -> Image.Image:
    """Decode ``path`` into an RGB image, first frame of an animation, EXIF rotation applied.

    The pixel count is checked from the header before any pixel is decoded. No global state
    (warning filters, Pillow limits) is touched, so concurrent requests may call this.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadImage(f"the upload could not be read ({exc.strerror})") from exc
    if size == 0:
        raise BadImage("the file is empty (0 bytes)")
    if size > max_bytes:
        raise BadImage(f"the file is {size / 2**20:.1f} MB; the limit is {max_bytes // 2**20} MB")
    try:
        with Image.open(path, formats=FORMATS) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage(f"the image is {w}x{h} pixels; the limit is "
                               f"{max_pixels / 1e6:.0f} megapixels")
            img.seek(0)  # first frame of an animated GIF/WebP/PNG
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit
        raise BadImage(f"the image has too many pixels to decode safely; the limit is "
                       f"{max_pixels / 1e6:.0f} megapixels") from exc
    except UnidentifiedImageError as exc:
        raise BadImage(_UNREADABLE) from exc
    except Exception as exc:  # any decoder failure is a property of the file, not of the app
        reason = str(exc).replace(str(path), path.name) or type(exc).__name__
        raise BadImage(f"the image file is damaged or truncated ({reason})") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16/32-bit and float scaled, transparency composited on white."""
    if img.mode.startswith("I;16"):
        a = np.asarray(img).astype(np.uint32)
        img = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))
    elif img.mode in ("I", "F"):
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = a.max(initial=0.0)
        top = 1.0 if img.mode == "F" and top <= 1.0 else 65535.0 if top > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


# timm's eval transform (``timm.data.create_transform``) gives the same pixels (largest difference
# 0.0; tests/test_classify.py checks it), is not faster, and would import timm and torchvision on
# the scratch model's path, which never needs them. Ours / timm, ratios of median times measured
# in one process on a shared 2-core CPU (two runs of `nice -n 19 env OMP_NUM_THREADS=1 python
# benchmarks/bench_preprocess.py --runs 20`): photos of 32 / 224 px to the scratch ViT's 32 px
# 0.55-0.74 / 0.79-0.96, of 32 px to ViT-B/16's 224 px 0.89 or less; the larger cases, slowed
# 10-25 fold by the other load, scatter from 0.8 to 1.4 either way.
def frame(img: Image.Image, cfg: DataConfig) -> Image.Image:
    """The RGB image the model sees of ``img``: resized and centre-cropped as timm's eval
    transform does (``data.resized_crop``). Resizing the whole photo before cropping costs its
    resized size: a 1 x 1,000,000 px photo would become 32 x 32,000,000 (3 GB). Up to
    ``FULL_RESIZE_PIXELS`` it is done so (timm's pixels exactly); beyond, only the region the
    crop keeps is resized (Pillow's ``box``): the same sampling positions and filter, the
    same pixels up to the rounding between the two resampling passes."""
    resample = Image.BICUBIC if cfg.interpolation == "bicubic" else Image.BILINEAR
    (new_w, new_h), box = resized_crop(img.size, cfg.input_size[1:], cfg.crop_pct)
    if new_w * new_h <= FULL_RESIZE_PIXELS:
        return img.resize((new_w, new_h), resample).crop(box)
    sx, sy = img.width / new_w, img.height / new_h
    left, top, right, bottom = box
    return img.resize((right - left, bottom - top), resample,
                      box=(left * sx, top * sy, right * sx, bottom * sy))


def preprocess(img: Image.Image, cfg: DataConfig) -> torch.Tensor:
    """RGB image to the model's (1, C, H, W) input: framed (``frame``), then normalised
    (``data.preprocess_batch``), as timm's eval transform does."""
    framed = np.array(frame(img, cfg))  # (H, W, C) uint8
    return preprocess_batch(torch.from_numpy(framed)[None], cfg)


@dataclass(frozen=True)
class Prediction:
    confidences: dict[str, float]  # top-k class -> probability, highest first
    latency_ms: float  # preprocessing + forward pass


def predict(loaded: LoadedModel, img: Image.Image, k: int = 5) -> Prediction:
    start = time.perf_counter()
    x = preprocess(img, loaded.data_cfg)
    with torch.inference_mode():
        probs = loaded.model(x).softmax(dim=-1)[0]
    top = probs.topk(min(k, len(probs)))
    confidences = {loaded.classes[i]: float(p) for p, i in zip(top.values, top.indices)}
    return Prediction(confidences, (time.perf_counter() - start) * 1000)
