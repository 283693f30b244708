"""Deletion and insertion scores (``vit_demo.faithfulness``) against the definition written out
here as a plain numpy loop, on a model small enough to reason about and on a tiny ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import save_tiny_scratch
from vit_demo.faithfulness import (Faithfulness, Scores, area, beats, centre_map, curves,
                                   faithfulness, mean_scores, patch_masks, patch_order,
                                   random_map, reading, step_counts)

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


def test_orders_steps_and_masks():
    assert patch_order(np.array([[0.1, 0.5], [0.5, 0.2]])).tolist() == [1, 2, 3, 0]
    assert step_counts(64, 8) == [0, 8, 16, 24, 32, 40, 48, 56, 64]
    assert step_counts(6, 4) == [0, 1, 3, 4, 6]
    assert step_counts(4, 16) == [0, 1, 2, 3, 4]  # never more steps than patches
    masks = patch_masks(torch.tensor([3, 0, 1, 2]), [0, 1, 2], (2, 2), (4, 6))
    assert masks.shape == (3, 4, 6) and masks[0].sum() == 0
    assert masks[1, 2:, 3:].all() and masks[1].sum() == 6  # patch 3: bottom right
    assert masks[2, :2, :3].all() and masks[2].sum() == 12
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
