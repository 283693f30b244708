"""Short fine-tuning jobs started from the browser: the request, the job body, the job runner.

- ``FinetuneRequest``: what to fine-tune and how, every field checked on construction
  (``InvalidRequest``); ``check_request`` adds the checks that need the weights folder.
- ``train_job``: the job body, a generator of ``(kind, value)`` events. It builds the base model,
  trains it with the shared ``Trainer`` (one ``"progress"`` event per optimizer step; closing the
  generator cancels the run after the current step), evaluates on a held-out CIFAR-10 test
  subset and yields the weights in a ``"result"`` event. Its failures become ``"error"`` events
  with a message for the person, so they survive the trip back from a ZeroGPU worker process.
- ``JobRunner``: one job at a time per server, run in a worker thread; the job's state lives here
  (not in a browser session), so every page and API client sees the same job. At the end the
  runner writes checkpoint + card atomically with ``save_model`` and makes the registry load the
  new model on its next use.

On a ZeroGPU Space (the ``spaces`` package importable and ``SPACES_ZERO_GPU`` set, which is what
``spaces`` itself reads), ``train_job`` runs under ``spaces.GPU`` in a forked worker that holds a
GPU for the job, and its weights come back pickled in the ``"result"`` event; elsewhere it runs
in the runner's thread on CUDA when present, else on the CPU.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt
import hashlib
import importlib.util
import json
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import NAME_RE, CheckpointError, list_models, load_card, model_path, save_model
from .data import CLASSES, VAL_SIZE, DataConfig, load_cifar10, train_val_split
from .models import (SCRATCH, SCRATCH_CHECKPOINT, VITB16, VITB16_CHECKPOINT, Registry,
                     load_checkpoint)
from .train import Progress, TrainConfig, Trainer, TrainResult, evaluate

BASE_ENV = "VIT_DEMO_FINETUNE_BASE"
DEFAULT_BASE_TIMM = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
STATE_DIR_ENV = "VIT_DEMO_FINETUNE_STATE_DIR"  # resume-state folder (default: temp/STATE_DIR_NAME)
STATE_DIR_NAME = "vit-demo-finetune"
RESERVED_CHECKPOINTS = (SCRATCH_CHECKPOINT, VITB16_CHECKPOINT)  # the app's own models
TRAIN_POOL = 50_000 - VAL_SIZE  # training images left after the fixed validation hold-out
TEST_SIZE = 10_000
MAX_LOG_LINES = 200
ZEROGPU_MAX_S = 600  # longest GPU allocation a job may ask ZeroGPU for
# Rough training throughput on a ZeroGPU slice, to size the allocation (images/s, bf16).
ZEROGPU_IMAGES_PER_S = {"timm": 400.0, "scratch": 10_000.0}

IDLE, STARTING, RUNNING, STOPPING, SAVING, DONE, CANCELLED, FAILED = (
    "idle", "starting", "running", "stopping", "saving", "done", "cancelled", "failed")
ACTIVE = (STARTING, RUNNING, STOPPING, SAVING)


class FinetuneError(ValueError):
    """Something the person must change before a fine-tune can run; the message says what."""


class InvalidRequest(FinetuneError):
    """One or more fields of a request are out of range or inconsistent."""


class JobBusy(FinetuneError):
    """A job is already running on this server; ``state`` is that job."""

    def __init__(self, message: str, state: "JobState"):
        super().__init__(message)
        self.state = state


class BaseUnavailable(FinetuneError):
    """The base model cannot be built (e.g. pretrained weights not cached and no network)."""


def base_timm_name() -> str:
    """The timm model fine-tuned for the ``vit-b16`` base (``$VIT_DEMO_FINETUNE_BASE``)."""
    return os.environ.get(BASE_ENV) or DEFAULT_BASE_TIMM


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space: ``spaces`` is importable and ``SPACES_ZERO_GPU`` is true."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def training_device() -> str:
    """"cuda" when a GPU is (or, on ZeroGPU, will be) there for the job, else "cpu"."""
    return "cuda" if on_zero_gpu() or torch.cuda.is_available() else "cpu"


def device_warning(device: str) -> str:
    """A warning to show when jobs run on the CPU; empty on a GPU."""
    if device == "cuda":
        return ""
    return ("No GPU on this server: fine-tuning runs on the CPU, slowly, and slows the other "
            "tabs while it runs. Keep the budget small (a few thousand images for the scratch "
            "ViT; a few hundred, with a frozen backbone, for ViT-B/16 at 224 px).")


# -- the request ---------------------------------------------------------------------------

def _whole(name: str, value: Any, lo: int, hi: int, problems: list[str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        problems.append(f"{name} must be a whole number from {lo:,} to {hi:,} (got {value!r})")
        return None
    if not lo <= value <= hi:
        problems.append(f"{name} must be from {lo:,} to {hi:,} (got {value:,})")
        return None
    return int(value)


def _real(name: str, value: Any, lo: float, hi: float, problems: list[str]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"{name} must be a number in ({lo:g}, {hi:g}] (got {value!r})")
        return None
    if not lo < value <= hi:
        problems.append(f"{name} must be in ({lo:g}, {hi:g}] (got {value:g})")
        return None
    return float(value)


@dataclass(frozen=True)
class FinetuneRequest:
    """One fine-tuning job. Construction validates every field and raises ``InvalidRequest``
    listing all problems; numbers may arrive as integral floats (from forms and JSON)."""

    base: str = SCRATCH  # "vit-b16", "scratch" (the shipped checkpoint) or a scratch checkpoint name
    train_images: int = 2000  # the first N of the 45k training images (after the validation hold-out)
    epochs: float = 1.0  # passes over those images; ignored when steps is set
    steps: int | None = None  # optimizer steps instead of epochs (0 or None: use epochs)
    batch_size: int = 64
    lr: float = 3e-4  # peak AdamW learning rate (warm-up over the first 10 %, then cosine)
    freeze_backbone: bool = False  # train the classifier head only
    seed: int = 0
    name: str = "finetune-1"  # checkpoint name in the weights folder, and the new model's key
    overwrite: bool = False  # replace an existing checkpoint of that name
    val_images: int = 500  # validation images checked at every epoch end (0: none)
    test_images: int = 1000  # held-out CIFAR-10 test images for the final accuracy

    def __post_init__(self) -> None:
        problems: list[str] = []

        def set_(name: str, value: Any) -> None:  # the dataclass is frozen
            object.__setattr__(self, name, value)

        if not isinstance(self.base, str) or not self.base.strip():
            problems.append(f"base must be {VITB16!r}, {SCRATCH!r} or a scratch checkpoint name "
                            f"(got {self.base!r})")
        else:
            set_("base", self.base.strip())
            if self.base not in (VITB16, SCRATCH) and not NAME_RE.match(self.base):
                problems.append(f"base {self.base!r} is not a checkpoint name")
        set_("train_images", _whole("train images", self.train_images, 1, TRAIN_POOL, problems))
        set_("batch_size", _whole("batch size", self.batch_size, 1, 1024, problems))
        if self.steps in (None, 0):
            set_("steps", None)
            set_("epochs", _real("epochs", self.epochs, 0, 100, problems))
        else:
            set_("steps", _whole("steps", self.steps, 1, 100_000, problems))
        set_("lr", _real("learning rate", self.lr, 0, 0.1, problems))
        set_("seed", _whole("seed", self.seed, 0, 2 ** 31 - 1, problems))
        set_("val_images", _whole("validation images", self.val_images, 0, VAL_SIZE, problems))
        set_("test_images", _whole("test images", self.test_images, 10, TEST_SIZE, problems))
        for flag in ("freeze_backbone", "overwrite"):
            if not isinstance(getattr(self, flag), bool):
                problems.append(f"{flag.replace('_', ' ')} must be true or false "
                                f"(got {getattr(self, flag)!r})")
        if not isinstance(self.name, str) or not self.name.strip():
            problems.append("output name is empty: give the new checkpoint a name")
        else:
            set_("name", self.name.strip())
            if not NAME_RE.match(self.name) or ".." in self.name:
                problems.append(f"output name {self.name!r} is not allowed: use up to 100 letters, "
                                "digits, '_', '-' or '.', starting with a letter or digit")
            elif self.name in (SCRATCH, VITB16):
                problems.append(f"output name {self.name!r} is a model key of the app; choose "
                                "another name")
        if (self.train_images is not None and self.batch_size is not None
                and self.batch_size > self.train_images):
            problems.append(f"batch size ({self.batch_size}) is larger than the number of "
                            f"training images ({self.train_images}): one batch must fit")
        if problems:
            raise InvalidRequest("Cannot start the fine-tune: " + "; ".join(problems) + ".")

    @property
    def base_kind(self) -> str:
        """"timm" for the ViT-B/16 base, else "scratch"."""
        return "timm" if self.base == VITB16 else "scratch"

    @property
    def base_checkpoint(self) -> str | None:
        """The checkpoint a scratch base starts from; None for ViT-B/16."""
        if self.base == VITB16:
            return None
        return SCRATCH_CHECKPOINT if self.base == SCRATCH else self.base

    def steps_per_epoch(self) -> int:
        return self.train_images // self.batch_size

    def epochs_to_run(self) -> float:
        """The schedule length in epochs (from ``steps`` when given)."""
        return self.steps / self.steps_per_epoch() if self.steps else self.epochs

    def total_steps(self) -> int:
        return max(1, round(self.epochs_to_run() * self.steps_per_epoch()))

    def train_config(self) -> TrainConfig:
        """The shared trainer's config: AdamW, 10 % warm-up then cosine, label smoothing,
        crop + flip augmentation, resume state a few times per job."""
        epochs = self.epochs_to_run()
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr,
                           min_lr=self.lr / 100, warmup_epochs=0.1 * epochs, seed=self.seed,
                           checkpoint_every=max(25, self.total_steps() // 4),
                           freeze_backbone=self.freeze_backbone)


def default_request(base: str = SCRATCH, device: str = "cpu") -> FinetuneRequest:
    """Form defaults for ``base`` on ``device``: a budget of seconds to minutes on the CPU,
    a few minutes on a GPU."""
    timm_base = base == VITB16
    if device == "cuda":
        if timm_base:
            return FinetuneRequest(base, 10_000, 1.0, None, 64, 1e-4, False, 0, "vit-b16-finetune",
                                   val_images=1000, test_images=2000)
        return FinetuneRequest(base, 20_000, 3.0, None, 128, 3e-4, False, 0, "scratch-finetune",
                               val_images=1000, test_images=2000)
    if timm_base:
        return FinetuneRequest(base, 256, 1.0, None, 16, 1e-3, True, 0, "vit-b16-finetune",
                               val_images=0, test_images=100)
    return FinetuneRequest(base, 2000, 1.0, None, 64, 3e-4, False, 0, "scratch-finetune",
                           val_images=500, test_images=1000)


def scratch_checkpoints(weights_dir: Path) -> list[str]:
    """Checkpoints in the weights folder whose card describes a scratch ViT."""
    names = []
    for name in list_models(weights_dir):
        try:
            if load_card(weights_dir, name).get("arch") == "scratch-vit":
                names.append(name)
        except CheckpointError:
            continue
    return names


def base_choices(weights_dir: Path) -> list[tuple[str, str]]:
    """(label, value) pairs for the base-model dropdown."""
    pairs = [(f"ViT-B/16, ImageNet-21k pretrained (timm {base_timm_name()})", VITB16),
             (f"Scratch ViT from {SCRATCH_CHECKPOINT}", SCRATCH)]
    pairs += [(f"Scratch ViT from {n}", n) for n in scratch_checkpoints(weights_dir)
              if n != SCRATCH_CHECKPOINT]
    return pairs


def registry_key(name: str) -> str:
    """The registry key under which checkpoint ``name`` appears in the other tabs."""
    return {SCRATCH_CHECKPOINT: SCRATCH, VITB16_CHECKPOINT: VITB16}.get(name, name)


def check_request(request: FinetuneRequest, weights_dir: Path) -> None:
    """The checks that need the weights folder: the base exists, the output name is free (or
    overwriting is asked), the app's own checkpoint names keep their architecture, and on
    ZeroGPU the job fits one GPU allocation."""
    problems = []
    ckpt = request.base_checkpoint
    if ckpt is not None and ckpt not in scratch_checkpoints(weights_dir):
        if request.base == SCRATCH:
            problems.append(f"the scratch base needs {SCRATCH_CHECKPOINT}.safetensors + .json in "
                            f"{weights_dir}; train it first (python -m vit_demo train)")
        else:
            known = ", ".join([VITB16, SCRATCH] + [n for n in scratch_checkpoints(weights_dir)
                                                   if n != SCRATCH_CHECKPOINT])
            problems.append(f"base {request.base!r} is not a scratch checkpoint in the weights "
                            f"folder; choose one of: {known}")
    target = model_path(weights_dir, request.name, ".json")
    exists = target.exists() or model_path(weights_dir, request.name, ".safetensors").exists()
    if exists and not request.overwrite:
        what = ("the app's own model" if request.name in RESERVED_CHECKPOINTS
                else "a checkpoint")
        problems.append(f"{request.name!r} is {what} in the weights folder; choose another output "
                        "name or tick overwrite")
    if request.name == VITB16_CHECKPOINT and request.base != VITB16:
        problems.append(f"{VITB16_CHECKPOINT} is the app's ViT-B/16 slot: only the {VITB16!r} "
                        "base can be saved under that name")
    if request.name == SCRATCH_CHECKPOINT and request.base == VITB16:
        problems.append(f"{SCRATCH_CHECKPOINT} is the app's scratch-ViT slot: a ViT-B/16 cannot "
                        "be saved under that name")
    if on_zero_gpu() and gpu_duration(request) >= ZEROGPU_MAX_S:
        problems.append(f"this job would need about {gpu_duration(request)} s of GPU time; a "
                        f"ZeroGPU job may take at most {ZEROGPU_MAX_S} s: use fewer images, "
                        "epochs or steps")
    if problems:
        raise InvalidRequest("Cannot start the fine-tune: " + "; ".join(problems) + ".")


def gpu_duration(request: FinetuneRequest, *_: Any) -> int:
    """Seconds of ZeroGPU time to ask for: set-up, training, validation and the test pass,
    at the rough throughputs of ``ZEROGPU_IMAGES_PER_S``, with a 50 % margin."""
    rate = ZEROGPU_IMAGES_PER_S[request.base_kind]
    trained = request.total_steps() * request.batch_size
    evaluated = request.val_images * math.ceil(request.epochs_to_run()) + request.test_images
    return int(30 + 1.5 * (trained + evaluated / 3) / rate)


def state_path_for(request: FinetuneRequest, state_dir: Path) -> Path:
    """The resume-state file of ``request``: the same training settings give the same file,
    so starting a stopped job again resumes it. The output name plays no part."""
    ident = {k: v for k, v in asdict(request).items() if k not in ("name", "overwrite",
                                                                    "test_images")}
    ident["config"] = asdict(request.train_config())
    ident["timm"] = base_timm_name() if request.base == VITB16 else None
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return Path(state_dir) / f"{digest}.safetensors"


# -- the job body (runs in the runner's thread, or in a ZeroGPU worker) ----------------------

def build_base(request: FinetuneRequest, weights_dir: Path) -> tuple[nn.Module, DataConfig, dict]:
    """The base model (training mode), its input config and the architecture part of the card."""
    if request.base == VITB16:
        import timm

        name = base_timm_name()
        torch.manual_seed(request.seed)  # the new 10-class head
        try:
            model = timm.create_model(name, pretrained=True, num_classes=len(CLASSES))
        except Exception as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
            why = (f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")
            raise BaseUnavailable(
                f"The ViT-B/16 base is unavailable: timm could not get the pretrained weights "
                f"{name!r} ({why}). They are not in the local Hugging Face cache"
                + (" and the hub is switched off (HF_HUB_OFFLINE=1)" if offline else
                   " and the hub could not be reached")
                + ". Run the app once with network access so that timm caches them, set "
                f"{BASE_ENV} to a timm model that is cached, or fine-tune the scratch ViT.") from exc
        # The whole 32 px image is resized to the input size, in training as at inference.
        data_cfg = dataclasses.replace(
            DataConfig.from_dict(timm.data.resolve_model_data_config(model)), crop_pct=1.0)
        arch = {"arch": "timm", "timm_name": model.pretrained_cfg.get("architecture", name),
                "pretrained": name}
        return model.train(), data_cfg, arch
    name = request.base_checkpoint
    model, kind, data_cfg, card = load_checkpoint(weights_dir, name)
    if kind != "scratch":
        raise BaseUnavailable(f"base {name!r} is not a scratch ViT checkpoint")
    arch = {"arch": "scratch-vit", "model_config": card["model_config"],
            "base_checkpoint": {"name": name, "sha256": card.get("tensors", {}).get("sha256")}}
    if "preset" in card:
        arch["preset"] = card["preset"]
    return model.train(), data_cfg, arch


def _stepwise(trainer: Trainer) -> Iterator[tuple[str, dict]]:
    """``trainer.run()`` as one ``("progress", asdict(Progress))`` per optimizer step; returns
    the ``TrainResult``. The trainer waits at every step's report until the next item is asked
    for, so closing the iterator cancels the run after the current step."""
    items: queue.Queue = queue.Queue()
    go_on = threading.Semaphore(0)

    def report(progress: Progress) -> None:
        items.put(("progress", progress))
        go_on.acquire()

    def run() -> None:
        try:
            items.put(("done", trainer.run()))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            items.put(("error", exc))

    trainer.callback = report
    thread = threading.Thread(target=run, name="finetune-steps", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "error":
                raise value
            if kind == "done":
                return value
            yield "progress", asdict(value)
            go_on.release()
    finally:
        trainer.cancel.set()
        go_on.release()
        thread.join()


def train_job(request: FinetuneRequest, data_dir: str | None, weights_dir: str,
              state_path: str) -> Iterator[tuple[str, Any]]:
    """The job body: events ``("log", str)``, ``("started", dict)``, ``("baseline", dict)``
    (validation accuracy before this run's first step), ``("progress", dict)`` per step, then
    ``("result", dict)`` with the CPU weights and the test metrics, or ``("error", str)``.
    Close it to cancel after the current step (no result, no files)."""
    try:
        device = torch.device(training_device())
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        yield "log", f"device: {name}"
        model, data_cfg, arch = build_base(request, Path(weights_dir))
        yield "log", (f"base: {request.base} ({sum(p.numel() for p in model.parameters()):,} "
                      f"parameters), input {data_cfg.input_size[1]} px")
        train, val = train_val_split(load_cifar10("train", data_dir, download=False))
        test = load_cifar10("test", data_dir, download=False)
        if request.train_images > len(train) or request.val_images > len(val):
            raise FinetuneError(f"the data set has only {len(train)} training and {len(val)} "
                                "validation images")
        train = train.subset(torch.arange(request.train_images))
        val = val.subset(torch.arange(request.val_images))
        test = test.subset(torch.arange(min(request.test_images, len(test))))
        cfg = request.train_config()
        trainer = Trainer(model, data_cfg, train, cfg, val=val if len(val) else None,
                          device=device, state_path=Path(state_path), cancel=threading.Event(),
                          head="head")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        yield "started", {"total_steps": trainer.end_step, "resumed_step": trainer.step,
                          "steps_per_epoch": trainer.steps_per_epoch, "trainable": trainable}
        if len(val):
            yield "baseline", {"step": trainer.step, "epoch": trainer.step / trainer.steps_per_epoch,
                               "val_accuracy": evaluate(model, val, data_cfg, device)["accuracy"]}
        result: TrainResult = yield from _stepwise(trainer)
        yield "log", f"testing on {len(test)} held-out CIFAR-10 test images"
        batch = 500 if device.type == "cuda" or data_cfg.input_size[1] <= 64 else 64
        metrics = evaluate(model, test, data_cfg, device, batch_size=batch)
        yield "result", {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                         "arch": arch, "data_config": data_cfg.to_dict(),
                         "params": sum(p.numel() for p in model.parameters()),
                         "trainable": trainable, "config": asdict(cfg), "test": metrics,
                         "history": result.history, "wall_s": result.wall_s,
                         "steps": result.step, "device": name, "device_type": device.type,
                         "train_images": len(train), "val_images": len(val)}
    except Exception as exc:
        message = str(exc) if isinstance(exc, FinetuneError) else f"{type(exc).__name__}: {exc}"
        yield "error", message


def _gpu_wrapped(fn: Callable[..., Iterator]) -> Callable[..., Iterator]:
    """``fn`` under ``spaces.GPU`` on ZeroGPU (decorated at import, before the app launches);
    ``fn`` itself elsewhere."""
    if not on_zero_gpu():
        return fn
    import spaces

    return spaces.GPU(duration=gpu_duration)(fn)


run_train_job = _gpu_wrapped(train_job)


# -- the runner ----------------------------------------------------------------------------

@dataclass
class JobState:
    """What a page shows of the server's current (or last) job."""
    id: int = 0
    status: str = IDLE
    request: dict = field(default_factory=dict)
    device: str = ""
    warning: str = ""
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    eta_s: float | None = None
    images_per_s: float | None = None
    history: list[dict] = field(default_factory=list)  # val at the start, then one row per step
    log: list[str] = field(default_factory=list)
    metrics: dict | None = None  # {"test": evaluate(...)} at the end
    checkpoint: str | None = None  # path of the written .safetensors
    card: str | None = None  # path of the written .json
    model_key: str | None = None  # the new model's key in the other tabs
    error: str | None = None
    started: float | None = None  # time.time()
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def summary(self) -> dict:
        """The state without the per-step history, JSON-ready (the API's view)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "history"}
        d["log"] = self.log[-20:]
        if self.metrics:
            test = self.metrics["test"]
            d["metrics"] = {"test_accuracy": test["accuracy"], "test_images": test["images"],
                            "per_class_accuracy": dict(zip(CLASSES, test["per_class_accuracy"]))}
        return d


class JobRunner:
    """Runs one fine-tuning job at a time for the whole server and keeps its state.

    ``start`` validates and starts a job in a worker thread (``JobBusy`` while one runs);
    ``stop`` asks it to end after the current step; ``snapshot``, ``updates`` and ``wait`` read
    the state.
    """

    def __init__(self, registry: Registry, data_dir: str | None = None,
                 state_dir: Path | None = None):
        self.registry = registry
        self.weights_dir = Path(registry.weights_dir)
        self.data_dir = data_dir
        self.state_dir = Path(state_dir or os.environ.get(STATE_DIR_ENV)
                              or Path(tempfile.gettempdir()) / STATE_DIR_NAME)
        self.device = training_device()
        self._cond = threading.Condition()
        self._state = JobState(device=self.device, warning=device_warning(self.device))
        self._version = 0
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading ------------------------------------------------------------------------
    def snapshot(self) -> JobState:
        """A copy of the current job's state (safe to read while the job runs)."""
        with self._cond:
            return self._copy()

    def _copy(self) -> JobState:
        s = self._state
        return dataclasses.replace(s, request=dict(s.request), history=list(s.history),
                                   log=list(s.log))

    async def updates(self, job_id: int | None = None, interval: float = 0.25
                      ) -> AsyncIterator[JobState]:
        """Snapshots of job ``job_id`` (default: the current one) when it has changed, looking
        every ``interval`` seconds, ending with the snapshot in which it is no longer active.
        Asynchronous, so that pages watching a long job hold no worker thread."""
        seen = -1
        while True:
            with self._cond:
                changed = self._version != seen
                seen = self._version
                snap = self._copy() if changed else None
            if snap is not None:
                if job_id is not None and snap.id != job_id:
                    return
                yield snap
                if not snap.active:
                    return
                job_id = snap.id
            await asyncio.sleep(interval)

    def wait(self, timeout: float | None = None) -> JobState:
        """Wait until no job is active (or ``timeout`` passes); the state then."""
        with self._cond:
            self._cond.wait_for(lambda: not self._state.active, timeout=timeout)
            return self._copy()

    # -- control ------------------------------------------------------------------------
    def start(self, request: FinetuneRequest) -> JobState:
        """Check ``request`` and start it; the new job's first snapshot."""
        with self._cond:
            if self._state.active:
                running = self._state
                raise JobBusy(
                    f"A fine-tuning job is already running on this server (job {running.id}: "
                    f"{running.request.get('base')} -> {running.request.get('name')}, "
                    f"{running.status}, step {running.step}/{running.total_steps}). Only one job "
                    "runs at a time: wait for it to finish or stop it.", self._copy())
            check_request(request, self.weights_dir)
            self._cancel = threading.Event()
            self._state = JobState(id=self._state.id + 1, status=STARTING, request=asdict(request),
                                   device=self.device, warning=device_warning(self.device),
                                   total_steps=request.total_steps(), started=time.time())
            self._log(f"job {self._state.id}: fine-tune {request.base} on {request.train_images} "
                      f"images, {request.total_steps()} steps of {request.batch_size}, "
                      f"lr {request.lr:g}{', head only' if request.freeze_backbone else ''} "
                      f"-> {request.name}")
            job_id, cancel = self._state.id, self._cancel
            # The job carries the starting request's context (on ZeroGPU: whose GPU quota).
            context = contextvars.copy_context()
            self._thread = threading.Thread(target=context.run, args=(self._work, job_id, request, cancel),
                                            name=f"finetune-{job_id}", daemon=True)
            self._thread.start()
            return self._copy()

    def stop(self) -> JobState:
        """Ask the running job to stop after its current step; the state (unchanged if idle)."""
        with self._cond:
            if self._state.active and not self._cancel.is_set():
                self._cancel.set()
                if self._state.status != SAVING:
                    self._state.status = STOPPING
                self._log("stop requested: ending after the current step")
            return self._copy()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker thread to end (tests and shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker thread -------------------------------------------------------------------
    def _changed(self) -> None:
        self._version += 1
        self._cond.notify_all()

    def _log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self._state.log.append(f"{stamp} {line}")
        del self._state.log[:-MAX_LOG_LINES]
        self._changed()

    def _update(self, **changes: Any) -> None:
        with self._cond:
            for k, v in changes.items():
                setattr(self._state, k, v)
            self._changed()

    def _work(self, job_id: int, request: FinetuneRequest, cancel: threading.Event) -> None:
        state_path = state_path_for(request, self.state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            for old in self.state_dir.glob("*.safetensors"):
                if old != state_path:  # keep one resume state: the latest job's
                    old.unlink(missing_ok=True)
            result = self._train(request, state_path, cancel)
            if result is None:
                last = self._last_resume_step(request)
                with self._cond:
                    self._state.status = CANCELLED
                    self._state.finished = time.time()
                    self._log(f"stopped at step {self._state.step}; nothing was written to the "
                              "weights folder"
                              + (f"; starting the same job again resumes from step {last}"
                                 if last else ""))
                return
            self._save(request, result, state_path)
        except Exception as exc:
            message = str(exc) if isinstance(exc, FinetuneError) else f"{type(exc).__name__}: {exc}"
            with self._cond:
                self._state.status = FAILED
                self._state.error = message
                self._state.finished = time.time()
                self._log("failed: " + message)

    def _last_resume_step(self, request: FinetuneRequest) -> int:
        every = request.train_config().checkpoint_every
        return (self._state.step // every) * every

    def _train(self, request: FinetuneRequest, state_path: Path,
               cancel: threading.Event) -> dict | None:
        """Iterate the job body; the result, or None when stopped."""
        events = run_train_job(request, self.data_dir, str(self.weights_dir), str(state_path))
        result = None
        try:
            for kind, value in events:
                if kind == "log":
                    with self._cond:
                        self._log(value)
                elif kind == "started":
                    with self._cond:
                        self._state.total_steps = value["total_steps"]
                        self._state.step = value["resumed_step"]
                        if not cancel.is_set():
                            self._state.status = RUNNING
                        self._log(f"training {value['trainable']:,} parameters for "
                                  f"{value['total_steps']} steps ({value['steps_per_epoch']} per "
                                  "epoch)" + (f"; resumed at step {value['resumed_step']}"
                                              if value["resumed_step"] else ""))
                elif kind == "baseline":
                    with self._cond:
                        self._state.history.append(value)
                        self._log(f"step {value['step']}: validation accuracy "
                                  f"{value['val_accuracy']:.4f}")
                elif kind == "progress":
                    self._progress(value)
                elif kind == "error":
                    raise FinetuneError(value)
                elif kind == "result":
                    result = value
                if cancel.is_set():
                    return None
        finally:
            events.close()
        if result is None:
            raise FinetuneError("the job ended without a result")
        return result

    def _progress(self, p: dict) -> None:
        row = {"step": p["step"], "epoch": p["epoch"], "train_loss": p["loss"],
               "train_accuracy": p["accuracy"], "lr": p["lr"]}
        if p["val_accuracy"] is not None:
            row["val_accuracy"] = p["val_accuracy"]
        with self._cond:
            s = self._state
            rate = p["images_per_s"]
            s.images_per_s = rate if s.images_per_s is None else 0.8 * s.images_per_s + 0.2 * rate
            s.step, s.total_steps, s.epoch, s.eta_s = p["step"], p["total_steps"], p["epoch"], p["eta_s"]
            s.history.append(row)
            tenth = max(1, p["total_steps"] // 10)
            if p["val_accuracy"] is not None:
                self._log(f"step {p['step']}/{p['total_steps']} epoch {p['epoch']:.2f}: "
                          f"validation accuracy {p['val_accuracy']:.4f}")
            elif p["step"] % tenth == 0 or p["step"] == 1:
                self._log(f"step {p['step']}/{p['total_steps']}: loss {p['loss']:.4f}, "
                          f"train accuracy {p['accuracy']:.3f}, {s.images_per_s:.0f} images/s")
            else:
                self._changed()

    def _save(self, request: FinetuneRequest, result: dict, state_path: Path) -> None:
        """Write checkpoint + card, drop the resume state, make the registry reload the key."""
        with self._cond:
            self._state.status = SAVING
            self._log(f"test accuracy {result['test']['accuracy']:.4f} on "
                      f"{result['test']['images']} images; writing {request.name}")
        card = {
            **result["arch"], "data_config": result["data_config"], "classes": list(CLASSES),
            "params": result["params"],
            "recipe": {**result["config"], "base": request.base, "train_images": result["train_images"],
                       "val_images": result["val_images"], "test_images": request.test_images,
                       "trainable_params": result["trainable"],
                       "augment": "random crop (reflect pad 4) + horizontal flip, 32 px, then "
                                  "resized to the input size",
                       "optimizer": "AdamW", "schedule": "linear warm-up (10 %), cosine",
                       "precision": "bf16 autocast" if result["device_type"] == "cuda" else "fp32"},
            "training": {"device": result["device"], "history": result["history"],
                         "wall_s_last_run": round(result["wall_s"], 1), "steps": result["steps"],
                         "source": "fine-tune tab"},
            "metrics": {"test": result["test"]},
            "date": dt.date.today().isoformat(),
        }
        path = save_model(self.weights_dir, request.name, result["state_dict"], card,
                          overwrite=request.overwrite)
        state_path.unlink(missing_ok=True)
        key = registry_key(request.name)
        self.registry.forget(key)
        with self._cond:
            self._state.status = DONE
            self._state.metrics = {"test": result["test"]}
            self._state.checkpoint = str(path)
            self._state.card = str(model_path(self.weights_dir, request.name, ".json"))
            self._state.model_key = key
            self._state.finished = time.time()
            self._log(f"wrote {path.name} + {request.name}.json; the model is '{key}' in the "
                      "other tabs")
