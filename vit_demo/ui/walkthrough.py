"""The walkthrough, the first section of the Inside the model tab: one model's forward pass on
the visitor's image, step by step: the patches, the tokens, each block's [CLS] attention and
logit lens, the answer."""

from __future__ import annotations

import time

import gradio as gr

from ..inference import preprocess
from ..overlay import model_view
from ..registry import BOTH, SCRATCH, LoadedModel, ModelUnavailable
from ..walkthrough import Walkthrough, top_k, walkthrough
from ..walkthrough_plots import walkthrough_pngs
from .common import (HEAVY, AppContext, examples, image_input, keys_for, model_dropdown,
                     read_image, unavailable_message, user_errors)
from .inside import png_file

# (name, label) of each step's figure, top to bottom, and what to look for in it
FIGURES = [("patches", "1. Patches"), ("tokens", "2. Tokens"),
           ("attention", "3. Attention of [CLS] in blocks 1, 2, ..."), ("lens", "4. Logit lens")]
READINGS = {
    "patches": "The model never sees your photo as it is: resized and cropped to its input, then "
               "cut into these squares, each of which becomes one token.",
    "tokens": "Patches drawn in one colour got similar tokens (their first three principal "
              "components as red, green, blue); the position embeddings add where each patch "
              "sits. [CLS] is the same for every image until the blocks mix the patches into it.",
    "attention": "Where [CLS] gathers from in each block (bright: much attention, heads "
                 "averaged, each map on its own scale): look for the blocks that settle on the object.",
    "lens": "Each row is the answer the model would give if it stopped after that block: look for "
            "the block where the final class takes over, and how sure it becomes.",
    "answer": "The model's top five, the same as the last row of the lens.",
}
TOP_K = 5
ELEM_ID = "walkthrough"  # the section's element id, and the prefix of its figures' ids


def note(loaded: LoadedModel, steps: Walkthrough, settled: int, ms: float) -> str:
    """One line of the numbers behind the figures (``settled``: the block, from 1, from which the
    lens's top class is the final one)."""
    rows, cols = steps.grid
    lens = steps.lens
    final = int(lens[-1].argmax())
    return (f"**{loaded.label}**: {rows * cols} patches, {len(lens)} blocks; the lens's top class "
            f"is *{loaded.classes[final]}* from block {settled} of {len(lens)} on and ends at "
            f"{float(lens[-1, final]):.0%}. The whole walkthrough took {ms:.0f} ms.")


def walk(ctx: AppContext, image: str | None, model: str) -> tuple:
    """(patches, tokens, attention and lens PNG paths, top-5, note, values keyed by registry
    key) for one model and the image at ``image``. ``gr.Error`` for a missing or unusable
    image, an unknown or unavailable model, or "both"."""
    img = read_image(image, ctx.settings)
    if model == BOTH:
        raise gr.Error("The walkthrough follows one model at a time: choose one.")
    key = keys_for(model, ctx.registry)[0]
    try:
        loaded = ctx.registry.get(key)
    except ModelUnavailable as exc:
        raise gr.Error(unavailable_message(ctx.registry, key)) from exc
    start = time.perf_counter()
    x = preprocess(img, loaded.data_cfg)  # (1, C, H, W)
    with user_errors():
        steps = walkthrough(loaded.model, loaded.kind, x)
    shown = model_view(x[0].numpy(), loaded.data_cfg.mean, loaded.data_cfg.std)
    pngs = walkthrough_pngs(shown, steps, loaded.classes)
    ms = (time.perf_counter() - start) * 1000
    entry = {"label": loaded.label, "available": True, "kind": loaded.kind,
             "input_size": list(loaded.data_cfg.input_size[1:]), **steps.to_json(loaded.classes)}
    return (*[png_file(pngs[name]) for name, _ in FIGURES],
            top_k(steps.probabilities, loaded.classes, TOP_K),
            note(loaded, steps, entry["settled_block"], ms), {key: entry})


def step_figure(name: str, label: str) -> gr.Image:
    """A step's title, its figure (element id ``walkthrough-NAME``) and what to look for."""
    gr.Markdown(f"**{label}**")
    figure = gr.Image(label=label, show_label=False, type="filepath", format="png",
                      interactive=False, buttons=["fullscreen"], elem_id=f"{ELEM_ID}-{name}")
    gr.Markdown(READINGS[name])
    return figure


def build_section(ctx: AppContext):
    """The section's components; returns (image input, the event after which a picked example
    is in it) for the page to share the image with the other tabs."""
    with gr.Column(elem_id=ELEM_ID):
        gr.Markdown(
            "### Walkthrough: your image, step by step\n"
            "How a Vision Transformer turns your image into an answer, step by step, in one forward "
            "pass: it cuts the image into patches, turns each patch into a token, adds where the "
            "patch sits, lets the tokens exchange information in its blocks, and reads the class "
            "from the extra [CLS] token.")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                image = image_input(ctx.settings)
                choice = model_dropdown(ctx.registry, SCRATCH, both=False)
                run = gr.Button("Walk through", variant="primary")
            with gr.Column(scale=1, min_width=280):
                figures = {FIGURES[0][0]: step_figure(*FIGURES[0])}
        with gr.Row():
            for name, label in FIGURES[1:3]:
                with gr.Column(min_width=280):
                    figures[name] = step_figure(name, label)
        with gr.Row():
            with gr.Column(min_width=280):
                figures[FIGURES[3][0]] = step_figure(*FIGURES[3])
            with gr.Column(min_width=280):
                answer = gr.Label(num_top_classes=TOP_K, label="5. Answer", elem_id=f"{ELEM_ID}-answer")
                gr.Markdown(READINGS["answer"])
                notes = gr.Markdown()
        with gr.Accordion("The numbers behind the figures", open=False):
            values = gr.JSON(label="Values")
        picked = examples(ctx, image)

    @user_errors()
    def forward_walkthrough(image: str | None, model: str = SCRATCH):
        """Follow one Vision Transformer's forward pass on an image, step by step: the patches it cuts the image into, its tokens coloured by their first three principal components (before and after the position embeddings), each block's [CLS] attention over the patches (heads averaged), the logit lens (the class probabilities its final norm and head read from [CLS] after each block), and its top-5 answer.

        Args:
            image: the image (PNG, JPEG, WebP, ...; any size)
            model: "scratch", "vit-b16", or a fine-tuned model's key
        """
        return walk(ctx, image, model)

    run.click(forward_walkthrough, inputs=[image, choice],
              outputs=[*figures.values(), answer, notes, values], api_name="walkthrough", **HEAVY)
    return image, picked
