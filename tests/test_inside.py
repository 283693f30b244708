"""The "Inside the model" figures: each computation against a formula written out here in numpy
or plain loops, cases with known answers, the drawings, the CLI, and /inside through launched
apps (the tiny scratch model, and a random-weight ViT-B/16)."""

from __future__ import annotations

import io
import itertools
import math
import time

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from vit_demo.adapters import ModelKind, adapter_for
from vit_demo.attention import forward_with_attention
from vit_demo.cli import main
from vit_demo.data import preprocess_batch
from vit_demo.inference import preprocess
from vit_demo.inside import (attention_distance_over, filter_components,
                             mean_attention_distance, patch_embedding_weight,
                             patch_position_embedding, position_similarity,
                             similarity_by_grid_distance, uniform_attention_distance)
from vit_demo.inside_plots import distance_figure, mosaic, weight_figures
from vit_demo.model import PRESETS, ViT
from vit_demo.registry import SCRATCH_CHECKPOINT
from vit_demo.ui import inside as inside_tab

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_scratch(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    model = ViT(PRESETS["cifar10-64x2/4"])
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def small_timm(seed: int = 0, **kwargs) -> VisionTransformer:
    """A timm ViT on a 2x3 grid of 8-pixel patches, with random weights."""
    torch.manual_seed(seed)
    cfg = dict(img_size=(16, 24), patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=4)
    model = VisionTransformer(**{**cfg, **kwargs})
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


MODELS = {"scratch": lambda: (tiny_scratch(), "scratch"),
          "timm": lambda: (small_timm(), "timm"),
          "timm-no-embed-class": lambda: (small_timm(no_embed_class=True), "timm")}


# ----------------------------------------------------------------------------------------------
# The computations against independent formulas


@pytest.mark.parametrize("name", MODELS)
def test_filter_components_are_numpy_pca(name):
    model, _ = MODELS[name]()
    w = model.patch_embed.proj.weight.detach().double().numpy()  # (dim, C, ph, pw)
    flat = w.reshape(len(w), -1)
    centred = flat - flat.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(centred.T @ centred)  # ascending
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
    got = filter_components(patch_embedding_weight(model))
    k = 28
    assert tuple(got.filters.shape) == (k, *w.shape[1:])
    mine = got.filters.double().numpy().reshape(k, -1)
    # the same directions up to sign: |cos| = 1
    np.testing.assert_allclose(np.abs(np.sum(mine * eigvec[:, :k].T, axis=1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(got.explained.numpy(), eigval[:k] / eigval.sum(), rtol=1e-4, atol=1e-7)
    peaks = mine[np.arange(k), np.abs(mine).argmax(axis=1)]
    assert (peaks > 0).all()  # the sign convention


def test_filter_components_are_capped_at_the_filter_size():
    weight = torch.randn(40, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    got = filter_components(weight, k=28)
    assert tuple(got.filters.shape) == (12, 3, 2, 2)
    assert float(got.explained.sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_position_similarity_is_the_cosine_by_loops_without_cls(name):
    model, kind = MODELS[name]()
    rows, cols = adapter_for(kind).embedding_grid(model)
    table = model.pos_embed.detach()[0].double().numpy()
    patches = table[-rows * cols:]  # the class token's position (when there is one) comes first
    assert len(table) == rows * cols + (0 if name == "timm-no-embed-class" else 1)
    got = position_similarity(patch_position_embedding(model, (rows, cols)), (rows, cols)).numpy()
    assert got.shape == (rows, cols, rows, cols)
    for r, c, r2, c2 in itertools.product(range(rows), range(cols), range(rows), range(cols)):
        a, b = patches[r * cols + c], patches[r2 * cols + c2]
        cosine = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
        assert got[r, c, r2, c2] == pytest.approx(cosine, abs=1e-5)


def loop_distance(attn: np.ndarray, grid: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """Mean attention distance (heads,) of one layer's attention (B, heads, 1+N, 1+N), by loops."""
    B, H = attn.shape[:2]
    rows, cols = grid
    out = np.zeros(H)
    for h in range(H):
        total = 0.0
        for b, q in itertools.product(range(B), range(rows * cols)):
            weights = attn[b, h, 1 + q, 1:]
            weights = weights / weights.sum()
            for k in range(rows * cols):
                dy = (q // cols - k // cols) * patch[0]
                dx = (q % cols - k % cols) * patch[1]
                total += weights[k] * math.hypot(dy, dx)
        out[h] = total / (B * rows * cols)
    return out


def test_mean_attention_distance_matches_loops():
    grid, patch = (2, 3), (4, 5)
    g = torch.Generator().manual_seed(1)
    layers = [(3 * torch.randn(2, 3, 7, 7, generator=g)).softmax(-1) for _ in range(2)]
    got = mean_attention_distance(layers, grid, patch)
    assert got.shape == (2, 3)
    for layer, attn in zip(got, layers):
        np.testing.assert_allclose(layer.numpy(), loop_distance(attn.double().numpy(), grid, patch),
                                   rtol=1e-5)


def test_identity_attention_has_distance_zero():
    attn = torch.eye(1 + 16).expand(2, 4, 17, 17)  # every token attends to itself only
    assert mean_attention_distance([attn], (4, 4), (4, 4)).abs().max() == 0


def test_uniform_attention_on_a_2x2_grid():
    # From each of the 4 patches (4 px): itself 0, two neighbours 4, the diagonal 4*sqrt(2).
    expected = (0 + 4 + 4 + 4 * math.sqrt(2)) / 4
    attn = torch.full((1, 2, 5, 5), 1 / 5)  # [CLS]'s share is dropped, the rest renormalised
    got = mean_attention_distance([attn], (2, 2), (4, 4))
    np.testing.assert_allclose(got.numpy(), [[expected, expected]], rtol=1e-6)
    assert uniform_attention_distance((2, 2), (4, 4)) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["scratch", "timm"])
def test_attention_distance_over_batches_is_the_distance_of_the_model_attention(name):
    model, kind = MODELS[name]()
    h, w = (32, 32) if kind == "scratch" else (16, 24)
    x = torch.randn(5, 3, h, w, generator=torch.Generator().manual_seed(2))
    fused = [getattr(b.attn, "fused_attn", None) for b in model.blocks]
    got = attention_distance_over(model, kind, x, batch_size=2)  # batches of 2, 2 and 1
    with torch.inference_mode():
        _, attentions, grid = forward_with_attention(model, kind, x)
    patch = tuple(model.patch_embed.proj.kernel_size)
    expected = np.stack([loop_distance(a.double().numpy(), grid, patch) for a in attentions])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)
    assert [getattr(b.attn, "fused_attn", None) for b in model.blocks] == fused


def test_similarity_by_grid_distance_on_a_row_and_column_code():
    rows = cols = 3
    # position (r, c) = one-hot(r) ++ one-hot(c): cosine = ([r == r2] + [c == c2]) / 2
    pos = torch.cat([torch.eye(rows).repeat_interleave(cols, 0), torch.eye(cols).repeat(rows, 1)], 1)
    summary = similarity_by_grid_distance(position_similarity(pos, (rows, cols)))
    assert summary["neighbours"] == pytest.approx(0.5)
    assert summary["same_row_or_column"] == pytest.approx(0.5)
    assert summary["others"] == pytest.approx(0.0)
    assert summary["correlation_with_grid_distance"] < -0.5


# ----------------------------------------------------------------------------------------------
# Drawings and CLI


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


def test_mosaic_places_tiles_row_by_row_with_gaps():
    tiles = np.arange(5 * 2 * 2, dtype=float).reshape(5, 2, 2)
    out = mosaic(tiles, columns=3, gap=1)
    assert out.shape == (5, 8)
    np.testing.assert_array_equal(out[0:2, 3:5], tiles[1])
    np.testing.assert_array_equal(out[3:5, 3:5], tiles[4])
    assert np.isnan(out[2]).all() and np.isnan(out[:, 2]).all() and np.isnan(out[3:, 6:]).all()


def test_figures_are_pngs_with_their_numbers():
    model = tiny_scratch()
    weights = weight_figures(model, "scratch", "tiny")
    distance = distance_figure(model, "scratch", torch.randn(3, 3, 32, 32), "3 images", "tiny")
    for png in (weights.filters_png, weights.positions_png, distance.png):
        width, height = png_size(png)
        assert 400 < width < 1000 and 300 < height < 1000
    numbers = weights.to_json()
    assert numbers["grid_size"] == [8, 8] and numbers["filter_shape"] == [3, 4, 4]
    assert np.asarray(numbers["position_similarity"]).shape == (64, 64)
    assert distance.to_json()["images"] == 3
    assert np.asarray(distance.to_json()["mean_attention_distance_px"]).shape == (2, 2)


def test_cli_writes_the_three_pngs(tiny_weights, data_dir, tmp_path, capsys):
    main(["inside", "--name", SCRATCH_CHECKPOINT, "--weights-dir", str(tiny_weights),
          "--out", str(tmp_path), "--images", "4", *(["--data-dir", data_dir] if data_dir else [])])
    for figure in ("filters", "positions", "distance"):
        png_size((tmp_path / f"inside-{SCRATCH_CHECKPOINT}-{figure}.png").read_bytes())
    assert "layer 2: mean attention distance" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# /inside through the launched apps


def read_png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def expected_distance(loaded, x: torch.Tensor) -> np.ndarray:
    return attention_distance_over(loaded.model, loaded.kind, x).numpy()


def test_inside_api_scratch_alone(app, client, cifar_test):
    _, ctx = app
    loaded = ctx.registry.get("scratch")
    *pictures, notes, values = client.predict("scratch", None, api_name="/inside")
    assert all(p is not None for p in pictures[:3]) and pictures[3:] == [None, None, None]
    assert read_png(pictures[0]).shape[2] == 3
    got = values["scratch"]
    assert got["grid_size"] == [8, 8] and got["patch_size"] == [4, 4] and got["input_size"] == [32, 32]
    expected = filter_components(patch_embedding_weight(loaded.model))
    np.testing.assert_allclose(got["explained_variance"], expected.explained.numpy(), atol=1e-4)
    pos = patch_position_embedding(loaded.model, (8, 8))
    np.testing.assert_allclose(got["position_similarity"],
                               position_similarity(pos, (8, 8)).reshape(64, 64).numpy(), atol=1e-3)
    distance = got["attention_distance"]
    assert distance["images"] == 256 and distance["source"] == "256 CIFAR-10 test images"
    x = preprocess_batch(cifar_test.x[:256], loaded.data_cfg)
    np.testing.assert_allclose(distance["mean_attention_distance_px"], expected_distance(loaded, x),
                               rtol=1e-3)
    assert "Scratch ViT" in notes and "uniform attention" in notes


def test_inside_is_cached_and_fast_the_second_time(app):
    _, ctx = app
    inside_tab.inside(ctx, "scratch", None)
    start = time.perf_counter()
    first, second = inside_tab.inside(ctx, "scratch", None), inside_tab.inside(ctx, "scratch", None)
    assert (time.perf_counter() - start) / 2 < 1.0
    assert first[:3] == second[:3]  # the same files


def test_inside_api_side_by_side_shows_the_ready_model_and_says_why_not_the_other(client):
    *pictures, notes, values = client.predict("both", None, api_name="/inside")
    assert all(p is not None for p in pictures[:3]) and pictures[3:] == [None, None, None]
    assert values["vit-b16"]["available"] is False
    assert values["vit-b16"]["reason"] in notes and values["scratch"]["available"] is True


def test_inside_api_distance_of_an_uploaded_image(app, client, cifar_test, tmp_path):
    _, ctx = app
    path = tmp_path / "image.png"
    Image.fromarray(cifar_test.x[7].numpy()).save(path)
    *_, values = client.predict("scratch", handle_file(str(path)), api_name="/inside")
    distance = values["scratch"]["attention_distance"]
    assert distance["images"] == 1 and distance["source"] == "your image"
    loaded = ctx.registry.get("scratch")
    x = preprocess(Image.open(path).convert("RGB"), loaded.data_cfg)
    np.testing.assert_allclose(distance["mean_attention_distance_px"], expected_distance(loaded, x),
                               rtol=1e-3)


def test_inside_api_refuses_bad_input_with_a_reason(client, tmp_path):
    with pytest.raises(AppError, match="Unknown model 'nope'"):
        client.predict("nope", None, api_name="/inside")
    text = tmp_path / "text.png"
    text.write_text("not a picture\n")
    with pytest.raises(AppError, match="Cannot use this file"):
        client.predict("scratch", handle_file(str(text)), api_name="/inside")


def test_inside_api_vit_b16_beside_scratch(vitb16_app, cifar_test, monkeypatch):
    monkeypatch.setitem(inside_tab.DISTANCE_IMAGES, ModelKind.TIMM, 2)
    url, ctx = vitb16_app
    client = Client(url, verbose=False)
    try:
        *pictures, notes, values = client.predict("both", None, api_name="/inside")
    finally:
        client.close()
    assert all(p is not None for p in pictures)
    assert read_png(pictures[3]).shape[2] == 3
    got = values["vit-b16"]
    assert got["grid_size"] == [14, 14] and got["patch_size"] == [16, 16]
    assert got["filter_shape"] == [3, 16, 16] and len(got["explained_variance"]) == 28
    model = ctx.registry.get("vit-b16").model
    pos = model.pos_embed.detach()[0, 1:]  # (196, 768): the class token's position left out
    unit = torch.nn.functional.normalize(pos.double(), dim=-1)
    np.testing.assert_allclose(got["position_similarity"], (unit @ unit.T).numpy(), atol=1e-3)
    distance = got["attention_distance"]
    assert distance["images"] == 2 and np.asarray(distance["mean_attention_distance_px"]).shape == (12, 12)
    x = preprocess_batch(cifar_test.x[:2], ctx.registry.get("vit-b16").data_cfg)
    np.testing.assert_allclose(distance["mean_attention_distance_px"],
                               expected_distance(ctx.registry.get("vit-b16"), x), rtol=1e-3)
    assert values["scratch"]["attention_distance"]["images"] == 256
    assert "ViT-B/16" in notes
