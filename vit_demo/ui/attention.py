"""Attention tab: where the [CLS] token looks, as a heat map over the photo, for one model or
two side by side (gradient-weighted rollout, attention rollout, or one layer's raw attention),
each map with its deletion and insertion scores against a random and a centre-first order."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ..attention import explain
from ..data import CLASSES
from ..faithfulness import PAGE_STEPS, Faithfulness, faithfulness, perturbed_count
from ..inference import preprocess
from ..registry import VITB16, LoadedModel
from ..overlay import (COLORMAPS, colormap_stops, crop_box, crops_the_photo, model_view, overlay,
                       photo_overlay, value_grid)
from ..rollout import HEAD_FUSIONS
from .common import (BOTH, HEAVY, AppContext, examples, image_input, load_models,
                     model_dropdown, read_image, unavailable_message, unavailable_note, user_errors)

PREDICTED = "predicted"  # target class: whatever the model predicts
TOP_K = 3
# Gradient-weighted rollout first, and the default: on the shipped scratch model it explains the
# prediction best by the deletion and insertion scores (benchmarks/bench_faithfulness.py, docs/faithfulness.md).
METHOD_CHOICES = [("Gradient-weighted rollout for a target class", "grad"),
                  ("Attention rollout", "rollout"),
                  ("Raw attention of one layer and head", "raw")]
PHOTO, MODEL_VIEW = "photo", "model"
VIEW_CHOICES = [("On the photo", PHOTO), ("As the model saw it (its input, enlarged)", MODEL_VIEW)]
METHOD_NAMES = {"grad": "gradient-weighted rollout", "rollout": "attention rollout",
                "raw": "raw attention"}
LEFT_ID, RIGHT_ID = "attention-left", "attention-right"  # elem_ids of the two overlays
DEFAULT_COLORMAP = "jet"
DEFAULT_OPACITY = 0.5  # of the heat map over the image
# What a map's colour says, by method (the colour bar's caption).
MEANINGS = {"grad": "how much attention from each patch raises the target class's score",
            "rollout": "how much of the [CLS] token's information comes from each patch, "
                       "over all layers",
            "raw": "how strongly the [CLS] token attends to each patch in this layer"}
DIMMED = ("The dimmed strips at the photo's edges lie outside the model's centre crop: the "
          "model never sees them.")
GLOSSARY = """- **[CLS] token**: an extra token the model adds to the patches. The classifier reads only this
  token, so the patches it gathers information from are the ones the prediction rests on.
- **Patch**: the image is cut into small squares (4x4 pixels of a 32 px input for the scratch
  ViT, 16x16 of 224 px for ViT-B/16); each becomes one token.
- **Rollout**: multiplies the attention of every layer, so that it follows information through
  the whole network, not one layer.
- **Start layer**: the first layer the rollout multiplies in; a later start leaves out the early
  layers, which mostly mix neighbouring patches.
- **Discard ratio**: the share of the weakest patch-to-patch attention weights dropped in each
  layer before multiplying, to cut noise.
- **Head fusion**: how the heads of a layer are combined into one map: their mean, max or min.
- **Deletion / insertion**: the target's probability as the map's top patches are removed
  (lower is better) or put back one by one on a blank image (higher is better).
"""


def _number(value, name: str, whole: bool = False) -> float | int:
    """``value`` as a float (``whole``: as an int), or a ``ValueError`` unless it is a number
    (``whole``: a whole one; a number field may send 0.5 or NaN)."""
    try:
        number = float(value)
        if not whole or number == int(number):
            return int(number) if whole else number
    except (TypeError, ValueError, OverflowError):
        pass
    raise ValueError(f"{name} must be a {'whole ' if whole else ''}number, got {value!r}.")


@dataclass(frozen=True)
class MapSettings:
    """The settings of one map, as the form or the API sends them; construction types the
    numbers and checks what only the app defines (target class names, views). Their ranges are
    checked by the core (``attention.explain``, ``rollout``, ``overlay``). Both raise
    ``ValueError``."""
    method: str
    head_fusion: str
    discard_ratio: float
    start_layer: int
    target_class: str  # PREDICTED or a class name
    layer: int
    head: int | None = None  # None (or empty text): all heads, fused with head_fusion
    colormap: str = DEFAULT_COLORMAP
    opacity: float = DEFAULT_OPACITY
    grid: bool = False
    view: str = PHOTO
    faithfulness_all: bool = False  # also for models too slow to score on every request

    def __post_init__(self) -> None:
        if self.target_class != PREDICTED and self.target_class not in CLASSES:
            raise ValueError(f"Unknown target class {self.target_class!r}. Choose {PREDICTED!r} "
                             f"or one of: {', '.join(CLASSES)}.")
        if self.view not in (PHOTO, MODEL_VIEW):
            raise ValueError(f"Unknown view {self.view!r}. Choose {PHOTO!r} or {MODEL_VIEW!r}.")
        typed = {"discard_ratio": _number(self.discard_ratio, "Discard ratio"),
                 "start_layer": _number(self.start_layer, "Start layer", whole=True),
                 "layer": _number(self.layer, "Layer", whole=True),
                 "head": (None if self.head is None or str(self.head).strip() == ""
                          else _number(self.head, "Head", whole=True)),
                 "opacity": _number(self.opacity, "Opacity"),
                 "grid": bool(self.grid), "faithfulness_all": bool(self.faithfulness_all)}
        for name, value in typed.items():
            object.__setattr__(self, name, value)  # the dataclass is frozen


def target_index(settings: MapSettings, loaded: LoadedModel) -> int | None:
    """The target class index for the gradient method (None: the predicted class)."""
    if settings.method != "grad" or settings.target_class == PREDICTED:
        return None
    if settings.target_class not in loaded.classes:
        raise ValueError(f"{loaded.label} has no class {settings.target_class!r}; its classes are "
                         f"{', '.join(loaded.classes)}.")
    return loaded.classes.index(settings.target_class)


@dataclass(frozen=True)
class MapShown:
    """One model's map as shown, with what scoring it needs."""
    key: str  # registry key of the model
    label: str
    settings: MapSettings
    x: torch.Tensor  # (1, C, H, W) the model's input
    heatmap: np.ndarray  # (rows, cols)
    grid: tuple[int, int]
    target: int  # the class the map explains
    target_name: str
    probability: float  # of ``target`` on the unperturbed input, from the map's forward pass

    def text(self, scores: Faithfulness | None, pending: bool = False) -> str:
        """What is shown beside the map: which map it is, and how faithful it is (``pending``:
        the scores are on their way)."""
        method = self.settings.method
        title = (f"**{self.label}**: {METHOD_NAMES.get(method, method)}"
                 + (f" for *{self.target_name}*" if method == "grad" else "")
                 + f", {self.grid[0]}x{self.grid[1]} patches")
        if pending:
            return title + "\n\nScoring the map (deletion and insertion)..."
        if scores is None:
            return (title + "\n\nFaithfulness not scored for this model "
                    "(tick *Score ViT-B/16's maps too*).")
        rows = [("this map", scores.map), ("random order", scores.random),
                ("centre first", scores.centre)]
        table = ["| | deletion (lower: better) | insertion (higher: better) |",
                 "| --- | --- | --- |"]
        table += [f"| {name} | {s.deletion:.3f} | {s.insertion:.3f} |" for name, s in rows]
        return (f"{title}\n\n" + "\n".join(table) + f"\n\n{scores.reading()} "
                f"(Probability of *{self.target_name}* as the map's top patches are removed or "
                f"put back, {scores.steps} steps.)")


@dataclass(frozen=True)
class Unscored:
    """The maps of one click, shown but not scored yet: what ``score`` needs, kept on the server
    between the two events of a click (the maps first, their scores after)."""
    sides: tuple[MapShown | None, ...]  # left, then right (None: no model there)
    values: dict  # the JSON the maps were shown with, faithfulness None


def explain_one(loaded: LoadedModel, img: Image.Image, settings: MapSettings, target: int | None
                ) -> tuple[np.ndarray, dict[str, float], dict, MapShown]:
    """(overlay image, top-k confidences, JSON entry without scores, what scoring it needs) for
    one model and one image. A ``ValueError`` from the core names the model."""
    try:
        with torch.inference_mode():
            x = preprocess(img, loaded.data_cfg)  # (1, C, H, W)
            result = explain(loaded.model, loaded.kind, x, method=settings.method,
                             head_fusion=settings.head_fusion, discard_ratio=settings.discard_ratio,
                             start_layer=settings.start_layer, target_class=target,
                             layer=settings.layer, head=settings.head)
            probs = result["logits"][0].softmax(dim=-1)
        heatmap = result["map"][0].numpy()  # (rows, cols)
        if settings.view == MODEL_VIEW:
            shown = model_view(x[0].numpy(), loaded.data_cfg.mean, loaded.data_cfg.std)
            picture = overlay(shown, heatmap, settings.colormap, settings.opacity, settings.grid)
        else:
            box = crop_box(img.size, tuple(loaded.data_cfg.input_size[1:]), loaded.data_cfg.crop_pct)
            picture = photo_overlay(np.asarray(img), heatmap, box, settings.colormap,
                                    settings.opacity, settings.grid)
    except ValueError as exc:
        raise ValueError(f"{loaded.label}: {exc}") from exc
    top = probs.topk(min(TOP_K, len(probs)))
    confidences = {loaded.classes[i]: float(p) for p, i in zip(top.values, top.indices)}
    best = int(top.indices[0])
    target_used = best if result["target_class"] is None else int(result["target_class"][0])
    entry = {"label": loaded.label, "available": True, "method": settings.method,
             "grid_size": list(result["grid_size"]),
             "target_class": None if result["target_class"] is None else loaded.classes[target_used],
             "prediction": {"class": loaded.classes[best], "probability": round(float(probs[best]), 4)},
             "values": value_grid(heatmap), "faithfulness": None}
    shown = MapShown(loaded.key, loaded.label, settings, x, heatmap, tuple(result["grid_size"]),
                     target_used, loaded.classes[target_used], float(probs[target_used]))
    return picture, confidences, entry, shown


def score(registry, unscored: Unscored) -> tuple[dict, str, str]:
    """The faithfulness scores of the maps ``rollout(..., scored=False)`` showed: (the values
    with the scores filled in, left text, right text). The image's probability comes from the
    map's own forward pass, not a second one."""
    values = {k: dict(v) for k, v in unscored.values.items()}
    texts = ["", ""]
    for side, m in enumerate(unscored.sides):
        if m is None:
            continue
        loaded = registry.get(m.key)
        scores = None
        # always for small inputs (the scratch ViT's 32 px, tens of milliseconds), for the
        # others only when asked (ViT-B/16 on a CPU: seconds)
        if m.settings.faithfulness_all or loaded.data_cfg.input_size[1] <= 64:
            scores = faithfulness(loaded.model, m.x, m.heatmap, m.target, steps=PAGE_STEPS,
                                  image_probability=m.probability)
            values[m.key]["faithfulness"] = scores.to_dict()
        texts[side] = m.text(scores)
    return values, *texts


def rollout(ctx: AppContext, image: str | None, choice: str, settings: MapSettings,
            scored: bool = True) -> tuple:
    """(left overlay, right overlay, left top-k, right top-k, values per model, notes,
    left faithfulness, right faithfulness, what ``score`` needs) for the models of ``choice``.

    ``scored=False`` leaves the scores out (the texts say they are coming) for ``score`` to add:
    the page shows a map after one forward pass and its scores a moment later.

    The values are a dict keyed by registry key: for each model its raw map as a rows x cols
    grid (``values``), grid size, method, target class, top prediction and faithfulness scores
    (deletion and insertion of the map, a random and a centre-first order; None when not
    scored), or ``available: False`` with the reason. A model that is unavailable leaves its
    side empty with a one-line note, as long as another model answered. Settings the core
    refuses raise ``ValueError`` (``gr.Error`` in the app, through ``user_errors``).
    """
    img = read_image(image, ctx.settings)
    loaded = load_models(ctx.registry, choice)
    targets = {key: target_index(settings, m) for key, m in loaded.items() if m is not None}
    pictures, tops, shown = [None, None], [None, None], [None, None]  # left, right
    values: dict[str, dict] = {}
    notes = []
    for side, (key, m) in enumerate(loaded.items()):
        if m is None:
            values[key] = {"label": ctx.registry.label(key), "available": False,
                           "reason": unavailable_message(ctx.registry, key)}
            notes.append(unavailable_note(ctx.registry, key))
            continue
        start = time.perf_counter()
        pictures[side], tops[side], values[key], shown[side] = explain_one(
            m, img, settings, targets[key])
        depth, heads = m.adapter.depth_and_heads(m.model)
        rows, cols = shown[side].grid
        notes.append(f"**{m.label}**: {rows}x{cols} patches, {depth} layers of {heads} heads; "
                     f"the map in {(time.perf_counter() - start) * 1000:.0f} ms")
    if settings.view == PHOTO and any(
            crops_the_photo(img.size, crop_box(img.size, tuple(m.data_cfg.input_size[1:]),
                                               m.data_cfg.crop_pct))
            for m in loaded.values() if m is not None):
        notes.append(DIMMED)
    unscored = Unscored(tuple(shown), values)
    if scored:
        values, *texts = score(ctx.registry, unscored)
    else:
        texts = [m.text(None, pending=True) if m else "" for m in shown]
    return (*pictures, *tops, values, "\n\n".join(notes), *texts, unscored)


def colour_bar(colormap: str, method: str) -> str:
    """The maps' colour scale, low to high, with what the colour means for ``method``."""
    stops = ", ".join(colormap_stops(colormap if colormap in COLORMAPS else DEFAULT_COLORMAP))
    meaning = html.escape(MEANINGS.get(method, MEANINGS["grad"]))
    return (f'<div class="colour-bar"><span>low</span><span class="colour-bar-scale" '
            f'style="background: linear-gradient(to right, {stops})"></span><span>high</span></div>'
            f'<div class="colour-bar-caption">Colour: {meaning} (each map scaled to its own '
            "range).</div>")


def build_tab(ctx: AppContext):
    """The tab's components; returns (image input, the event after which a picked example is
    in it, model dropdown)."""
    gr.Markdown(
        "Where does the [CLS] token, which the classifier reads, gather its information from? "
        "**Gradient-weighted** rollout keeps only attention that raises the target class's score "
        "(the default: it explains this app's predictions best, see the scores); **rollout** "
        "multiplies every layer's attention (heads fused, with the residual path); **raw** shows "
        "one layer's attention from [CLS] to the patches. Beside each map: how much the class "
        "probability drops when the map's top patches are removed (deletion) and recovers when "
        "only they are shown (insertion), against a random and a centre-first order.")
    with gr.Accordion("What the words mean", open=False, elem_id="attention-glossary"):
        gr.Markdown(GLOSSARY)
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            image = image_input(ctx.settings)
            choice = model_dropdown(ctx.registry)
            method = gr.Radio(METHOD_CHOICES, value="grad", label="Method")
            head_fusion = gr.Radio(list(HEAD_FUSIONS), value="mean", label="Head fusion",
                                   visible=False)
            discard_ratio = gr.Slider(0.0, 0.99, value=0.0, step=0.01, visible=False,
                                      label="Discard ratio (lowest patch-to-patch weights per row)")
            start_layer = gr.Number(0, precision=0, label="Start layer (0 = first)")
            target_class = gr.Dropdown([PREDICTED, *CLASSES], value=PREDICTED, label="Target class")
            layer = gr.Number(-1, precision=0, label="Layer (0 = first, -1 = last)", visible=False)
            head = gr.Textbox(None, label="Head (empty = all heads, fused)", placeholder="all heads",
                              visible=False)
            view = gr.Radio(VIEW_CHOICES, value=PHOTO, label="Show the map")
            with gr.Row():
                colormap = gr.Dropdown(list(COLORMAPS), value=DEFAULT_COLORMAP, label="Colormap",
                                       min_width=120)
                opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Opacity",
                                    min_width=120)
            grid = gr.Checkbox(False, label="Show the patch grid")
            faithfulness_all = gr.Checkbox(
                False, visible=choice.value in (BOTH, VITB16),
                label=f"Score ViT-B/16's maps too (slow on a CPU: {perturbed_count(PAGE_STEPS)} "
                      "more inputs at 224 px)")
            run = gr.Button("Show attention", variant="primary")
        with gr.Column(scale=2, min_width=280):
            bar = gr.HTML(colour_bar(DEFAULT_COLORMAP, "grad"), elem_id="attention-colour-bar")
            with gr.Row():
                with gr.Column(min_width=260):
                    left = gr.Image(label="Scratch ViT / chosen model", show_label=False, format="png",
                                    type="numpy", interactive=False, elem_id=LEFT_ID)
                    left_faith = gr.Markdown(elem_id=f"{LEFT_ID}-faithfulness")
                    left_label = gr.Label(num_top_classes=TOP_K, label="Prediction")
                with gr.Column(min_width=260, visible=choice.value == BOTH) as right_side:
                    right = gr.Image(label="ViT-B/16", show_label=False, format="png", type="numpy",
                                     interactive=False, elem_id=RIGHT_ID)
                    right_faith = gr.Markdown(elem_id=f"{RIGHT_ID}-faithfulness")
                    right_label = gr.Label(num_top_classes=TOP_K, label="Prediction")
            notes = gr.Markdown()
            with gr.Accordion("Map values per patch (raw, before normalising for display)", open=False):
                values = gr.JSON(label="Values")
    picked = examples(ctx, image)

    @user_errors()
    def attention_rollout(image: str | None, model: str, method: str, head_fusion: str,
                          discard_ratio: float, start_layer: float, target_class: str,
                          layer: float, head: str | float | None = None,
                          colormap: str = DEFAULT_COLORMAP, opacity: float = DEFAULT_OPACITY,
                          grid: bool = False, view: str = PHOTO, score_vitb16: bool = False):
        """Show where a Vision Transformer looks in an image: an attention map over its patches, with the prediction and how faithful the map is (deletion and insertion scores).

        Args:
            image: the image (PNG, JPEG, WebP, ...; any size)
            model: "scratch", "vit-b16", "both", or a fine-tuned model's key
            method: "grad" (gradient-weighted rollout), "rollout", or "raw" (one layer's attention from [CLS])
            head_fusion: how rollout and raw fuse the heads: "mean", "max" or "min"
            discard_ratio: share of the lowest patch-to-patch weights rollout drops per row, 0 to 0.99
            start_layer: first layer the rollouts multiply in (0 = first)
            target_class: "predicted" or a CIFAR-10 class name, for "grad"
            layer: the layer "raw" shows (0 = first, -1 = last)
            head: the head "raw" shows (empty: all heads, fused)
            colormap: the heat map's colours
            opacity: the map's opacity over the image, 0 to 1
            grid: draw the patch grid
            view: "photo" (the map over the image as uploaded) or "model" (over what the model sees)
            score_vitb16: also score ViT-B/16's maps (slow on a CPU)
        """
        settings = MapSettings(method, head_fusion, discard_ratio, start_layer, target_class,
                               layer, head, colormap, opacity, grid, view, score_vitb16)
        return rollout(ctx, image, model, settings)[:-1]

    @user_errors()
    def show_map(image: str | None, choice: str, *form):
        """The click on the page: the maps at once, their scores (``add_scores``) after."""
        return rollout(ctx, image, choice, MapSettings(*form), scored=False)

    @user_errors()
    def add_scores(unscored: Unscored):
        return score(ctx.registry, unscored)

    inputs = [image, choice, method, head_fusion, discard_ratio, start_layer, target_class, layer,
              head, colormap, opacity, grid, view, faithfulness_all]
    outputs = [left, right, left_label, right_label, values, notes, left_faith, right_faith]
    unscored = gr.State()
    run.click(show_map, inputs=inputs, outputs=[*outputs, unscored], api_visibility="private",
              **HEAVY).success(add_scores, inputs=[unscored],
                                   outputs=[values, left_faith, right_faith],
                                   api_visibility="private", **HEAVY)
    # the API's one endpoint: map and scores in one answer (no button on the page fires it)
    gr.Button(visible=False).click(attention_rollout, inputs=inputs, outputs=outputs,
                                   api_name="rollout", **HEAVY)
    # only the controls the chosen method uses are shown
    used_by = {head_fusion: ("rollout", "raw"), discard_ratio: ("rollout",),
               start_layer: ("rollout", "grad"), target_class: ("grad",), layer: ("raw",),
               head: ("raw",)}
    method.change(lambda m: [gr.update(visible=m in methods) for methods in used_by.values()],
                  inputs=[method], outputs=list(used_by), api_visibility="private", queue=False)
    gr.on([method.change, colormap.change], colour_bar, inputs=[colormap, method], outputs=[bar],
          api_visibility="private", queue=False)
    # the right side with "both"; the ViT-B/16 scoring switch only where it is used
    choice.change(
        lambda c: (gr.Column(visible=c == BOTH), gr.Checkbox(visible=c in (BOTH, VITB16))),
        inputs=[choice], outputs=[right_side, faithfulness_all], api_visibility="private",
        queue=False)
    return image, picked, choice
