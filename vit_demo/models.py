"""The model registry: what each model is, where its weights come from, and whether it is ready.

Two kinds of model:
- ``scratch``: our ``ViT`` from a checkpoint in ``weights/`` (the shipped one, or a fine-tune).
- ``timm``: timm's ``vit_base_patch16_224`` with a 10-class head, from a checkpoint in
  ``weights/`` when there is one (the fine-tune tab writes them), else from the Hugging Face hub
  through timm (``VIT_DEMO_VITB16_HUB`` overrides the default hub name). The hub download runs
  in a background thread, so the app starts without it; offline it becomes "unavailable" with
  the reason and the way to get it.

Every model loads once per process; a loaded model is in eval mode and only read afterwards,
so concurrent requests can share it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from .checkpoint import CheckpointError, default_weights_dir, list_models, load_card, load_model_tensors
from .data import CIFAR10_DATA_CONFIG, CLASSES, DataConfig
from .model import ViT, ViTConfig

SCRATCH = "scratch"  # registry key of the shipped scratch model
VITB16 = "vit-b16"  # registry key of the ViT-B/16 (local fine-tune, else the hub)
SCRATCH_CHECKPOINT = "vit-scratch-cifar10"  # its file name in weights/
VITB16_CHECKPOINT = "vit-b16-cifar10"  # a local ViT-B/16 fine-tune, preferred to the hub
VITB16_TIMM_NAME = "vit_base_patch16_224"
VITB16_HUB_ENV = "VIT_DEMO_VITB16_HUB"
DEFAULT_VITB16_HUB = "hf-hub:edadaltocg/vit_base_patch16_224_in21k_ft_cifar10"

READY, LOADING, UNAVAILABLE, NOT_LOADED = "ready", "loading", "unavailable", "not loaded"


class ModelUnavailable(RuntimeError):
    """The model cannot be used; the message says why and how to get it."""


@dataclass(frozen=True)
class LoadedModel:
    key: str
    label: str
    kind: str  # "scratch" or "timm"
    model: nn.Module  # eval mode, never mutated after loading
    data_cfg: DataConfig
    classes: tuple[str, ...]
    source: str  # where the weights came from
    card: dict | None  # the checkpoint card (None for hub weights)


@dataclass(frozen=True)
class ModelStatus:
    key: str
    label: str
    kind: str
    state: str  # READY, LOADING, UNAVAILABLE or NOT_LOADED
    reason: str  # why it is not ready, and how to make it so
    source: str


def hub_name() -> str:
    name = os.environ.get(VITB16_HUB_ENV, DEFAULT_VITB16_HUB)
    return name if name.startswith("hf-hub:") else f"hf-hub:{name}"


def build_timm(card: dict) -> nn.Module:
    import timm

    return timm.create_model(card["timm_name"], pretrained=False,
                             num_classes=len(card["classes"]), **card.get("timm_kwargs", {}))


def timm_data_config(model: nn.Module) -> DataConfig:
    import timm

    return DataConfig.from_dict(timm.data.resolve_model_data_config(model))


def load_checkpoint(weights_dir: Path, name: str) -> tuple[nn.Module, str, DataConfig, dict]:
    """Model, kind, data config and card of checkpoint ``name`` in ``weights_dir``."""
    card = load_card(weights_dir, name)
    arch = card.get("arch")
    if arch == "scratch-vit":
        model: nn.Module = ViT(ViTConfig.from_dict(card["model_config"]))
        kind = "scratch"
    elif arch == "timm":
        model = build_timm(card)
        kind = "timm"
    else:
        raise CheckpointError(f"card {name}.json: unknown arch {arch!r}")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors, card = load_model_tensors(weights_dir, name, shapes)
    model.load_state_dict(tensors)
    data_cfg = DataConfig.from_dict(card["data_config"]) if "data_config" in card else (
        CIFAR10_DATA_CONFIG if kind == "scratch" else timm_data_config(model))
    return model.eval(), kind, data_cfg, card


class Registry:
    """Lists the models the app can use and loads each one once, on demand or in the background."""

    def __init__(self, weights_dir: Path | None = None, allow_hub: bool = True):
        self.weights_dir = Path(weights_dir) if weights_dir else default_weights_dir()
        self.allow_hub = allow_hub
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._loading: dict[str, threading.Event] = {}

    # -- what exists ---------------------------------------------------------------------
    def keys(self) -> list[str]:
        """SCRATCH, VITB16, then every other checkpoint in weights/ (fine-tunes), by name."""
        extra = [n for n in list_models(self.weights_dir)
                 if n not in (SCRATCH_CHECKPOINT, VITB16_CHECKPOINT)]
        return [SCRATCH, VITB16] + extra

    def _source(self, key: str) -> tuple[str, str]:
        """(kind of source, checkpoint name or hub name) for ``key``."""
        if key == SCRATCH:
            return "file", SCRATCH_CHECKPOINT
        if key == VITB16:
            if (self.weights_dir / f"{VITB16_CHECKPOINT}.json").is_file():
                return "file", VITB16_CHECKPOINT
            return "hub", hub_name()
        return "file", key

    def label(self, key: str) -> str:
        if key == SCRATCH:
            return "Scratch ViT (CIFAR-10)"
        if key == VITB16:
            return "ViT-B/16 (timm, fine-tuned on CIFAR-10)"
        return f"Fine-tuned: {key}"

    def status(self, key: str) -> ModelStatus:
        where, name = self._source(key)
        source = name if where == "hub" else f"weights/{name}.safetensors"
        with self._lock:
            loaded = self._loaded.get(key)
            error = self._errors.get(key)
            loading = key in self._loading
        kind = "timm" if key == VITB16 else self._kind_of(name)
        if loaded is not None:
            return ModelStatus(key, self.label(key), loaded.kind, READY, "", loaded.source)
        if error is not None:
            return ModelStatus(key, self.label(key), kind, UNAVAILABLE, error, source)
        if loading:
            return ModelStatus(key, self.label(key), kind, LOADING, "", source)
        if where == "file" and not (self.weights_dir / f"{name}.json").is_file():
            return ModelStatus(key, self.label(key), kind, UNAVAILABLE, self._missing_reason(key, name),
                               source)
        return ModelStatus(key, self.label(key), kind, NOT_LOADED, "", source)

    def statuses(self) -> list[ModelStatus]:
        return [self.status(k) for k in self.keys()]

    def _kind_of(self, name: str) -> str:
        try:
            return "timm" if load_card(self.weights_dir, name).get("arch") == "timm" else "scratch"
        except CheckpointError:
            return "scratch"

    def _missing_reason(self, key: str, name: str) -> str:
        if key == SCRATCH:
            return (f"no {name}.safetensors + {name}.json in {self.weights_dir}; train it with "
                    f"`python -m vit_demo train --name {name}` (see the README)")
        return f"no checkpoint {name!r} in {self.weights_dir}"

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
            raise ModelUnavailable(f"{self.label(key)} is unavailable: {self._errors[key]}") from exc
        with self._lock:
            self._loaded[key] = loaded
            del self._loading[key]
        event.set()
        return loaded

    def load_in_background(self, key: str) -> threading.Thread:
        """Start loading ``key`` in a daemon thread; its status says how it went."""
        def run():
            try:
                self.get(key)
            except ModelUnavailable:
                pass  # recorded in the status

        thread = threading.Thread(target=run, name=f"load-{key}", daemon=True)
        thread.start()
        return thread

    def forget(self, key: str) -> None:
        """Drop a loaded model or an error so that the next ``get`` loads it anew."""
        with self._lock:
            self._loaded.pop(key, None)
            self._errors.pop(key, None)

    def _load(self, key: str) -> LoadedModel:
        where, name = self._source(key)
        if where == "file":
            model, kind, data_cfg, card = load_checkpoint(self.weights_dir, name)
            return LoadedModel(key, self.label(key), kind, model, data_cfg,
                               tuple(card.get("classes", CLASSES)), f"weights/{name}.safetensors", card)
        if not self.allow_hub:
            raise ModelUnavailable("hub downloads are switched off")
        import timm

        model = timm.create_model(name, pretrained=True).eval()
        if model.num_classes != len(CLASSES):
            raise ModelUnavailable(f"{name} has {model.num_classes} classes, not CIFAR-10's 10")
        return LoadedModel(key, self.label(key), "timm", model, timm_data_config(model),
                           CLASSES, name, None)

    def _explain(self, key: str, exc: Exception) -> str:
        where, name = self._source(key)
        if where == "hub":
            return (f"could not get {name} from the Hugging Face hub ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200]}). Run once with network access so timm caches "
                    f"it, set {VITB16_HUB_ENV} to another hub model, or put a fine-tuned "
                    f"{VITB16_CHECKPOINT}.safetensors + .json in {self.weights_dir} (the fine-tune tab "
                    "writes one).")
        return f"{type(exc).__name__}: {exc}"

