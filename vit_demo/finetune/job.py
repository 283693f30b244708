"""The job body. ``prepare`` builds the base model and loads the data (no GPU needed);
``train_job`` trains, saves the weights, tests, as a generator of ``(kind, value)`` events:

``("log", str)``, ``("started", dict)``, ``("baseline", dict)`` (validation accuracy before
this run's first step), ``("progress", dict)`` per optimizer step, ``("saved", ModelCard)`` (the
card, untested) once the weights are on disk, ``("testing", dict)`` per test batch,
``("result", dict)`` with the test metrics, or ``("error", str)``. Closing the generator cancels
the job at its next event; a ``cancel`` event (when the job runs in this process) stops it
sooner, between batches.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..card import ModelCard, Origin, Recipe, Training
from ..checkpoint import save_tensors
from ..data import CLASSES, DataConfig, Split, load_cifar10, train_val_split
from ..evaluate import param_count
from ..hub import FINETUNE_BASE
from ..registry import VITB16, ModelKind, Registry, load_checkpoint
from ..train import Trainer, TrainResult, accuracy_metrics, confusion_matrix, evaluate
from .policy import eval_batch_size, gpu_wrapped, training_device
from .request import FinetuneRequest

BASE_ENV = "VIT_DEMO_FINETUNE_BASE"
log = logging.getLogger(__name__)


class JobError(ValueError):
    """Something the person must change or know; the message says what."""


INTERNAL = "the job failed on the server; the server log has the details"
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"():,;]+){2,}")


def public_message(exc: Exception) -> str:
    """What a page may show of ``exc``: a ``ValueError``'s own words (the person's mistake, or
    what they must know) with any path of this machine cut to its last part; for anything else
    ``INTERNAL``, the exception itself going to the server log."""
    if not isinstance(exc, ValueError):
        log.error("fine-tune job failed", exc_info=exc)
        return INTERNAL
    return _PATH.sub(lambda m: re.split(r"[/\\]", m.group(0))[-1], str(exc))


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
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
            raise JobError(
                f"The ViT-B/16 base is unavailable: timm could not get the pretrained weights "
                f"{name!r}. They are not in the local Hugging Face cache"
                + (" and the hub is switched off (HF_HUB_OFFLINE=1)" if offline else
                   " and the hub could not be reached")
                + ". Run the app once with network access so that timm caches them, set "
                f"{BASE_ENV} to a timm model that is cached, or fine-tune the scratch ViT.") from exc
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


def prepare(request: FinetuneRequest, registry: Registry, data_dir: str | None) -> Prepared:
    """The base model and the data subsets of ``request``."""
    model, card = build_base(request, registry)
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
        yield "error", public_message(exc)


run_train_job = gpu_wrapped(train_job)
