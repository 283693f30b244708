"""What a trained checkpoint's card reports: test accuracy, per-class accuracy, the confusion
matrix, parameter count, FLOPs and CPU latency per image; and the confusion matrix as a PNG.

``python -m vit_demo evaluate --update-card`` computes these once and stores them in the card;
the app's compare tab reads them from there and never recomputes them.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .card import AccuracyMetrics, Metrics, ModelCard, rewrite_card
from .data import DataConfig, Split
from .train import evaluate


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of scaled_dot_product_attention's CPU kernel, which torch 2.11's counter omits."""
    return sdpa_flop_count(query, key, value)


def flops_per_image(model: nn.Module, data_cfg: DataConfig) -> int:
    """FLOPs of one forward pass of one image, as ``FlopCounterMode`` counts them.

    Convolutions, matrix products and fused attention, at two FLOPs per multiply-add; biases,
    norms, activations and softmax are not counted.
    """
    device = next(model.parameters()).device
    x = torch.zeros(1, *data_cfg.input_size, device=device)
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops})
    with _eval_mode(model), torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops()


def cpu_latency_ms(model: nn.Module, data_cfg: DataConfig, runs: int = 50, warmup: int = 10) -> float:
    """Median wall time in ms of a single-image forward pass of ``model`` (on the CPU), after
    ``warmup`` untimed passes, under ``torch.inference_mode`` with torch's current threads."""
    x = torch.randn(1, *data_cfg.input_size, generator=torch.Generator().manual_seed(0))
    times = []
    with _eval_mode(model), torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def model_metrics(model: nn.Module, test: Split, data_cfg: DataConfig, num_classes: int,
                  latency_runs: int = 50) -> Metrics:
    """Everything the card's ``metrics`` holds, for ``model`` on the CPU and the images ``test``."""
    cpu = torch.device("cpu")
    return Metrics(
        test=AccuracyMetrics.from_dict(evaluate(model, test, data_cfg, cpu, num_classes=num_classes)),
        params=param_count(model),
        flops_per_image=flops_per_image(model, data_cfg),
        cpu_latency_ms=round(cpu_latency_ms(model, data_cfg, runs=latency_runs), 3),
        cpu_threads=torch.get_num_threads(),
        torch=torch.__version__,
        date=dt.date.today().isoformat(),
    )


def store_metrics(weights_dir: Path, card: ModelCard, metrics: Metrics) -> ModelCard:
    """Rewrite the card (of checkpoint ``card.name``) atomically with ``metrics``. ``card`` is the
    one the evaluated model was loaded with: the rewrite fails if the checkpoint on disk has been
    replaced since, so metrics never land on other tensors."""
    updated = replace(card, metrics=metrics)
    rewrite_card(weights_dir, card.name, updated)
    return updated


def save_confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
                       title: str | None = None) -> Path:
    """Draw the confusion matrix (rows: true class, columns: predicted) with counts in the
    cells and colour by the fraction of the true class; write it as a PNG to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.int64)
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig = Figure(figsize=(7.5, 6.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
