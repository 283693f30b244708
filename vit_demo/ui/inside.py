"""Inside the model tab: the ViT paper's Fig. 7 (patch-embedding filters, position-embedding
similarity, mean attention distance) for one model, or two side by side."""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar
from weakref import WeakKeyDictionary

import gradio as gr
from gradio.utils import get_upload_folder
import torch.nn as nn
from PIL import Image

from ..data import NO_DATA, DataUnavailable, Split, load_cifar10
from ..inference import preprocess
from ..inside import patch_size
from ..inside_plots import (DistanceFigure, WeightFigures, cifar_distance_figure, distance_figure,
                            weight_figures)
from ..registry import READY, LoadedModel, ModelKind, ModelUnavailable
from .common import (BOTH, HEAVY, AppContext, image_input, keys_for, model_dropdown,
                     read_image, refuse, unavailable_message)

T = TypeVar("T")
log = logging.getLogger(__name__)
NO_DISTANCE = (f"No distance figure: it is averaged over CIFAR-10 test images, and {NO_DATA}. "
               "Add a photo to see how far each head looks in it.")
PNG_FOLDER = "vit-demo-inside"  # in Gradio's cache folder
FIGURES = [("filters", "Patch-embedding filters"), ("positions", "Position-embedding similarity"),
           ("distance", "Mean attention distance")]
READINGS = {
    "filters": "Look for smooth colour blobs, gradients and stripes: plausible bases for the fine "
               "structure inside a patch. Noise means the filters are still near their random start.",
    "positions": "A learned 2-D grid shows in every small map as a bright spot at the patch's own "
                 "place fading with distance, often with its row and column brighter than the rest.",
    "distance": "Low dots are local heads (they look at nearby patches), dots near the dashed line "
                "global ones; in the paper some heads are global from the first layer, and all "
                "are in the deep layers.",
}


# How many CIFAR-10 test images (the first N) the distance figure averages over, by kind of
# model, when no image is given. ViT-B/16 costs about 140 times the scratch ViT's FLOPs per image
# (35.1 against 0.25 GFLOPs): at about 0.3 s an image on two CPU cores, 32 images take it about
# 10 s, once per model.
DISTANCE_IMAGES = {ModelKind.SCRATCH: 256, ModelKind.TIMM: 32}


_CACHE_LOCK = threading.Lock()
_CACHE: WeakKeyDictionary[nn.Module, tuple[threading.Lock, dict]] = WeakKeyDictionary()


def cached(model: nn.Module, name: str, compute: Callable[[], T]) -> T:
    """Figure ``name`` of a model object, computed once (concurrent requests for the same model
    wait for the first); a reloaded model (a new fine-tune) is a new object and gets new ones,
    the old one's go with it."""
    with _CACHE_LOCK:
        lock, entries = _CACHE.setdefault(model, (threading.Lock(), {}))
    with lock:
        if name not in entries:
            entries[name] = compute()
        return entries[name]


@functools.lru_cache(maxsize=4)
def cifar_test(data_dir: str | None) -> Split:
    """The CIFAR-10 test split from this machine's copy, read once (never downloaded here)."""
    return load_cifar10("test", data_dir, download=False)


def png_file(data: bytes) -> str:
    """``data`` written once, named by its content, into a folder of Gradio's cache, which the
    cache budget bounds and Gradio empties hourly (a figure deleted there is written again)."""
    folder = Path(get_upload_folder()) / PNG_FOLDER
    path = folder / f"{hashlib.sha1(data).hexdigest()}.png"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        partial.write_bytes(data)
        partial.replace(path)  # a concurrent request never serves half a figure
    return str(path)


def cifar_distances(ctx: AppContext, loaded: LoadedModel) -> DistanceFigure:
    """Mean attention distance over the first CIFAR-10 test images, cached per model."""
    n = DISTANCE_IMAGES[loaded.kind]
    return cached(loaded.model, f"distance-cifar10-{n}", lambda: cifar_distance_figure(
        loaded.model, loaded.kind, loaded.data_cfg, cifar_test(ctx.data_dir).x[:n], loaded.label))


def note(loaded: LoadedModel, weights: WeightFigures, distance: DistanceFigure | None,
         no_distance: str) -> str:
    """One paragraph of the numbers behind the three figures of one model."""
    grid = weights.grid_summary
    c = weights.components
    text = (f"**{loaded.label}**: the {len(c.filters)} components shown hold "
            f"{float(c.explained.sum()):.0%} of the filters' variance. Position similarity: grid "
            f"neighbours {grid['neighbours']:.2f}, others {grid['others']:.2f}, correlation with "
            f"grid distance {grid['correlation_with_grid_distance']:.2f}. ")
    if distance is None:
        return text + no_distance
    ranges = ", ".join(f"{i + 1}: {float(row.min()):.1f}-{float(row.max()):.1f}"
                       for i, row in enumerate(distance.distance))
    return text + (f"Mean attention distance over {distance.source} (px, lowest-highest head per "
                   f"layer): {ranges}; uniform attention {distance.uniform:.1f}.")


def model_outputs(ctx: AppContext, loaded: LoadedModel, img: Image.Image | None
                  ) -> tuple[list[str | None], str, dict]:
    """([filters, positions, distance] PNG paths, note, JSON entry) for one model."""
    weights = cached(loaded.model, "weights",  # the filters and position similarity
                     lambda: weight_figures(loaded.model, loaded.kind, loaded.label))
    distance, no_distance = None, ""
    try:
        distance = (cifar_distances(ctx, loaded) if img is None else distance_figure(
            loaded.model, loaded.kind, preprocess(img, loaded.data_cfg), "your image", loaded.label))
    except DataUnavailable as exc:
        log.info("Inside: no distance figure: %s", exc)
        no_distance = NO_DISTANCE
    entry = {"label": loaded.label, "available": True, "kind": loaded.kind,
             "input_size": list(loaded.data_cfg.input_size[1:]),
             "patch_size": list(patch_size(loaded.model)), **weights.to_json(),
             "attention_distance": (distance.to_json() if distance is not None
                                    else {"available": False, "reason": no_distance})}
    paths = [png_file(weights.filters_png), png_file(weights.positions_png),
             None if distance is None else png_file(distance.png)]
    return paths, note(loaded, weights, distance, no_distance), entry


def inside(ctx: AppContext, choice: str, image: str | None) -> tuple:
    """(left filters, left positions, left distance, right filters, right positions, right
    distance, notes, values per model). The figures are PNG paths (None where not shown: a
    model that is not ready leaves its side empty, with the reason in the notes); the
    values are a dict keyed by registry key with the numbers behind them, or
    ``available: False`` with the reason. Side by side shows the models that are ready; one
    model chosen alone is loaded now. Raises ``gr.Error`` when none can be shown."""
    img = None if image is None else read_image(image, ctx.settings)
    pictures: list[str | None] = []
    notes: list[str] = []
    values: dict[str, dict] = {}
    for key in keys_for(choice, ctx.registry):
        status = ctx.registry.status(key)
        reason = ""  # why the model is not shown
        if choice == BOTH and status.state != READY:
            reason = (unavailable_message(ctx.registry, key) if status.reason else
                      f"{status.label} is {status.state}; it is shown once ready.")
        else:
            try:
                paths, text, values[key] = model_outputs(ctx, ctx.registry.get(key), img)
            except ModelUnavailable:
                reason = unavailable_message(ctx.registry, key)
        if reason:
            paths, text = [None] * 3, reason
            values[key] = {"label": ctx.registry.label(key), "available": False, "reason": reason}
        pictures += paths
        notes.append(text)
    if not any(v["available"] for v in values.values()):
        raise refuse(" ".join(notes))
    pictures += [None] * (6 - len(pictures))
    return (*pictures, "\n\n".join(notes), values)


def shown(*outputs) -> list:
    """``inside``'s outputs as the page shows them: a figure that is not there is hidden, not
    an empty box."""
    figures, rest = outputs[:6], outputs[6:]
    return [gr.Image(value=p, visible=p is not None) for p in figures] + list(rest)


def build_tab(ctx: AppContext, tab: gr.Tab) -> tuple[gr.Image, gr.Dropdown]:
    """The tab's components; its figures fill in when ``tab`` is opened. Returns (image input,
    model dropdown): the page shares the image with the other tabs and fills in the choice."""
    gr.Markdown(
        "What the models learned, drawn as in Fig. 7 of the ViT paper (Dosovitskiy et al. 2020): "
        "the filters that turn a patch of pixels into a token, how the learned position "
        "embeddings relate to each other, and how far each attention head looks. The first two "
        "depend only on the weights; the third is averaged over CIFAR-10 test images, or over "
        "your image when you give one.")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            choice = model_dropdown(ctx.registry)
            run = gr.Button("Show figures", variant="primary")
        with gr.Column(scale=1, min_width=300):
            image = image_input(ctx.settings, "Image for the distance figure (optional)")
    left: list[gr.Image] = []
    right: list[gr.Image] = []
    # Each figure carries its title; no label over it, its buttons above it (the page's CSS).
    # Hidden until drawn; on a phone (a row
    # narrower than two min_widths) the two models' figures stack.
    figure = partial(gr.Image, type="filepath", format="png", interactive=False, show_label=False,
                     visible=False, min_width=300, elem_classes=["inside-figure"],
                     buttons=["fullscreen", "download"])
    for name, label in FIGURES:
        with gr.Row():
            left.append(figure(label=label, elem_id=f"inside-{name}-left"))
            right.append(figure(label=f"{label}, ViT-B/16", elem_id=f"inside-{name}-right"))
        gr.Markdown(READINGS[name])
    notes = gr.Markdown()
    with gr.Accordion("The numbers behind the figures", open=False):
        values = gr.JSON(label="Values")

    def inside_figures(model: str, image: str | None = None):
        """The ViT paper's Figure 7 for a model: its patch-embedding filters, the similarity of its position embeddings, and the mean attention distance per head and layer (for an image if given).

        Args:
            model: "scratch", "vit-b16", "both", or a fine-tuned model's key
            image: optional image for the attention-distance figure (else CIFAR-10 test images)
        """
        return inside(ctx, model, image)

    def show_figures(model: str, image: str | None = None):
        return shown(*inside(ctx, model, image))

    outputs = [*left, *right, notes, values]
    # the API's endpoint gives the figures' paths (no button on the page fires it)
    gr.Button(visible=False).click(inside_figures, inputs=[choice, image], outputs=outputs,
                                   api_name="inside", **HEAVY)
    for event in (run.click, tab.select, choice.input):
        event(show_figures, inputs=[choice, image], outputs=outputs, api_visibility="private",
              **HEAVY)
    return image, choice
