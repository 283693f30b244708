"""What every tab shares: the app context, the image input, model choices and error messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import gradio as gr
from gradio.data_classes import ImageData

from ..examples import Gallery
from ..finetune.store import FinetuneStore
from ..settings import Settings
from ..inference import BadImage, open_image
from ..registry import READY, SCRATCH, VITB16, LoadedModel, ModelUnavailable, Registry

BOTH = "both"  # model choice: scratch and ViT-B/16 side by side
# /classify and /rollout share one limit (concurrency_id "inference"): requests beyond it wait
# in the queue. Each forward pass uses torch's intra-op threads, so more would only contend.
INFERENCE = {"concurrency_id": "inference", "concurrency_limit": 4}


@dataclass
class AppContext:
    registry: Registry
    gallery: Gallery
    store: FinetuneStore
    settings: Settings
    data_dir: str | None = None


@contextmanager
def user_errors() -> Iterator[None]:
    """The core's ``ValueError`` (a request the person must change) as a ``gr.Error``."""
    try:
        yield
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc


class ImageUpload(gr.Image):
    """``gr.Image`` that hands its handler the uploaded file's path without opening it.

    Gradio's own ``gr.Image`` decodes the upload before the handler runs, so a damaged or
    huge file fails there with an opaque message; here ``read_image`` decodes it and says
    what is wrong.
    """

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload: ImageData | None) -> str | None:
        if payload is None:
            return None
        if payload.path is None:  # a base64 data URL (webcam): let Gradio write it to a file
            return super().preprocess(payload)
        return payload.path


def image_input(label: str = "Image") -> ImageUpload:
    return ImageUpload(label=label, type="filepath", sources=["upload", "clipboard", "webcam"],
                       height=260)


def examples(ctx: AppContext, image: gr.Image) -> None:
    """The CIFAR-10 example gallery feeding ``image``, or the reason there is none."""
    if ctx.gallery.paths:
        gr.Examples([[str(p)] for p in ctx.gallery.paths], inputs=[image],
                    label="CIFAR-10 test images, two per class (read from this machine's copy "
                          "of the data set)", examples_per_page=20)
    else:
        gr.Markdown(ctx.gallery.reason)


def read_image(path: str | Path | None):
    """The RGB image at ``path``, or a ``gr.Error`` the person can act on."""
    if path is None:
        raise gr.Error("Add an image first: drop a file, paste one, use the webcam or pick an example.")
    try:
        return open_image(path)
    except BadImage as exc:
        raise gr.Error(f"Cannot use this file: {exc}.") from exc


def model_choices(registry: Registry, with_both: bool = True) -> list[tuple[str, str]]:
    """(label, key) pairs for a dropdown: both side by side, then every model with its status."""
    pairs = [("Scratch ViT and ViT-B/16, side by side", BOTH)] if with_both else []
    for status in registry.statuses():
        note = "" if status.state == READY or status.state == "not loaded" else f" [{status.state}]"
        pairs.append((status.label + note, status.key))
    return pairs


def keys_for(choice: str, registry: Registry) -> list[str]:
    """The registry keys a model choice stands for (validates API input)."""
    if choice == BOTH:
        return [SCRATCH, VITB16]
    if choice not in registry.keys():
        raise gr.Error(f"Unknown model {choice!r}. Choose one of: {', '.join([BOTH] + registry.keys())}.")
    return [choice]


def get_model(registry: Registry, key: str) -> LoadedModel:
    try:
        return registry.get(key)
    except ModelUnavailable as exc:
        raise gr.Error(str(exc)) from exc


def model_status(registry: Registry) -> list[dict]:
    """Every model's status, for the ``/status`` API: key, label, kind, state, reason, source."""
    return [asdict(s) for s in registry.statuses()]


def status_markdown(registry: Registry) -> str:
    lines = ["| model | status | weights |", "| --- | --- | --- |"]
    for s in registry.statuses():
        state = s.state if not s.reason else f"{s.state}: {s.reason}"
        lines.append(f"| {s.label} | {state} | `{s.source}` |")
    return "\n".join(lines)
