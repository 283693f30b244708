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

COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "coolwarm", "gray")
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
MIN_DISPLAY_SIDE = 224  # smaller images are enlarged to at least this many pixels a side
GRID_COLOR = (255, 255, 255)
GRID_OPACITY = 0.6


def check_colormap(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of ``COLORMAPS``."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")


def _as_map(heatmap: np.ndarray | Sequence) -> np.ndarray:
    """The map as a finite float64 (rows, cols) array, or ``ValueError``."""
    m = np.asarray(heatmap, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a non-empty (rows, cols) map, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("the map has NaN or infinite values")
    return m


def normalize(heatmap: np.ndarray | Sequence) -> np.ndarray:
    """Min-max normalised copy of a (rows, cols) map, in [0, 1]; a constant map becomes all 0."""
    m = _as_map(heatmap)
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
    """The map as a coloured heat map blended over the image.

    Args:
        image: what the model saw, (H, W, 3) uint8 or an RGB PIL image (see ``model_view``).
        heatmap: (rows, cols) values, one per patch, any scale (min-max normalised here).
        colormap: one of ``COLORMAPS``.
        opacity: weight of the heat map in [0, 1]; 0 leaves the (enlarged) image unchanged.
        grid: draw the patch borders of the map's (rows, cols) grid.
        min_side: images smaller than this are first enlarged by a whole factor (``enlarge``).
        interpolation: "bilinear" or "bicubic" upsampling of the map.

    Returns:
        (H', W', 3) uint8 array, the image enlarged to at least ``min_side`` a side.
    """
    check_colormap(colormap)
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    img = enlarge(img, min_side)
    size = img.shape[:2]
    heat = upsample(heatmap, size, interpolation)  # (H', W') in [0, 1]
    colors = matplotlib.colormaps[colormap](heat)[..., :3] * 255.0  # (H', W', 3)
    out = img.astype(np.float64) * (1.0 - opacity) + colors * opacity
    if grid:
        m = np.asarray(heatmap)
        ys, xs = grid_lines(m.shape[0], m.shape[1], size)
        line = np.asarray(GRID_COLOR, dtype=np.float64)
        out[ys, :] = out[ys, :] * (1.0 - GRID_OPACITY) + line * GRID_OPACITY
        out[:, xs] = out[:, xs] * (1.0 - GRID_OPACITY) + line * GRID_OPACITY
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def value_grid(heatmap: np.ndarray | Sequence, digits: int = 4) -> list[list[float]]:
    """The map's raw values as nested lists (rows x cols), each rounded to ``digits``
    significant digits (rollout weights are small, so decimal places would lose them)."""
    return [[float(f"{v:.{digits}g}") for v in row] for row in _as_map(heatmap)]
