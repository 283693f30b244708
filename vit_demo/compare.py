"""The figures the compare tab shows, read from checkpoint cards (computed once by
``python -m vit_demo evaluate --update-card``, never on a page load)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .card import Metrics, read_card
from .checkpoint import CheckpointError
from .registry import READY, UNAVAILABLE, Registry


@dataclass(frozen=True)
class ModelFigures:
    key: str
    label: str
    available: bool
    note: str  # why figures are missing, or where they come from, in a visitor's words
    metrics: Metrics = Metrics()  # the card's, with its parameter count when not measured


def figures(registry: Registry, key: str) -> ModelFigures:
    status = registry.status(key)
    label = status.label
    if status.state == UNAVAILABLE:
        return ModelFigures(key, label, False, "not available on this server")
    folder, name = registry.source(key)
    if folder != registry.weights_dir:
        state = "loaded" if status.state == READY else status.state
        return ModelFigures(key, label, True,
                            f"weights from {status.source} ({state}); no measured figures")
    try:
        card = read_card(folder, name)
    except CheckpointError:
        return ModelFigures(key, label, False, "its card could not be read")
    if card.metrics.test is None:
        return ModelFigures(key, label, True, "no measured figures yet")
    return ModelFigures(key, label, True,
                        f"measured {card.metrics.date or card.date or '?'} by the evaluation code",
                        replace(card.metrics, params=card.metrics.params or card.params))
