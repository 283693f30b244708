"""Checkpoint cards: ``ModelCard``, the one typed and versioned description of a checkpoint, and
the only code that writes or reads a card file.

A card (``NAME.json`` beside ``NAME.safetensors``, see ``checkpoint``) says what the model is
(kind, architecture, classes, input), where its weights started (``Origin``), how it was
trained (``Recipe``, ``Training``), what it scores (``Metrics``), and the digest of the tensors
file it vouches for. ``ModelCard.from_json`` is strict: another schema version, an unknown
field, a missing one or a malformed value is a ``ValueError`` that says which.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, is_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import torch

from .checkpoint import (CheckpointError, load_tensors, model_path, save_tensors, sha256,
                         tensor_count, write_text)
from .data import DataConfig
from .model import ViTConfig
from .train import TrainConfig, precision

class ModelKind(str, Enum):
    """What builds a checkpoint's model (``adapters.adapter_for(kind)`` knows how)."""
    SCRATCH = "scratch"  # our ViT
    TIMM = "timm"  # timm's VisionTransformer


SCHEMA_VERSION = 1  # raise it with any change to the fields below that old readers would misread
ARCHITECTURE = {ModelKind.SCRATCH: "model_config", ModelKind.TIMM: "timm_name"}  # the field naming it


@dataclass(frozen=True)
class Validation:
    """One validation during training."""
    step: int
    epoch: float
    val_accuracy: float
    train_loss: float  # mean since the previous validation
    wall_s: float | None = None  # training time of the run so far, over all its resumes


@dataclass(frozen=True)
class Recipe:
    """How the weights were trained: the trainer's config, the data it saw, and that config in
    words (``TrainConfig.describe``, ``train.precision``) as it was when they were trained."""
    config: TrainConfig
    train_images: int
    val_images: int
    augment: str
    optimizer: str
    schedule: str
    precision: str
    base: str | None = None  # a fine-tune's base model (its key)
    test_images: int | None = None  # a fine-tune's test subset
    trainable_params: int | None = None  # fewer than all with a frozen backbone

    @classmethod
    def of(cls, config: TrainConfig, train_images: int, val_images: int,
           device: torch.device | str, **extra: Any) -> Recipe:
        return cls(config, train_images, val_images, **config.describe(),
                   precision=precision(device), **extra)


@dataclass(frozen=True)
class Training:
    """Where and for how long the weights were trained."""
    device: str
    history: tuple[Validation, ...] = ()
    wall_s_last_run: float | None = None
    steps_last_run: int | None = None  # a resumed run: the steps of its last part
    steps: int | None = None  # steps in all
    source: str | None = None  # e.g. "fine-tune tab"
    where: str | None = None  # the machine, in words
    threads: str | None = None
    wall_s_total: float | None = None
    command: str | None = None
    recipe_file: str | None = None  # the recipe (recipes/NAME.toml) that trained it, every stage
    recipe_sha256: str | None = None  # of that file's bytes
    teacher: str | None = None  # what it was distilled from, in words

    @classmethod
    def of(cls, device: str, history: list[dict], wall_s: float, **extra: Any) -> Training:
        """From a ``TrainResult``'s history rows and wall time."""
        return cls(device, tuple(Validation(**row) for row in history), round(wall_s, 1), **extra)


@dataclass(frozen=True)
class AccuracyMetrics:
    """``train.accuracy_metrics`` of a test set."""
    accuracy: float
    per_class_accuracy: tuple[float, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted
    images: int

    @classmethod
    def from_dict(cls, metrics: dict) -> AccuracyMetrics:
        return _from_plain(cls, metrics)


@dataclass(frozen=True)
class Metrics:
    """What the weights score (``evaluate.model_metrics``); empty until measured."""
    test: AccuracyMetrics | None = None
    params: int | None = None
    flops_per_image: int | None = None  # one forward pass
    cpu_latency_ms: float | None = None  # median, one image
    cpu_threads: int | None = None
    torch: str | None = None
    date: str | None = None


@dataclass(frozen=True)
class Origin:
    """The checkpoint the weights started from."""
    name: str
    sha256: str
    preset: str | None = None
    commit: str | None = None  # the code that trained it
    test_accuracy: float | None = None
    how: str | None = None  # how its weights became these (e.g. deepened)
    recipe: Recipe | None = None
    training: Training | None = None

    @classmethod
    def of(cls, card: ModelCard, **extra: Any) -> Origin:
        test = card.metrics.test
        return cls(card.name, card.tensors.sha256, card.preset,
                   test_accuracy=test.accuracy if test else None, recipe=card.recipe, **extra)


@dataclass(frozen=True)
class Tensors:
    """The tensors file a card vouches for."""
    file: str
    sha256: str
    count: int


@dataclass(frozen=True)
class ModelCard:
    kind: ModelKind
    classes: tuple[str, ...]
    data_config: DataConfig  # the input the model wants
    params: int | None = None
    model_config: ViTConfig | None = None  # scratch: the architecture
    preset: str | None = None  # scratch: the ``PRESETS`` entry it was built from
    timm_name: str | None = None  # timm: the ``timm.create_model`` name
    pretrained: str | None = None  # timm: the pretrained weights a fine-tune started from
    origin: Origin | None = None
    recipe: Recipe | None = None
    training: Training | None = None
    metrics: Metrics = Metrics()
    date: str | None = None
    name: str | None = None  # set when written: the checkpoint's name
    tensors: Tensors | None = None  # set when written
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if getattr(self, ARCHITECTURE[self.kind]) is None:
            raise ValueError(f"a {self.kind.value} card needs its {ARCHITECTURE[self.kind]}")

    def to_json(self) -> str:
        """Fields that are None are left out; ``ModelKind``, a ``str``, is written as its value."""
        plain = asdict(self, dict_factory=lambda items: {k: v for k, v in items if v is not None})
        return json.dumps({"schema_version": self.schema_version, **plain}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema version {version!r}: this code reads cards of schema version "
                             f"{SCHEMA_VERSION} only")
        return _from_plain(cls, data)


def _from_plain(tp: Any, value: Any) -> Any:
    """``value`` (parsed JSON) as the type ``tp``: dataclasses from dicts, field by field;
    tuples from lists; enums from their values."""
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        return _from_plain(next(a for a in args if a is not type(None)), value)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{tp.__name__}: expected an object, got {value!r}")
        hints = get_type_hints(tp)  # the dataclass's fields
        if unknown := set(value) - hints.keys():
            raise ValueError(f"{tp.__name__}: unknown fields {sorted(unknown)}")
        try:
            return tp(**{k: _from_plain(hints[k], v) for k, v in value.items()})
        except TypeError as exc:
            raise ValueError(f"{tp.__name__}: {exc}") from exc
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        items = [args[0]] * len(value) if args[-1] is Ellipsis else args
        if len(items) != len(value):
            raise ValueError(f"expected a list of {len(items)} items, got {value!r}")
        return tuple(_from_plain(t, v) for t, v in zip(items, value))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(value)
    return value


def read_card(weights_dir: Path, name: str) -> ModelCard:
    path = model_path(weights_dir, name, ".json")
    if not path.is_file():
        raise CheckpointError(f"no card {path.name} in {Path(weights_dir).resolve()}")
    try:
        return ModelCard.from_json(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"card {path.name}: {exc}") from exc


def write_card(weights_dir: Path, name: str, card: ModelCard) -> Path:
    """Write ``name.json`` for the tensors file already at ``name.safetensors``, vouching for it
    with its digest; the pair is complete from then on. The tensors file's path."""
    tensors_path = model_path(weights_dir, name, ".safetensors")
    card = replace(card, name=name, tensors=Tensors(tensors_path.name, sha256(tensors_path),
                                                    tensor_count(tensors_path)))
    write_text(model_path(weights_dir, name, ".json"), card.to_json())
    return tensors_path


def save_model(weights_dir: Path, name: str, state_dict: dict[str, torch.Tensor], card: ModelCard,
               overwrite: bool = False) -> Path:
    """Write ``name.safetensors`` then ``name.json`` (with the tensors' digest) atomically."""
    tensors_path = model_path(weights_dir, name, ".safetensors")
    card_path = model_path(weights_dir, name, ".json")
    if not overwrite and (tensors_path.exists() or card_path.exists()):
        raise CheckpointError(f"checkpoint {name!r} exists; choose another name or allow overwriting")
    save_tensors(tensors_path, state_dict)
    return write_card(weights_dir, name, card)


def rewrite_card(weights_dir: Path, name: str, card: ModelCard) -> None:
    """Atomically replace the card of checkpoint ``name`` (e.g. to add metrics); the new card
    must keep the ``tensors`` entry of the one on disk, so it vouches for the same file."""
    if card.tensors is None or card.tensors != read_card(weights_dir, name).tensors:
        raise CheckpointError(f"the new card of {name!r} must keep the tensors entry of the old one")
    write_text(model_path(weights_dir, name, ".json"), card.to_json())


def load_model_tensors(weights_dir: Path, name: str,
                       expected_shapes: dict[str, tuple[int, ...]] | None = None
                       ) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """Tensors and card of ``name``, checked against each other before any tensor is read: the
    file's digest must match the card's, and its shapes ``expected_shapes`` key for key."""
    card = read_card(weights_dir, name)
    path = model_path(weights_dir, name, ".safetensors")
    if not path.is_file():
        raise CheckpointError(f"card {name}.json has no tensors file {path.name}")
    if card.tensors is None or card.tensors.sha256 != sha256(path):
        raise CheckpointError(f"{path.name} does not match its card {name}.json (sha256 differs): "
                              "the pair was not written together")
    return load_tensors(path, expected_shapes)[0], card
