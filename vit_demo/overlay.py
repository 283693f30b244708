"""Heat-map overlays of a patch map on the image the model saw, as pure numpy/PIL functions.

A map is a (rows, cols) array with one value per patch (e.g. ``explain(...)["map"][0]``). It is
min-max normalised, upsampled smoothly to the displayed image, coloured with a matplotlib
colormap and blended over the image. The displayed image is the model's own input (its
preprocessed crop, de-normalised by ``model_view``), so each patch of the map lies over the
pixels that patch was made of; small inputs (CIFAR-10's 32 px) are enlarged by a whole factor
(``enlarge``), so patch borders stay on pixel borders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from PIL import Image

from .data import resized_crop
from .faithfulness import check_map

COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "coolwarm", "gray")
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
MIN_DISPLAY_SIDE = 224  # smaller images are enlarged to at least this many pixels a side
MAX_DISPLAY_SIDE = 768  # larger photos are shrunk to this many pixels on their long side
OUTSIDE_DIM = 0.45  # the part of the photo outside the model's crop keeps this much brightness
GRID_COLOR = (255, 255, 255)
GRID_OPACITY = 0.6


def check_colormap(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of ``COLORMAPS``."""
    if name not in COLORMAPS:
        raise ValueError(f"Unknown colormap {name!r}. Choose one of: {', '.join(COLORMAPS)}.")


def normalize(heatmap: np.ndarray | Sequence) -> np.ndarray:
    """Min-max normalised copy of a (rows, cols) map, in [0, 1]; a constant map becomes all 0."""
    m = check_map(heatmap).numpy()
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def upsample(heatmap: np.ndarray | Sequence, size: tuple[int, int],
             interpolation: str = "bilinear") -> np.ndarray:
    """A (rows, cols) map normalised and resized smoothly to ``size`` = (height, width).

    Pixel centres are sampled as in any image resize (half-pixel convention), so patch ``(r, c)``
    covers rows ``r * H / rows`` to ``(r + 1) * H / rows`` of the result. Returns a float
    (height, width) array clipped to [0, 1] (bicubic may overshoot).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
    height, width = size
    m = Image.fromarray(normalize(heatmap).astype(np.float32))  # mode "F"
    resized = np.asarray(m.resize((width, height), INTERPOLATIONS[interpolation]), dtype=np.float64)
    return np.clip(resized, 0.0, 1.0)


def model_view(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The model's normalised input (C, H, W) back as the uint8 RGB image (H, W, 3) it was made of."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) input, got shape {x.shape}")
    rgb = x * np.asarray(std).reshape(3, 1, 1) + np.asarray(mean).reshape(3, 1, 1)  # [0, 1]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def display_scale(size: tuple[int, int], min_side: int = MIN_DISPLAY_SIDE) -> int:
    """The whole factor that makes an image of ``size`` = (height, width) at least ``min_side``
    pixels a side (1 if it already is)."""
    return max(1, math.ceil(min_side / min(size)))


def enlarge(image: np.ndarray, min_side: int = MIN_DISPLAY_SIDE) -> np.ndarray:
    """An (H, W, 3) uint8 image enlarged by a whole factor (``display_scale``), each pixel a block."""
    factor = display_scale(image.shape[:2], min_side)
    return image if factor == 1 else image.repeat(factor, axis=0).repeat(factor, axis=1)


def grid_lines(rows: int, cols: int, size: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Pixel rows and columns of the inner patch borders of a (rows, cols) grid on an image of
    ``size`` = (height, width): the first pixel of every patch but the first, per axis."""
    height, width = size
    return ([round(i * height / rows) for i in range(1, rows)],
            [round(j * width / cols) for j in range(1, cols)])


def overlay(image: np.ndarray | Image.Image, heatmap: np.ndarray | Sequence, colormap: str = "jet",
            opacity: float = 0.5, grid: bool = False, min_side: int = MIN_DISPLAY_SIDE,
            interpolation: str = "bilinear") -> np.ndarray:
    """The (rows, cols) map, any scale, as a coloured heat map blended over ``image``, what the
    model saw ((H, W, 3) uint8 or an RGB PIL image, see ``model_view``), enlarged to at least
    ``min_side`` a side (``enlarge``): (H', W', 3) uint8. ``opacity``: the map's weight in
    [0, 1] (0: the enlarged image unchanged); ``grid``: draw the patch borders."""
    _check_style(colormap, opacity)
    img = enlarge(_as_image(image), min_side)
    return _blend(img, heatmap, colormap, opacity, grid, interpolation)


def _check_style(colormap: str, opacity: float) -> None:
    check_colormap(colormap)
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"Opacity must be between 0 and 1, got {opacity}.")


def _as_image(image: np.ndarray | Image.Image) -> np.ndarray:
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    return img


def _blend(region: np.ndarray, heatmap, colormap: str, opacity: float, grid: bool,
           interpolation: str) -> np.ndarray:
    """The map coloured and blended over ``region`` ((H, W, 3) uint8), patch grid optional:
    uint8 (H, W, 3)."""
    size = region.shape[:2]
    heat = upsample(heatmap, size, interpolation)  # (H, W) in [0, 1]
    colors = matplotlib.colormaps[colormap](heat)[..., :3] * 255.0  # (H, W, 3)
    out = region.astype(np.float64) * (1.0 - opacity) + colors * opacity
    if grid:
        ys, xs = grid_lines(*check_map(heatmap).shape, size)
        line = np.asarray(GRID_COLOR, dtype=np.float64)
        out[ys, :] = out[ys, :] * (1.0 - GRID_OPACITY) + line * GRID_OPACITY
        out[:, xs] = out[:, xs] * (1.0 - GRID_OPACITY) + line * GRID_OPACITY
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def colormap_stops(colormap: str, n: int = 9) -> list[str]:
    """``n`` colours (``#rrggbb``) evenly along ``colormap`` from low to high, for a colour bar."""
    check_colormap(colormap)
    rgb = matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, n))[:, :3]  # (n, 3) in [0, 1]
    return ["#" + "".join(f"{round(255 * c):02x}" for c in row) for row in rgb]


def crops_the_photo(size: tuple[int, int], box: tuple[float, float, float, float]) -> bool:
    """Whether ``box`` (``crop_box``) leaves strips of a photo of ``size`` outside, dimmed."""
    left, top, right, bottom = box
    return left > 0.5 or top > 0.5 or size[0] - right > 0.5 or size[1] - bottom > 0.5


def crop_box(size: tuple[int, int], input_size: tuple[int, int], crop_pct: float = 1.0
             ) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom), in the photo's pixels, that the model's input
    shows of a photo of ``size`` = (width, height) (``data.resized_crop``)."""
    (new_w, new_h), (left, top, right, bottom) = resized_crop(size, input_size, crop_pct)
    sx, sy = size[0] / new_w, size[1] / new_h
    return left * sx, top * sy, right * sx, bottom * sy


def display_photo(photo: np.ndarray | Image.Image, min_side: int = MIN_DISPLAY_SIDE,
                  max_side: int = MAX_DISPLAY_SIDE) -> tuple[np.ndarray, float]:
    """(the photo as shown, its scale): enlarged by a whole factor when smaller than
    ``min_side`` (pixel blocks), shrunk smoothly when its long side exceeds ``max_side``."""
    img = _as_image(photo)
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(img).resize(size, Image.LANCZOS)), size[0] / w
    return enlarge(img, min_side), float(display_scale((h, w), min_side))


def photo_overlay(photo: np.ndarray | Image.Image, heatmap: np.ndarray | Sequence,
                  box: tuple[float, float, float, float], colormap: str = "jet",
                  opacity: float = 0.5, grid: bool = False, interpolation: str = "bilinear",
                  min_side: int = MIN_DISPLAY_SIDE, max_side: int = MAX_DISPLAY_SIDE) -> np.ndarray:
    """The map over the visitor's RGB photo ((H, W, 3) uint8 or PIL, before any preprocessing)
    at its own resolution (``display_photo``): upsampled onto ``box``, the region the model saw
    (``crop_box``, photo pixels), with what lies outside dimmed (``OUTSIDE_DIM``); uint8."""
    _check_style(colormap, opacity)
    check_map(heatmap)
    photo_h, photo_w = np.shape(photo)[:2]
    if box[2] <= 0 or box[3] <= 0 or box[0] >= photo_w or box[1] >= photo_h:
        raise ValueError(f"the crop box {box} lies outside the photo")
    shown, _ = display_photo(photo, min_side, max_side)
    height, width = shown.shape[:2]
    sx, sy = width / photo_w, height / photo_h  # a long thin photo's thin side is rounded
    # at least one pixel of the shown photo: a long thin photo's crop may be thinner than one
    left = min(max(0, round(box[0] * sx)), width - 1)
    top = min(max(0, round(box[1] * sy)), height - 1)
    right = max(left + 1, min(width, round(box[2] * sx)))
    bottom = max(top + 1, min(height, round(box[3] * sy)))
    out = shown.astype(np.float64) * OUTSIDE_DIM
    out[top:bottom, left:right] = _blend(shown[top:bottom, left:right], heatmap, colormap, opacity,
                                         grid, interpolation)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def value_grid(heatmap: np.ndarray | Sequence, digits: int = 4) -> list[list[float]]:
    """The map's raw values as nested lists (rows x cols), each rounded to ``digits``
    significant digits (rollout weights are small, so decimal places would lose them)."""
    return [[float(f"{v:.{digits}g}") for v in row] for row in check_map(heatmap).numpy()]
