"""What a trained checkpoint's card reports (``python -m vit_demo evaluate --update-card``): test
accuracy, per-class accuracy, the confusion matrix, parameter count, FLOPs and CPU latency per
image; and the confusion matrix as a PNG."""

from __future__ import annotations

import copy
import datetime as dt
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .card import AccuracyMetrics, Metrics, ModelCard, rewrite_card
from .data import DataConfig, Split
from .inside_plots import agg_figure, png_bytes
from .train import eval_mode, evaluate


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flop_counter() -> FlopCounterMode:
    """``FlopCounterMode``: convolutions, matrix products and fused attention, at two FLOPs per
    multiply-add; biases, norms, activations and softmax are not counted. torch 2.11's counter
    omits scaled_dot_product_attention's CPU kernels (forward and backward): counted here."""
    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda query, key, value, *args, **kwargs: sdpa_flop_count(query, key, value),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad_out, query, key, value, *args, **kwargs:
                sdpa_backward_flop_count(grad_out, query, key, value)})


def flops_per_image(model: nn.Module, data_cfg: DataConfig) -> int:
    """FLOPs of one forward pass of one image (see ``_flop_counter``)."""
    x = torch.zeros(1, *data_cfg.input_size, device=next(model.parameters()).device)
    with eval_mode(model), torch.inference_mode(), _flop_counter() as counter:
        model(x)
    return counter.get_total_flops()


def training_flops_per_image(model: nn.Module, data_cfg: DataConfig,
                             teacher: nn.Module | None = None) -> int:
    """FLOPs of one training step per image: the forward and backward pass of ``model`` in
    training mode (PatchDropout's smaller token count included), and the forward pass of the
    ``teacher`` it distils from. Counted on copies, so no running statistic moves."""
    x = torch.zeros(2, *data_cfg.input_size)
    with _flop_counter() as counter:
        copy.deepcopy(model).cpu().train()(x).sum().backward()
        if teacher is not None:
            with torch.no_grad():
                copy.deepcopy(teacher).cpu().eval()(x)
    return counter.get_total_flops() // 2


def cpu_latency_ms(model: nn.Module, data_cfg: DataConfig, runs: int = 50, warmup: int = 10) -> float:
    """Median wall time in ms of a single-image forward pass of ``model`` (on the CPU), after
    ``warmup`` untimed passes, under ``torch.inference_mode`` with torch's current threads."""
    x = torch.randn(1, *data_cfg.input_size, generator=torch.Generator().manual_seed(0))
    times = []
    with eval_mode(model), torch.inference_mode():
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
        params=param_count(model), flops_per_image=flops_per_image(model, data_cfg),
        cpu_latency_ms=round(cpu_latency_ms(model, data_cfg, runs=latency_runs), 3),
        cpu_threads=torch.get_num_threads(), torch=torch.__version__,
        date=dt.date.today().isoformat())


def store_metrics(weights_dir: Path, card: ModelCard, metrics: Metrics) -> ModelCard:
    """Rewrite the card (of checkpoint ``card.name``) atomically with ``metrics``. ``card`` is the
    one the evaluated model was loaded with: the rewrite fails if the checkpoint on disk has been
    replaced since, so metrics never land on other tensors."""
    updated = replace(card, metrics=metrics)
    rewrite_card(weights_dir, card.name, updated)
    return updated


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str],
                  title: str | None = None) -> bytes:
    """The confusion matrix (rows: true class, columns: predicted) drawn as a PNG, with counts
    in the cells and colour by the fraction of the true class."""
    counts = np.asarray(confusion, dtype=np.int64)
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = agg_figure(5.6, 5.0)  # small enough that its digits stay legible on a phone
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i, j in np.ndindex(counts.shape):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9,
                color="white" if frac[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    return png_bytes(fig)


def learning_curve_png(points: Sequence, title: str) -> bytes:
    """Validation accuracy against cumulative training hours and PFLOPs, one line per stage
    (``recipe.learning_curve``'s points)."""
    fig, axes = agg_figure(10, 4, ncols=2, sharey=True)
    for stage in dict.fromkeys(p.stage for p in points):
        mine = [p for p in points if p.stage == stage]
        for ax, x in zip(axes, ("hours", "pflops")):
            ax.plot([getattr(p, x) for p in mine], [100 * p.val_accuracy for p in mine],
                    marker=".", label=stage)
    axes[0].set_xlabel("training hours (cumulative)")
    axes[1].set_xlabel("training PFLOPs (cumulative)")
    axes[0].set_ylabel("validation accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(title="stage")
    fig.suptitle(title)
    return png_bytes(fig)
