"""The Gradio app: one tab per module, every handler a plain function over an ``AppContext``."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..checkpoint import default_weights_dir
from ..examples import build_gallery
from ..models import SCRATCH, VITB16, Registry
from . import attention, classify, compare, finetune
from .common import AppContext, status_markdown

QUEUE_MAX_SIZE = 64  # requests waiting beyond this are refused at once ("queue full")
MAX_FILE_SIZE = "20mb"  # uploads above this are refused by the server before any handler runs


def create_context(weights_dir: Path | None = None, data_dir: str | None = None,
                   allow_hub: bool = True) -> AppContext:
    """Registry with the scratch model loaded (so the first request is fast) and ViT-B/16
    loading in the background; the example gallery from the local CIFAR-10 copy."""
    registry = Registry(weights_dir, allow_hub=allow_hub)
    registry.load_in_background(VITB16)
    registry.load_in_background(SCRATCH).join()
    return AppContext(registry, build_gallery(data_dir), data_dir)


def build_demo(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="vit-demo: what a Vision Transformer sees") as demo:
        gr.Markdown("# What a Vision Transformer sees\n"
                    "A ViT written from scratch and trained on CIFAR-10 here, beside timm's "
                    "ViT-B/16 fine-tuned on CIFAR-10.")
        status = gr.Markdown(status_markdown(ctx.registry))
        with gr.Tab("Classify"):
            classify.build_tab(ctx)
        with gr.Tab("Attention"):
            attention.build_tab(ctx)
        with gr.Tab("Compare"):
            compare_outputs = compare.build_tab(ctx)
        with gr.Tab("Fine-tune"):
            finetune.build_tab(ctx)
        demo.load(lambda: compare.compare(ctx), outputs=compare_outputs, api_visibility="private")
        timer = gr.Timer(3.0)
        timer.tick(lambda: status_markdown(ctx.registry), outputs=[status], api_visibility="private",
                   queue=False)
    demo.queue(max_size=QUEUE_MAX_SIZE)
    return demo


def launch_kwargs(weights_dir: Path | None = None) -> dict:
    """``launch()`` settings; Gradio may serve files from the weights folder (the fine-tune
    tab's checkpoint downloads) and from nowhere else beyond its defaults."""
    weights = Path(weights_dir) if weights_dir else default_weights_dir()
    return {"max_file_size": MAX_FILE_SIZE, "allowed_paths": [str(weights.resolve())]}
