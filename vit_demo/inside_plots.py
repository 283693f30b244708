"""The ViT paper's Fig. 7 for one model, drawn with matplotlib (Agg) to PNG bytes; no gradio.

``weight_figures`` (patch-embedding filters, position-embedding similarity) depends only on
the weights; ``distance_figure`` also on the images it averages over.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .adapters import ModelKind, adapter_for
from .data import DataConfig, preprocess_batch
from .inside import (FilterComponents, attention_distance_over, filter_components,
                     patch_embedding_weight, patch_position_embedding, patch_size,
                     position_similarity, rounded, similarity_by_grid_distance,
                     uniform_attention_distance)

FILTER_COLUMNS = 7  # the paper's figure: 28 filters in 4 rows of 7


@dataclass(frozen=True)
class WeightFigures:
    components: FilterComponents
    similarity: torch.Tensor  # (rows, cols, rows, cols) cosine similarity
    grid_summary: dict[str, float | None]  # see ``similarity_by_grid_distance``
    filters_png: bytes
    positions_png: bytes

    def to_json(self) -> dict:
        rows, cols = self.similarity.shape[:2]
        return {"components": len(self.components.filters),
                "explained_variance": rounded(self.components.explained),
                "filter_shape": list(self.components.filters.shape[1:]),
                "grid_size": [rows, cols],
                "position_similarity": rounded(self.similarity.reshape(rows * cols, rows * cols), 3),
                "position_similarity_by_grid_distance": {
                    k: None if v is None else round(v, 4) for k, v in self.grid_summary.items()}}


@dataclass(frozen=True)
class DistanceFigure:
    distance: torch.Tensor  # (layers, heads) mean attention distance in pixels
    uniform: float  # the distance of a head attending to every patch equally, in pixels
    images: int
    source: str  # what the images were, in words
    png: bytes

    def to_json(self) -> dict:
        return {"mean_attention_distance_px": rounded(self.distance, 3),
                "uniform_attention_distance_px": round(self.uniform, 3),
                "images": self.images, "source": self.source}


def agg_canvas(width: float, height: float):
    """An empty figure of ``width`` x ``height`` inches drawn by Agg (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def agg_figure(width: float, height: float, ncols: int = 1, sharey: bool = False):
    """A figure of ``width`` x ``height`` inches drawn by Agg (no pyplot), and its axes: one, or
    an array of ``ncols`` side by side."""
    fig = agg_canvas(width, height)
    return fig, fig.subplots(1, ncols, sharey=sharey)


def png_bytes(fig, dpi: float | None = None) -> bytes:
    """The figure as PNG, at ``dpi`` (None: the figure's own, 100)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or "figure")
    return buffer.getvalue()


def mosaic(tiles: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """Tiles (n, h, w[, ch]) laid out row by row in ``columns`` columns, ``gap`` NaN pixels
    between them: (rows*(h+gap)-gap, columns*(w+gap)-gap[, ch]) float."""
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, *tiles.shape[3:]), np.nan)
    for i, tile in enumerate(tiles):
        top, left = (i // columns) * (h + gap), (i % columns) * (w + gap)
        out[top:top + h, left:left + w] = tile
    return out


def filters_png(components: FilterComponents, title: str) -> bytes:
    """The components as small RGB images, each stretched to the full colour range."""
    filters = components.filters.double().numpy().transpose(0, 2, 3, 1)  # (k, ph, pw, C)
    low = filters.min(axis=(1, 2, 3), keepdims=True)
    high = filters.max(axis=(1, 2, 3), keepdims=True)
    tiles = (filters - low) / np.maximum(high - low, 1e-12)
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, axis=-1)
    gap = max(1, tiles.shape[1] // 8)
    image = np.nan_to_num(mosaic(tiles, FILTER_COLUMNS, gap), nan=1.0)  # white gaps
    fig, ax = agg_figure(6.4, 4.4)
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{title}\nRGB embedding filters: first {len(tiles)} principal components "
                 f"({float(components.explained.sum()):.0%} of the variance)", fontsize=10)
    return png_bytes(fig)


def positions_png(similarity: torch.Tensor, title: str) -> bytes:
    """One small map per patch position, laid out like the patch grid: its cosine similarity
    with every position."""
    rows, cols = similarity.shape[:2]
    tiles = similarity.double().numpy().reshape(rows * cols, rows, cols)
    gap = max(1, rows // 7)
    image = mosaic(tiles, cols, gap)
    fig, ax = agg_figure(6.4, 5.6)
    shown = ax.imshow(image, cmap="viridis", vmin=-1.0, vmax=1.0, interpolation="nearest")
    step = max(1, cols // 7)
    ax.set_xticks([(c + 0.5) * (cols + gap) - gap / 2 - 0.5 for c in range(0, cols, step)],
                  [str(c + 1) for c in range(0, cols, step)])
    ax.set_yticks([(r + 0.5) * (rows + gap) - gap / 2 - 0.5 for r in range(0, rows, step)],
                  [str(r + 1) for r in range(0, rows, step)])
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    ax.set_title(f"{title}\nPosition-embedding similarity", fontsize=10)
    fig.colorbar(shown, ax=ax, label="cosine similarity", shrink=0.8)
    return png_bytes(fig)


def distance_png(distance: torch.Tensor, uniform: float, title: str, source: str) -> bytes:
    """Heads against depth: one dot per head at its mean attention distance."""
    layers, heads = distance.shape
    fig, ax = agg_figure(6.4, 4.4)
    depth = np.repeat(np.arange(1, layers + 1), heads)
    ax.scatter(depth, distance.double().numpy().reshape(-1), s=22, alpha=0.75,
               label=f"one dot per head ({heads} per layer)")
    ax.axhline(uniform, color="grey", linestyle="--", linewidth=1,
               label=f"uniform attention ({uniform:.1f} px)")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(range(1, layers + 1))
    ax.set_ylim(0, 1.1 * max(uniform, float(distance.max())))
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{title}\nMean attention distance over {source}", fontsize=10)
    return png_bytes(fig)


def weight_figures(model: nn.Module, kind: ModelKind | str, title: str) -> WeightFigures:
    """The patch-embedding filters and the position-embedding similarity of ``model``."""
    grid = adapter_for(kind).embedding_grid(model)
    components = filter_components(patch_embedding_weight(model))
    similarity = position_similarity(patch_position_embedding(model, grid), grid)
    return WeightFigures(components, similarity, similarity_by_grid_distance(similarity),
                         filters_png(components, title), positions_png(similarity, title))


def distance_figure(model: nn.Module, kind: ModelKind | str, x: torch.Tensor, source: str, title: str
                    ) -> DistanceFigure:
    """The mean attention distance of ``model`` over the preprocessed images ``x`` (B, C, H, W),
    described in words as ``source``."""
    distance = attention_distance_over(model, kind, x)
    uniform = uniform_attention_distance(adapter_for(kind).embedding_grid(model), patch_size(model))
    return DistanceFigure(distance, uniform, len(x), source, distance_png(distance, uniform, title, source))


def cifar_distance_figure(model: nn.Module, kind: ModelKind | str, data_cfg: DataConfig,
                          images: torch.Tensor, title: str) -> DistanceFigure:
    """``distance_figure`` over CIFAR-10 test images, uint8 (B, H, W, C)."""
    return distance_figure(model, kind, preprocess_batch(images, data_cfg),
                           f"{len(images)} CIFAR-10 test images", title)
