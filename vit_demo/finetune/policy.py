"""Where fine-tune jobs run, and how long a job would take there (to refuse it before it starts)."""

from __future__ import annotations

import math

import torch

from ..registry import ModelKind
from .request import FinetuneRequest
from .zerogpu import on_zero_gpu

SETUP_S = 15  # building the base model and loading the data
# Rough images/s (training, evaluation) by device and kind of model, measured on this project's
# machines (2-core CPU, fp32; an H100/H200 slice, bf16) and rounded down.
IMAGES_PER_S = {
    ("cpu", ModelKind.SCRATCH): (120.0, 800.0),
    ("cpu", ModelKind.TIMM): (1.0, 4.0),
    ("cuda", ModelKind.SCRATCH): (10_000.0, 30_000.0),
    ("cuda", ModelKind.TIMM): (400.0, 1_200.0),
}
FROZEN_SPEEDUP = 3.0  # a frozen backbone needs no backward pass through it
CPU_EVAL_BATCH = {ModelKind.SCRATCH: 500, ModelKind.TIMM: 8}  # ViT-B/16: about 2 s a batch


def training_device() -> str:
    """"cuda" when a GPU is (or, on ZeroGPU, will be) there for the job, else "cpu"."""
    return "cuda" if on_zero_gpu() or torch.cuda.is_available() else "cpu"


def device_warning(device: str) -> str:
    """A warning to show when jobs run on the CPU; empty on a GPU."""
    return "" if device == "cuda" else (
        "No GPU on this server: fine-tuning runs on the CPU, slowly, and slows the other tabs "
        "while it runs. Keep the budget small (a few thousand images for the scratch ViT; a few "
        "hundred, with a frozen backbone, for ViT-B/16 at 224 px).")


def estimate_s(request: FinetuneRequest, device: str, setup: bool = True) -> float:
    """Seconds the job would take on ``device``: set-up, training, validation (before the first
    step and at every epoch end) and the test."""
    train_rate, eval_rate = IMAGES_PER_S[(device, request.base_kind)]
    if request.freeze_backbone:
        train_rate *= FROZEN_SPEEDUP
    trained = request.total_steps() * request.batch_size
    evaluated = request.val_images * (math.ceil(request.epochs_to_run()) + 1) + request.test_images
    return (SETUP_S if setup else 0) + (trained / train_rate + evaluated / eval_rate)


def eval_batch_size(kind: ModelKind, device: str) -> int:
    """Evaluation batch: a few seconds of work at most, so that a stop lands within seconds."""
    return 500 if device == "cuda" else CPU_EVAL_BATCH[kind]
