"""The figures the compare tab shows, read from checkpoint cards (computed once by
``python -m vit_demo evaluate --update-card``, never on a page load)."""

from __future__ import annotations

from dataclasses import dataclass

from .card import read_card
from .checkpoint import CheckpointError
from .registry import READY, UNAVAILABLE, Registry


@dataclass(frozen=True)
class ModelFigures:
    key: str
    label: str
    available: bool
    note: str  # why figures are missing, or where they come from
    accuracy: float | None = None  # CIFAR-10 test top-1
    test_images: int | None = None
    per_class: tuple[float, ...] | None = None
    confusion: tuple[tuple[int, ...], ...] | None = None  # rows: true class, columns: predicted
    params: int | None = None
    flops: int | None = None  # per image, one forward pass
    cpu_latency_ms: float | None = None


def figures(registry: Registry, key: str) -> ModelFigures:
    status = registry.status(key)
    label = status.label
    if status.state == UNAVAILABLE:
        return ModelFigures(key, label, False, f"unavailable: {status.reason}")
    folder, name = registry.source(key)
    if folder != registry.weights_dir:
        state = "loaded" if status.state == READY else status.state
        return ModelFigures(key, label, True,
                            f"weights from {status.source} ({state}); no card with measured figures: "
                            "fine-tune or evaluate it locally to add one")
    try:
        card = read_card(folder, name)
    except CheckpointError as exc:
        return ModelFigures(key, label, False, str(exc))
    metrics, test = card.metrics, card.metrics.test
    if test is None:
        return ModelFigures(key, label, True, f"card {name}.json has no measured figures yet: run "
                            f"`python -m vit_demo evaluate --name {name} --update-card`")
    return ModelFigures(
        key, label, True, f"measured {metrics.date or card.date or '?'}, card {name}.json",
        test.accuracy, test.images, test.per_class_accuracy, test.confusion,
        metrics.params or card.params, metrics.flops_per_image, metrics.cpu_latency_ms)
