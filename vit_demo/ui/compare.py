"""Compare tab: test accuracy, per-class accuracy, confusion matrices, size, FLOPs and CPU
latency of every model, as measured by the evaluation code and stored in the cards, and a
latency measured now on this server on request. Every figure says where it comes from."""

from __future__ import annotations

import base64
import functools
import html

import gradio as gr
import torch

from ..compare import ModelFigures, figures
from ..data import CLASSES
from ..evaluate import confusion_png, cpu_latency_ms
from ..registry import READY, Registry
from .common import HEAVY, AppContext

LATENCY_RUNS = 5


def _fmt(value, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; on a phone (the page's CSS) each row stacks into a card of "header:
    value" lines, so that it fits the screen's width."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td data-label="{html.escape(h)}">{c}</td>'
                                     for h, c in zip(header, row)) + "</tr>" for row in rows)
    return (f'<div class="scroll-x"><table class="figure-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def summary_table(rows: list[ModelFigures]) -> str:
    """Accuracy, size, FLOPs and the card's CPU latency of every model, with their source."""
    header = ["model", "CIFAR-10 test top-1", "test images", "parameters", "GFLOPs / image",
              "CPU latency, 1 image (card)", "where the figures come from"]
    out = []
    for r in rows:
        m = r.metrics
        out.append([html.escape(r.label), _fmt(m.test and 100 * m.test.accuracy, ".2f", " %"),
                    _fmt(m.test and m.test.images, ","),
                    _fmt(m.params and m.params / 1e6, ".2f", " M"),
                    _fmt(m.flops_per_image and m.flops_per_image / 1e9, ".3f"),
                    _fmt(m.cpu_latency_ms, ".1f", " ms"),
                    html.escape(r.note)])
    return _table(header, out) + (
        '<p class="figure-note">Accuracy, per-class accuracy and confusion matrices: each '
        "model's test run when it was made, kept in its card. The card's CPU latency is the "
        "median forward pass of one image on the machine of that run, so it differs from this "
        "server: use <i>Time one image on this server now</i> for a figure measured here.</p>")


def per_class_table(rows: list[ModelFigures]) -> str:
    measured = [r for r in rows if r.metrics.test]
    if not measured:
        return "<p>No per-class figures yet.</p>"
    header = ["class"] + [f"{r.label} (card)" for r in measured]
    out = [[name] + [f"{100 * r.metrics.test.per_class_accuracy[i]:.1f} %" for r in measured]
           for i, name in enumerate(CLASSES)]
    return _table(header, out)


@functools.lru_cache(maxsize=16)
def _confusion_base64(confusion: tuple[tuple[int, ...], ...], title: str) -> str:
    return base64.b64encode(confusion_png(confusion, CLASSES, title=title)).decode("ascii")


def figures_html(rows: list[ModelFigures]) -> str:
    """The confusion matrices as whole figures (scaled to the width, never cropped), inline;
    each drawn once per distinct matrix."""
    parts = []
    for r in rows:
        if r.metrics.test is None:
            continue
        caption = html.escape(f"{r.label}: confusion matrix from the card's test run ({r.note}); "
                              "rows: true class, columns: predicted")
        data = _confusion_base64(r.metrics.test.confusion, r.label)
        # tabindex: a tap focuses the figure, and the page's CSS shows it full size, full screen
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{caption}" '
                     f'tabindex="0" title="tap to enlarge"><figcaption>{caption} (tap to '
                     "enlarge, beside it to close)</figcaption></figure>")
    if not parts:
        return "<p>No confusion matrices yet: no model has measured figures in its card.</p>"
    return '<div class="figures">' + "".join(parts) + "</div>"


def compare(registry: Registry) -> tuple[str, str, str]:
    """(summary table, per-class table, confusion-matrix figures), all HTML."""
    rows = [figures(registry, key) for key in registry.keys()]
    return summary_table(rows), per_class_table(rows), figures_html(rows)


def measure_latency(ctx: AppContext, runs: int = LATENCY_RUNS) -> str:
    """Median forward pass of one image, now, for every model that is ready (none is loaded)."""
    lines = []
    for status in ctx.registry.statuses():
        if status.state != READY:
            lines.append(f"- **{status.label}**: not timed ({status.state})")
            continue
        loaded = ctx.registry.get(status.key)
        ms = cpu_latency_ms(loaded.model, loaded.data_cfg, runs=runs, warmup=1)
        lines.append(f"- **{status.label}**: {ms:.1f} ms")
    return (f"Measured now on this server: median of {runs} forward passes of one image, "
            f"{torch.get_num_threads()} threads, while it serves other visitors.\n\n" + "\n".join(lines))


def build_tab(ctx: AppContext) -> tuple[gr.HTML, gr.HTML, gr.HTML]:
    """The tab's components; returns its outputs so the page can fill them when it loads."""
    gr.Markdown("How well each model does on CIFAR-10's test images, how big it is and how fast, "
                "as measured when it was made. A model without figures is listed with the reason.")
    summary = gr.HTML(elem_id="compare-summary")
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm")
        time_now = gr.Button("Time one image on this server now", size="sm")
    latency = gr.Markdown()
    per_class = gr.HTML(elem_id="compare-per-class")
    gr.Markdown("**Confusion matrices** (from the cards' test runs)")
    confusion = gr.HTML(elem_id="compare-figures")

    def compare_models():
        """Every model's figures from its card: accuracy, parameters, FLOPs and latency, per-class accuracy, and confusion matrices (HTML)."""
        return compare(ctx.registry)

    refresh.click(compare_models, outputs=[summary, per_class, confusion], api_name="compare")
    # Callable by API clients, but no MCP tool (nor in view_api): a benchmark of the server.
    time_now.click(lambda: measure_latency(ctx), outputs=[latency], api_name="latency",
                   api_visibility="undocumented", **HEAVY)
    return summary, per_class, confusion
