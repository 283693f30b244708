"""How faithful is a patch map? Deletion and insertion scores, as plain torch/numpy functions.

A map ranks the patches of one image (most important first). **Deletion** removes the patches in
that order (each removed patch is set to the baseline, by default 0 in the model's normalised
input space, i.e. the data set's mean colour) and follows the probability of the target class;
**insertion** starts from the all-baseline image and puts the patches back in the same order.
The score of a curve is its area over the fraction of patches changed, ``[0, 1]`` (trapezoid
rule). A map that explains the prediction well has a **low deletion** score (the class
probability collapses as soon as its top patches go) and a **high insertion** score (a few of
its top patches suffice). (Petsiuk, Das & Saenko 2018, "RISE", arXiv:1806.07421, sec. 4.)

Two baselines give the numbers a scale for the same image: a **random** order of the patches,
and **centre-first** (patches by distance from the image centre: photographers centre their
subject, so a map must beat this guess to show more than that).

All curves of one image are evaluated in one batched pass of the model (``perturbed_count``
inputs). The step count is the price: the attention tab scores at ``PAGE_STEPS`` (19 inputs for
three maps), docs/faithfulness.md's table at ``DEFAULT_STEPS`` (44);
``benchmarks/bench_faithfulness.py --compare-steps`` measures how far apart the two are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_STEPS = 8  # curve points minus one: patches are removed in ``steps`` equal groups
# The attention tab's steps: 3 inner points per curve instead of 7, so a request costs 19 inputs
# instead of 44. Over 200 CIFAR-10 test images its scores lie 0.03 from the 8-step ones on
# average, the verdict against a centre guess agrees for 88 % of the images and the one-line
# reading for 82 %, as often as the 8-step reading with another random order (83 %); at 2 steps
# only 56 % (docs/faithfulness.md).
PAGE_STEPS = 4
BATCH_SIZE = 256  # inputs per forward pass
# The map counts as explaining the prediction better than a baseline when its deletion score is
# lower and its insertion score higher, by at least this much on at least one of the two.
MARGIN = 0.02


def check_map(heatmap: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The map as a float64 (rows, cols) tensor; ``ValueError`` unless 2-D, non-empty, finite."""
    m = torch.as_tensor(np.asarray(heatmap), dtype=torch.float64)
    if m.ndim != 2 or m.numel() == 0:
        raise ValueError(f"a map must be a non-empty (rows, cols) array, got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("the map has NaN or infinite values")
    return m


def patch_order(heatmap: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Patch indices (row-major) from the highest map value to the lowest; ties in index order."""
    return torch.sort(-check_map(heatmap).flatten(), stable=True).indices


def centre_map(rows: int, cols: int) -> torch.Tensor:
    """A (rows, cols) map that is highest at the centre: minus the distance of each patch centre
    from the image centre (in patch units, aspect kept)."""
    r = torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2
    c = torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2
    return -torch.sqrt(r[:, None] ** 2 + c[None, :] ** 2)


def random_map(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A (rows, cols) map of independent uniform values (a random patch order), seeded."""
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def step_counts(num_patches: int, steps: int) -> list[int]:
    """How many patches are changed at each of the ``steps + 1`` curve points: 0 ... num_patches,
    evenly spaced (rounded down)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    steps = min(steps, num_patches)
    return [num_patches * k // steps for k in range(steps + 1)]


def patch_masks(order: torch.Tensor, counts: list[int], grid: tuple[int, int],
                size: tuple[int, int]) -> torch.Tensor:
    """(..., len(counts), H, W) float masks: 1 on the first ``counts[k]`` patches of ``order``
    (one order (P,), or several (..., P) at once).

    The patch grid tiles the input: patch ``(r, c)`` covers rows ``r * H // rows`` to
    ``(r + 1) * H // rows`` (and likewise columns).
    """
    rows, cols = grid
    height, width = size
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1]).expand_as(order))  # rank[p]: when p changes
    on = rank[..., None, :] < torch.tensor(counts)[:, None]  # (..., K, rows * cols)
    on = on.view(*on.shape[:-1], rows, cols).float()
    ys = (torch.arange(height) * rows) // height  # patch row of every pixel row
    xs = (torch.arange(width) * cols) // width
    return on[..., ys, :][..., xs]  # (..., K, H, W)


def area(curve: np.ndarray | torch.Tensor) -> float:
    """Area under a curve sampled at equal steps over [0, 1] (trapezoid rule)."""
    y = np.asarray(curve, dtype=np.float64)
    if y.ndim != 1 or y.size < 2:
        raise ValueError(f"a curve needs at least two points, got shape {y.shape}")
    return float(((y[1:] + y[:-1]) / 2).sum() / (y.size - 1))


def perturbed_count(steps: int, maps: int = 3, image_known: bool = True) -> int:
    """Inputs one batched pass evaluates for ``maps`` maps at ``steps`` steps (on a grid of at
    least ``steps`` patches): ``steps - 1`` inner points per deletion and insertion curve, the
    all-baseline image once for all, and the image itself unless its probability is known."""
    return 2 * maps * (steps - 1) + 1 + (not image_known)


def curves(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
           maps: dict[str, torch.Tensor | np.ndarray], target: int, steps: int = DEFAULT_STEPS,
           baseline: float = 0.0, batch_size: int = BATCH_SIZE,
           image_probability: float | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Deletion and insertion curves of every map (name -> (rows, cols), all on one patch grid)
    for one preprocessed input ``x`` (1, C, H, W) or (C, H, W), in one batched pass of ``model``
    (logits from a batch, in eval mode). ``image_probability``: the probability of ``target``
    for ``x``, when the caller has it from its own forward pass (None: evaluated here).

    Returns name -> {"deletion": (K,), "insertion": (K,)} probabilities, K = steps + 1 (fewer
    when the grid has fewer patches).
    """
    x = x[0] if x.ndim == 4 else x
    if x.ndim != 3:
        raise ValueError(f"expected one input (C, H, W) or (1, C, H, W), got shape {tuple(x.shape)}")
    checked = {name: check_map(m) for name, m in maps.items()}
    grids = {tuple(m.shape) for m in checked.values()}
    if len(grids) != 1:
        raise ValueError(f"all maps must share one patch grid, got {sorted(grids)}")
    grid = grids.pop()
    counts = step_counts(grid[0] * grid[1], steps)
    # Every curve starts and ends at the image itself or the all-baseline image: those two are
    # evaluated once (the image not at all when its probability is given); each curve adds only
    # its inner points.
    inner = counts[1:-1]
    orders = torch.stack([patch_order(m) for m in checked.values()])  # (maps, P)
    masks = patch_masks(orders, inner, grid, tuple(x.shape[-2:])).flatten(0, 1)  # (maps * n, H, W)
    changed = masks[:, None].to(x.dtype)  # (maps * n, 1, H, W)
    ends = [torch.full_like(x, baseline)[None]] + ([x[None]] if image_probability is None else [])
    batch = torch.cat([*ends, x[None] * (1.0 - changed) + baseline * changed,  # deletion
                       x[None] * changed + baseline * (1.0 - changed)])  # insertion
    with torch.inference_mode():
        probs = torch.cat([model(part).float().softmax(dim=-1)[:, target]
                           for part in batch.split(batch_size)]).numpy().astype(np.float64)
    empty = probs[0]
    full = probs[1] if image_probability is None else float(image_probability)
    n, total = len(inner), len(checked) * len(inner)
    deleted, inserted = probs[len(ends):len(ends) + total], probs[len(ends) + total:]
    return {name: {"deletion": np.concatenate([[full], deleted[i * n:(i + 1) * n], [empty]]),
                   "insertion": np.concatenate([[empty], inserted[i * n:(i + 1) * n], [full]])}
            for i, name in enumerate(checked)}


@dataclass(frozen=True)
class Scores:
    """Deletion and insertion areas of one map (lower deletion, higher insertion: better)."""
    deletion: float
    insertion: float


@dataclass(frozen=True)
class Faithfulness:
    """The scores of a map and of the two baselines for the same image and class."""
    target: int
    map: Scores
    random: Scores
    centre: Scores
    steps: int

    def reading(self) -> str:
        """One line saying whether the map explains the prediction better than the baselines."""
        return reading(self.map, self.random, self.centre)

    def to_dict(self) -> dict:
        return {"target": self.target, "steps": self.steps,
                **{name: {"deletion": round(s.deletion, 4), "insertion": round(s.insertion, 4)}
                   for name, s in (("map", self.map), ("random", self.random), ("centre", self.centre))}}


def beats(a: Scores, b: Scores, margin: float = MARGIN) -> bool:
    """``a`` explains better than ``b``: no worse on both scores, better by ``margin`` on one."""
    no_worse = a.deletion <= b.deletion and a.insertion >= b.insertion
    return no_worse and max(b.deletion - a.deletion, a.insertion - b.insertion) >= margin


def reading(m: Scores, random: Scores, centre: Scores) -> str:
    """A one-line verdict on the map against the random and centre-first orders."""
    if beats(m, centre):
        return "This map explains the prediction better than a centre guess (and a random order)." \
            if beats(m, random) else "This map explains the prediction better than a centre guess."
    if beats(m, random):
        return "This map explains the prediction no better than a centre guess, though better than random."
    return "This map explains the prediction no better than a centre guess or a random order."


def faithfulness(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 heatmap: torch.Tensor | np.ndarray, target: int | None = None,
                 steps: int = DEFAULT_STEPS, seed: int = 0, baseline: float = 0.0,
                 batch_size: int = BATCH_SIZE, image_probability: float | None = None
                 ) -> Faithfulness:
    """Deletion and insertion scores of ``heatmap`` and of the random (``seed``) and centre-first
    baselines for the input ``x`` (1, C, H, W) and class ``target`` (None: the class the model
    predicts for ``x``), in one batched pass. ``image_probability``: the probability of
    ``target`` for ``x``, when the caller has it from its own forward pass (needs ``target``)."""
    m = check_map(heatmap)
    rows, cols = m.shape
    if target is None:
        if image_probability is not None:
            raise ValueError("image_probability needs the target class it is the probability of")
        with torch.inference_mode():
            probs = model(x if x.ndim == 4 else x[None]).float().softmax(dim=-1)[0]
        target, image_probability = int(probs.argmax()), float(probs.max())
    maps = {"map": m, "random": random_map(rows, cols, seed), "centre": centre_map(rows, cols)}
    got = curves(model, x, maps, target, steps, baseline, batch_size, image_probability)
    scores = {name: Scores(area(c["deletion"]), area(c["insertion"])) for name, c in got.items()}
    return Faithfulness(target, steps=len(got["map"]["deletion"]) - 1, **scores)


def mean_scores(scores: list[Scores]) -> Scores:
    """The mean deletion and insertion over images."""
    if not scores:
        raise ValueError("no scores to average")
    return Scores(math.fsum(s.deletion for s in scores) / len(scores),
                  math.fsum(s.insertion for s in scores) / len(scores))
