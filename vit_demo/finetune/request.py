"""What a fine-tune job is asked to do, checked field by field on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..checkpoint import NAME_RE
from ..data import VAL_SIZE
from ..registry import RESERVED_KEYS, SCRATCH, VITB16, ModelKind
from ..train import TrainConfig

TRAIN_POOL = 50_000 - VAL_SIZE  # training images left after the fixed validation hold-out
TEST_SIZE = 10_000
MAX_LABEL = 40  # characters of the visitor's label; the store adds a unique suffix


class InvalidRequest(ValueError):
    """One or more fields of a request are out of range or inconsistent; the message lists all."""


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

    base: str = SCRATCH  # "vit-b16", "scratch" (the shipped model) or a fine-tuned scratch model's key
    train_images: int = 2000  # the first N of the 45k training images (after the validation hold-out)
    epochs: float = 1.0  # passes over those images; ignored when steps is set
    steps: int | None = None  # optimizer steps instead of epochs (0 or None: use epochs)
    batch_size: int = 64
    lr: float = 3e-4  # peak AdamW learning rate (warm-up over the first 10 %, then cosine)
    freeze_backbone: bool = False  # train the classifier head only
    seed: int = 0
    name: str = "finetune"  # a label; the new model's key is the label plus a unique suffix
    val_images: int = 500  # validation images checked at every epoch end (0: none)
    test_images: int = 1000  # held-out CIFAR-10 test images for the final accuracy

    def __post_init__(self) -> None:
        problems: list[str] = []

        def set_(name: str, value: Any) -> None:  # the dataclass is frozen
            object.__setattr__(self, name, value)

        if not isinstance(self.base, str) or not self.base.strip():
            problems.append(f"base must be {VITB16!r}, {SCRATCH!r} or a fine-tuned model's key "
                            f"(got {self.base!r})")
        else:
            set_("base", self.base.strip())
            if self.base not in (VITB16, SCRATCH) and not NAME_RE.match(self.base):
                problems.append(f"base {self.base!r} is not a model key")
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
        if not isinstance(self.freeze_backbone, bool):
            problems.append(f"freeze backbone must be true or false (got {self.freeze_backbone!r})")
        if not isinstance(self.name, str) or not self.name.strip():
            problems.append("output name is empty: give the new model a name")
        else:
            set_("name", self.name.strip())
            if (len(self.name) > MAX_LABEL or not NAME_RE.match(self.name) or ".." in self.name):
                problems.append(f"output name {self.name!r} is not allowed: use up to {MAX_LABEL} "
                                "letters, digits, '_', '-' or '.', starting with a letter or digit")
            elif self.name in RESERVED_KEYS:
                problems.append(f"output name {self.name!r} is a model key of the app; choose "
                                "another name")
        if None not in (self.train_images, self.batch_size) and self.batch_size > self.train_images:
            problems.append(f"batch size ({self.batch_size}) is larger than the number of "
                            f"training images ({self.train_images}): one batch must fit")
        if problems:
            raise InvalidRequest("Cannot start the fine-tune: " + "; ".join(problems) + ".")

    @property
    def base_kind(self) -> ModelKind:
        return ModelKind.TIMM if self.base == VITB16 else ModelKind.SCRATCH

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
    """Form defaults for ``base`` on ``device``: seconds to a minute or two on the CPU,
    a few minutes on a GPU."""
    timm_base = base == VITB16
    if device == "cuda":
        if timm_base:
            return FinetuneRequest(base, 10_000, 1.0, None, 64, 1e-4, False, 0, "vit-b16-ft",
                                   val_images=1000, test_images=2000)
        return FinetuneRequest(base, 20_000, 3.0, None, 128, 3e-4, False, 0, "scratch-ft",
                               val_images=1000, test_images=2000)
    if timm_base:
        return FinetuneRequest(base, 256, 1.0, None, 16, 1e-3, True, 0, "vit-b16-ft",
                               val_images=0, test_images=100)
    return FinetuneRequest(base, 2000, 1.0, None, 64, 3e-4, False, 0, "scratch-ft",
                           val_images=500, test_images=1000)
