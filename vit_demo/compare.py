"""The figures the compare tab shows, read from checkpoint cards (computed once by
``python -m vit_demo evaluate --update-card``, never on a page load)."""

from __future__ import annotations

from dataclasses import dataclass

from .checkpoint import CheckpointError, load_card
from .registry import READY, UNAVAILABLE, Registry


@dataclass(frozen=True)
class ModelFigures:
    key: str
    label: str
    available: bool
    note: str  # why figures are missing, or where they come from
    accuracy: float | None = None  # CIFAR-10 test top-1
    test_images: int | None = None
    per_class: list[float] | None = None
    confusion: list[list[int]] | None = None
    params: int | None = None
    flops: int | None = None  # per image, one forward pass
    cpu_latency_ms: float | None = None


def figures(registry: Registry, key: str) -> ModelFigures:
    status = registry.status(key)
    label = status.label
    if status.state == UNAVAILABLE:
        return ModelFigures(key, label, False, f"unavailable: {status.reason}")
    if not status.source.startswith("weights/"):
        state = "loaded" if status.state == READY else status.state
        return ModelFigures(key, label, True,
                            f"weights from {status.source} ({state}); no card with measured figures: "
                            "fine-tune or evaluate it locally to add one")
    name = status.source.removeprefix("weights/").removesuffix(".safetensors")
    try:
        card = load_card(registry.weights_dir, name)
    except CheckpointError as exc:
        return ModelFigures(key, label, False, str(exc))
    metrics = card.get("metrics", {})
    test = metrics.get("test", {})
    if not test:
        return ModelFigures(key, label, True, f"card {name}.json has no measured figures yet: run "
                            f"`python -m vit_demo evaluate --name {name} --update-card`")
    return ModelFigures(
        key, label, True, f"measured {metrics.get('date', card.get('date', '?'))}, card {name}.json",
        test.get("accuracy"), test.get("images"), test.get("per_class_accuracy"),
        test.get("confusion"), metrics.get("params", card.get("params")),
        metrics.get("flops_per_image"), metrics.get("cpu_latency_ms"))

