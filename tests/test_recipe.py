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


@pytest.fixture(scope="module")
def whole_run(splits, tmp_path_factory) -> tuple[Path, list]:
    """The tiny two-stage recipe (a CNN teacher, then a ViT distilled from it) run in one go:
    its run folder and results."""
    run_dir = tmp_path_factory.mktemp("whole")
    return run_dir, run_recipe(load_recipe(TINY_RECIPE), run_dir, *splits)


def test_a_recipe_stopped_in_each_stage_and_resumed_equals_one_uninterrupted_run(whole_run, splits,
                                                                                  tmp_path: Path):
    """The tiny recipe run again, stopped once inside each stage and resumed from its state
    files: the same final tensors as the run that never stopped, bit for bit."""
    recipe = load_recipe(TINY_RECIPE)
    whole_dir, whole = whole_run
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
        a, meta_a = load_tensors(state_path(whole_dir, stage))
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


def vit_forward_flops(cfg) -> tuple[int, int, int]:
    """Forward FLOPs of one image (2 per multiply-add), the patch convolution's share and one
    attention product's (q@k^T or weights@v, all heads): the patch conv, per block the q/k/v
    projection, q@k^T, weights@v, the projection and the MLP, then the head on [CLS]."""
    patches = (cfg.image_size // cfg.patch_size) ** 2
    tokens, d, hidden = patches + 1, cfg.dim, int(cfg.dim * cfg.mlp_ratio)
    patch_embed = 2 * patches * d * cfg.in_chans * cfg.patch_size ** 2
    product = 2 * tokens * tokens * d
    block = 2 * tokens * d * 4 * d + 2 * product + 2 * 2 * tokens * d * hidden
    return patch_embed + cfg.depth * block + 2 * d * cfg.num_classes, patch_embed, product


def test_training_flops_are_the_forward_and_backward_written_out_plus_the_teachers_forward():
    """Backward = 2x forward for every product whose two sides need gradients; the patch
    convolution's input needs none (1x); fused attention's backward also recomputes q@k^T (one
    product more a block); the teacher adds its forward pass only."""
    from vit_demo.evaluate import flops_per_image, training_flops_per_image

    cfg = PRESETS["cifar10-64x2/4"]
    forward, patch_embed, product = vit_forward_flops(cfg)
    expected = 3 * forward - patch_embed + cfg.depth * product
    model, teacher = ViT(cfg), CNN(CNN_PRESETS["cnn-8-16"])
    assert training_flops_per_image(model, CIFAR10_DATA_CONFIG) == pytest.approx(expected, rel=1e-3)
    assert training_flops_per_image(model, CIFAR10_DATA_CONFIG, teacher) == pytest.approx(
        expected + flops_per_image(teacher, CIFAR10_DATA_CONFIG), rel=1e-3)
    assert model.training and torch.equal(teacher.stem_norm.running_mean, torch.zeros(8))


def test_the_learning_curve_adds_up_the_stages_time_and_flops(whole_run, tmp_path: Path, capsys):
    """Each validation sits at the time and FLOPs of every earlier stage plus its own so far:
    steps x batch x ``training_flops_per_image`` (the teacher's forward pass in the ViT's)."""
    from vit_demo.evaluate import training_flops_per_image
    from vit_demo.recipe import learning_curve

    recipe = load_recipe(TINY_RECIPE)
    run_dir, results = whole_run
    teacher, vit = recipe.stages
    metas = [load_tensors(state_path(run_dir, s))[1] for s in recipe.stages]
    points, stages = learning_curve(recipe, run_dir, recipe.train_images)
    assert [p.stage for p in points] == ["teacher"] * 2 + ["vit"] * 2
    teacher_flops = metas[0]["step"] * 64 * training_flops_per_image(teacher.build(), CIFAR10_DATA_CONFIG)
    vit_flops = training_flops_per_image(vit.build(), CIFAR10_DATA_CONFIG, teacher.build()) * 64
    for point, row in zip(points[2:], metas[1]["history"]):
        assert point.pflops * 1e15 == pytest.approx(teacher_flops + row["step"] * vit_flops)
        assert point.hours * 3600 == pytest.approx(metas[0]["elapsed_s"] + row["wall_s"])
        assert point.val_accuracy == row["val_accuracy"]
    assert [(s.stage, s.epochs_done, s.best_val) for s in stages] == [
        (r.stage.name, 2.0, max(row["val_accuracy"] for row in r.history)) for r in results]

    png = tmp_path / "curve.png"
    main(["recipe-report", "--recipe", str(TINY_RECIPE), "--run-dir", str(run_dir), "--png", str(png)])
    out = capsys.readouterr().out
    assert "| vit | 2.0 / 2 |" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
