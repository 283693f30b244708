"""Fine-tune tab: start a short fine-tuning job from the browser, watch it, stop it, download it.

The job and its state live in a server-side ``JobRunner`` (one job at a time for the whole
server), so a reloaded page, a second browser and API clients all see the same job. API:
``/finetune`` (starts a job and streams its state until it ends), ``/finetune_status`` (the
state now), ``/finetune_stop`` (stop after the current step). Each returns
``(progress_html, loss_plot, accuracy_plot, log, files, state)``; ``state`` is a JSON summary
(status, step, total_steps, eta_s, images_per_s, metrics, checkpoint, model_key, error, ...).
"""

from __future__ import annotations

import html
import math
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from dataclasses import fields
from functools import partial

import gradio as gr
import pandas as pd

from ..finetune import (DONE, FAILED, FinetuneError, FinetuneRequest, JobRunner, JobState,
                        base_choices, default_request)
from ..models import SCRATCH, VITB16
from .common import AppContext

_DOWNLOADS = Path(tempfile.mkdtemp(prefix="vit-demo-downloads-"))
MAX_PLOT_POINTS = 400  # per series; longer histories are thinned for the plot
LOG_LINES = 12
LOSS_COLORS = {"train loss": "#2563eb"}
ACCURACY_COLORS = {"train accuracy": "#2563eb", "validation accuracy": "#ea580c"}
FORM_FIELDS = [f.name for f in fields(FinetuneRequest)]
Outputs = tuple[str, pd.DataFrame | None, pd.DataFrame | None, str, list[str] | None, dict]


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def progress_html(state: JobState) -> str:
    """A progress bar and one line of figures (status, step, ETA, images/s, accuracy)."""
    parts = [f"<b>{html.escape(state.status)}</b>"]
    if state.id:
        parts.append(f"job {state.id}: {html.escape(str(state.request.get('base')))} &rarr; "
                     f"{html.escape(str(state.request.get('name')))}")
    if state.total_steps:
        pct = 100 * state.step / state.total_steps
        parts.append(f"step {state.step}/{state.total_steps} ({pct:.0f} %), epoch {state.epoch:.2f}")
    if state.active and state.eta_s is not None:
        parts.append(f"ETA {_duration(state.eta_s)}")
    if state.images_per_s:
        parts.append(f"{state.images_per_s:,.0f} images/s")
    if state.metrics:
        parts.append(f"test accuracy {state.metrics['test']['accuracy']:.2%}")
    if state.model_key:
        parts.append(f"model key <code>{html.escape(state.model_key)}</code>")
    bar = (f"<progress value='{state.step}' max='{max(state.total_steps, 1)}' "
           "style='width:100%'></progress>")
    lines = [bar, "<div>" + " &middot; ".join(parts) + f" &middot; device: {html.escape(state.device)}</div>"]
    if state.error:
        lines.append(f"<div style='color:#b91c1c'>{html.escape(state.error)}</div>")
    if state.warning:
        lines.append(f"<div style='color:#b45309'>&#9888; {html.escape(state.warning)}</div>")
    return "\n".join(lines)


def _thin(rows: list[dict]) -> list[dict]:
    every = math.ceil(len(rows) / MAX_PLOT_POINTS) if rows else 1
    return [r for i, r in enumerate(rows) if i % every == 0 or i == len(rows) - 1]


def plot_frames(state: JobState) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long-format (step, value, series) frames: training loss; training and validation accuracy."""
    rows = _thin([r for r in state.history if "train_loss" in r])
    loss = [{"step": r["step"], "value": r["train_loss"], "series": "train loss"} for r in rows]
    acc = [{"step": r["step"], "value": r["train_accuracy"], "series": "train accuracy"} for r in rows]
    acc += [{"step": r["step"], "value": r["val_accuracy"], "series": "validation accuracy"}
            for r in state.history if "val_accuracy" in r]
    dtypes = {"step": "int64", "value": "float64"}
    return tuple(pd.DataFrame(rows, columns=["step", "value", "series"]).astype(dtypes)
                 for rows in (loss, acc))


def view(state: JobState) -> Outputs:
    """The tab's outputs for ``state``."""
    # No frame before the first step: the plot keeps the axis types and the series of its
    # first frame, which therefore holds the starting validation accuracy and a training row.
    trained = bool(state.history) and "train_loss" in state.history[-1]
    loss, acc = plot_frames(state) if trained else (None, None)
    return (progress_html(state), loss, acc, "\n".join(state.log[-LOG_LINES:]),
            download_copies(state), state.summary())


def download_copies(state: JobState) -> list[str] | None:
    """The finished job's checkpoint and card, copied once into a temporary folder for the
    download button: Gradio serves files from there, never from the weights folder."""
    if state.status != DONE:
        return None
    folder = _DOWNLOADS / f"job-{state.id}"
    copies = []
    for src in (state.checkpoint, state.card):
        if not src or not Path(src).is_file():
            continue
        dst = folder / Path(src).name
        if not dst.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{dst.name}.{threading.get_ident()}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        copies.append(str(dst))
    return copies or None


async def start(runner: JobRunner, *values) -> AsyncIterator[Outputs]:
    """Start a job from the form values and stream its state until it ends."""
    try:
        request = FinetuneRequest(**dict(zip(FORM_FIELDS, values)))
        state = runner.start(request)
    except FinetuneError as exc:
        raise gr.Error(str(exc)) from exc
    async for state in runner.updates(state.id):
        yield view(state)
    if state.status == FAILED:
        raise gr.Error(f"The fine-tune failed: {state.error}")


async def follow(runner: JobRunner) -> AsyncIterator[Outputs]:
    """The current job's state, streamed while it is active (one update when it is not)."""
    async for state in runner.updates():
        yield view(state)


def stop(runner: JobRunner) -> Outputs:
    """Ask the running job to stop after its current step; the state then."""
    state = runner.stop()
    if not state.active:
        gr.Warning("No fine-tuning job is running.")
    return view(state)


def form_defaults(base: str, device: str) -> list:
    """New form values (all but seed and overwrite) when the base model changes."""
    d = default_request(base, device)
    return [d.train_images, d.epochs, 0, d.batch_size, d.lr, d.freeze_backbone, d.name,
            d.val_images, d.test_images]


def build_tab(ctx: AppContext) -> JobRunner:
    """The tab; returns its runner (one per app, holding the server's job)."""
    runner = JobRunner(ctx.registry, ctx.data_dir)
    d = default_request(VITB16 if runner.device == "cuda" else SCRATCH, runner.device)
    gr.Markdown(
        "Fine-tune a model on CIFAR-10 here: timm's ViT-B/16 (ImageNet-21k pretrained) or the "
        "scratch ViT. The job runs on the server, one at a time for everyone; this page (or any "
        "other) shows it while it runs. At the end the model is tested on held-out CIFAR-10 test "
        "images, saved in the weights folder under the output name, and selectable in the other "
        "tabs at once.")
    with gr.Row():
        with gr.Column(scale=1):
            base = gr.Dropdown(base_choices(runner.weights_dir), value=d.base, label="Base model",
                               allow_custom_value=True)
            with gr.Row():
                train_images = gr.Number(d.train_images, label="Training images", precision=None)
                epochs = gr.Number(d.epochs, label="Epochs", precision=None)
                steps = gr.Number(0, label="Steps (0: use epochs)", precision=None)
            with gr.Row():
                batch_size = gr.Number(d.batch_size, label="Batch size", precision=None)
                lr = gr.Number(d.lr, label="Learning rate", precision=None)
                seed = gr.Number(d.seed, label="Seed", precision=None)
            with gr.Row():
                val_images = gr.Number(d.val_images, label="Validation images (0: none)",
                                       precision=None)
                test_images = gr.Number(d.test_images, label="Test images", precision=None)
            freeze = gr.Checkbox(d.freeze_backbone, label="Freeze the backbone (train the head only)")
            name = gr.Textbox(d.name, label="Output name (checkpoint in weights/)")
            overwrite = gr.Checkbox(False, label="Overwrite a checkpoint of that name")
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
                refresh_btn = gr.Button("Refresh")
        with gr.Column(scale=1):
            progress = gr.HTML(progress_html(runner.snapshot()))
            loss_plot = gr.LinePlot(x="step", y="value", color="series", title="Training loss",
                                    color_map=LOSS_COLORS, height=220)
            acc_plot = gr.LinePlot(x="step", y="value", color="series", title="Accuracy",
                                   color_map=ACCURACY_COLORS, height=220)
            log = gr.Textbox(label="Log", lines=LOG_LINES, max_lines=LOG_LINES, autoscroll=True,
                             interactive=False)
            files = gr.File(label="Checkpoint and card", file_count="multiple", interactive=False)
            with gr.Accordion("Job state (JSON)", open=False):
                state_json = gr.JSON()
    inputs = [base, train_images, epochs, steps, batch_size, lr, freeze, seed, name, overwrite,
              val_images, test_images]
    assert len(inputs) == len(FORM_FIELDS)
    outputs = [progress, loss_plot, acc_plot, log, files, state_json]
    started = start_btn.click(partial(start, runner), inputs=inputs,
                              outputs=outputs, api_name="finetune", concurrency_limit=None,
                              show_progress="hidden")
    started.failure(partial(follow, runner), outputs=outputs,
                    api_visibility="private", concurrency_limit=None, show_progress="hidden")
    stop_btn.click(lambda: stop(runner), outputs=outputs, api_name="finetune_stop",
                   concurrency_limit=None, show_progress="hidden")
    refresh_btn.click(lambda: view(runner.snapshot()), outputs=outputs, api_name="finetune_status",
                      concurrency_limit=None, show_progress="hidden")
    gr.on(triggers=None, fn=partial(follow, runner), outputs=outputs,
          api_visibility="private", concurrency_limit=None, show_progress="hidden")
    base.input(lambda b: form_defaults(b, runner.device), inputs=[base],
               outputs=[train_images, epochs, steps, batch_size, lr, freeze, name, val_images,
                        test_images], api_visibility="private", queue=False)
    base.focus(lambda: gr.Dropdown(choices=base_choices(runner.weights_dir)), outputs=[base],
               api_visibility="private", queue=False)
    return runner
