"""The trainer shared by the command line and the browser's fine-tune job.

AdamW (or SGD with Nesterov momentum), linear warm-up then cosine decay, label smoothing,
gradient clipping, optional hard distillation from a teacher model (DeiT's); bf16 autocast
and optional ``torch.compile`` on CUDA. All randomness of step ``s`` (batch order, crops,
flips, dropout) derives from ``(seed, s)``, so a run resumed from its state file continues
exactly as if it had never stopped. Under ``torchrun`` the same loop runs data-parallel
(DDP: NCCL on GPUs, gloo on CPUs); rank 0 alone writes state and reports progress.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, get_args

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_tensors, save_tensors
from .data import (DataConfig, Policy, Split, augment_policy, mix_batch, preprocess_batch,
                   random_crop_flip, random_resized_crop_flip)


OPTIMIZERS = {"adamw": "AdamW", "sgd": "SGD, Nesterov momentum"}  # what ``Trainer`` steps with, in a card's words
SCHEDULE = "linear warm-up, cosine"  # what ``lr_at`` computes, in a card's words
Crop = Literal["pad", "resized"]
Optimizer = Literal["adamw", "sgd"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 50  # passes over the training images (fractions allowed for short jobs)
    max_steps: int | None = None  # stop early after this many steps; the schedule is unchanged
    batch_size: int = 128  # global batch, split across data-parallel ranks
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-5  # learning rate at the end of the cosine
    weight_decay: float = 0.05  # decay on weight matrices (not biases, norms, embeddings); AdamW's is decoupled
    optimizer: Optimizer = "adamw"  # "adamw", or "sgd" (Nesterov momentum 0.9)
    warmup_epochs: float = 2.0  # linear warm-up from 0
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    augment: bool = True  # a random crop and a horizontal flip, per batch
    crop: Crop = "pad"  # "pad": reflect-pad 4 px, crop 32 px; "resized": random-resized crop
    crop_scale: float = 0.35  # smallest area fraction a "resized" crop keeps
    policy: Policy = "none"  # after the crop, a torchvision policy drawn per image (autoaugment: CIFAR-10's)
    mixup: float = 0.0  # Beta(alpha, alpha) blend of image pairs and their labels; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) box pasted from another image; 0: off
    seed: int = 0
    eval_every: int = 1  # validate every this many epochs (and at the end)
    checkpoint_every: int = 200  # steps between resume-state writes
    compile: bool = False  # torch.compile (CUDA only; slower than eager on a small CPU)
    eval_batch_size: int = 500  # validation batch; a stop is seen between batches
    freeze_backbone: bool = False  # train the classifier head only
    distill: float = 0.0  # weight of the teacher's hard label in the loss (DeiT); needs a teacher

    def __post_init__(self) -> None:
        for name, allowed in (("crop", Crop), ("policy", Policy), ("optimizer", Optimizer)):
            if getattr(self, name) not in get_args(allowed):
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: use one of "
                                 f"{', '.join(get_args(allowed))}")
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill {self.distill} is not a weight in [0, 1]")

    def describe(self) -> dict[str, str]:
        """The augmentation, optimizer and schedule of this config in words (for a card)."""
        crop = (f"random-resized crop (area {self.crop_scale:g}-1)" if self.crop == "resized"
                else "random crop (reflect pad 4)")
        mixes = [f"{name} (alpha {alpha:g})" for name, alpha in (("mixup", self.mixup),
                                                                 ("cutmix", self.cutmix)) if alpha > 0]
        policy = f" + {self.policy} per image" if self.policy != "none" else ""
        words = ([f"{crop} + horizontal flip{policy}"] if self.augment else []) + (
            [" or ".join(mixes) + " per batch"] if mixes else [])
        return {"augment": ", ".join(words) or "none", "optimizer": OPTIMIZERS[self.optimizer],
                "schedule": SCHEDULE}


@dataclass
class Progress:
    step: int  # optimizer steps done
    total_steps: int
    epoch: float  # fractional epochs done
    loss: float  # training loss of this step's batch (rank 0's share)
    accuracy: float  # training accuracy of this step's batch (rank 0's share)
    images_per_s: float
    eta_s: float
    lr: float
    val_accuracy: float | None = None  # set on the steps that validated


@dataclass
class TrainResult:
    step: int
    total_steps: int
    cancelled: bool
    wall_s: float
    history: list[dict] = field(default_factory=list)  # one entry per validation


# Settings that change when or how a run reports, not what it computes: a run may resume
# with other values of these.
_NOT_IN_THE_MATHS = {"max_steps", "checkpoint_every", "eval_every", "compile", "eval_batch_size"}


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def _differences(saved: dict, now: dict) -> dict:
    """The settings both dicts name, outside ``_NOT_IN_THE_MATHS``, whose values differ:
    {name: (saved, now)}. A setting only one names (added or removed since) is not compared."""
    return {k: (v, now[k]) for k, v in saved.items()
            if k in now and k not in _NOT_IN_THE_MATHS and v != now[k]}


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2 ** 63)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def confusion_matrix(model: nn.Module, data: Split, data_cfg: DataConfig, device: torch.device,
                     batch_size: int = 500, num_classes: int = 10,
                     cancel: threading.Event | None = None) -> torch.Tensor:
    """(classes, classes) counts, rows true and columns predicted; a set ``cancel`` ends it
    after the current batch (the counts then cover the batches done)."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(0, len(data), batch_size):
        if cancel is not None and cancel.is_set():
            break
        x = preprocess_batch(data.x[i:i + batch_size].to(device), data_cfg)
        with eval_mode(model), _autocast(device):
            pred = model(x).argmax(dim=-1).cpu()
        confusion += torch.bincount(data.y[i:i + batch_size] * num_classes + pred,
                                    minlength=num_classes ** 2).view(num_classes, num_classes)
    return confusion


def accuracy_metrics(confusion: torch.Tensor) -> dict:
    """Accuracy, per-class accuracy, the confusion matrix and the image count."""
    per_class = (confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist()
    images = int(confusion.sum())
    return {"accuracy": confusion.diag().sum().item() / max(1, images),
            "per_class_accuracy": per_class, "confusion": confusion.tolist(), "images": images}


def evaluate(model: nn.Module, data: Split, data_cfg: DataConfig, device: torch.device,
             batch_size: int = 500, num_classes: int = 10,
             cancel: threading.Event | None = None) -> dict:
    """``accuracy_metrics`` of ``model`` on ``data`` (see ``confusion_matrix``)."""
    return accuracy_metrics(confusion_matrix(model, data, data_cfg, device, batch_size,
                                             num_classes, cancel))


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def precision(device: torch.device | str) -> str:
    """What ``_autocast`` computes in on ``device``, in a card's words."""
    return "bf16 autocast" if torch.device(device).type == "cuda" else "fp32"


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embed" not in name and "token" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Trains ``model`` on ``train`` (uint8 images) with ``cfg``; see the module docstring.

    ``state_path``: a safetensors file holding model, optimizer and step, rewritten
    atomically every ``cfg.checkpoint_every`` steps and at the end; an existing one is resumed,
    and must have been written with the same ``cfg`` (but for the settings outside the maths)
    and the same ``model_config`` (a dataclass such as ``ViTConfig``, when given).
    ``callback(progress)``: called on rank 0 after every step. ``cancel``: checked before
    every step and between validation batches; a set event ends the run there without
    writing state. ``teacher``: a trained model (same input) whose predicted class on each
    augmented batch is a second target, weighted ``cfg.distill`` (DeiT's hard distillation).
    """

    def __init__(self, model: nn.Module, data_cfg: DataConfig, train: Split, cfg: TrainConfig,
                 val: Split | None = None, device: torch.device | str = "cpu",
                 state_path: Path | None = None, callback: Callable[[Progress], None] | None = None,
                 cancel: threading.Event | None = None, head: str = "head",
                 model_config: object | None = None, teacher: nn.Module | None = None):
        self.device = torch.device(device)
        # as it reads back from a state file's JSON (tuples become lists)
        self.model_config = json.loads(json.dumps(asdict(model_config))) if model_config is not None else None
        self.model = model.to(self.device)
        self.data_cfg, self.train, self.val, self.cfg = data_cfg, train, val, cfg
        self.state_path = Path(state_path) if state_path else None
        self.callback = callback
        self.cancel = cancel or threading.Event()
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if cfg.batch_size % self.world:
            raise ValueError(f"batch size {cfg.batch_size} is not a multiple of the "
                             f"{self.world} data-parallel processes")
        if cfg.freeze_backbone:
            for name, p in self.model.named_parameters():
                p.requires_grad = name.startswith(head + ".")
        if (teacher is None) != (cfg.distill == 0.0):
            raise ValueError("distillation needs both a teacher and a distill weight above 0")
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        groups = _param_groups(self.model, cfg.weight_decay)
        self.optimizer = (torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999)) if cfg.optimizer == "adamw"
                          else torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True))
        self.steps_per_epoch = len(train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train)} training images do not fill one batch of {cfg.batch_size}")
        self.total_steps = max(1, round(cfg.epochs * self.steps_per_epoch))
        self.end_step = min(self.total_steps, cfg.max_steps or self.total_steps)
        self.warmup_steps = max(1, round(cfg.warmup_epochs * self.steps_per_epoch))
        self.step = 0
        self.elapsed_s = 0.0  # training wall time over every run of this state, validation included
        self.history: list[dict] = []
        if self.state_path and self.state_path.is_file():
            self._load_state()
        self.net = self.model
        if self.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile and self.device.type == "cuda":
            self.net = torch.compile(self.net)

    # -- state --------------------------------------------------------------------------
    def save_state(self) -> None:
        if self.state_path is None or self.rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for i, state in self.optimizer.state_dict()["state"].items():
            for k, v in state.items():
                tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        save_tensors(self.state_path, tensors, {"step": self.step, "total_steps": self.total_steps,
                                                "history": self.history, "config": asdict(self.cfg),
                                                "model_config": self.model_config,
                                                "elapsed_s": self.elapsed_s})

    def _load_state(self) -> None:
        tensors, meta = load_tensors(self.state_path)
        for what, saved, now in (("training config", meta["config"], asdict(self.cfg)),
                                 ("model config", meta.get("model_config"), self.model_config)):
            differ = _differences(saved or {}, now or {})
            if differ:
                raise ValueError(f"{self.state_path} was written with another {what} "
                                 f"(saved, now): {differ}")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt = {**self.optimizer.state_dict(), "state": {}}
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, i, name = key.split(".", 2)
                opt["state"].setdefault(int(i), {})[name] = v
        self.optimizer.load_state_dict(opt)
        self.step, self.history = meta["step"], meta["history"]
        self.elapsed_s = meta.get("elapsed_s", 0.0)

    # -- data ---------------------------------------------------------------------------
    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
        """This rank's share of the global batch of ``step``: images, labels, and with mixup or
        cutmix on, the partner labels and the weight of the own label."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.train),
                               generator=torch.Generator().manual_seed(_step_seed(self.cfg.seed, -1 - epoch)))
        idx = order[i * self.cfg.batch_size:(i + 1) * self.cfg.batch_size]
        x = self.train.x[idx].to(self.device, non_blocking=True)
        generator = torch.Generator().manual_seed(_step_seed(self.cfg.seed, step))  # all draws of the batch
        if self.cfg.augment:
            x = (random_resized_crop_flip(x, generator, (self.cfg.crop_scale, 1.0))
                 if self.cfg.crop == "resized" else random_crop_flip(x, generator))
            x = augment_policy(x, generator, self.cfg.policy)
        x, y = preprocess_batch(x, self.data_cfg), self.train.y[idx].to(self.device)
        partner, lam = None, 1.0
        if self.cfg.mixup > 0 or self.cfg.cutmix > 0:
            x, mix = mix_batch(x, generator, self.cfg.mixup, self.cfg.cutmix)
            partner, lam = y[mix.perm][self.rank::self.world], mix.lam
        return x[self.rank::self.world], y[self.rank::self.world], partner, lam

    # -- loop ---------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """``steps`` to the end, each step's progress to ``callback`` (rank 0)."""
        steps = self.steps()
        while True:
            try:
                progress = next(steps)
            except StopIteration as done:
                return done.value
            if self.callback and self.rank == 0:
                self.callback(progress)

    def steps(self) -> Generator[Progress, None, TrainResult]:
        """The training loop: this rank's ``Progress`` after every step, then the
        ``TrainResult``. Closed early, it stops after the step it reported last."""
        cfg = self.cfg
        self.net.train()
        start = step_start = time.perf_counter()
        period_loss = period_seen = 0.0  # since the last validation
        first_step, cancelled = self.step, False
        while self.step < self.end_step and not (cancelled := self.cancel.is_set()):
            lr = lr_at(self.step, self.total_steps, self.warmup_steps, cfg.lr, cfg.min_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(_step_seed(cfg.seed, self.step) + self.rank)  # dropout, drop path
            x, y, partner, lam = self._batch(self.step)
            with _autocast(self.device):
                logits = self.net(x).float()
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if partner is not None:
                    loss = lam * loss + (1 - lam) * F.cross_entropy(
                        logits, partner, label_smoothing=cfg.label_smoothing)
                if self.teacher is not None:
                    with torch.no_grad():
                        taught = self.teacher(x).argmax(dim=-1)
                    loss = (1 - cfg.distill) * loss + cfg.distill * F.cross_entropy(logits, taught)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            self.elapsed_s += time.perf_counter() - step_start
            period_loss += loss.item() * len(y)
            period_seen += len(y)
            val_acc = None
            epochs, within = divmod(self.step, self.steps_per_epoch)
            at_end = self.step == self.end_step
            if self.val is not None and (at_end or (within == 0 and epochs % cfg.eval_every == 0)):
                val_start = time.perf_counter()
                val_acc = evaluate(self.model, self.val, self.data_cfg, self.device,
                                   cfg.eval_batch_size, cancel=self.cancel)["accuracy"]
                if self.cancel.is_set():
                    cancelled = True
                    break
                self.elapsed_s += time.perf_counter() - val_start
                self.history.append({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                                     "val_accuracy": val_acc, "train_loss": period_loss / period_seen,
                                     "wall_s": round(self.elapsed_s, 1)})
                period_loss = period_seen = 0.0
            if self.step % cfg.checkpoint_every == 0 or at_end:
                self.save_state()
            now = time.perf_counter()  # this step's figures
            rate = len(y) * self.world / max(now - step_start, 1e-9)
            per_step = (now - start) / (self.step - first_step)
            yield Progress(self.step, self.end_step, self.step / self.steps_per_epoch, loss.item(),
                           (logits.argmax(-1) == y).sum().item() / len(y), rate,
                           per_step * (self.end_step - self.step), lr, val_acc)
            step_start = now
        return TrainResult(self.step, self.end_step, cancelled, time.perf_counter() - start,
                           list(self.history))
