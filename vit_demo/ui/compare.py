"""Compare tab: test accuracy, per-class accuracy, confusion matrices, size, FLOPs and CPU
latency of every model, as measured by the evaluation code and stored in the cards."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from ..compare import ModelFigures, figures
from ..data import CLASSES
from ..evaluate import save_confusion_png
from .common import AppContext

_PNG_DIR = Path(tempfile.mkdtemp(prefix="vit-demo-confusion-"))


def _fmt(value, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def summary_table(rows: list[ModelFigures]) -> str:
    lines = ["| model | CIFAR-10 test top-1 | test images | parameters | GFLOPs / image | "
             "CPU latency (1 image) | where the figures come from |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r.label} | {_fmt(r.accuracy and 100 * r.accuracy, '.2f', ' %')} | "
            f"{_fmt(r.test_images, ',')} | {_fmt(r.params and r.params / 1e6, '.2f', ' M')} | "
            f"{_fmt(r.flops and r.flops / 1e9, '.3f')} | {_fmt(r.cpu_latency_ms, '.1f', ' ms')} | "
            f"{r.note} |")
    return "\n".join(lines)


def per_class_table(rows: list[ModelFigures]) -> str:
    measured = [r for r in rows if r.per_class]
    if not measured:
        return "No per-class figures yet."
    lines = ["| class | " + " | ".join(r.label for r in measured) + " |",
             "| --- |" + " --- |" * len(measured)]
    for i, name in enumerate(CLASSES):
        lines.append(f"| {name} | " + " | ".join(f"{100 * r.per_class[i]:.1f} %" for r in measured) + " |")
    return "\n".join(lines)


def confusion_images(rows: list[ModelFigures]) -> list[tuple[str, str]]:
    """(PNG path, caption) per measured model; each drawn once per distinct matrix."""
    out = []
    for r in rows:
        if r.confusion is None:
            continue
        path = _PNG_DIR / f"{abs(hash((r.key, str(r.confusion)))):x}.png"
        if not path.is_file():
            save_confusion_png(r.confusion, CLASSES, path, title=r.label)
        out.append((str(path), r.label))
    return out


def compare(ctx: AppContext) -> tuple[str, str, list[tuple[str, str]]]:
    rows = [figures(ctx.registry, key) for key in ctx.registry.keys()]
    return summary_table(rows), per_class_table(rows), confusion_images(rows)


def build_tab(ctx: AppContext) -> tuple[gr.Markdown, gr.Markdown, gr.Gallery]:
    """The tab's components; returns its outputs so the page can fill them when it loads."""
    gr.Markdown("Figures measured by `python -m vit_demo evaluate --update-card` on the CIFAR-10 "
                "test set and stored in each checkpoint's card. A model without a card is listed "
                "with the reason.")
    refresh = gr.Button("Refresh")
    summary = gr.Markdown()
    per_class = gr.Markdown()
    confusion = gr.Gallery(label="Confusion matrices (rows: true class, columns: predicted)",
                           columns=2, height="auto")
    refresh.click(lambda: compare(ctx), outputs=[summary, per_class, confusion], api_name="compare")
    return summary, per_class, confusion
