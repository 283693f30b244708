"""Classify tab: top-5 classes and latency from one model, or from two side by side."""

from __future__ import annotations

import gradio as gr

from ..data import CLASSES
from ..inference import predict
from ..registry import SCRATCH, VITB16
from .common import (INFERENCE, AppContext, examples, image_input, load_models, model_dropdown,
                     read_image, side_titles, unavailable_note, user_errors)

TOP_K = 5


def classify(ctx: AppContext, image: str | None, choice: str) -> tuple[dict | None, dict | None, str]:
    """(left confidences, right confidences, notes). A model that is unavailable leaves its
    side empty with a one-line note, as long as another model answered."""
    img = read_image(image, ctx.settings)
    results: list[dict | None] = [None, None]  # left, right
    notes = []
    for side, (key, loaded) in enumerate(load_models(ctx.registry, choice).items()):
        if loaded is None:
            notes.append(unavailable_note(ctx.registry, key))
            continue
        pred = predict(loaded, img, TOP_K)
        results[side] = pred.confidences
        notes.append(f"**{loaded.label}**: {pred.latency_ms:.1f} ms (preprocessing + forward, "
                     f"{loaded.data_cfg.input_size[1]} px input)")
    return results[0], results[1], "\n\n".join(notes)


def build_tab(ctx: AppContext):
    """The tab's components; returns (image input, the event after which a picked example is
    in it, model dropdown): the page shares them with the other tabs, fills them in on load."""
    gr.Markdown(
        "Drop, paste or photograph an image. The models know only CIFAR-10's ten classes: "
        + ", ".join(CLASSES) + ". Anything else is forced into one of them.")
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            image = image_input(ctx.settings)
            choice = model_dropdown(ctx.registry)
            run = gr.Button("Classify", variant="primary")
        with gr.Column(scale=1, min_width=280):
            title, both = side_titles(choice.value, ctx.registry)
            with gr.Row():
                left = gr.Label(num_top_classes=TOP_K, label=title, min_width=200)
                right = gr.Label(num_top_classes=TOP_K, label=ctx.registry.label(VITB16),
                                 min_width=200, visible=both)
            notes = gr.Markdown()

    @user_errors()
    def classify_image(image: str | None, model: str):
        """Classify an image into CIFAR-10's ten classes (airplane, automobile, bird, cat, deer,
        dog, frog, horse, ship, truck) with a Vision Transformer; anything else is forced into one
        of them.

        Args:
            image: the image to classify (PNG, JPEG, WebP, ...; any size, resized by the server)
            model: "scratch" (a ViT trained from scratch), "vit-b16" (timm's ViT-B/16), "both", or a fine-tuned model's key
        Returns:
            the top-5 classes with probabilities from the first model and from ViT-B/16 (with "both"); notes with latencies
        """
        return classify(ctx, image, model)

    def classify_example(path: str):
        """An example as the scratch model sees it (what Gradio caches for the example)."""
        return (SCRATCH, *classify(ctx, path, SCRATCH))

    picked = examples(ctx, image, classify_example, [choice, left, right, notes],
                      api_name="classify_example")
    run.click(classify_image, inputs=[image, choice], outputs=[left, right, notes],
              api_name="classify", **INFERENCE)

    def show_sides(c: str):
        title, both = side_titles(c, ctx.registry)
        return gr.Label(label=title), gr.Label(visible=both)

    choice.change(show_sides, inputs=[choice], outputs=[left, right], api_visibility="private",
                  queue=False)
    return image, picked, choice
