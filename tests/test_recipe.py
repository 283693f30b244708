"""Recipes (``train --recipe``): stages run in order and resume bit-identically, distillation,
the SGD option, the CNN teacher, and what a recipe file may say.

Images come from conftest's synthetic ``cifar_train`` (CIFAR-10's layout), written to ``data_dir``.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vit_demo.card import read_card
from vit_demo.checkpoint import load_tensors
from vit_demo.cli import main
from vit_demo.cnn import CNN, CNN_PRESETS
from vit_demo.data import CIFAR10_DATA_CONFIG, Split, train_val_split
from vit_demo.model import PRESETS, ViT
from vit_demo.recipe import load_recipe, run_recipe, state_path
from vit_demo.train import TrainConfig, Trainer

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "recipes" / "tiny.toml"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits(cifar_train: Split) -> tuple[Split, Split]:
    recipe = load_recipe(TINY_RECIPE)
    train, val = train_val_split(cifar_train)
    return (train.subset(torch.arange(recipe.train_images)),
            val.subset(torch.arange(recipe.val_images)))


def test_a_recipe_stopped_in_each_stage_and_resumed_equals_one_uninterrupted_run(splits, tmp_path: Path):
    """The tiny two-stage recipe (a CNN teacher, then a ViT distilled from it) run in one go,
    and run again stopped once inside each stage and resumed from its state files: the same
    final tensors, bit for bit."""
    recipe = load_recipe(TINY_RECIPE)
    whole = run_recipe(recipe, tmp_path / "whole", *splits)
    assert [r.stage.name for r in whole] == ["teacher", "vit"]

    cancel, seen = threading.Event(), []

    def stop_at(stage, progress) -> None:  # stop after step 5 of each stage, once
        if progress.step == 5 and stage.name not in seen:
            seen.append(stage.name)
            cancel.set()

    interrupted = tmp_path / "interrupted"
    stops = 0
    while (results := run_recipe(recipe, interrupted, *splits, callback=stop_at, cancel=cancel)) is None:
        stops += 1
        cancel.clear()
    assert stops == 2 and seen == ["teacher", "vit"]
    for stage in recipe.stages:
        a, meta_a = load_tensors(state_path(tmp_path / "whole", stage))
        b, meta_b = load_tensors(state_path(interrupted, stage))
        assert meta_a["step"] == meta_b["step"] == meta_a["total_steps"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (stage.name, key)
    for key, value in whole[-1].model.state_dict().items():
        assert torch.equal(value, results[-1].model.state_dict()[key]), key


def test_distillation_adds_the_teachers_hard_label_to_the_loss(cifar_train: Split):
    """One step: loss = (1 - d) * CE(label, smoothed) + d * CE(the teacher's argmax), written out."""
    torch.manual_seed(0)
    model, teacher = ViT(PRESETS["cifar10-64x2/4"]), CNN(CNN_PRESETS["cnn-8-16"]).eval()
    for p in model.parameters():  # the default init zeroes the head: make the logits informative
        torch.nn.init.normal_(p, std=0.1)
    cfg = TrainConfig(epochs=1, batch_size=32, warmup_epochs=0, label_smoothing=0.1, distill=0.3)
    trainer = Trainer(model, CIFAR10_DATA_CONFIG, cifar_train.subset(torch.arange(64)), cfg,
                      teacher=teacher)
    x, y, _, _ = trainer._batch(0)
    with torch.no_grad():
        logp = model(x).log_softmax(-1)
        taught = teacher(x).argmax(-1)
    smoothed = (-(0.9 * logp.gather(1, y[:, None]).squeeze(1) + 0.1 * logp.mean(-1))).mean()
    hard = -logp.gather(1, taught[:, None]).mean()
    assert not torch.equal(taught, y)  # an untrained teacher disagrees with the labels
    losses = []
    trainer.callback = lambda p: losses.append(p.loss)
    trainer.end_step = 1
    trainer.run()
    assert losses[0] == pytest.approx((0.7 * smoothed + 0.3 * hard).item(), rel=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        Trainer(model, CIFAR10_DATA_CONFIG, cifar_train.subset(torch.arange(64)), cfg)


def test_sgd_takes_a_nesterov_step(cifar_train: Split):
    """One SGD step from zero momentum: buf = g + wd * w; w -= lr * (g' + 0.9 * buf), g' = buf."""
    torch.manual_seed(0)
    model = CNN(CNN_PRESETS["cnn-8-16"])
    cfg = TrainConfig(epochs=1, batch_size=32, warmup_epochs=0, lr=0.1, weight_decay=0.01,
                      optimizer="sgd", grad_clip=0.0, augment=False, label_smoothing=0.0)
    trainer = Trainer(model, CIFAR10_DATA_CONFIG, cifar_train.subset(torch.arange(64)), cfg)
    x, y, _, _ = trainer._batch(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    reference = CNN(CNN_PRESETS["cnn-8-16"])
    reference.load_state_dict(model.state_dict())
    F.cross_entropy(reference(x), y).backward()
    trainer.end_step = 1
    trainer.run()
    lr = trainer.optimizer.param_groups[0]["lr"]
    for name, p in reference.named_parameters():
        decay = 0.01 if p.ndim >= 2 else 0.0
        g = p.grad + decay * before[name]
        expected = before[name] - lr * (g + 0.9 * g)
        assert torch.allclose(dict(model.named_parameters())[name], expected, atol=1e-6), name


def test_the_cnn_halves_the_grid_in_each_block():
    cnn = CNN(CNN_PRESETS["cnn-64-256-256"])
    x = torch.zeros(2, 3, 32, 32)
    features = cnn.blocks(cnn.stem(x))
    assert features.shape == (2, 256, 4, 4)
    assert cnn(x).shape == (2, 10)
    assert sum(p.numel() for p in cnn.parameters()) == pytest.approx(2.0e6, rel=0.05)


def test_train_command_runs_a_recipe_and_names_it_in_the_card(data_dir: str, tmp_path: Path):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    main(["train", "--recipe", str(TINY_RECIPE), "--run-dir", str(run_dir), "--out", str(out),
          "--data-dir", data_dir])
    card = read_card(out, "vit-tiny-recipe")
    assert card.training.recipe_file.endswith("recipes/tiny.toml")
    assert card.training.recipe_sha256 == hashlib.sha256(TINY_RECIPE.read_bytes()).hexdigest()
    assert "CNN (cnn-8-16) trained here on CIFAR-10" in card.training.teacher
    assert card.preset == "cifar10-64x2/4" and card.origin is None
    assert card.recipe.config.distill == 0.5 and card.recipe.config.mixup == 0.2
    stages = [load_tensors(state_path(run_dir, s))[1] for s in load_recipe(TINY_RECIPE).stages]
    assert card.training.wall_s_total == pytest.approx(sum(m["elapsed_s"] for m in stages), abs=0.2)
    assert card.metrics.test.images == 1000


@pytest.mark.parametrize("text, error", [
    ('checkpoint = "x"\n[[stage]]\nname = "a"\nmodel = "cnn-8-16"\n', "last stage must train a ViT"),
    ('checkpoint = "x"\n[[stage]]\nname = "a"\nmodel = "cifar10-64x2/4"\nteacher = "b"\ndistill = 0.5\n',
     "not an earlier stage"),
    ('checkpoint = "x"\n[[stage]]\nname = "a"\nmodel = "cifar10-64x2/4"\nlearning_rate = 1\n',
     "unknown keys"),
    ('checkpoint = "x"\n[[stage]]\nname = "a"\nmodel = "cnn-8-16"\n[[stage]]\nname = "b"\n'
     'model = "cifar10-64x2/4"\nteacher = "a"\n', "a teacher and distill > 0 go together"),
    ('checkpoint = "x"\n[[stage]]\nname = "a"\nmodel = "cifar10-64x2/4"\n[[stage]]\nname = "b"\n'
     'model = "cifar10-192x6/4"\ninit = "a"\n', "is not this stage's model"),
    ('checkpoint = "x"\n[[stage]]\nname = "a"\nmodel = "cifar10-64x2/4"\noptimizer = "lion"\n',
     "unknown optimizer"),
])
def test_a_recipe_file_that_cannot_run_is_refused_with_the_reason(tmp_path: Path, text: str, error: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        load_recipe(path)


def test_the_shipped_recipe_parses():
    recipe = load_recipe(REPO / "recipes" / "scratch-92.toml")
    assert recipe.final.is_vit and recipe.final.teacher == "teacher"
    assert [s.name for s in recipe.stages] == ["teacher", "vit", "vit-full"]
