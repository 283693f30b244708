"""Attention tab: where the [CLS] token looks, as a heat map over the patches, for one model or
two side by side (attention rollout, gradient-weighted rollout, or one layer's raw attention)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ..attention import METHODS, explain
from ..data import CLASSES
from ..inference import preprocess
from ..registry import LoadedModel, ModelUnavailable
from ..overlay import COLORMAPS, model_view, overlay, value_grid
from ..rollout import HEAD_FUSIONS
from .common import (BOTH, INFERENCE, AppContext, examples, image_input, keys_for, model_choices,
                     read_image)

PREDICTED = "predicted"  # target class: whatever the model predicts
MAX_DISCARD_RATIO = 0.99
TOP_K = 3
METHOD_CHOICES = [("Attention rollout", "rollout"),
                  ("Gradient-weighted rollout for a target class", "grad"),
                  ("Raw attention of one layer and head", "raw")]


@dataclass(frozen=True)
class Settings:
    """Validated, model-independent settings of one request."""
    method: str
    head_fusion: str
    discard_ratio: float
    start_layer: int
    target_class: str  # PREDICTED or a class name
    layer: int
    head: int | None  # None: all heads, fused with head_fusion
    colormap: str
    opacity: float
    grid: bool


def _integer(value: float | int | None, name: str) -> int:
    """``value`` as an int, or a ``gr.Error`` unless it is a whole number."""
    try:
        whole = value is not None and float(value) == int(value)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise gr.Error(f"{name} must be a whole number, got {value!r}.")
    return int(value)


def _fraction(value: float | None, name: str, high: float) -> float:
    """``value`` as a float in [0, high], or a ``gr.Error``."""
    try:
        inside = value is not None and 0.0 <= float(value) <= high
    except (TypeError, ValueError):
        inside = False
    if not inside:
        raise gr.Error(f"{name} must be between 0 and {high}, got {value!r}.")
    return float(value)


def check_settings(method: str, head_fusion: str, discard_ratio: float, start_layer: float | int,
                   target_class: str, layer: float | int, head: float | int | None, colormap: str,
                   opacity: float, grid: bool) -> Settings:
    """The settings as typed values, or a ``gr.Error`` saying which one is wrong and why."""
    if method not in METHODS:
        raise gr.Error(f"Unknown method {method!r}. Choose one of: {', '.join(METHODS)}.")
    if head_fusion not in HEAD_FUSIONS:
        raise gr.Error(f"Unknown head fusion {head_fusion!r}. Choose one of: {', '.join(HEAD_FUSIONS)}.")
    if target_class != PREDICTED and target_class not in CLASSES:
        raise gr.Error(f"Unknown target class {target_class!r}. Choose {PREDICTED!r} or one of: "
                       f"{', '.join(CLASSES)}.")
    if colormap not in COLORMAPS:
        raise gr.Error(f"Unknown colormap {colormap!r}. Choose one of: {', '.join(COLORMAPS)}.")
    return Settings(method, head_fusion, _fraction(discard_ratio, "Discard ratio", MAX_DISCARD_RATIO),
                    _integer(start_layer, "Start layer"), target_class, _integer(layer, "Layer"),
                    None if head is None else _integer(head, "Head"), colormap,
                    _fraction(opacity, "Opacity", 1.0), bool(grid))


def depth_and_heads(loaded: LoadedModel) -> tuple[int, int]:
    """Number of encoder blocks and attention heads per block of a loaded model."""
    attn = loaded.model.blocks[0].attn
    return len(loaded.model.blocks), attn.num_heads if loaded.kind == "timm" else attn.heads


def check_for_model(settings: Settings, loaded: LoadedModel) -> int | None:
    """Check the settings that depend on the model; returns the target class index (None for
    the predicted class). Raises ``gr.Error`` naming the model and the valid range."""
    depth, heads = depth_and_heads(loaded)
    if settings.method in ("rollout", "grad") and not 0 <= settings.start_layer < depth:
        raise gr.Error(f"Start layer {settings.start_layer} is outside {loaded.label}'s {depth} "
                       f"layers: use 0 to {depth - 1}.")
    if settings.method == "raw":
        if not -depth <= settings.layer < depth:
            raise gr.Error(f"Layer {settings.layer} is outside {loaded.label}'s {depth} layers: use "
                           f"0 to {depth - 1}, or -1 for the last.")
        if settings.head is not None and not 0 <= settings.head < heads:
            raise gr.Error(f"Head {settings.head} is outside {loaded.label}'s {heads} heads: use 0 to "
                           f"{heads - 1}, or leave it empty for all heads.")
    if settings.method != "grad" or settings.target_class == PREDICTED:
        return None
    if settings.target_class not in loaded.classes:
        raise gr.Error(f"{loaded.label} has no class {settings.target_class!r}; its classes are "
                       f"{', '.join(loaded.classes)}.")
    return loaded.classes.index(settings.target_class)


def explain_one(loaded: LoadedModel, img: Image.Image, settings: Settings, target: int | None
                ) -> tuple[np.ndarray, dict[str, float], dict]:
    """(overlay image, top-k confidences, JSON entry) for one model and one image."""
    with torch.inference_mode():
        x = preprocess(img, loaded.data_cfg)  # (1, C, H, W)
        result = explain(loaded.model, loaded.kind, x, method=settings.method,
                         head_fusion=settings.head_fusion, discard_ratio=settings.discard_ratio,
                         start_layer=settings.start_layer, target_class=target, layer=settings.layer,
                         head=settings.head)
        probs = result["logits"][0].softmax(dim=-1)
    heatmap = result["map"][0].numpy()  # (rows, cols)
    shown = model_view(x[0].numpy(), loaded.data_cfg.mean, loaded.data_cfg.std)
    picture = overlay(shown, heatmap, settings.colormap, settings.opacity, settings.grid)
    top = probs.topk(min(TOP_K, len(probs)))
    confidences = {loaded.classes[i]: float(p) for p, i in zip(top.values, top.indices)}
    best = int(top.indices[0])
    target_name = (None if result["target_class"] is None
                   else loaded.classes[int(result["target_class"][0])])
    entry = {"label": loaded.label, "available": True, "method": settings.method,
             "grid_size": list(result["grid_size"]), "target_class": target_name,
             "prediction": {"class": loaded.classes[best], "probability": round(float(probs[best]), 4)},
             "values": value_grid(heatmap)}
    return picture, confidences, entry


def rollout(ctx: AppContext, image: str | None, choice: str, method: str, head_fusion: str,
            discard_ratio: float, start_layer: float | int, target_class: str, layer: float | int,
            head: float | int | None, colormap: str, opacity: float, grid: bool
            ) -> tuple[np.ndarray | None, np.ndarray | None, dict | None, dict | None, dict, str]:
    """(left overlay, right overlay, left top-k, right top-k, values per model, notes).

    The values are a dict keyed by registry key: for each model its raw map as a rows x cols
    grid (``values``), grid size, method, target class and top prediction, or
    ``available: False`` with the reason. A model that is unavailable leaves its side empty
    with the reason in the notes, as long as another model answered.
    """
    img = read_image(image)
    keys = keys_for(choice, ctx.registry)
    settings = check_settings(method, head_fusion, discard_ratio, start_layer, target_class, layer,
                              head, colormap, opacity, grid)
    loaded: dict[str, LoadedModel | None] = {}
    reasons: dict[str, str] = {}
    for key in keys:
        try:
            loaded[key] = ctx.registry.get(key)
        except ModelUnavailable as exc:
            loaded[key] = None
            reasons[key] = str(exc)
    if all(m is None for m in loaded.values()):
        raise gr.Error(" ".join(reasons.values()))
    targets = {key: check_for_model(settings, m) for key, m in loaded.items() if m is not None}
    pictures: list[np.ndarray | None] = []
    labels: list[dict | None] = []
    values: dict[str, dict] = {}
    notes = []
    for key, m in loaded.items():
        label = ctx.registry.label(key)
        if m is None:
            pictures.append(None)
            labels.append(None)
            values[key] = {"label": label, "available": False, "reason": reasons[key]}
            notes.append(reasons[key])
            continue
        start = time.perf_counter()
        picture, confidences, values[key] = explain_one(m, img, settings, targets[key])
        pictures.append(picture)
        labels.append(confidences)
        depth, heads = depth_and_heads(m)
        rows, cols = values[key]["grid_size"]
        flat = np.asarray(values[key]["values"])
        notes.append(f"**{label}**: {rows}x{cols} patches, {depth} layers of {heads} heads; colours "
                     f"span the map's values {flat.min():.4g} to {flat.max():.4g}; "
                     f"{(time.perf_counter() - start) * 1000:.0f} ms")
    pictures += [None] * (2 - len(pictures))
    labels += [None] * (2 - len(labels))
    return pictures[0], pictures[1], labels[0], labels[1], values, "\n\n".join(notes)


def control_visibility(method: str) -> tuple:
    """Show only the controls the method uses: head fusion, discard ratio, start layer,
    target class, layer, head."""
    return (gr.update(visible=method in ("rollout", "raw")), gr.update(visible=method == "rollout"),
            gr.update(visible=method in ("rollout", "grad")), gr.update(visible=method == "grad"),
            gr.update(visible=method == "raw"), gr.update(visible=method == "raw"))


def build_tab(ctx: AppContext) -> None:
    gr.Markdown(
        "Where does the [CLS] token, which the classifier reads, gather its information from? "
        "**Rollout** multiplies every layer's attention (heads fused, with the residual path) from "
        "the start layer on; **gradient-weighted** rollout keeps only attention that raises the "
        "target class's score; **raw** shows one layer's attention from [CLS] to the patches. "
        "The image is shown as the model saw it (its own resize and crop), so each patch of the "
        "map lies over the pixels it was made of.")
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input()
            choice = gr.Dropdown(model_choices(ctx.registry), value=BOTH, label="Model",
                                 allow_custom_value=True)
            method = gr.Radio(METHOD_CHOICES, value="rollout", label="Method")
            head_fusion = gr.Radio(list(HEAD_FUSIONS), value="mean", label="Head fusion")
            discard_ratio = gr.Slider(0.0, MAX_DISCARD_RATIO, value=0.0, step=0.01,
                                      label="Discard ratio (lowest patch-to-patch weights per row)")
            start_layer = gr.Number(0, precision=0, label="Start layer (0 = first)")
            target_class = gr.Dropdown([PREDICTED, *CLASSES], value=PREDICTED, label="Target class",
                                       visible=False)
            layer = gr.Number(-1, precision=0, label="Layer (0 = first, -1 = last)", visible=False)
            head = gr.Number(None, precision=0, label="Head (empty = all heads, fused)", visible=False)
            with gr.Row():
                colormap = gr.Dropdown(list(COLORMAPS), value="jet", label="Colormap")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Opacity")
            grid = gr.Checkbox(True, label="Show the patch grid")
            run = gr.Button("Show attention", variant="primary")
        with gr.Column(scale=2):
            with gr.Row():
                with gr.Column():
                    left = gr.Image(label="Scratch ViT / chosen model", format="png", type="numpy",
                                    interactive=False)
                    left_label = gr.Label(num_top_classes=TOP_K, label="Prediction")
                with gr.Column():
                    right = gr.Image(label="ViT-B/16", format="png", type="numpy", interactive=False)
                    right_label = gr.Label(num_top_classes=TOP_K, label="Prediction")
            notes = gr.Markdown()
            with gr.Accordion("Map values per patch (raw, before normalising for display)", open=False):
                values = gr.JSON(label="Values")
    examples(ctx, image)
    run.click(functools.partial(rollout, ctx),
              inputs=[image, choice, method, head_fusion, discard_ratio, start_layer, target_class,
                      layer, head, colormap, opacity, grid],
              outputs=[left, right, left_label, right_label, values, notes], api_name="rollout",
              **INFERENCE)
    method.change(control_visibility, inputs=[method],
                  outputs=[head_fusion, discard_ratio, start_layer, target_class, layer, head],
                  api_visibility="private", queue=False)
    choice.focus(lambda: gr.Dropdown(choices=model_choices(ctx.registry)), outputs=[choice],
                 api_visibility="private")
