"""The job body. ``prepare`` builds the base model and loads the data (no GPU needed);
``train_job`` trains, saves the weights, tests, as a generator of ``(kind, value)`` events:

``("log", str)``, ``("started", dict)``, ``("baseline", dict)`` (validation accuracy before
this run's first step), ``("progress", dict)`` per optimizer step, ``("saved", ModelCard)`` (the
card, untested) once the weights are on disk, ``("testing", dict)`` per test batch,
``("result", dict)`` with the test metrics, or ``("error", dict)`` (a ``Notice`` as a dict:
its ``visitor`` and ``operator`` texts). Closing the generator cancels
the job at its next event; a ``cancel`` event (when the job runs in this process) stops it
sooner, between batches.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..card import ModelCard, Origin, Recipe, Training
from ..checkpoint import save_tensors
from ..data import NO_DATA, CLASSES, DataConfig, Split, data_problem, load_cifar10, train_val_split
from ..evaluate import param_count
from ..hub import FINETUNE_BASE, hub_file_cached, hub_offline
from ..notices import Explained, Notice, notice_of
from ..registry import VITB16, ModelKind, Registry, load_checkpoint
from ..train import Trainer, TrainResult, accuracy_metrics, confusion_matrix, evaluate
from .policy import eval_batch_size, gpu_wrapped, training_device
from .request import FinetuneRequest

BASE_ENV = "VIT_DEMO_FINETUNE_BASE"
NO_BASE = ("ViT-B/16's pretrained weights are not on this server, so it cannot be fine-tuned "
           "here; the scratch ViT can be")
BUG = "The job stopped on an error in the server; the person running it can read why in its log."
log = logging.getLogger(__name__)


class JobError(Explained, ValueError):
    """Something the person must change or know: ``visitor`` says what, the message gives the
    operator's detail (the same text unless it names the server's settings)."""


def base_timm_name() -> str:
    """The timm model fine-tuned for the ``vit-b16`` base (``$VIT_DEMO_FINETUNE_BASE``)."""
    return os.environ.get(BASE_ENV) or FINETUNE_BASE


@dataclass
class Prepared:
    """Everything the GPU part of a job needs, built before it."""
    request: FinetuneRequest
    model: nn.Module  # on the CPU, training mode
    card: ModelCard  # what the model is (kind, architecture, input, origin); training adds the rest
    train: Split
    val: Split
    test: Split


def build_base(request: FinetuneRequest, registry: Registry) -> tuple[nn.Module, ModelCard]:
    """The base model (training mode) and what its card says before training."""
    if request.base == VITB16:
        import timm

        name = base_timm_name()
        torch.manual_seed(request.seed)  # the new 10-class head
        try:
            model = timm.create_model(name, pretrained=True, num_classes=len(CLASSES))
        except Exception as exc:
            raise JobError(base_detail(name, exc), NO_BASE + ".") from exc
        # The whole 32 px image is resized to the input size, in training as at inference.
        data_cfg = replace(DataConfig.from_dict(timm.data.resolve_model_data_config(model)),
                           crop_pct=1.0)
        return model.train(), ModelCard(
            ModelKind.TIMM, CLASSES, data_cfg,
            timm_name=model.pretrained_cfg.get("architecture", name), pretrained=name)
    folder, name = registry.source(request.base)
    if folder is None or registry.kind(request.base) is not ModelKind.SCRATCH:
        raise JobError(f"base {request.base!r} is not a scratch ViT")
    model, _, _, card = load_checkpoint(folder, name)
    return model.train(), ModelCard(ModelKind.SCRATCH, CLASSES, card.data_config,
                                    model_config=card.model_config, preset=card.preset,
                                    origin=Origin.of(card))


def base_detail(name: str, exc: Exception | None = None) -> str:
    """Why the ViT-B/16 base cannot be had, and how to get it, for the operator."""
    why = f" ({type(exc).__name__})" if exc is not None else ""
    return (f"timm's pretrained weights {name!r} are not in the local Hugging Face cache{why}"
            + (" and the hub is switched off (HF_HUB_OFFLINE=1)" if hub_offline() else
               " and the hub could not be reached")
            + ". Start the app once with network access so that timm caches them, or set "
            f"{BASE_ENV} to a timm model that is cached.")


def blocker(base: str, data_dir: str | None) -> Notice | None:
    """Why a job from ``base`` cannot run on this server now (None: it can): CIFAR-10 missing,
    or ViT-B/16's pretrained weights neither cached nor downloadable. Reads no data."""
    problems = [p for p in (data_problem(s, data_dir) for s in ("train", "test")) if p]
    if problems:
        return Notice(f"Start is off: {NO_DATA}, and a job trains and tests on it.",
                      " ".join(problems))
    if base == VITB16 and hub_offline() and not hub_file_cached(f"timm/{base_timm_name()}"):
        return Notice(f"Start is off for ViT-B/16: {NO_BASE}.", base_detail(base_timm_name()))
    return None


def prepare(request: FinetuneRequest, registry: Registry, data_dir: str | None,
            say: Callable[[str], None] = lambda line: None) -> Prepared:
    """The base model and the data subsets of ``request``; ``say`` hears what it is doing."""
    say("getting ViT-B/16's pretrained weights (about 350 MB the first time) and building it"
        if request.base == VITB16 else f"loading the base model {request.base}")
    model, card = build_base(request, registry)
    say("loading CIFAR-10")
    train, val = train_val_split(load_cifar10("train", data_dir, download=False))
    test = load_cifar10("test", data_dir, download=False)
    if request.train_images > len(train) or request.val_images > len(val):
        raise JobError(f"the data set has only {len(train)} training and {len(val)} "
                       "validation images")
    return Prepared(request, model, card, train.subset(torch.arange(request.train_images)),
                    val.subset(torch.arange(request.val_images)),
                    test.subset(torch.arange(min(request.test_images, len(test)))))


def train_job(job: Prepared, state_path: str, tensors_path: str,
              cancel: threading.Event | None = None, gpu_s: int = 0) -> Iterator[tuple[str, Any]]:
    """Train ``job``, write its weights to ``tensors_path``, test them; see the module docstring.
    ``gpu_s``: the GPU window to ask ZeroGPU for (read by ``policy.gpu_wrapped``)."""
    cancel = cancel or threading.Event()
    try:
        device = torch.device(training_device())
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        request, model, data_cfg = job.request, job.model, job.card.data_config
        params = param_count(model)
        yield "log", (f"device: {device_name}; base: {request.base} ({params:,} parameters), "
                      f"input {data_cfg.input_size[1]} px")
        cfg = replace(request.train_config(),
                      eval_batch_size=eval_batch_size(request.base_kind, device.type))
        trainer = Trainer(model, data_cfg, job.train, cfg, val=job.val if len(job.val) else None,
                          device=device, state_path=Path(state_path), cancel=cancel, head="head")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        yield "started", {"total_steps": trainer.end_step, "resumed_step": trainer.step,
                          "steps_per_epoch": trainer.steps_per_epoch, "trainable": trainable}
        if len(job.val):
            val = evaluate(model, job.val, data_cfg, device, cfg.eval_batch_size, cancel=cancel)
            yield "baseline", {"step": trainer.step, "epoch": trainer.step / trainer.steps_per_epoch,
                               "val_accuracy": val["accuracy"]}
        steps = trainer.steps()  # one step per item asked for; closing the job stops it
        try:
            while True:
                yield "progress", asdict(next(steps))
        except StopIteration as done:
            result: TrainResult = done.value
        if result.cancelled:
            return
        save_tensors(Path(tensors_path), model.state_dict())
        yield "saved", replace(
            job.card, params=params,
            recipe=Recipe.of(cfg, len(job.train), len(job.val), device, base=request.base,
                             test_images=len(job.test), trainable_params=trainable),
            training=Training.of(device_name, result.history, result.wall_s, steps=result.step,
                                 source="fine-tune tab"),
            date=dt.date.today().isoformat())
        confusion = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
        for i in range(0, len(job.test), cfg.eval_batch_size):
            batch = job.test.subset(torch.arange(i, min(i + cfg.eval_batch_size, len(job.test))))
            confusion += confusion_matrix(model, batch, data_cfg, device, cfg.eval_batch_size)
            yield "testing", {"done": int(confusion.sum()), "of": len(job.test)}
        yield "result", {"test": accuracy_metrics(confusion)}
    except Exception as exc:
        if not isinstance(exc, ValueError):  # a bug of ours: the traceback goes to the log
            log.exception("the fine-tune job failed")
        yield "error", asdict(notice_of(exc, BUG))


run_train_job = gpu_wrapped(train_job)
