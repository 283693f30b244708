"""Where fine-tune jobs run, and how long a job would take there (to refuse it before it starts).

On a ZeroGPU Space the job body runs under ``spaces.GPU`` (``gpu_wrapped``): only the GPU work
crosses into the GPU window (the base model and the data are built before it); the window asked
for is the job's estimate, capped by ``Settings.zerogpu_max_s``. Off ZeroGPU, ``gpu_wrapped``
returns the function itself and ``spaces`` is never imported.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Iterator

import torch

from ..registry import ModelKind
from .request import FinetuneRequest

GPU_MARGIN = 1.5  # the ZeroGPU window: the estimate is rough, so ask for half as much again
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


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space: ``spaces`` is importable and ``SPACES_ZERO_GPU`` is true."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def gpu_seconds(estimate_s: float, cap_s: int) -> int:
    """The GPU window to ask for a job estimated at ``estimate_s`` on the GPU."""
    return min(cap_s, math.ceil(GPU_MARGIN * estimate_s) + 10)


def gpu_wrapped(fn: Callable[..., Iterator]) -> Callable[..., Iterator]:
    """``fn`` under ``spaces.GPU`` on ZeroGPU, its window read from the call's ``gpu_s``
    keyword; ``fn`` itself elsewhere. Call at import time: ``spaces`` must decorate before the
    app launches."""
    if not on_zero_gpu():
        return fn
    import spaces

    return spaces.GPU(duration=lambda *args, gpu_s, **kwargs: gpu_s)(fn)


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


WARMUP_STEPS = 5  # steps timed before the job's end is projected from its measured speed


def projected_s(elapsed_s: float, train_left_s: float, request: FinetuneRequest,
                epochs_done: float, eval_images_per_s: float) -> float:
    """Seconds a running job will have taken in all: ``elapsed_s`` so far, ``train_left_s``
    of training (the trainer's measured ETA), and the evaluations still to come (validation
    at every epoch end not yet reached, then the test) at ``eval_images_per_s``."""
    val_passes = max(0, math.ceil(request.epochs_to_run()) - math.floor(epochs_done))
    evaluated = (request.val_images * val_passes if request.val_images else 0) + request.test_images
    return elapsed_s + train_left_s + evaluated / eval_images_per_s
