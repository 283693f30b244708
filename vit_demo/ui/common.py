"""What every tab shares: the app context, the image input, model choices and error messages."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio import processing_utils
from gradio_client import utils as client_utils
from gradio.data_classes import ImageData

from ..data import data_problem
from ..examples import DOWNLOADING, READY as GALLERY_READY, ExampleGallery
from ..finetune.store import FinetuneStore
from ..hub import HUB_PREFIX
from ..inference import MAX_FILE_BYTES, BadImage, open_image
from ..notices import Explained
from ..settings import Settings
from ..registry import (BOTH, LOADING, NOT_LOADED, READY, SCRATCH, UNAVAILABLE, VITB16,
                        LoadedModel, ModelStatus, ModelUnavailable, Registry)
from .limits import checked_examples

# /classify (and an example's answer) share one limit (concurrency_id "inference"): requests
# beyond it wait in the queue. Each forward pass uses torch's intra-op threads, so more would
# only contend. The expensive work (attention maps and their scores, "Inside the model", the
# latency measurement: seconds of CPU each with ViT-B/16) has a group of its own ("heavy"),
# so that however many of those wait, classification keeps its own slots.
INFERENCE = {"concurrency_id": "inference", "concurrency_limit": 4}
log = logging.getLogger("vit_demo.ui")
HEAVY = {"concurrency_id": "heavy", "concurrency_limit": 2}


@dataclass
class AppContext:
    registry: Registry
    gallery: ExampleGallery
    store: FinetuneStore
    settings: Settings
    data_dir: str | None = None
    cache_examples: bool = False  # Gradio caches the examples' outputs (lazily), as on a Space


def refuse(visitor: str, operator: str = "") -> gr.Error:
    """A refused request: one line in the server log (``operator``, else ``visitor``), and the
    ``gr.Error`` that tells the visitor (raise it), with no traceback in the terminal."""
    log.info("refused: %s", operator or visitor)
    return gr.Error(visitor, print_exception=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """The core's ``ValueError`` (a request the person must change) as a ``gr.Error`` with the
    same message (an ``Explained`` one: its visitor's words), so that the tabs need not
    re-check: ``with user_errors(): ...``, or as a decorator, ``user_errors()(fn)``."""
    try:
        yield
    except ValueError as exc:
        visitor = exc.visitor if isinstance(exc, Explained) else str(exc)
        raise refuse(visitor, str(exc)) from exc


URL_REFUSED = ("Cannot fetch an image from a web address: this server does not download files. "
               "Upload the image, or send it inline as a data: URL.")


class ImageUpload(gr.Image):
    """``gr.Image`` that hands its handler the uploaded file's path without opening it. Gradio's
    own decodes the upload (an inline ``data:`` URL too) before the handler runs, so a damaged or
    huge file fails there with an opaque message, after costing its pixels in memory; here the
    bytes are only written to a file, and ``read_image`` decodes it within the limits."""

    max_bytes = MAX_FILE_BYTES  # largest inline image; ``image_input`` sets the deployment's

    def get_block_name(self) -> str:
        return "image"

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | Path | None
                                                 ) -> str | None:
        """Gradio would download an image given as an http(s) URL, whole and before any
        check, holding an inference slot while it does: refused instead."""
        if client_utils.is_http_url_like(str(url_or_file_path)):
            raise gr.Error(URL_REFUSED)
        return await super().async_move_resource_to_block_cache(url_or_file_path)

    def preprocess(self, payload: ImageData | None) -> str | None:
        if payload is None:
            return None
        if payload.path is None:  # a data: URL (the webcam, or an API call with the image inline)
            if not payload.url or not payload.url.startswith("data:"):
                raise refuse("Cannot use this image: send a file or a data: URL.")
            if len(payload.url) > self.max_bytes * 4 // 3 + 1024:  # base64 is 4/3 the bytes
                raise refuse(f"Cannot use this file: the limit is {self.max_bytes // 2**20} MB.")
            return processing_utils.save_base64_to_cache(payload.url, self.GRADIO_CACHE)
        return payload.path


def image_input(settings: Settings, label: str = "Image") -> ImageUpload:
    # Gradio's config takes a component's settings from its __init__ signature: the limit is
    # set on the instance, not passed to a constructor of our own.
    image = ImageUpload(label=label, type="filepath", sources=["upload", "clipboard", "webcam"],
                        height=260, elem_classes=["image-input"])
    image.max_bytes = settings.max_bytes
    return image


GALLERY_POLL_S = 3.0  # how often an open page looks whether the download has ended


def gallery_note(gallery: ExampleGallery) -> str:
    """One line above the examples: empty when they are there, else why not, in a visitor's
    words."""
    if gallery.state == GALLERY_READY:
        return ""
    if gallery.state == DOWNLOADING:
        return "Downloading CIFAR-10... the examples can be used when it is done."
    return (f"{gallery.message} Drop a photo of your own instead." if gallery.message else
            "No example images on this server. Drop a photo of your own instead.")


def data_detail(ctx: "AppContext") -> str:
    """Where CIFAR-10 stands on this server, for the operator."""
    gallery = ctx.gallery
    if gallery.state in (GALLERY_READY, DOWNLOADING):
        return gallery.state
    return gallery.detail or data_problem("test", ctx.data_dir) or "on this machine"


def examples(ctx: AppContext, image: gr.Image, fn=None, outputs: Sequence = (),
             api_name: str | None = None):
    """The CIFAR-10 examples feeding ``image``; returns the event after which an example's image
    is in ``image`` (``None`` when this server has none), for ``share_image``. ``fn(image_path)``
    with ``outputs`` is what an example shows besides its image (Gradio caches it lazily with
    ``ctx.cache_examples``). While CIFAR-10 downloads, the examples are names ("cat 1") that
    bring their image once it is done; a note above them says what is going on."""
    gallery = ctx.gallery
    note = gr.Markdown(gallery_note(gallery))
    cache = ctx.cache_examples and fn is not None
    common = {"label": "CIFAR-10 test images, two per class", "examples_per_page": 20,
              "cache_mode": "lazy", "api_name": api_name or "load_example"}
    if gallery.state == GALLERY_READY:
        picked = gr.Examples([[str(p)] for p in gallery.paths], inputs=[image], outputs=[*outputs],
                             fn=fn, cache_examples=cache, **common)
        checked_examples(picked.dataset, picked.load_input_event)
        if fn is not None and not cache:  # what the example shows, from its index: no upload
            picked.load_input_event.then(lambda example: fn(str(gallery.paths[example[0]])),
                                         inputs=[picked.dataset], outputs=[*outputs],
                                         api_visibility="private", **INFERENCE)
        return picked.load_input_event
    if gallery.state != DOWNLOADING:
        return None

    def show(name: str):
        with user_errors():
            path = str(gallery.path_of(name))
        return (path, *fn(path)) if fn is not None else path

    name = gr.Textbox(visible=False)
    picked = gr.Examples([[n] for n in gallery.names], inputs=[name], outputs=[image, *outputs],
                         fn=show, cache_examples=cache, **common)
    loaded = picked.load_input_event
    if not cache:  # uncached, Gradio only puts the name in the box: show the example after it
        loaded = loaded.then(show, inputs=[name], outputs=[image, *outputs],
                             api_visibility="private", **INFERENCE)
    while_downloading(gallery, [note], lambda: (gallery_note(gallery),))
    return loaded


def while_downloading(gallery: ExampleGallery, outputs: list, values: Callable[..., tuple],
                      inputs: Sequence = ()) -> None:
    """``outputs`` show ``values(*inputs)``, refreshed on page load and every ``GALLERY_POLL_S``
    seconds while CIFAR-10 is downloading."""
    timer = gr.Timer(GALLERY_POLL_S, active=gallery.state == DOWNLOADING)

    def refresh(*args):
        return (*values(*args), gr.Timer(active=gallery.state == DOWNLOADING))

    for triggers in ([timer.tick], None):
        gr.on(triggers, refresh, inputs=[*inputs], outputs=[*outputs, timer],
              api_visibility="private", queue=False)


def share_image(inputs: list[tuple[gr.Image, object]]) -> None:
    """One image for the whole visit: an image put into any of ``inputs`` (dropped, pasted,
    photographed, cleared, or picked from that tab's examples) becomes the image of all others.
    Each pair is (image, the event after which a picked example is in it, or ``None``).
    ``.input`` fires only on what the visitor does, not on these copies, so nothing loops."""
    for i, (image, picked) in enumerate(inputs):
        others = [other for j, (other, _) in enumerate(inputs) if j != i]

        def copy(value, n=len(others)):
            return value if n == 1 else [value] * n

        image.input(copy, inputs=[image], outputs=others, api_visibility="private", queue=False)
        if picked is not None:
            picked.then(copy, inputs=[image], outputs=others, api_visibility="private", queue=False)


def read_image(path: str | Path | None, settings: Settings):
    """The RGB image at ``path`` within ``settings``' limits, or a ``gr.Error`` one can act on."""
    if path is None:
        raise refuse("Add an image first: drop a file, paste one, use the webcam or pick an example.")
    try:
        return open_image(path, settings.max_pixels, settings.max_bytes)
    except BadImage as exc:
        raise refuse(f"Cannot use this file: {exc}.") from exc


def default_choice(registry: Registry) -> str:
    """Both models side by side when both are ready, else the scratch model alone."""
    return BOTH if all(registry.status(k).state == READY for k in (SCRATCH, VITB16)) else SCRATCH


def model_choices(registry: Registry, both: bool = True) -> list[tuple[str, str]]:
    """(label, key) pairs for a dropdown: both side by side (when both can be used and ``both``
    is offered), then every model that can be used (one still loading marked so); an
    unavailable one is no choice (the badges say why)."""
    usable = [s for s in registry.statuses() if s.state != UNAVAILABLE]
    pairs = ([("Scratch ViT and ViT-B/16, side by side", BOTH)]
             if both and {SCRATCH, VITB16} <= {s.key for s in usable} else [])
    return pairs + [(s.label + ("" if s.state in (READY, NOT_LOADED) else f" [{s.state}]"), s.key)
                    for s in usable]


def model_dropdown(registry: Registry, value: str | None = None, both: bool = True) -> gr.Dropdown:
    """The model choice (``value`` default: ``default_choice``; ``both``: offer both side by
    side); its choices are read again when it gets the focus, so that a fine-tune finished after
    the page was built is offered."""
    dropdown = gr.Dropdown(model_choices(registry, both), value=value or default_choice(registry),
                           label="Model", allow_custom_value=True)
    dropdown.focus(lambda: gr.Dropdown(choices=model_choices(registry, both)), outputs=[dropdown],
                   api_visibility="private")
    return dropdown


def side_titles(choice: str, registry: Registry) -> tuple[str, bool]:
    """(title of the left result, whether the right one, ViT-B/16, is shown) for a choice."""
    if choice == BOTH:
        return registry.label(SCRATCH), True
    return (registry.label(choice) if choice in registry.keys() else choice), False


def keys_for(choice: str, registry: Registry) -> list[str]:
    """The registry keys a model choice stands for (validates API input)."""
    if choice == BOTH:
        return [SCRATCH, VITB16]
    if choice not in registry.keys():
        raise refuse(f"Unknown model {choice!r}. Choose one of: {', '.join([BOTH] + registry.keys())}.")
    return [choice]


def load_models(registry: Registry, choice: str) -> dict[str, LoadedModel | None]:
    """The loaded model of each key ``choice`` stands for, None for one that is unavailable; a
    ``gr.Error`` saying so in a visitor's words when none is available (the log says why)."""
    loaded: dict[str, LoadedModel | None] = {}
    for key in keys_for(choice, registry):
        try:
            loaded[key] = registry.get(key)
        except ModelUnavailable:
            loaded[key] = None
    if all(m is None for m in loaded.values()):
        raise refuse(" ".join(unavailable_message(registry, k) for k in loaded),
                     "; ".join(f"{k}: {registry.status(k).reason}" for k in loaded))
    return loaded


# -- what the page says about the models ------------------------------------------------------
SHORT_NAMES = {SCRATCH: "Scratch ViT", VITB16: "ViT-B/16"}
_SHORT_REASONS = {READY: "", LOADING: "loading now", NOT_LOADED: "loads on first use"}
_EXCEPTION = re.compile(r"\s*\([A-Za-z_][\w.]*(Error|Exception|NotFound)\w*:.*?\)(?=[.;]|\s|$)", re.S)


def short_reason(status: ModelStatus) -> str:
    """A few words on why a model is not ready (no exception text), or "" when it is."""
    if status.state in _SHORT_REASONS:
        return _SHORT_REASONS[status.state]
    if status.source.startswith(HUB_PREFIX) or "hub downloads are switched off" in status.reason:
        return "weights not on this server"
    return "checkpoint missing or unreadable"


def how_to_get(status: ModelStatus, weights_dir: Path | None = None) -> str:
    """The reason a model is unavailable and how to get it, for the operator's accordion: no
    exception class or message, no path of this machine (``weights_dir`` reads "the weights
    folder")."""
    if status.source.startswith(HUB_PREFIX) or "hub" in status.reason:
        return ("Its weights are not on this server and cannot be downloaded from the Hugging Face "
                "hub now. To use it: start the app once with network access (the download is "
                "cached), or put `vit-b16-cifar10.safetensors` + `.json` in the weights folder; "
                "another hub model: set `VIT_DEMO_VITB16_HUB`.")
    reason = re.sub(r"^[A-Za-z_]\w*(Error|Exception): ", "", _EXCEPTION.sub("", status.reason))
    if weights_dir is not None:
        reason = reason.replace(str(weights_dir), "the weights folder")
    return reason.strip() or "Its checkpoint could not be read."


def unavailable_message(registry: Registry, key: str) -> str:
    """A model cannot be used, in a visitor's words (the operator's accordion says how to
    get it)."""
    status = registry.status(key)
    return f"{status.label} is not available here ({short_reason(status)})."


def unavailable_note(registry: Registry, key: str) -> str:
    """One short line for a model a request could not use."""
    status = registry.status(key)
    name = SHORT_NAMES.get(key, status.label)
    return f"**{name}** is not available here ({short_reason(status)})."


_BADGE_COLOURS = {READY: "#15803d", LOADING: "#b45309", NOT_LOADED: "#475569", UNAVAILABLE: "#b91c1c"}


def status_badges(registry: Registry) -> str:
    """The models as compact badges (name, state, a short reason), HTML that wraps on a phone."""
    badges = []
    for s in registry.statuses():
        reason = short_reason(s)
        colour = _BADGE_COLOURS.get(s.state, "#475569")
        badges.append(
            f'<span class="model-badge" data-model="{html.escape(s.key)}" '
            f'data-state="{html.escape(s.state)}">'
            f'<b>{html.escape(SHORT_NAMES.get(s.key, s.label))}</b> '
            f'<span class="model-state" style="background:{colour}">{html.escape(s.state)}</span>'
            + (f' <span class="model-reason">{html.escape(reason)}</span>' if reason else "")
            + "</span>")
    return '<div class="model-badges">' + "".join(badges) + "</div>"


OPERATOR_TITLE = "For the person running this server"


def operator_details(ctx: AppContext, finetune: str = "") -> str:
    """The operator's accordion: every model with its state, where its weights come from and,
    if unavailable, how to get it; where CIFAR-10 stands; ``finetune``: why a job cannot start."""
    registry = ctx.registry
    models = "\n".join(f"- **{s.label}**: {s.state}; weights: `{s.source}`"
                       + (f". {how_to_get(s, registry.weights_dir)}" if s.state == UNAVAILABLE else "")
                       for s in registry.statuses())
    return (f"**Models**\n{models}\n\n**CIFAR-10** (the examples, the fine-tune tab, Inside's "
            f"distance figure without a photo): {data_detail(ctx)}"
            + (f"\n\n**Fine-tune**: {finetune}" if finetune else "")
            + "\n\nThe server log has a line for each model load, each refused request and each "
              "failed job. Settings and deployment: the repository's `docs/`.")


CSS = """
.model-badges { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; }
.model-badge { white-space: nowrap; font-size: 0.95em; }
.model-state { color: white; border-radius: 999px; padding: 1px 8px; font-size: 0.85em; }
.model-reason { color: var(--body-text-color-subdued); font-size: 0.85em; white-space: normal; }
.prose code, .md code { overflow-wrap: anywhere; }
.scroll-x { overflow-x: auto; max-width: 100%; }
.figure-table th { white-space: nowrap; }
.figure-table td, .figure-table th { padding: 4px 8px; }
.figure-table td:first-child { min-width: 9em; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; }
.figures figure { margin: 0; flex: 1 1 320px; max-width: 560px; min-width: 0; }
.figures img { display: block; width: 100%; height: auto; object-fit: contain; }
/* a small image (a 32 px CIFAR example) fills the box instead of sitting in its middle */
.image-input img { width: 100%; height: 100%; object-fit: contain; }
.figures figcaption { font-size: 0.9em; color: var(--body-text-color-subdued); }
/* compact tab buttons, so that all five fit in a phone's width without the overflow menu */
.tab-wrapper .tab-container button { padding-left: 8px !important; padding-right: 8px !important; }
/* Gradio titles every refused request "Error", in the toast and over the outputs (gr.Error's
   title does not reach this page): the toast's words say what happened, in a visitor's terms */
[data-testid="status-tracker"] span.error { display: none; }
.toast-title.error { visibility: hidden; font-size: 0; }
.toast-title.error::after { content: "Cannot do that"; visibility: visible;
                            font-size: var(--text-md); }
/* the fine-tune job's plots, log and files take no room while they are empty (no job yet) */
#finetune-loss:has(> [aria-label="Empty value"]), #finetune-accuracy:has(> [aria-label="Empty value"]),
#finetune-files:has(> [aria-label="Empty value"]), #finetune-log:has(textarea:placeholder-shown) {
  display: none; }
/* Inside's figures: their buttons sit above the picture, not over its title */
.inside-figure img { padding-top: 32px; }
/* the attention maps' colour bar */
.colour-bar { display: flex; align-items: center; gap: 8px; font-size: 0.9em; }
.colour-bar-scale { flex: 1 1 auto; height: 14px; border-radius: 3px; min-width: 120px; }
.colour-bar-caption { font-size: 0.85em; color: var(--body-text-color-subdued); }
/* a confusion matrix: a tap (focus) opens it over the whole screen at its full size, scrolling
   where the screen is smaller; a tap beside the picture closes it */
.figures img { cursor: zoom-in; }
.figures figure:focus-within { position: fixed; inset: 0; max-width: none; overflow: auto;
                               background: white; z-index: 1000; padding: 12px; }
.figures figure:focus-within img { width: auto; max-width: none; cursor: zoom-out; }
@media (max-width: 480px) {
  .tab-wrapper .tab-container button { padding-left: 3px !important; padding-right: 3px !important;
                                       font-size: 0.82em !important; }
  /* tables stack: one card a row, each cell "header: value" */
  .figure-table thead { display: none; }
  .figure-table, .figure-table tbody, .figure-table tr, .figure-table td { display: block; }
  .figure-table tr { padding: 6px 0; border-bottom: 1px solid var(--border-color-primary); }
  .figure-table td { padding: 1px 4px; overflow-wrap: anywhere; border: none; }
  .figure-table td::before { content: attr(data-label) ": "; color: var(--body-text-color-subdued); }
  .figure-table td:first-child { min-width: 0; font-weight: 600; }
  .figure-table td:first-child::before { content: ""; }
}
"""
