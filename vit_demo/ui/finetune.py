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
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial

import gradio as gr
import pandas as pd

from ..examples import DOWNLOADING
from ..finetune.job import base_timm_name, blocker
from ..finetune.request import FinetuneRequest, default_request
from ..finetune.runner import DONE, FAILED, STARTING, JobRunner, JobState
from ..registry import SCRATCH, VITB16
from .cache_budget import served_copy
from .common import AppContext, refuse, user_errors, while_downloading

PROGRESS_POLL_S = 2.0  # how often a page watching another's job asks for its state
MAX_PLOT_POINTS = 400  # per series; longer histories are thinned for the plot
LOG_LINES = 12
LOSS_COLORS = {"train loss": "#2563eb"}
ACCURACY_COLORS = {"train accuracy": "#2563eb", "validation accuracy": "#ea580c"}
Outputs = tuple[str, pd.DataFrame | None, pd.DataFrame | None, str, list[str] | None, dict]


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(round(seconds)), 60)
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


ENDED = "ended"  # how a failed job shows on the pages of those who did not start it


def progress_html(state: JobState, mine: bool = True) -> str:
    """A progress bar and one line of figures (status, step, ETA, images/s, accuracy); while
    the job starts, what it is doing. A failed job is red only on the page of the session that
    started it (``mine``); elsewhere it shows as ended, without its error."""
    if state.status == FAILED and not mine:
        state = replace(state, status=ENDED, error=None)
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
    if state.status == STARTING and state.log:  # e.g. getting ViT-B/16's weights: a while
        lines.append(f"<div>{html.escape(state.log[-1].partition(' ')[2])}...</div>")
    if state.error:
        lines.append(f"<div style='color:#b91c1c'>{html.escape(state.error)}</div>")
    if state.warning:
        lines.append(f"<div style='color:#b45309'>&#9888; {html.escape(state.warning)}</div>")
    return "\n".join(lines)


def plot_frames(state: JobState) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long-format (step, value, series) frames: training loss; training and validation accuracy."""
    rows = [r for r in state.history if "train_loss" in r]
    every = max(1, math.ceil(len(rows) / MAX_PLOT_POINTS))  # thinned to MAX_PLOT_POINTS
    rows = [r for i, r in enumerate(rows) if i % every == 0 or i == len(rows) - 1]
    loss = [{"step": r["step"], "value": r["train_loss"], "series": "train loss"} for r in rows]
    acc = [{"step": r["step"], "value": r["train_accuracy"], "series": "train accuracy"} for r in rows]
    acc += [{"step": r["step"], "value": r["val_accuracy"], "series": "validation accuracy"}
            for r in state.history if "val_accuracy" in r]
    dtypes = {"step": "int64", "value": "float64"}
    return tuple(pd.DataFrame(rows, columns=["step", "value", "series"]).astype(dtypes)
                 for rows in (loss, acc))


def view(state: JobState, runner: JobRunner, mine: bool = True) -> Outputs:
    """The tab's outputs for ``state`` (``mine``: on the page of the session that started it).
    Its files: the finished job's checkpoint and card while the store still holds them (Gradio
    serves a copy from its cache, which it empties hourly)."""
    # No frame before the first step: the plot keeps the axis types and the series of its
    # first frame, which therefore holds the starting validation accuracy and a training row.
    trained = bool(state.history) and "train_loss" in state.history[-1]
    loss, acc = plot_frames(state) if trained else (None, None)
    files = None
    if state.status == DONE and state.model_key:
        tensors = runner.store.tensors_path(state.model_key)
        files = [served_copy(p) for p in (tensors, tensors.with_suffix(".json"))
                 if p.is_file()] or None
    return (progress_html(state, mine), loss, acc, "\n".join(state.log[-LOG_LINES:]), files,
            state.summary())


def form_defaults(base: str, device: str) -> list:
    """New form values (all but seed) when the base model changes."""
    d = default_request(base, device)
    return [d.train_images, d.epochs, 0, d.batch_size, d.lr, d.freeze_backbone, d.name,
            d.val_images, d.test_images]


def base_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, key) pairs for the base-model dropdown: ViT-B/16, then every scratch ViT."""
    pairs = [(f"ViT-B/16, ImageNet-21k pretrained (timm {base_timm_name()})", VITB16)]
    return pairs + [(ctx.registry.label(k), k)
                    for k in ctx.registry.finetune_bases() if k != VITB16]


DOWNLOADING_NOTE = "Start is off while CIFAR-10 downloads; a job can start when it is done."


def readiness(ctx: AppContext, base: str) -> str:
    """Why a job from ``base`` cannot start now, in a visitor's words; empty when it can.
    (Running on the CPU does not stop one: the job state's warning says so.)"""
    if ctx.gallery.state == DOWNLOADING:
        return DOWNLOADING_NOTE
    blocked = blocker(base, ctx.data_dir)
    return "" if blocked is None else blocked.visitor


def operator_note(ctx: AppContext) -> str:
    """Why jobs cannot start, for the operator's accordion (empty when they can)."""
    blocked = [b for b in (blocker(base, ctx.data_dir) for base in (SCRATCH, VITB16)) if b]
    return " ".join(dict.fromkeys(b.operator for b in blocked))  # each once


def start_button(ctx: AppContext, base: str) -> tuple:
    """(the reason beside Start, Start) for ``base``: Start is off while the job cannot run."""
    reason = readiness(ctx, base)
    return gr.Markdown(reason, visible=bool(reason)), gr.Button(interactive=not reason)


def build_tab(ctx: AppContext) -> None:
    """The tab, with its runner (one per app, holding the server's job)."""
    runner = JobRunner(ctx.registry, ctx.store, ctx.data_dir, ctx.settings)
    d = default_request(VITB16 if runner.device == "cuda" else SCRATCH, runner.device)
    gr.Markdown(
        "Fine-tune a model on CIFAR-10 here: timm's ViT-B/16 (ImageNet-21k pretrained) or the "
        "scratch ViT. The job runs on the server, one at a time for everyone; every page shows "
        "it while it runs, and only yours can stop it. At the end the model is tested on "
        "held-out CIFAR-10 test images and selectable in the other tabs at once, under its "
        f"name plus a suffix; this server keeps the {ctx.settings.keep_finetuned} newest.")
    number = partial(gr.Number, precision=None, min_width=100)
    with gr.Row():
        with gr.Column(scale=1):
            base = gr.Dropdown(base_choices(ctx), value=d.base, label="Base model",
                               allow_custom_value=True)  # fine-tunes made after the page was built
            with gr.Row():
                train_images = number(d.train_images, label="Training images")
                epochs = number(d.epochs, label="Epochs")
                steps = number(0, label="Steps (0: use epochs)")
            with gr.Row():
                batch_size = number(d.batch_size, label="Batch size")
                lr = number(d.lr, label="Learning rate")
                seed = number(d.seed, label="Seed")
            with gr.Row():
                val_images = number(d.val_images, label="Validation images (0: none)")
                test_images = number(d.test_images, label="Test images")
            freeze = gr.Checkbox(d.freeze_backbone, label="Freeze the backbone (train the head only)")
            name = gr.Textbox(d.name, label="Name of the new model (the server adds a suffix)")
            reason = readiness(ctx, d.base)
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", interactive=not reason,
                                      elem_id="finetune-start")
                stop_btn = gr.Button("Stop", variant="stop")
                refresh_btn = gr.Button("Refresh")
            ready_note = gr.Markdown(reason, visible=bool(reason), elem_id="finetune-start-reason")
        with gr.Column(scale=1):
            progress = gr.HTML(progress_html(runner.snapshot()))
            plot = partial(gr.LinePlot, x="step", y="value", color="series", x_title="optimizer step",
                           height=220)
            loss_plot = plot(title="Training loss", y_title="loss", color_map=LOSS_COLORS,
                             elem_id="finetune-loss")
            acc_plot = plot(title="Accuracy", y_title="accuracy", color_map=ACCURACY_COLORS,
                            elem_id="finetune-accuracy")
            log = gr.Textbox(label="Log", lines=LOG_LINES, max_lines=LOG_LINES, autoscroll=True,
                             interactive=False, elem_id="finetune-log",
                             placeholder="The job's log")
            files = gr.File(label="Checkpoint and card", file_count="multiple", interactive=False,
                            elem_id="finetune-files")
            with gr.Accordion("Job state (JSON)", open=False):
                state_json = gr.JSON()
    inputs = [base, train_images, epochs, steps, batch_size, lr, freeze, seed, name, val_images,
              test_images]
    outputs = [progress, loss_plot, acc_plot, log, files, state_json]

    async def finetune(base: str, train_images: float, epochs: float, steps: float,
                       batch_size: float, lr: float, freeze_backbone: bool, seed: float, name: str,
                       val_images: float, test_images: float, request: gr.Request
                       ) -> AsyncIterator[Outputs]:
        """Fine-tune a model on CIFAR-10 on this server (one job at a time for everyone) and stream its state until it ends. ``name`` labels the new model; its key is the label plus a suffix the server chooses."""
        if ctx.gallery.state == DOWNLOADING:
            raise refuse(DOWNLOADING_NOTE)
        with user_errors():
            state = runner.start(FinetuneRequest(
                base=base, train_images=train_images, epochs=epochs, steps=steps,
                batch_size=batch_size, lr=lr, freeze_backbone=freeze_backbone, seed=seed,
                name=name, val_images=val_images, test_images=test_images),
                owner=request.session_hash or "")
        async for state in runner.updates(state.id):
            yield view(state, runner)
        if state.status == FAILED:
            raise gr.Error(f"The fine-tune failed: {state.error}", print_exception=False)

    def poll(request: gr.Request) -> tuple:
        """The current job's state, and the page's poll running while the job is active: each
        open page asks every ``PROGRESS_POLL_S`` seconds, outside the queue, instead of holding
        one of its workers for as long as the job runs."""
        state = runner.snapshot()
        return (*view(state, runner, mine=state.owner == (request.session_hash or "")),
                gr.Timer(active=state.active))

    def stop(request: gr.Request) -> Outputs:
        """Stop the running job, if this session started it; the state then."""
        with user_errors():
            state = runner.stop(owner=request.session_hash or "")
        if not state.active:
            gr.Warning("No fine-tuning job is running.")
        return view(state, runner)

    # /finetune stays public (an MCP tool too): gradio_client takes keyword arguments and
    # defaults only for documented endpoints. Stop and status take none: callable by API
    # clients, but "undocumented", so no MCP tools (nor in view_api).
    job_api = {"concurrency_limit": None, "show_progress": "hidden"}
    ticker = gr.Timer(PROGRESS_POLL_S, active=False)
    polled = {"fn": poll, "outputs": [*outputs, ticker], "api_visibility": "private",
              "queue": False, "show_progress": "hidden"}
    started = start_btn.click(finetune, inputs=inputs, outputs=outputs, api_name="finetune",
                              **job_api)
    started.failure(**polled)  # another job runs: watch it
    # The stop's answer is the state when it was asked; the job may end (and the start's stream
    # say so) before that answer lands, so the page watches the job again until it has ended.
    stop_btn.click(stop, outputs=outputs, api_name="finetune_stop", api_visibility="undocumented",
                   **job_api).then(**polled)

    def refresh(request: gr.Request) -> Outputs:
        state = runner.snapshot()
        return view(state, runner, mine=state.owner == (request.session_hash or ""))

    refresh_btn.click(refresh, outputs=outputs,
                      api_name="finetune_status", api_visibility="undocumented", **job_api)
    gr.on(triggers=[ticker.tick], **polled)
    gr.on(triggers=None, **polled)  # on page load
    base.input(lambda b: form_defaults(b, runner.device), inputs=[base],
               outputs=[train_images, epochs, steps, batch_size, lr, freeze, name, val_images,
                        test_images], api_visibility="private", queue=False)
    base.change(partial(start_button, ctx), inputs=[base], outputs=[ready_note, start_btn],
                api_visibility="private", queue=False)
    base.focus(lambda: gr.Dropdown(choices=base_choices(ctx)), outputs=[base],
               api_visibility="private", queue=False)
    while_downloading(ctx.gallery, [ready_note, start_btn], partial(start_button, ctx), [base])
