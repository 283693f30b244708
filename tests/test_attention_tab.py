"""The attention tab: overlay functions on synthetic maps, and /rollout through launched apps on
real CIFAR-10 test images, checked against ``explain`` called directly on the same model with
independently written preprocessing."""

from __future__ import annotations

import html

import matplotlib
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from vit_demo.attention import explain
from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES
from vit_demo.inference import preprocess
from vit_demo.data import DataConfig
from vit_demo.faithfulness import PAGE_STEPS, faithfulness
from vit_demo.overlay import (COLORMAPS, MAX_DISPLAY_SIDE, OUTSIDE_DIM, check_colormap, crop_box,
                              display_photo, display_scale, grid_lines, model_view, normalize,
                              overlay, photo_overlay, upsample, value_grid)

DEFAULTS = {"choice": "both", "method": "rollout", "head_fusion": "mean", "discard_ratio": 0.0,
            "start_layer": 0, "target_class": "predicted", "layer": -1, "head": None,
            "colormap": "jet", "opacity": 0.5, "grid": True, "view": "photo",
            "faithfulness_all": False}


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# Overlay functions


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("grid, image_hw", [((8, 8), (32, 32)), ((3, 5), (48, 80)),
                                            ((14, 14), (224, 224)), ((4, 7), (60, 100))])
def test_hot_patch_is_hottest_inside_its_region(grid, image_hw, interpolation):
    rows, cols = grid
    rng = np.random.default_rng(0)
    image = np.zeros((*image_hw, 3), dtype=np.uint8)
    for r, c in [(0, 0), (rows - 1, cols - 1), (rows // 2, cols // 3), (1, cols - 2)]:
        heatmap = rng.uniform(0.0, 0.2, grid)
        heatmap[r, c] = 1.0
        # gray at full opacity: brightness is the upsampled map itself
        out = overlay(image, heatmap, "gray", opacity=1.0, interpolation=interpolation)
        height, width = out.shape[:2]
        scale = display_scale(image_hw)
        assert (height, width) == (image_hw[0] * scale, image_hw[1] * scale)
        assert min(height, width) >= 224
        patch_h, patch_w = height / rows, width / cols
        for values in (out[..., 0].astype(float), upsample(heatmap, (height, width), interpolation)):
            ys, xs = np.nonzero(values == values.max())
            assert len(ys) > 0
            assert (ys >= r * patch_h).all() and (ys < (r + 1) * patch_h).all(), (r, c)
            assert (xs >= c * patch_w).all() and (xs < (c + 1) * patch_w).all(), (r, c)


def test_opacity_zero_returns_the_image_unchanged():
    rng = np.random.default_rng(1)
    heatmap = rng.uniform(size=(8, 8))
    big = rng.integers(0, 256, (224, 300, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay(big, heatmap, "viridis", opacity=0.0), big)
    np.testing.assert_array_equal(overlay(Image.fromarray(big), heatmap, opacity=0.0), big)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    enlarged = small.repeat(7, axis=0).repeat(7, axis=1)  # 32 px shown at 224 px, pixel blocks
    np.testing.assert_array_equal(overlay(small, heatmap, opacity=0.0), enlarged)


def test_opacity_one_is_the_colormap_alone():
    heatmap = np.arange(6.0).reshape(2, 3)
    out = overlay(np.full((224, 336, 3), 77, np.uint8), heatmap, "viridis", opacity=1.0)
    expected = matplotlib.colormaps["viridis"](upsample(heatmap, (224, 336)))[..., :3] * 255
    np.testing.assert_allclose(out, expected, atol=0.5 + 1e-9)


def test_unknown_colormap_and_bad_arguments_are_refused():
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="Unknown colormap 'nope'"):
        overlay(image, np.ones((8, 8)), "nope")
    with pytest.raises(ValueError, match="Unknown colormap"):
        check_colormap("Jet")
    with pytest.raises(ValueError, match="Opacity must be between 0 and 1"):
        overlay(image, np.ones((8, 8)), opacity=1.5)
    with pytest.raises(ValueError, match="rows, cols"):
        overlay(image, np.ones(64))
    with pytest.raises(ValueError, match="NaN"):
        overlay(image, np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="interpolation"):
        upsample(np.ones((2, 2)), (4, 4), "nearest-ish")
    for name in COLORMAPS:
        check_colormap(name)
        assert name in matplotlib.colormaps


def test_grid_lines_lie_on_the_real_patch_borders():
    image = np.zeros((32, 32, 3), np.uint8)
    heatmap = np.zeros((8, 8))  # constant map: one colour everywhere
    plain = overlay(image, heatmap, "gray", opacity=0.0)
    lined = overlay(image, heatmap, "gray", opacity=0.0, grid=True)
    changed_rows = np.nonzero((lined != plain).any(axis=(1, 2)))[0]
    assert grid_lines(8, 8, (224, 224)) == ([28 * i for i in range(1, 8)],) * 2
    fully_changed = [y for y in changed_rows if (lined[y] != plain[y]).all()]
    assert fully_changed == [28 * i for i in range(1, 8)]
    assert grid_lines(3, 5, (240, 400)) == ([80, 160], [80, 160, 240, 320])


def test_model_view_is_the_model_input_as_an_image(cifar_test):
    pixels = cifar_test.x[7].numpy()
    x = preprocess(Image.fromarray(pixels), CIFAR10_DATA_CONFIG)[0].numpy()
    np.testing.assert_array_equal(model_view(x, CIFAR10_DATA_CONFIG.mean, CIFAR10_DATA_CONFIG.std),
                                  pixels)


def test_normalize_and_value_grid():
    assert normalize([[2.0, 4.0], [3.0, 6.0]]).tolist() == [[0.0, 0.5], [0.25, 1.0]]
    assert normalize(np.full((2, 3), 0.7)).tolist() == [[0.0] * 3] * 2
    grid = value_grid(np.array([[0.0123456, 1.0], [2.5e-5, 123456.0], [0.5, 0.25]]))
    assert grid == [[0.01235, 1.0], [2.5e-05, 123500.0], [0.5, 0.25]]


@pytest.mark.parametrize("size, cfg", [
    ((300, 200), DataConfig((3, 32, 32), (0.5,) * 3, (0.5,) * 3)),
    ((200, 300), DataConfig((3, 224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.9)),
    ((640, 480), DataConfig((3, 224, 224), (0.5,) * 3, (0.5,) * 3, "bilinear", 0.875)),
    ((32, 32), DataConfig((3, 32, 32), (0.5,) * 3, (0.5,) * 3)),
])
def test_crop_box_is_the_region_preprocess_keeps(size, cfg):
    """A photo whose pixels say where they are: the region ``crop_box`` names, resized to the
    model's input, is (up to resampling) what ``preprocess`` gives."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    photo = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.zeros_like(xx)], -1).astype(np.uint8)
    x = preprocess(Image.fromarray(photo), cfg)[0].numpy()
    seen = model_view(x, cfg.mean, cfg.std).astype(float)  # (H, W, 3)
    left, top, right, bottom = crop_box(size, cfg.input_size[1:], cfg.crop_pct)
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    # the model's first and last columns/rows sample the photo near the box's borders
    in_h, in_w = cfg.input_size[1:]
    for got, lo, hi, n, full in ((seen[in_h // 2, :, 0], left, right, in_w, w),
                                 (seen[:, in_w // 2, 1], top, bottom, in_h, h)):
        centres = lo + (np.arange(n) + 0.5) * (hi - lo) / n  # photo coordinate of each input pixel
        np.testing.assert_allclose(got / 255 * (full - 1), centres - 0.5, atol=1.5 + (full / n))


def test_photo_overlay_keeps_the_photo_resolution_and_dims_what_the_model_did_not_see():
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (300, 450, 3), dtype=np.uint8)  # wider than tall
    heatmap = rng.uniform(size=(8, 8))
    box = crop_box((450, 300), (32, 32), 1.0)  # the centre 300 x 300 square
    assert box == pytest.approx((75.0, 0.0, 375.0, 300.0))
    out = photo_overlay(photo, heatmap, box, "gray", opacity=0.5)
    assert out.shape == photo.shape  # the photo's own resolution, not the 32 px input enlarged
    np.testing.assert_allclose(out[:, :75], photo[:, :75] * OUTSIDE_DIM, atol=0.5 + 1e-9)
    np.testing.assert_allclose(out[:, 375:], photo[:, 375:] * OUTSIDE_DIM, atol=0.5 + 1e-9)
    inside = overlay(photo[:, 75:375], heatmap, "gray", opacity=0.5)  # the map on the crop alone
    np.testing.assert_array_equal(out[:, 75:375], inside)
    # at opacity 0 the crop is the photo itself, pixel for pixel
    plain = photo_overlay(photo, heatmap, box, opacity=0.0)
    np.testing.assert_array_equal(plain[:, 75:375], photo[:, 75:375])
    # a big photo is shrunk to MAX_DISPLAY_SIDE on its long side; a small one enlarged by blocks
    big, scale = display_photo(np.zeros((1000, 2000, 3), np.uint8))
    assert big.shape == (MAX_DISPLAY_SIDE // 2, MAX_DISPLAY_SIDE, 3) and scale == MAX_DISPLAY_SIDE / 2000
    small, scale = display_photo(np.zeros((32, 32, 3), np.uint8))
    assert small.shape == (224, 224, 3) and scale == 7
    with pytest.raises(ValueError, match="outside the photo"):
        photo_overlay(photo, heatmap, (500, 0, 600, 10))


# ----------------------------------------------------------------------------------------------
# /rollout through the launched app (tiny scratch model, ViT-B/16 offline)


def _save_png(tmp_path, pixels: np.ndarray, name: str = "img.png") -> str:
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return str(path)


def _cifar_input(pixels: np.ndarray) -> torch.Tensor:
    """CIFAR-10 pixels (32, 32, 3) as the scratch model's (1, 3, 32, 32) input, written out."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    mean = torch.tensor(CIFAR10_DATA_CONFIG.mean).view(3, 1, 1)
    std = torch.tensor(CIFAR10_DATA_CONFIG.std).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def _rollout(client: Client, path: str, **settings):
    args = {**DEFAULTS, **settings}
    return client.predict(handle_file(path), *args.values(), api_name="/rollout")


def _handler_args(**settings) -> tuple:
    """(model choice, typed settings): what the tab's handler ``rollout`` takes after the image,
    from ``DEFAULTS`` with ``settings`` changed."""
    from vit_demo.ui.attention import MapSettings

    form = {**DEFAULTS, **settings}
    return form.pop("choice"), MapSettings(**form)


def _explain_kwargs(settings: dict) -> dict:
    args = {**DEFAULTS, **settings}
    target = None if args["target_class"] == "predicted" else CLASSES.index(args["target_class"])
    return {"method": args["method"], "head_fusion": args["head_fusion"],
            "discard_ratio": args["discard_ratio"], "start_layer": args["start_layer"],
            "target_class": target, "layer": args["layer"], "head": args["head"]}


@pytest.mark.parametrize("settings", [
    {},
    {"head_fusion": "max", "discard_ratio": 0.9, "start_layer": 1, "colormap": "inferno"},
    {"method": "grad", "target_class": "cat", "grid": False},
    {"method": "grad", "start_layer": 1, "opacity": 0.8},
    {"method": "raw", "layer": -1, "head": 1},
    {"method": "raw", "layer": 0, "head_fusion": "min", "colormap": "gray"},
])
def test_rollout_api_scratch_equals_explain_and_vitb16_is_unavailable(settings, client, app,
                                                                      cifar_test, tmp_path):
    _, ctx = app
    pixels = cifar_test.x[11].numpy()
    left, right, left_label, right_label, values, notes, left_faith, right_faith = _rollout(
        client, _save_png(tmp_path, pixels), **settings)

    model = ctx.registry.get("scratch").model
    expected = explain(model, "scratch", _cifar_input(pixels), **_explain_kwargs(settings))
    heatmap = expected["map"][0].numpy()  # (8, 8)
    got = values["scratch"]
    assert got["available"] and got["grid_size"] == [8, 8]
    assert got["method"] == {**DEFAULTS, **settings}["method"]
    assert np.asarray(got["values"]).shape == (8, 8)
    np.testing.assert_allclose(got["values"], heatmap, rtol=1e-3, atol=1e-12)
    predicted = CLASSES[int(expected["logits"][0].argmax())]
    assert got["prediction"]["class"] == predicted == left_label["label"]
    if got["method"] == "grad":
        assert got["target_class"] == (settings.get("target_class") or predicted)
    else:
        assert got["target_class"] is None

    shown = np.asarray(Image.open(left).convert("RGB"))
    args = {**DEFAULTS, **settings}
    drawn = overlay(pixels, heatmap, args["colormap"], args["opacity"], args["grid"])
    assert shown.shape == drawn.shape == (224, 224, 3)
    # The two maps agree to rtol 1e-3, so a patch whose value sits on the edge of one of the
    # colormap's 256 levels may fall one level apart (at most ~4 per channel, times the
    # opacity): rare, and never more.
    diff = np.abs(shown.astype(int) - drawn.astype(int))
    assert diff.max() <= 4 and (diff > 1).mean() < 1e-3

    assert right is None and not right_label
    assert values["vit-b16"]["available"] is False
    assert "not available here" in values["vit-b16"]["reason"]
    assert "ViT-B/16" in notes and "not available" in notes and "8x8 patches" in notes
    assert "Error" not in notes and not right_faith
    assert "deletion" in left_faith and "centre first" in left_faith


def test_rollout_api_at_opacity_zero_shows_the_pixels_the_model_saw(client, cifar_test, tmp_path):
    pixels = cifar_test.x[12].numpy()
    left, *_ = _rollout(client, _save_png(tmp_path, pixels), choice="scratch", opacity=0.0,
                        grid=False)
    shown = np.asarray(Image.open(left).convert("RGB"))
    np.testing.assert_array_equal(shown, pixels.repeat(7, axis=0).repeat(7, axis=1))


def test_rollout_api_on_a_photo_and_as_the_model_saw_it(client, app, tmp_path):
    """A 96 x 64 photo: by default the map lies over the photo at its own resolution (enlarged
    by blocks to 224 px high); "model" shows the 32 px input enlarged instead. The scores beside
    the map are ``faithfulness`` computed directly on the same map and input, at the page's
    steps (the tab takes the image's probability from its own forward pass)."""
    _, ctx = app
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    path = _save_png(tmp_path, pixels, "photo.png")
    on_photo, _, label, _, values, _, text, _ = _rollout(client, path, choice="scratch")
    shown = np.asarray(Image.open(on_photo).convert("RGB"))
    assert shown.shape == (64 * 4, 96 * 4, 3)  # 224 / 64 rounds up to 4
    model = ctx.registry.get("scratch").model
    x = preprocess(Image.fromarray(pixels), CIFAR10_DATA_CONFIG)
    exact = explain(model, "scratch", x, method="rollout")["map"][0].numpy()
    np.testing.assert_allclose(values["scratch"]["values"], exact, rtol=1e-3, atol=1e-12)
    box = crop_box((96, 64), (32, 32), 1.0)
    np.testing.assert_allclose(shown, photo_overlay(pixels, exact, box, "jet", 0.5, True), atol=1)
    model_seen, *_ = _rollout(client, path, choice="scratch", view="model")
    seen = model_view(x[0].numpy(), CIFAR10_DATA_CONFIG.mean, CIFAR10_DATA_CONFIG.std)
    np.testing.assert_allclose(np.asarray(Image.open(model_seen).convert("RGB")),
                               overlay(seen, exact, "jet", 0.5, True), atol=1)
    direct = faithfulness(model, x, exact, CLASSES.index(label["label"]), steps=PAGE_STEPS)
    got = values["scratch"]["faithfulness"]
    assert got["steps"] == direct.steps == 4
    for name in ("map", "random", "centre"):
        for metric in ("deletion", "insertion"):
            assert got[name][metric] == pytest.approx(getattr(getattr(direct, name), metric), abs=2e-3)
    assert f"{direct.map.deletion:.3f}" in text and f"{direct.centre.insertion:.3f}" in text
    assert "centre guess" in text


def test_rollout_api_vitb16_alone_offline_is_a_clear_error(client, cifar_test, tmp_path):
    with pytest.raises(AppError, match=r"ViT-B/16.*not available here \(weights not on this server\)"):
        _rollout(client, _save_png(tmp_path, cifar_test.x[13].numpy()), choice="vit-b16")


@pytest.mark.parametrize("settings, message", [
    ({"start_layer": 5}, r"Scratch ViT \(CIFAR-10\): Start layer 5 is outside the model's 2 layers: "
                         "use 0 to 1"),
    ({"method": "grad", "start_layer": -1}, "Start layer -1 is outside"),
    ({"method": "raw", "layer": 2}, "Layer 2 is outside .* 2 layers"),
    ({"method": "raw", "head": 2}, "Head 2 is outside .* 2 heads: use 0 to 1"),
    # Gradio itself refuses values outside a Dropdown's or Radio's choices
    ({"colormap": "rainbow-ish"}, "rainbow-ish is not in the list of choices"),
    ({"method": "magic"}, "'magic' .* is not in the list of choices"),
    ({"choice": "../../etc/passwd"}, "Unknown model"),
])
def test_rollout_api_refuses_bad_settings_with_a_reason(settings, message, client, cifar_test,
                                                        tmp_path):
    with pytest.raises(AppError, match=message):
        _rollout(client, _save_png(tmp_path, cifar_test.x[14].numpy()), **settings)


def test_handler_refuses_bad_settings_with_a_reason(app, cifar_test, tmp_path):
    """The core refuses what it cannot do with a ValueError written for the visitor; the app's
    one wrapper (``user_errors``) shows it as a gr.Error."""
    import gradio as gr

    from vit_demo.ui.attention import rollout
    from vit_demo.ui.common import user_errors

    _, ctx = app

    def raw_click(image, **settings):  # as the page's click: the form's values typed, then maps
        return rollout(ctx, image, *_handler_args(**settings))

    click = user_errors()(raw_click)
    path = _save_png(tmp_path, cifar_test.x[15].numpy())
    with pytest.raises(ValueError, match="Discard ratio must be at least 0 and below 1"):
        raw_click(path, discard_ratio=1.0)
    for settings, message in [({"discard_ratio": 1.0}, "Discard ratio must be at least 0 and below 1"),
                              ({"opacity": -0.1}, "Opacity must be between 0 and 1"),
                              ({"view": "x-ray"}, "Unknown view 'x-ray'"),
                              ({"start_layer": 0.5}, "Start layer must be a whole number"),
                              ({"head": float("nan")}, "Head must be a whole number"),
                              ({"colormap": "rainbow-ish"}, "Unknown colormap 'rainbow-ish'"),
                              ({"method": "magic"}, "Unknown method 'magic'"),
                              ({"head_fusion": "median"}, "Unknown head fusion 'median'"),
                              ({"target_class": "unicorn"}, "Unknown target class 'unicorn'")]:
        with pytest.raises(gr.Error, match=message):
            click(path, **settings)
    with pytest.raises(gr.Error, match="Add an image first"):
        click(None)


def test_the_page_shows_the_map_first_and_the_same_scores_after(app, cifar_test, tmp_path):
    """The click on the page: ``rollout(scored=False)`` answers without scores (the text says they
    are coming), then ``score`` fills in exactly what the API's one-shot ``rollout`` returns, with
    no second forward pass of the unperturbed image (its probability is the map's)."""
    from vit_demo.ui.attention import rollout, score

    _, ctx = app
    path = _save_png(tmp_path, cifar_test.x[21].numpy())
    args = _handler_args(choice="scratch", method="grad")
    first = rollout(ctx, path, *args, scored=False)
    *shown, unscored = first
    assert shown[4]["scratch"]["faithfulness"] is None
    assert "Scoring the map" in shown[6] and shown[7] == ""
    whole = rollout(ctx, path, *args)
    np.testing.assert_array_equal(shown[0], whole[0])  # the same picture either way
    assert unscored.values is shown[4]  # kept on the server, not sent back by the page
    values, left_text, right_text = score(ctx.registry, unscored)
    assert values == whole[4] and (left_text, right_text) == (whole[6], whole[7])
    assert "centre first" in left_text and shown[4]["scratch"]["faithfulness"] is None  # not mutated
    model = ctx.registry.get("scratch").model
    x = preprocess(Image.open(path).convert("RGB"), CIFAR10_DATA_CONFIG)
    direct = faithfulness(model, x, unscored.sides[0].heatmap, unscored.sides[0].target,
                          steps=PAGE_STEPS)
    assert values["scratch"]["faithfulness"] == direct.to_dict()


# ----------------------------------------------------------------------------------------------
# ViT-B/16 for real: a random-weight checkpoint in weights/ instead of the hub


def test_rollout_api_both_models_side_by_side(vitb16_app, cifar_test, tmp_path):
    import timm

    from vit_demo.ui.common import default_choice

    url, ctx = vitb16_app
    assert default_choice(ctx.registry) == "both"  # both ready: side by side by default
    loaded = ctx.registry.get("vit-b16")
    assert loaded.source == "weights/vit-b16-cifar10.safetensors"
    pixels = cifar_test.x[16].numpy()
    path = _save_png(tmp_path, pixels)
    client = Client(url, verbose=False)
    try:
        left, right, left_label, right_label, values, notes, left_faith, right_faith = _rollout(
            client, path)
        with pytest.raises(AppError, match="Scratch ViT.*Start layer 8 is outside the model's 2 layers"):
            _rollout(client, path, start_layer=8)  # fine for ViT-B/16's 12 layers, not scratch's 2
        with pytest.raises(AppError, match="Scratch ViT.*Head 11 is outside the model's 2 heads"):
            _rollout(client, path, method="raw", head=11)
    finally:
        client.close()

    transform = timm.data.create_transform(**loaded.data_cfg.to_dict())  # timm's eval transform
    x = transform(Image.fromarray(pixels)).unsqueeze(0)  # (1, 3, 224, 224)
    expected = explain(loaded.model, "timm", x)
    got = values["vit-b16"]
    assert got["available"] and got["grid_size"] == [14, 14]
    np.testing.assert_allclose(got["values"], expected["map"][0].numpy(), rtol=1e-3, atol=1e-12)
    assert got["prediction"]["class"] == CLASSES[int(expected["logits"][0].argmax())]
    assert right_label["label"] == got["prediction"]["class"]
    assert np.asarray(Image.open(right).convert("RGB")).shape == (224, 224, 3)

    scratch = explain(ctx.registry.get("scratch").model, "scratch", _cifar_input(pixels))
    np.testing.assert_allclose(values["scratch"]["values"], scratch["map"][0].numpy(), rtol=1e-3)
    assert left_label["label"] == values["scratch"]["prediction"]["class"]
    assert np.asarray(Image.open(left).convert("RGB")).shape == (224, 224, 3)
    assert "14x14 patches, 12 layers of 12 heads" in notes and "8x8 patches, 2 layers of 2 heads" in notes
    # the scratch map is scored on every request, ViT-B/16's only when asked
    assert values["scratch"]["faithfulness"] is not None and values["vit-b16"]["faithfulness"] is None
    assert "deletion" in left_faith and "not scored" in right_faith


def test_the_colour_bar_runs_along_the_colormap_and_says_what_it_means():
    from vit_demo.ui.attention import MEANINGS, colour_bar

    bar = colour_bar("viridis", "rollout")
    low, high = matplotlib.colormaps["viridis"](0.0), matplotlib.colormaps["viridis"](1.0)
    hexes = ["#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3]) for rgba in (low, high)]
    assert bar.index(hexes[0]) < bar.index(hexes[1])  # low on the left, high on the right
    assert ">low<" in bar and ">high<" in bar
    assert "[CLS] token" in MEANINGS["rollout"] and html.escape(MEANINGS["rollout"]) in bar


def test_an_empty_head_field_means_all_heads():
    from vit_demo.ui.attention import MapSettings

    settings = dict(method="raw", head_fusion="mean", discard_ratio=0.0, start_layer=0,
                    target_class="predicted", layer=-1)
    assert MapSettings(**settings, head="").head is None
    assert MapSettings(**settings, head=" 2 ").head == 2


@pytest.mark.parametrize("size, strips", [((48, 32), True), ((40, 40), False)])
def test_the_notes_explain_the_dimmed_strips_when_there_are_some(app, tmp_path, size, strips):
    from vit_demo.ui.attention import DIMMED, MapSettings, rollout

    _, ctx = app
    path = tmp_path / "photo.png"
    Image.new("RGB", size, (120, 60, 30)).save(path)
    settings = MapSettings("rollout", "mean", 0.0, 0, "predicted", -1)
    notes = rollout(ctx, str(path), "scratch", settings, scored=False)[5]
    assert (DIMMED in notes) == strips
    assert "colours span" not in notes
