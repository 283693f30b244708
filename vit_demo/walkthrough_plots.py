"""The walkthrough's steps (``walkthrough``) drawn with matplotlib (Agg) to PNG bytes; no gradio.

Every figure is about 4.2 inches wide with 8-10 pt text, drawn at ``DPI``: shrunk to a phone's
width (about 360 px) its text stays about 10 px high; on a wide screen it is sharp up to 630 px.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .inside_plots import agg_canvas, agg_figure, mosaic, png_bytes
from .overlay import overlay
from .walkthrough import TokenPCA, Walkthrough, settled_block

DPI = 150
WIDTH = 4.2  # inches
ATTENTION_COLUMNS = 4
ATTENTION_SIDE = 96  # pixels a side of one block's map at least (the input enlarged)


def patches_png(image: np.ndarray, steps: Walkthrough) -> bytes:
    """The model's input ((H, W, 3) uint8, as ``overlay.model_view`` gives it) with its patch
    grid, and the count in the title."""
    rows, cols = steps.grid
    ph, pw = steps.patch
    fig, ax = agg_figure(WIDTH, WIDTH + 0.35)
    ax.imshow(image, extent=(0, cols, rows, 0), interpolation="nearest")  # one unit per patch
    for r in range(1, rows):
        ax.axhline(r, color="white", linewidth=0.8, alpha=0.8)
    for c in range(1, cols):
        ax.axvline(c, color="white", linewidth=0.8, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{rows * cols} patches of {ph}x{pw} px\n({rows}x{cols} of them in the "
                 f"{image.shape[0]}x{image.shape[1]} px input)", fontsize=10)
    return png_bytes(fig, DPI)


def _token_panel(ax, pca: TokenPCA, grid: tuple[int, int], title: str) -> None:
    """[CLS]'s colour as one cell above the left of the patch grid's colours."""
    rows, cols = grid
    colours = pca.colours().double().numpy()  # (1+N, 3)
    canvas = np.ones((rows + 2, cols, 3))  # [CLS], a white gap row, then the grid
    canvas[0, 0] = colours[0]
    canvas[2:] = colours[1:].reshape(rows, cols, 3)
    ax.imshow(canvas, interpolation="nearest")
    ax.text(0.9, 0, "[CLS]", va="center", ha="left", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)
    shares = "/".join(f"{100 * float(v):.0f}" for v in pca.explained)
    ax.set_title(f"{title}\n{shares} % of variance", fontsize=9.5)


def tokens_png(steps: Walkthrough) -> bytes:
    """The tokens coloured by their first three principal components on the patch grid: the
    patch embeddings, and the same after the position embeddings are added."""
    fig = agg_canvas(WIDTH, 3.0)
    left, right = fig.subplots(1, 2)
    _token_panel(left, steps.tokens, steps.grid, "patch embeddings")
    _token_panel(right, steps.embedded, steps.grid, "+ position embeddings")
    return png_bytes(fig, DPI)


def attention_png(image: np.ndarray, steps: Walkthrough) -> bytes:
    """One small map per block: the [CLS] token's attention over the patches (heads averaged),
    each scaled to its own range, over the model's input ((H, W, 3) uint8), in one mosaic."""
    tiles = np.stack([overlay(image, m.numpy(), "inferno", 0.65, min_side=ATTENTION_SIDE)
                      for m in steps.attention]) / 255.0  # (blocks, h, w, 3)
    blocks, side = len(tiles), tiles.shape[1]
    gap = side // 12
    grid_rows = math.ceil(blocks / ATTENTION_COLUMNS)
    fig, ax = agg_figure(WIDTH, 0.15 + grid_rows * WIDTH / ATTENTION_COLUMNS)
    ax.imshow(np.nan_to_num(mosaic(tiles, ATTENTION_COLUMNS, gap), nan=1.0))  # white gaps
    for i in range(blocks):
        top, left = (i // ATTENTION_COLUMNS) * (side + gap), (i % ATTENTION_COLUMNS) * (side + gap)
        ax.text(left + side * 0.04, top + side * 0.04, str(i + 1), fontsize=11, va="top",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})
    ax.set_axis_off()
    return png_bytes(fig, DPI)


def lens_png(steps: Walkthrough, classes: tuple[str, ...] | list[str]) -> bytes:
    """The logit lens as a heat map: one row per block, one column per class, the probability
    in percent where it is at least 10 %."""
    lens = steps.lens.double().numpy()  # (blocks, classes)
    blocks = len(lens)
    fig, ax = agg_figure(WIDTH, 1.9 + 0.27 * blocks)
    ax.imshow(lens, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    for b, row in enumerate(lens):
        for c, p in enumerate(row):
            if p >= 0.1:
                ax.text(c, b, f"{100 * p:.0f}", ha="center", va="center", fontsize=8.5,
                        color="black" if p > 0.6 else "white")
    ax.set_xticks(range(len(classes)), classes, rotation=55, ha="right", fontsize=10)
    ax.set_yticks(range(blocks), [str(b + 1) for b in range(blocks)], fontsize=9.5)
    ax.set_ylabel("after block", fontsize=10)
    ax.tick_params(length=0)
    final = int(lens[-1].argmax())
    settled = int(settled_block(torch.from_numpy(lens)[None])[0]) + 1
    ax.set_title(f"Class probabilities (%) read from [CLS]\n'{classes[final]}' from block "
                 f"{settled} on, {lens[-1, final]:.0%} at the end", fontsize=10)
    return png_bytes(fig, DPI)


def walkthrough_pngs(image: np.ndarray, steps: Walkthrough, classes: tuple[str, ...] | list[str]
                     ) -> dict[str, bytes]:
    """Every step's figure by name: patches, tokens, attention, lens."""
    return {"patches": patches_png(image, steps), "tokens": tokens_png(steps),
            "attention": attention_png(image, steps), "lens": lens_png(steps, classes)}
