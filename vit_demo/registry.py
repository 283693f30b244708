"""The model registry: what each model is, where its weights come from, and whether it is ready.

A model's key is its identity everywhere: ``scratch`` and ``vit-b16`` are the app's own
models, read-only, from the shipped ``weights/`` folder (ViT-B/16 from the Hugging Face hub
when weights/ has no ``vit-b16-cifar10``); every other key is a fine-tuned checkpoint's name in
the fine-tune folder. Each has a ``ModelKind`` (our ``ViT`` or timm's), from its card; what
differs between kinds is behind each kind's ``ModelAdapter``, in ``adapters``. The hub download
runs in a background thread, so the app starts without it; offline it becomes "unavailable"
with the reason and the way to get it.

Every model loads once per process; a loaded model is in eval mode and only read afterwards,
so concurrent requests can share it.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from .adapters import ModelAdapter, ModelKind, adapter_for
from .card import ModelCard, load_model_tensors, read_card
from .checkpoint import CheckpointError, default_weights_dir, list_models
from .data import CLASSES, DataConfig
from .hub import HUB_PREFIX, VITB16_HUB_REPO, HubUnavailable, load_hub_vit

SCRATCH = "scratch"  # registry key of the shipped scratch model
VITB16 = "vit-b16"  # registry key of the ViT-B/16 (shipped checkpoint, else the hub)
BOTH = "both"  # the pages' choice "scratch and ViT-B/16 side by side"
RESERVED_KEYS = (SCRATCH, VITB16, BOTH)  # never a fine-tuned model's key
SCRATCH_CHECKPOINT = "vit-scratch-cifar10"  # its file name in weights/
NO_SCRATCH = (f"no {SCRATCH_CHECKPOINT}.safetensors + {SCRATCH_CHECKPOINT}.json in weights/; train "
              f"it with `python -m vit_demo train --name {SCRATCH_CHECKPOINT}` (see docs/training.md)")
VITB16_CHECKPOINT = "vit-b16-cifar10"  # a shipped ViT-B/16 checkpoint, preferred to the hub
VITB16_HUB_ENV = "VIT_DEMO_VITB16_HUB"
DEFAULT_VITB16_HUB = f"{HUB_PREFIX}{VITB16_HUB_REPO}"

READY, LOADING, UNAVAILABLE, NOT_LOADED = "ready", "loading", "unavailable", "not loaded"
log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """The model cannot be used; the message says why and how to get it."""


@dataclass(frozen=True)
class LoadedModel:
    key: str
    label: str
    kind: ModelKind
    model: nn.Module  # eval mode, never mutated after loading
    data_cfg: DataConfig
    classes: tuple[str, ...]
    source: str  # where the weights came from
    card: ModelCard | None  # the checkpoint card (None for hub weights)

    @property
    def adapter(self) -> ModelAdapter:
        """The model interface of its kind (blocks, heads, grids, attention)."""
        return adapter_for(self.kind)


@dataclass(frozen=True)
class ModelStatus:
    key: str
    label: str
    kind: ModelKind
    state: str  # READY, LOADING, UNAVAILABLE or NOT_LOADED
    reason: str  # why it is not ready, and how to make it so
    source: str


def load_checkpoint(weights_dir: Path, name: str) -> tuple[nn.Module, ModelKind, DataConfig, ModelCard]:
    card = read_card(weights_dir, name)
    model = adapter_for(card.kind).build(card)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors, card = load_model_tensors(weights_dir, name, shapes)
    model.load_state_dict(tensors)
    return model.eval(), card.kind, card.data_config, card


class Registry:
    """Lists the models the app can use and loads each one once, on demand or in the background.

    ``weights_dir``: the shipped checkpoints (read only). ``finetune_dir``: fine-tuned
    checkpoints, one key each (None: no fine-tuned models).
    """

    def __init__(self, weights_dir: Path | None = None, allow_hub: bool = True,
                 finetune_dir: Path | None = None):
        self.weights_dir = Path(weights_dir) if weights_dir else default_weights_dir()
        self.finetune_dir = Path(finetune_dir) if finetune_dir else None
        self.allow_hub = allow_hub
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._loading: dict[str, threading.Event] = {}

    # -- what exists ---------------------------------------------------------------------
    def finetuned(self) -> list[str]:
        """Keys of the fine-tuned checkpoints, by name."""
        return list_models(self.finetune_dir) if self.finetune_dir else []

    def keys(self) -> list[str]:
        """SCRATCH, VITB16, then every fine-tuned checkpoint, by name."""
        return [SCRATCH, VITB16] + self.finetuned()

    def source(self, key: str) -> tuple[Path | None, str]:
        """(folder, checkpoint name) of ``key``; folder None: the hub name."""
        if key == SCRATCH:
            return self.weights_dir, SCRATCH_CHECKPOINT
        if key == VITB16:
            if (self.weights_dir / f"{VITB16_CHECKPOINT}.json").is_file():
                return self.weights_dir, VITB16_CHECKPOINT
            hub_name = os.environ.get(VITB16_HUB_ENV, DEFAULT_VITB16_HUB)
            return None, HUB_PREFIX + hub_name.removeprefix(HUB_PREFIX)
        return self.finetune_dir, key

    def describe_source(self, key: str) -> str:
        """Where ``key``'s weights come from, with no server path: ``weights/NAME``,
        ``fine-tuned/NAME`` or the hub name."""
        folder, name = self.source(key)
        if folder is None:
            return name
        return f"{'weights' if folder == self.weights_dir else 'fine-tuned'}/{name}.safetensors"

    def finetune_bases(self) -> list[str]:
        """The keys the fine-tune tab may start from: VITB16 and the models whose kind allows it."""
        return [k for k in self.keys() if k == VITB16 or adapter_for(self.kind(k)).finetunable]

    def label(self, key: str) -> str:
        return {SCRATCH: "Scratch ViT (CIFAR-10)",
                VITB16: "ViT-B/16 (timm, fine-tuned on CIFAR-10)"}.get(key, f"Fine-tuned: {key}")

    def kind(self, key: str) -> ModelKind:
        folder, name = self.source(key)
        if folder is None:
            return ModelKind.TIMM
        try:
            return read_card(folder, name).kind
        except CheckpointError:
            return ModelKind.TIMM if key == VITB16 else ModelKind.SCRATCH

    def status(self, key: str) -> ModelStatus:
        folder, name = self.source(key)
        with self._lock:  # one snapshot
            loaded, error, loading = self._loaded.get(key), self._errors.get(key), key in self._loading
        state, reason = NOT_LOADED, ""
        if loaded is not None:
            state = READY
        elif error is not None:
            state, reason = UNAVAILABLE, error
        elif loading:
            state = LOADING
        elif folder is not None and not (folder / f"{name}.json").is_file():
            state, reason = UNAVAILABLE, (NO_SCRATCH if key == SCRATCH else
                                          f"no checkpoint {key!r} among the fine-tuned models")
        kind = loaded.kind if loaded is not None else self.kind(key)
        return ModelStatus(key, self.label(key), kind, state, reason, self.describe_source(key))

    def statuses(self) -> list[ModelStatus]:
        return [self.status(k) for k in self.keys()]

    # -- loading -------------------------------------------------------------------------
    def get(self, key: str) -> LoadedModel:
        """The loaded model for ``key``, loading it now if needed (once per process)."""
        if key not in self.keys():
            raise ModelUnavailable(f"unknown model {key!r}; choose one of {self.keys()}")
        while True:
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
                if key in self._errors:
                    raise ModelUnavailable(f"{self.label(key)} is unavailable: {self._errors[key]}")
                event = self._loading.get(key)
                if event is None:
                    event = self._loading[key] = threading.Event()
                    break
            event.wait()
        try:
            loaded = self._load(key)
        except Exception as exc:
            with self._lock:
                self._errors[key] = self._explain(key, exc)
                del self._loading[key]
            event.set()
            log.warning("%s: unavailable: %s", self.label(key), self._errors[key])
            raise ModelUnavailable(f"{self.label(key)} is unavailable: {self._errors[key]}") from exc
        with self._lock:
            self._loaded[key] = loaded
            del self._loading[key]
        event.set()
        log.info("%s: ready (weights: %s)", loaded.label, loaded.source)
        return loaded

    def load_in_background(self, key: str) -> threading.Thread:
        """Start loading ``key`` in a daemon thread; its status says how it went."""
        def run():
            with suppress(ModelUnavailable):  # recorded in the status
                self.get(key)

        thread = threading.Thread(target=run, name=f"load-{key}", daemon=True)
        thread.start()
        return thread

    def forget(self, key: str) -> None:
        """Drop a loaded model or an error so that the next ``get`` loads it anew."""
        with self._lock:
            self._loaded.pop(key, None)
            self._errors.pop(key, None)

    def _load(self, key: str) -> LoadedModel:
        folder, name = self.source(key)
        if folder is not None:
            model, kind, data_cfg, card = load_checkpoint(folder, name)
            return LoadedModel(key, self.label(key), kind, model, data_cfg, card.classes,
                               self.describe_source(key), card)
        if not self.allow_hub:
            raise ModelUnavailable("hub downloads are switched off")
        model, data_cfg = load_hub_vit(name)
        if model.num_classes != len(CLASSES):
            raise ModelUnavailable(f"{name} has {model.num_classes} classes, not CIFAR-10's 10")
        return LoadedModel(key, self.label(key), ModelKind.TIMM, model.eval(), data_cfg,
                           CLASSES, name, None)

    def _explain(self, key: str, exc: Exception) -> str:
        folder, name = self.source(key)
        if folder is None:
            reason = str(exc) if isinstance(exc, (HubUnavailable, ModelUnavailable)) else (
                f"could not get {name} from the Hugging Face hub ({type(exc).__name__})")
            return f"{reason} (another hub model: set {VITB16_HUB_ENV})"
        text = str(exc)
        for path in {str(folder), str(folder.resolve())}:
            text = text.replace(path, self.describe_source(key).split("/")[0])
        return f"{type(exc).__name__}: {text}"
