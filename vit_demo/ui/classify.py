"""Classify tab: top-5 classes and latency from one model, or from two side by side."""

from __future__ import annotations

import gradio as gr

from ..data import CLASSES
from ..inference import predict
from ..registry import ModelUnavailable
from .common import (BOTH, INFERENCE, AppContext, examples, image_input, keys_for, model_choices,
                     read_image)

TOP_K = 5


def classify(ctx: AppContext, image: str | None, choice: str) -> tuple[dict | None, dict | None, str]:
    """(left confidences, right confidences, notes). A model that is unavailable leaves its
    side empty with the reason in the notes, as long as another model answered."""
    img = read_image(image)
    keys = keys_for(choice, ctx.registry)
    results: list[dict | None] = []
    notes = []
    for key in keys:
        label = ctx.registry.label(key)
        try:
            loaded = ctx.registry.get(key)
        except ModelUnavailable as exc:
            results.append(None)
            notes.append(str(exc))
            continue
        pred = predict(loaded, img, TOP_K)
        results.append(pred.confidences)
        notes.append(f"**{label}**: {pred.latency_ms:.1f} ms (preprocessing + forward, "
                     f"{loaded.data_cfg.input_size[1]} px input)")
    if all(r is None for r in results):
        raise gr.Error(" ".join(notes))
    results += [None] * (2 - len(results))
    return results[0], results[1], "\n\n".join(notes)


def build_tab(ctx: AppContext) -> None:
    gr.Markdown(
        "Drop, paste or photograph an image. The models know only CIFAR-10's ten classes: "
        + ", ".join(CLASSES) + ". Anything else is forced into one of them.")
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input()
            choice = gr.Dropdown(model_choices(ctx.registry), value=BOTH, label="Model",
                                 allow_custom_value=True)
            run = gr.Button("Classify", variant="primary")
        with gr.Column(scale=1):
            with gr.Row():
                left = gr.Label(num_top_classes=TOP_K, label="Scratch ViT / chosen model")
                right = gr.Label(num_top_classes=TOP_K, label="ViT-B/16")
            notes = gr.Markdown()
    examples(ctx, image)
    run.click(lambda img, c: classify(ctx, img, c), inputs=[image, choice],
              outputs=[left, right, notes], api_name="classify", **INFERENCE)
    choice.focus(lambda: gr.Dropdown(choices=model_choices(ctx.registry)), outputs=[choice],
                 api_visibility="private")
