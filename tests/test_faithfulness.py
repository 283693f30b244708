"""Deletion and insertion scores (``vit_demo.faithfulness``) against the definition written out
here as a plain numpy loop, on a model small enough to reason about and on a tiny ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import save_tiny_scratch
from vit_demo.faithfulness import (PAGE_STEPS, Faithfulness, Scores, area, beats, centre_map,
                                   curves, faithfulness, mean_scores, patch_masks, patch_order,
                                   perturbed_count, random_map, reading, step_counts)

pytestmark = pytest.mark.usefixtures("one_thread")


def np_curves(predict, x: np.ndarray, heatmap: np.ndarray, target: int, steps: int,
              baseline: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves by the definition, one step at a time.

    ``x`` is (C, H, W); the (rows, cols) map tiles it into equal patches. Patches are ranked by
    the map (highest first, ties by index); at step k the first ``n * k // steps`` patches are
    set to ``baseline`` (deletion) or are the only ones not at ``baseline`` (insertion).
    """
    rows, cols = heatmap.shape
    _, height, width = x.shape
    ph, pw = height // rows, width // cols
    order = sorted(range(rows * cols), key=lambda p: (-heatmap.flat[p], p))
    n = rows * cols
    deletion, insertion = [], []
    for k in range(steps + 1):
        changed = order[:n * k // steps]
        deleted = x.copy()
        inserted = np.full_like(x, baseline)
        for p in changed:
            r, c = divmod(p, cols)
            deleted[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = baseline
            inserted[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = x[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
        deletion.append(predict(deleted)[target])
        insertion.append(predict(inserted)[target])
    return np.array(deletion), np.array(insertion)


def np_area(curve: np.ndarray) -> float:
    """Trapezoid area over [0, 1]: the mean of each pair of neighbours, averaged over steps."""
    return sum((curve[i] + curve[i + 1]) / 2 for i in range(len(curve) - 1)) / (len(curve) - 1)


class Linear(torch.nn.Module):
    """Logits linear in the pixels: a model whose probabilities are easy to follow."""

    def __init__(self, shape, classes: int = 4, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(classes, *shape, generator=gen, dtype=torch.float64))

    def forward(self, x):
        return torch.einsum("bchw,kchw->bk", x.double(), self.w)


def softmax_predict(model):
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)[None]).softmax(-1)[0].numpy()
    return predict


@pytest.mark.parametrize("grid, size, steps", [((4, 4), (8, 8), 16), ((4, 4), (8, 8), 5),
                                               ((2, 3), (6, 9), 6), ((3, 2), (12, 4), 2)])
def test_curves_and_areas_equal_the_definition(grid, size, steps):
    rng = np.random.default_rng(0)
    model = Linear((3, *size)).eval()
    x = rng.normal(size=(3, *size))
    maps = {"a": rng.uniform(size=grid), "ties": np.round(rng.uniform(size=grid), 1),
            "centre": centre_map(*grid).numpy()}
    got = curves(model, torch.from_numpy(x)[None], maps, target=2, steps=steps, baseline=0.25)
    for name, m in maps.items():
        deletion, insertion = np_curves(softmax_predict(model), x, m, 2, steps, baseline=0.25)
        np.testing.assert_allclose(got[name]["deletion"], deletion, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[name]["insertion"], insertion, rtol=1e-6, atol=1e-7)
        assert area(got[name]["deletion"]) == pytest.approx(np_area(deletion), abs=1e-6)
        assert area(got[name]["insertion"]) == pytest.approx(np_area(insertion), abs=1e-6)
        # the ends: nothing removed is the image itself, everything removed is the baseline
        full, empty = softmax_predict(model)(x)[2], softmax_predict(model)(np.full_like(x, 0.25))[2]
        assert got[name]["deletion"][0] == pytest.approx(full) == got[name]["insertion"][-1]
        assert got[name]["insertion"][0] == pytest.approx(empty) == got[name]["deletion"][-1]


def test_scores_of_a_tiny_vit_equal_the_definition():
    model = save_tiny_scratch_model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 32, 32)).astype(np.float32)
    heatmap = rng.uniform(size=(8, 8))
    result = faithfulness(model, torch.from_numpy(x)[None], heatmap, steps=8, seed=4)
    with torch.no_grad():
        predicted = int(model(torch.from_numpy(x)[None]).argmax())
    assert result.target == predicted and result.steps == 8
    predict = softmax_predict(model)
    for name, m in (("map", heatmap), ("random", random_map(8, 8, 4).numpy()),
                    ("centre", centre_map(8, 8).numpy())):
        deletion, insertion = np_curves(lambda a: predict(a.astype(np.float32)), x, m, predicted, 8)
        scores = getattr(result, name)
        assert scores.deletion == pytest.approx(np_area(deletion), abs=1e-5)
        assert scores.insertion == pytest.approx(np_area(insertion), abs=1e-5)


def save_tiny_scratch_model():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        return save_tiny_scratch(Path(folder), "tiny", seed=2)


class PresentWeight(torch.nn.Module):
    """Two classes on a 2 x 3 image of one-pixel patches, each pixel 1 (present) or 0 (the
    baseline): the probability of class 1 is the weight of the present patches over the total,
    weights 6, 5, 4, 3, 2, 1 (row-major, out of 21). Records the inputs of every call."""

    weights = torch.tensor([[6.0, 5.0, 4.0], [3.0, 2.0, 1.0]], dtype=torch.float64)

    def __init__(self):
        super().__init__()
        self.calls: list[torch.Tensor] = []

    def forward(self, x):
        self.calls.append(x.clone())
        present = (x[:, 0].double() * self.weights).sum(dim=(1, 2))
        return torch.stack([torch.log(21.0 - present), torch.log(present)], dim=-1)


# Areas worked out by hand for PresentWeight. Ranked by weight, insertion puts back weights
# 6, 5, 4, 3, 2, 1; centre-first ranks the middle column (5, 2), then the corners in index order
# (6, 4, 3, 1). At 3 steps (2 patches a step) insertion passes through 0, 11, 18, 21 (by weight)
# and 0, 7, 17, 21 (centre first), out of 21; the trapezoid area of points y0..y3 is
# (y0 + 2 y1 + 2 y2 + y3) / 6. At 2 steps: 0, 15, 21 and 0, 13, 21, area (y0 + 2 y1 + y2) / 4.
# At 1 step every curve is its two ends: 1/2. Deletion passes through 21 minus the same numbers.
HAND_INSERTION = {3: {"weight": (2 * 11 + 2 * 18 + 21) / 6 / 21, "centre": (2 * 7 + 2 * 17 + 21) / 6 / 21},
                  2: {"weight": (2 * 15 + 21) / 4 / 21, "centre": (2 * 13 + 21) / 4 / 21},
                  1: {"weight": 0.5, "centre": 0.5}}


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_areas_of_a_model_with_a_known_probability_equal_hand_worked_values(steps):
    model = PresentWeight()
    x = torch.ones(1, 1, 2, 3)
    maps = {"weight": PresentWeight.weights.numpy(), "centre": centre_map(2, 3)}
    got = curves(model, x, maps, target=1, steps=steps)
    for name, insertion in HAND_INSERTION[steps].items():
        assert area(got[name]["insertion"]) == pytest.approx(insertion, abs=1e-6)
        assert area(got[name]["deletion"]) == pytest.approx(1 - insertion, abs=1e-6)
    # every step: 6 points, the exact fractions of present weight
    fine = curves(model, x, maps, target=1, steps=6)
    np.testing.assert_allclose(fine["weight"]["insertion"], np.array([0, 6, 11, 15, 18, 20, 21]) / 21, atol=1e-6)
    np.testing.assert_allclose(fine["centre"]["deletion"], np.array([21, 16, 14, 8, 4, 1, 0]) / 21, atol=1e-6)


@pytest.mark.parametrize("steps", [2, PAGE_STEPS, 6])
def test_one_pass_evaluates_each_end_once_and_the_image_not_at_all_when_known(steps):
    """Three maps, ``steps - 1`` inner points per curve: one forward pass of
    ``perturbed_count`` inputs, the all-baseline image among them once; the image itself once
    more only when its probability is not given, and then as the curves' shared end."""
    model = PresentWeight()
    x = torch.ones(1, 1, 2, 3)
    heatmap = np.array([[0.1, 0.9, 0.3], [0.4, 0.5, 0.6]])
    known = faithfulness(model, x, heatmap, target=1, steps=steps, image_probability=0.75)
    (batch,) = model.calls
    assert batch.shape[0] == perturbed_count(steps) == 6 * (steps - 1) + 1
    per_input = batch.flatten(1)
    assert (per_input.sum(1) == 0).sum() == 1 and (per_input.sum(1) == 6).sum() == 0
    model.calls.clear()
    unknown = faithfulness(model, x, heatmap, target=1, steps=steps)
    (batch,) = model.calls
    assert batch.shape[0] == perturbed_count(steps, image_known=False) == perturbed_count(steps) + 1
    assert (batch.flatten(1).sum(1) == 6).sum() == 1
    # the given probability is the curves' shared end: the deletion starts and the insertion
    # ends there, and the scores move by (given - true) / (2 * steps) on each curve
    for name in ("map", "random", "centre"):
        a, b = getattr(known, name), getattr(unknown, name)
        assert a.deletion - b.deletion == pytest.approx((0.75 - 1.0) / (2 * steps), abs=1e-6)
        assert a.insertion - b.insertion == pytest.approx((0.75 - 1.0) / (2 * steps), abs=1e-6)
    model.calls.clear()
    predicted = faithfulness(model, x, heatmap, steps=steps)  # the target from one forward pass
    assert predicted.target == 1 and predicted == unknown
    assert [c.shape[0] for c in model.calls] == [1, perturbed_count(steps)]


def test_orders_steps_and_masks():
    assert patch_order(np.array([[0.1, 0.5], [0.5, 0.2]])).tolist() == [1, 2, 3, 0]
    assert step_counts(64, 8) == [0, 8, 16, 24, 32, 40, 48, 56, 64]
    assert step_counts(6, 4) == [0, 1, 3, 4, 6]
    assert step_counts(4, 16) == [0, 1, 2, 3, 4]  # never more steps than patches
    masks = patch_masks(torch.tensor([3, 0, 1, 2]), [0, 1, 2], (2, 2), (4, 6))
    assert masks.shape == (3, 4, 6) and masks[0].sum() == 0
    assert masks[1, 2:, 3:].all() and masks[1].sum() == 6  # patch 3: bottom right
    assert masks[2, :2, :3].all() and masks[2].sum() == 12
    orders = torch.tensor([[3, 0, 1, 2], [0, 1, 2, 3]])  # several orders at once: each its own
    both = patch_masks(orders, [0, 1, 2], (2, 2), (4, 6))
    assert both.shape == (2, 3, 4, 6) and torch.equal(both[0], masks)
    assert torch.equal(both[1], patch_masks(torch.tensor([0, 1, 2, 3]), [0, 1, 2], (2, 2), (4, 6)))
    c = centre_map(3, 3)
    assert int(c.argmax()) == 4 and c[0, 0] == c[2, 2] == c[0, 2]
    assert torch.equal(random_map(4, 4, 7), random_map(4, 4, 7))
    assert not torch.equal(random_map(4, 4, 7), random_map(4, 4, 8))


def test_area_is_the_trapezoid_mean():
    assert area([1.0, 1.0]) == 1.0
    assert area([1.0, 0.0]) == 0.5
    assert area([0.0, 1.0, 0.0]) == 0.5
    assert area(np.linspace(0, 1, 17)) == pytest.approx(0.5)


def test_bad_input_is_refused_with_a_reason():
    model = Linear((3, 4, 4)).eval()
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="rows, cols"):
        faithfulness(model, x, np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        faithfulness(model, x, np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="one patch grid"):
        curves(model, x, {"a": np.ones((2, 2)), "b": np.ones((4, 1))}, 0)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        curves(model, x, {"a": np.ones((2, 2))}, 0, steps=0)
    with pytest.raises(ValueError, match="at least two points"):
        area([0.5])
    with pytest.raises(ValueError, match="needs the target class"):
        faithfulness(model, x, np.ones((2, 2)), image_probability=0.5)


def test_reading_says_better_or_no_better_than_a_centre_guess():
    good, centre, random = Scores(0.2, 0.6), Scores(0.3, 0.45), Scores(0.4, 0.4)
    assert beats(good, centre) and not beats(centre, good)
    assert not beats(Scores(0.29, 0.46), centre)  # within the margin: no better
    assert reading(good, random, centre).startswith("This map explains the prediction better than a centre guess")
    assert "no better than a centre guess, though better than random" in reading(centre, random, centre)
    assert "no better than a centre guess or a random order" in reading(random, random, centre)
    f = Faithfulness(3, good, random, centre, 8)
    assert f.reading() == reading(good, random, centre)
    assert f.to_dict()["map"] == {"deletion": 0.2, "insertion": 0.6}
    assert mean_scores([Scores(0.2, 0.4), Scores(0.4, 0.8)]) == Scores(pytest.approx(0.3), pytest.approx(0.6))
