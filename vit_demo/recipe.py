"""Training recipes: every setting of every stage of a run, in one TOML file (``recipes/NAME.toml``).

A recipe is a list of ``[[stage]]`` tables run in order. Each stage names its model (a ViT
preset from ``model.PRESETS`` or a CNN preset from ``cnn.CNN_PRESETS``), may start from the
final weights of an earlier stage (``init``, a ViT deepened when that one is shallower) and may
distil from an earlier stage's model (``teacher``, with ``distill`` > 0); every other key is a
``TrainConfig`` field. Each stage trains from its own resume-state file in the run folder, so
``run_recipe`` called again after any stop goes on where the run stopped, and the result is
bit-identical to a run that never stopped. The last stage must be a ViT: the checkpoint the
recipe ships.
"""

from __future__ import annotations

import hashlib
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import load_tensors
from .cnn import CNN, CNN_PRESETS
from .data import CIFAR10_DATA_CONFIG, Split
from .model import PRESETS, ViT, deepen
from .train import Progress, TrainConfig, Trainer

_STAGE_KEYS = {"name", "model", "init", "teacher", "drop_path", "patch_drop"}


@dataclass(frozen=True)
class Stage:
    name: str  # names the stage's state file; ``init`` and ``teacher`` refer to it
    model: str  # a ViT preset (model.PRESETS) or a CNN preset (cnn.CNN_PRESETS)
    train: TrainConfig
    init: str | None = None  # earlier stage whose final weights this one starts from
    teacher: str | None = None  # earlier stage whose model distils into this one
    drop_path: float | None = None  # a ViT's stochastic depth, over the preset's
    patch_drop: float | None = None  # a ViT's PatchDropout, over the preset's

    @property
    def is_vit(self) -> bool:
        return self.model in PRESETS

    def model_config(self):
        """The dataclass that builds this stage's model."""
        if not self.is_vit:
            return CNN_PRESETS[self.model]
        regularizers = {k: v for k, v in (("drop_path", self.drop_path), ("patch_drop", self.patch_drop))
                        if v is not None}
        return replace(PRESETS[self.model], **regularizers)

    def build(self) -> nn.Module:
        return (ViT if self.is_vit else CNN)(self.model_config())


@dataclass(frozen=True)
class Recipe:
    path: Path
    sha256: str  # of the file's bytes: the card names the exact recipe
    checkpoint: str  # the name the last stage's model is written under
    stages: tuple[Stage, ...]
    train_images: int | None = None  # use only the first N training images (tests)
    val_images: int | None = None  # validate on only the first N validation images (tests)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str | None) -> Stage | None:
        """The stage called ``name`` (None for None)."""
        return next((s for s in self.stages if s.name == name), None)


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check a recipe file; a ``ValueError`` says what is wrong with it."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: not a TOML file ({exc})") from exc
    unknown = set(data) - {"checkpoint", "stage", "train_images", "val_images"}
    if unknown or "checkpoint" not in data or not data.get("stage"):
        raise ValueError(f"{path}: a recipe has 'checkpoint' and [[stage]] tables"
                         + (f"; unknown keys {sorted(unknown)}" if unknown else ""))
    train_keys = {f.name for f in fields(TrainConfig)}
    stages: list[Stage] = []
    for table in data["stage"]:
        name = table.get("name", "?")
        if bad := set(table) - _STAGE_KEYS - train_keys:
            raise ValueError(f"{path}: stage {name!r}: unknown keys {sorted(bad)}")
        if "name" not in table or "model" not in table:
            raise ValueError(f"{path}: every stage has a 'name' and a 'model'")
        stage = Stage(**{k: v for k, v in table.items() if k in _STAGE_KEYS},
                      train=TrainConfig(**{k: v for k, v in table.items() if k in train_keys}))
        _check_stage(stage, {s.name: s for s in stages}, path)
        stages.append(stage)
    if not stages[-1].is_vit:
        raise ValueError(f"{path}: the last stage must train a ViT, the checkpoint the recipe ships")
    return Recipe(path, hashlib.sha256(raw).hexdigest(), data["checkpoint"], tuple(stages),
                  data.get("train_images"), data.get("val_images"))


def _check_stage(stage: Stage, earlier: dict[str, Stage], path: Path) -> None:
    where = f"{path}: stage {stage.name!r}"
    if stage.name in earlier:
        raise ValueError(f"{where}: the name is taken by an earlier stage")
    if stage.model not in PRESETS and stage.model not in CNN_PRESETS:
        raise ValueError(f"{where}: unknown model {stage.model!r}")
    if not stage.is_vit and (stage.drop_path is not None or stage.patch_drop is not None):
        raise ValueError(f"{where}: drop_path and patch_drop are ViT settings")
    for role in ("init", "teacher"):
        other = getattr(stage, role)
        if other is not None and other not in earlier:
            raise ValueError(f"{where}: {role} {other!r} is not an earlier stage")
    if (stage.teacher is None) != (stage.train.distill == 0.0):
        raise ValueError(f"{where}: a teacher and distill > 0 go together")
    if stage.init is not None:
        start, cfg = earlier[stage.init], stage.model_config()
        if start.is_vit != stage.is_vit or (stage.is_vit and replace(
                start.model_config(), depth=cfg.depth, drop_path=cfg.drop_path,
                patch_drop=cfg.patch_drop) != cfg):
            raise ValueError(f"{where}: init {stage.init!r} is not this stage's model but for "
                             "its depth and regularizers")


def state_path(run_dir: Path, stage: Stage) -> Path:
    return Path(run_dir) / f"{stage.name}.state.safetensors"


def final_weights(run_dir: Path, stage: Stage) -> nn.Module:
    """The model of a finished ``stage``, from its state file."""
    tensors, meta = load_tensors(state_path(run_dir, stage))
    if meta is None or meta["step"] < meta["total_steps"]:
        raise ValueError(f"stage {stage.name!r} has not finished")
    model = stage.build()
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return model


@dataclass
class StageResult:
    stage: Stage
    model: nn.Module
    steps: int
    history: list[dict]  # the trainer's validation rows
    elapsed_s: float  # training wall time over all the stage's runs


def run_recipe(recipe: Recipe, run_dir: Path, train: Split, val: Split | None,
               device: torch.device | str = "cpu",
               callback: Callable[[Stage, Progress], None] | None = None,
               cancel: threading.Event | None = None) -> list[StageResult] | None:
    """Every stage of ``recipe`` in order, each resumed from its state in ``run_dir``; the
    stages' results, or None when ``cancel`` stopped the run (call again to go on). On a GPU
    the images go there once, as uint8, and are augmented there a batch at a time."""
    if torch.device(device).type == "cuda":
        train = Split(train.x.to(device), train.y.to(device))
    results = []
    for stage in recipe.stages:
        torch.manual_seed(stage.train.seed)
        model = stage.build()
        if stage.init is not None:
            start = final_weights(run_dir, recipe.stage(stage.init))
            model.load_state_dict((deepen(start, model.cfg.depth) if stage.is_vit else start).state_dict())
        teacher = (final_weights(run_dir, recipe.stage(stage.teacher))
                   if stage.teacher is not None else None)
        trainer = Trainer(model, CIFAR10_DATA_CONFIG, train, stage.train, val=val, device=device,
                          state_path=state_path(run_dir, stage), model_config=stage.model_config(),
                          callback=(lambda p, s=stage: callback(s, p)) if callback else None,
                          cancel=cancel, teacher=teacher)
        if trainer.run().cancelled:
            return None
        results.append(StageResult(stage, model, trainer.step, trainer.history, trainer.elapsed_s))
    return results


@dataclass(frozen=True)
class CurvePoint:
    """One validation of a recipe's run, placed on the run's cumulative cost."""
    stage: str
    epoch: float  # within its stage
    hours: float  # training wall time of the run so far (every stage before included)
    pflops: float  # training FLOPs of the run so far, in 10^15
    val_accuracy: float


@dataclass(frozen=True)
class StageSummary:
    stage: str
    epochs_done: float
    epochs: float
    hours: float  # this stage's training wall time
    pflops: float  # this stage's training FLOPs, in 10^15
    last_val: float | None
    best_val: float | None


def learning_curve(recipe: Recipe, run_dir: Path, train_images: int
                   ) -> tuple[list[CurvePoint], list[StageSummary]]:
    """Every validation of the run in ``run_dir`` so far against cumulative training time and
    FLOPs (``evaluate.training_flops_per_image`` of each stage, its teacher's forward pass
    included), and a summary per stage started; stages not started yet are left out."""
    from .evaluate import training_flops_per_image

    points, summaries, hours, pflops = [], [], 0.0, 0.0
    for stage in recipe.stages:
        path = state_path(run_dir, stage)
        if not path.is_file():
            break
        meta = load_tensors(path)[1]
        teacher = recipe.stage(stage.teacher)
        per_image = training_flops_per_image(stage.build(), CIFAR10_DATA_CONFIG,
                                             teacher.build() if teacher else None)
        pflops_per_step = per_image * stage.train.batch_size / 1e15
        for row in meta["history"]:
            points.append(CurvePoint(stage.name, row["epoch"], hours + row.get("wall_s", 0.0) / 3600,
                                     pflops + row["step"] * pflops_per_step, row["val_accuracy"]))
        vals = [row["val_accuracy"] for row in meta["history"]]
        steps_per_epoch = train_images // stage.train.batch_size
        summaries.append(StageSummary(stage.name, meta["step"] / steps_per_epoch, stage.train.epochs,
                                      meta["elapsed_s"] / 3600, meta["step"] * pflops_per_step,
                                      vals[-1] if vals else None, max(vals, default=None)))
        hours += meta["elapsed_s"] / 3600
        pflops += meta["step"] * pflops_per_step
    return points, summaries
