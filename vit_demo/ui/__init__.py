"""The Gradio app: one tab per module, every handler a plain function over an ``AppContext``."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import gradio as gr
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.middleware import Middleware

from ..data import Split
from ..examples import READY as GALLERY_READY, open_gallery
from ..finetune.store import FinetuneStore
from ..inference import set_pixel_limit
from ..registry import LOADING, READY, SCRATCH, VITB16, Registry
from ..settings import Settings
from ..storage import work_dir
from . import attention, classify, compare, finetune, inside, walkthrough
from .cache_budget import CacheBudget
from .common import (CSS, OPERATOR_TITLE, AppContext, default_choice, model_choices,
                     operator_details, share_image, status_badges)
from .limits import PROXY_ENV, BodyLimit, HidePartial, QueueGuard

FINETUNE_DIR_ENV = "VIT_DEMO_FINETUNE_DIR"  # fine-tuned checkpoints (default: storage.work_dir)
# Gradio summarises its per-event analytics (a pandas DataFrame of up to 10,000 events) after
# every event by default, for a monitoring page this app does not turn on: 8-35 ms of CPU a
# request (benchmarks/bench_analytics.py). Its queue reads how often from this variable.
ANALYTICS_ENV, ANALYTICS_EVERY = "GRADIO_ANALYTICS_CACHE_FREQUENCY", 1000


def create_context(weights_dir: Path | None = None, data_dir: str | None = None,
                   allow_hub: bool = True, download_data: bool = False,
                   settings: Settings | None = None, finetune_dir: Path | None = None,
                   cache_examples: bool = False,
                   download: Callable[[], Split] | None = None) -> AppContext:
    """Registry with the scratch model loaded (so the first request is fast) and ViT-B/16
    loading in the background; the example gallery from the local CIFAR-10 copy, or, with
    ``download_data`` and no copy, downloaded in the background by ``download`` (default:
    torchvision's archive; it returns the test split); the fine-tune store; Pillow's pixel
    limit. ``cache_examples``: Gradio caches what the examples show (as on a Space)."""
    settings = settings or Settings.from_env()
    set_pixel_limit(settings.max_pixels)
    finetune_dir = Path(finetune_dir or os.environ.get(FINETUNE_DIR_ENV) or work_dir("finetuned"))
    registry = Registry(weights_dir, allow_hub=allow_hub, finetune_dir=finetune_dir)
    registry.load_in_background(VITB16)
    registry.load_in_background(SCRATCH).join()
    gallery = open_gallery(data_dir, download=download_data, load_test=download)
    return AppContext(registry, gallery, FinetuneStore(finetune_dir, settings.keep_finetuned),
                      settings, data_dir, cache_examples)


def offline_summary(ctx: AppContext) -> str:
    """One sentence for the terminal of a server working offline: what is missing, what works."""
    ctx.registry.load_in_background(VITB16).join()  # without network it fails at once
    missing = ([] if ctx.gallery.state == GALLERY_READY else
               ["CIFAR-10 (the example images and the fine-tune tab)"])
    missing += [] if ctx.registry.status(VITB16).state == READY else ["ViT-B/16"]
    if not missing:
        return "Offline: everything this page needs is on this machine."
    return (f"Offline: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "missing; the scratch ViT works on your own photos in Classify, Attention and "
            "Inside the model.")


def build_demo(ctx: AppContext) -> gr.Blocks:
    """The page. What it says about the models (badges, details, default model) is filled in
    when a visitor opens it, from the registry's state at that moment; while a model is still
    loading, a timer refreshes the badges until nothing is loading any more."""
    registry = ctx.registry
    # Uploads and generated files older than an hour are deleted every hour.
    with gr.Blocks(title="vit-demo: what a Vision Transformer sees", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## What a Vision Transformer sees\n"
                    "A ViT written from scratch and trained on CIFAR-10 here, beside timm's "
                    "ViT-B/16 fine-tuned on CIFAR-10.")
        badges = gr.HTML("", elem_id="model-status", padding=False)
        with gr.Tab("Classify"):
            classify_image, classify_picked, classify_choice = classify.build_tab(ctx)
        with gr.Tab("Attention"):
            attention_image, attention_picked, attention_choice = attention.build_tab(ctx)
        with gr.Tab("Compare"):
            compare_outputs = compare.build_tab(ctx)
        with gr.Tab("Fine-tune"):
            finetune.build_tab(ctx)
        with gr.Tab("Inside the model") as inside_tab:
            walkthrough_image, walkthrough_picked = walkthrough.build_section(ctx)
            inside_image, inside_choice = inside.build_tab(ctx, inside_tab)
        share_image([(classify_image, classify_picked), (attention_image, attention_picked),
                     (walkthrough_image, walkthrough_picked), (inside_image, None)])
        with gr.Accordion(OPERATOR_TITLE, open=False, elem_id="operator"):
            details = gr.Markdown()
        timer = gr.Timer(3.0, active=False)

        def page_state(on_load: bool):
            """Badges, the operator's details, the dropdowns' choices (on load also the default
            choice), timer."""
            choice = gr.Dropdown(choices=model_choices(registry),
                                 **({"value": default_choice(registry)} if on_load else {}))
            return (status_badges(registry), operator_details(ctx, finetune.operator_note(ctx)),
                    choice, choice, choice,
                    gr.Timer(active=any(s.state == LOADING for s in registry.statuses())))

        page_outputs = [badges, details, classify_choice, attention_choice, inside_choice, timer]
        demo.load(lambda: page_state(True), outputs=page_outputs, api_visibility="private", queue=False)
        demo.load(lambda: compare.compare(registry), outputs=compare_outputs, api_visibility="private")
        timer.tick(lambda: page_state(False), outputs=page_outputs, api_visibility="private", queue=False)

        def status() -> list[dict]:
            """Every model of this server: its key, label, kind, state (ready, loading, unavailable, not loaded), the reason when it is not ready, and where its weights come from."""
            return [asdict(s) for s in registry.statuses()]

        gr.api(status, api_name="status")
    os.environ.setdefault(ANALYTICS_ENV, str(ANALYTICS_EVERY))  # a deployment's own value wins
    demo.queue(max_size=ctx.settings.queue_size)
    return demo


async def _refuse_nameless_uploads(request: Request, exc: TypeError) -> JSONResponse:
    """Gradio's upload route fails with a TypeError on a file part without a file name (a
    500); answer it as the client's mistake. Any other TypeError stays a server error."""
    if not request.url.path.endswith("/upload"):
        raise exc
    return JSONResponse({"detail": "every uploaded file needs a file name"}, status_code=400)


def launch_kwargs(demo: gr.Blocks, ctx: AppContext) -> dict:
    """``demo.launch()`` settings. Gradio serves uploads, the examples and finished fine-tunes
    (``allowed_paths``: their folder), never the shipped weights folder; its cache folder is
    held to ``cache_mb``. The app is also an MCP server (``/gradio_api/mcp/``): its public
    endpoints are tools an agent can call. Every request body is bounded (``limits.BodyLimit``)
    before the cache budget counts it; session ids and requests in flight per client are
    checked before Gradio's queue sees a request (``limits.QueueGuard``)."""
    return {"max_file_size": ctx.settings.max_bytes, "css": CSS, "mcp_server": True,
            "state_session_capacity": ctx.settings.sessions,
            "allowed_paths": [str(ctx.store.folder.resolve())],
            "app_kwargs": {"exception_handlers": {TypeError: _refuse_nameless_uploads},
                           "middleware": [Middleware(HidePartial),
                                          Middleware(BodyLimit, max_bytes=ctx.settings.max_bytes),
                                          Middleware(CacheBudget, demo=demo,
                                                     budget_bytes=ctx.settings.cache_bytes),
                                          Middleware(QueueGuard, demo=demo,
                                                     max_requests=ctx.settings.client_requests,
                                                     behind_proxy=behind_proxy())]}}


def behind_proxy() -> bool:
    """Whether requests come through a proxy that appends the client to X-Forwarded-For: on a
    Space (SPACE_ID set), or where the deployment says so (VIT_DEMO_BEHIND_PROXY=1)."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get(PROXY_ENV) == "1"


def serve_locally(demo: gr.Blocks, ctx: AppContext) -> str:
    """Launch ``demo`` on a free loopback port without blocking (tests, benchmarks); its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(demo, ctx))
    return f"http://127.0.0.1:{port}/"
