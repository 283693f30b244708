"""The trainer, checkpoints, resume, cancel, augmentation, DDP and the evaluate command, on the
tiny preset.

Images come from conftest's synthetic ``cifar_train`` / ``cifar_test`` (CIFAR-10's layout, class
patterns a tiny model learns in a few steps), written to ``data_dir``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_demo.adapters import ModelKind
from vit_demo.card import ModelCard, load_model_tensors, read_card, rewrite_card, save_model
from vit_demo.checkpoint import CheckpointError, load_tensors
from vit_demo.cli import main
from vit_demo.data import (CIFAR10_DATA_CONFIG, CLASSES, POLICIES, SPLIT_SEED, Split,
                           augment_policy, crop_flip_draws, mix_batch, preprocess_batch,
                           random_crop_flip, random_resized_crop_flip, resized_crop_flip_draws,
                           train_val_split)
from vit_demo.model import PRESETS, ViT, ViTConfig
from vit_demo.registry import load_checkpoint
from vit_demo.train import Progress, TrainConfig, Trainer, lr_at

from conftest import save_tiny_scratch

REPO = Path(__file__).resolve().parent.parent
TINY = "cifar10-64x2/4"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **changes) -> ViT:
    torch.manual_seed(seed)
    return ViT(dataclasses.replace(PRESETS[TINY], **changes))


@pytest.fixture(scope="module")
def overfit(cifar_train: Split) -> dict:
    """20 steps on one fixed batch of 64 images (no augmentation): model, losses and lrs."""
    losses, lrs = [], []

    def record(p: Progress) -> None:
        losses.append(p.loss)
        lrs.append(p.lr)

    model = tiny_model()
    cfg = TrainConfig(epochs=20, batch_size=64, lr=3e-3, warmup_epochs=2, augment=False)
    trainer = Trainer(model, CIFAR10_DATA_CONFIG, cifar_train.subset(torch.arange(64)), cfg,
                      callback=record)
    trainer.run()
    return {"model": model.eval(), "losses": losses, "lrs": lrs, "trainer": trainer}


def expected_lr(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up from peak/warmup to peak over ``warmup`` steps, then a half cosine from
    peak down to floor, reached at step ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / (total - warmup), 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def test_loss_goes_down(overfit: dict):
    losses = overfit["losses"]
    assert len(losses) == 20
    assert losses[0] == pytest.approx(math.log(10), abs=0.01)  # the zero-initialised head
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first - 0.3, losses


def test_lr_schedule():
    total, warmup, peak, floor = 100, 10, 1e-3, 1e-5
    for step in range(total + 5):
        assert lr_at(step, total, warmup, peak, floor) == pytest.approx(
            expected_lr(step, total, warmup, peak, floor), rel=1e-12, abs=1e-15)
    assert lr_at(0, total, warmup, peak, floor) == pytest.approx(peak / warmup)
    assert lr_at(warmup - 1, total, warmup, peak, floor) == pytest.approx(peak)
    assert lr_at(warmup + (total - warmup) // 2, total, warmup, peak, floor) == pytest.approx(
        (peak + floor) / 2)
    assert lr_at(total, total, warmup, peak, floor) == pytest.approx(floor)
    decay = [lr_at(s, total, warmup, peak, floor) for s in range(warmup, total + 1)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_trainer_uses_the_schedule(overfit: dict):
    trainer = overfit["trainer"]
    assert (trainer.total_steps, trainer.warmup_steps) == (20, 2)
    assert overfit["lrs"] == pytest.approx(
        [expected_lr(s, 20, 2, 3e-3, TrainConfig.min_lr) for s in range(20)], rel=1e-12)


def tiny_card(cfg: ViTConfig) -> ModelCard:
    return ModelCard(ModelKind.SCRATCH, CLASSES, CIFAR10_DATA_CONFIG, model_config=cfg, preset=TINY)


@pytest.fixture(scope="module")
def overfit_weights(overfit: dict, tmp_path_factory) -> Path:
    """A weights folder holding the overfit model as checkpoint ``tiny``."""
    folder = tmp_path_factory.mktemp("weights")
    model = overfit["model"]
    save_model(folder, "tiny", model.state_dict(), tiny_card(model.cfg))
    return folder


def test_checkpoint_round_trip_gives_identical_logits(overfit: dict, overfit_weights: Path,
                                                      cifar_test: Split):
    loaded, kind, data_cfg, card = load_checkpoint(overfit_weights, "tiny")
    assert kind == "scratch" and data_cfg == CIFAR10_DATA_CONFIG
    assert card.tensors.count == len(overfit["model"].state_dict())
    x = preprocess_batch(cifar_test.x[:32], CIFAR10_DATA_CONFIG)
    with torch.inference_mode():
        expected, got = overfit["model"](x), loaded(x)
    assert torch.equal(expected, got)
    assert expected.std() > 0  # a trained head, not the all-zero initial one


def test_resume_equals_uninterrupted_run(cifar_train: Split, tmp_path: Path):
    """6 steps in one go == 3 steps, then a fresh Trainer (another init) resuming for 3 more;
    with dropout and drop path on, so the per-step random state is covered too."""
    train = cifar_train.subset(torch.arange(256))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=2e-3, warmup_epochs=0.25, checkpoint_every=1000)
    changes = {"dropout": 0.1, "drop_path": 0.1}
    whole, split = tmp_path / "whole.safetensors", tmp_path / "split.safetensors"

    Trainer(tiny_model(**changes), CIFAR10_DATA_CONFIG, train, dataclasses.replace(cfg, max_steps=6),
            state_path=whole).run()
    first = Trainer(tiny_model(**changes), CIFAR10_DATA_CONFIG, train,
                    dataclasses.replace(cfg, max_steps=3), state_path=split).run()
    assert first.step == 3 and load_tensors(split)[1]["step"] == 3
    resumed = Trainer(tiny_model(seed=1, **changes), CIFAR10_DATA_CONFIG, train,
                      dataclasses.replace(cfg, max_steps=6), state_path=split)
    assert resumed.step == 3
    assert resumed.run().step == 6

    a, meta_a = load_tensors(whole)
    b, meta_b = load_tensors(split)
    assert meta_a["step"] == meta_b["step"] == 6
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    model = resumed.model.state_dict()
    for key, value in model.items():
        assert torch.equal(value, a[f"model.{key}"]), key


def test_cancel_stops_within_a_step_and_keeps_the_last_state(cifar_train: Split, tmp_path: Path):
    state = tmp_path / "state.safetensors"
    cancel = threading.Event()
    written: dict[int, bytes] = {}

    def callback(p: Progress) -> None:
        if p.step == 2:  # a state was written at step 2 (checkpoint_every=2), before this call
            written[2] = state.read_bytes()
        if p.step == 3:
            cancel.set()

    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, checkpoint_every=2)
    result = Trainer(tiny_model(), CIFAR10_DATA_CONFIG, cifar_train.subset(torch.arange(256)), cfg,
                     state_path=state, callback=callback, cancel=cancel).run()
    assert result.cancelled and result.step == 3 and result.total_steps == 8
    assert state.read_bytes() == written[2]
    assert load_tensors(state)[1]["step"] == 2


def reference_crop_flip(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray,
                        pad: int) -> np.ndarray:
    """One image at a time: reflect-pad, crop at (dy, dx), mirror left-right if flip."""
    out = np.empty_like(images)
    _, H, W, _ = images.shape
    for i, image in enumerate(images):
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        crop = padded[dy[i]:dy[i] + H, dx[i]:dx[i] + W]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


@pytest.mark.parametrize("pad", [4, 2])
def test_random_crop_flip_matches_a_per_image_reference(cifar_train: Split, pad: int):
    x = cifar_train.x[:200]
    dy, dx, flip = crop_flip_draws(len(x), torch.Generator().manual_seed(7), pad)
    assert set(dy.tolist()) == set(range(2 * pad + 1)) == set(dx.tolist())
    assert 0 < int(flip.sum()) < len(x)
    got = random_crop_flip(x, torch.Generator().manual_seed(7), pad)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    expected = reference_crop_flip(x.numpy(), dy.numpy(), dx.numpy(), flip.numpy(), pad)
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
def test_augment_policy_draws_for_each_image_from_the_generator_alone(cifar_train: Split, policy: str):
    x = cifar_train.x[:1].repeat(32, 1, 1, 1)  # 32 copies of one image
    global_state = torch.get_rng_state()
    got = augment_policy(x, torch.Generator().manual_seed(5), policy)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(got, augment_policy(x, torch.Generator().manual_seed(5), policy))
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert len({image.numpy().tobytes() for image in got}) > 8  # drawn per image: 1 if per batch
    # torchvision's policy on each (C, H, W) image, its global generator seeded as documented
    torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=torch.Generator().manual_seed(5))))
    expected = torch.stack([POLICIES[policy](image.permute(2, 0, 1)) for image in x])
    torch.set_rng_state(global_state)
    np.testing.assert_array_equal(got.numpy(), expected.permute(0, 2, 3, 1).numpy())
    generator = torch.Generator().manual_seed(5)
    assert augment_policy(x, generator, "none") is x
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(5).get_state())


def test_train_command_continues_a_checkpoint_with_the_regularizers_in_its_card(data_dir: str,
                                                                                tmp_path: Path):
    start = save_tiny_scratch(tmp_path, "start")
    assert main(["train", "--preset", "cifar10-64x2/4", "--init-from", "start", "--out", str(tmp_path),
                 "--epochs", "1", "--batch-size", "32", "--train-images", "64", "--val-images", "0",
                 "--lr", "0", "--min-lr", "0", "--crop", "resized", "--policy", "trivialaugment",
                 "--drop-path", "0.1", "--patch-drop", "0.5", "--data-dir", data_dir,
                 "--name", "next"]) == 0
    card = read_card(tmp_path, "next")
    assert (card.model_config.drop_path, card.model_config.patch_drop) == (0.1, 0.5)
    assert card.model_config == dataclasses.replace(start.cfg, drop_path=0.1, patch_drop=0.5)
    assert card.recipe.config.policy == "trivialaugment"
    assert "trivialaugment per image" in card.recipe.augment
    assert (card.origin.name, card.origin.how) == ("start", "trained further, same architecture")
    assert card.training.history == ()
    tensors, _ = load_model_tensors(tmp_path, "next")
    for key, value in start.state_dict().items():  # learning rate 0: the start's weights, kept
        torch.testing.assert_close(tensors[key], value, rtol=0, atol=0)


def test_train_command_resumes_only_the_training_and_model_it_was_started_with(data_dir: str,
                                                                             tmp_path: Path):
    state = tmp_path / "state.safetensors"

    def train(*extra: str) -> int:
        return main(["train", "--preset", "cifar10-64x2/4", "--epochs", "1", "--batch-size", "32",
                     "--train-images", "128", "--val-images", "0", "--data-dir", data_dir, "--resume", str(state), *extra])

    assert train("--max-steps", "1", "--drop-path", "0.1") == 0
    _, meta = load_tensors(state)
    assert meta["step"] == 1 and meta["model_config"]["drop_path"] == 0.1
    with pytest.raises(ValueError, match=r"another model config.*'patch_drop': \(0\.0, 0\.5\)"):
        train("--max-steps", "2", "--drop-path", "0.1", "--patch-drop", "0.5")
    with pytest.raises(ValueError, match=r"another model config.*'drop_path': \(0\.1, 0\.0\)"):
        train("--max-steps", "2")
    with pytest.raises(ValueError, match=r"another training config.*'lr': \(0\.001, 0\.002\)"):
        train("--max-steps", "2", "--drop-path", "0.1", "--lr", "2e-3")
    assert load_tensors(state)[1]["step"] == 1  # the refused runs wrote nothing
    assert train("--max-steps", "2", "--drop-path", "0.1") == 0  # a longer stop is not the maths
    assert load_tensors(state)[1]["step"] == 2


@pytest.mark.parametrize("mix", [{}, {"mixup": 0.8, "cutmix": 1.0}])
def test_trainer_splits_the_global_batch_by_rank(cifar_train: Split, mix: dict):
    cfg = TrainConfig(epochs=1, batch_size=32, crop="resized", **mix)
    trainer = Trainer(tiny_model(), CIFAR10_DATA_CONFIG, cifar_train.subset(torch.arange(128)), cfg)
    whole = trainer._batch(5)
    shares = []
    for rank in range(2):
        trainer.rank, trainer.world = rank, 2
        shares.append(trainer._batch(5))
    assert [len(s[1]) for s in shares] == [16, 16]
    for i in range(3 if mix else 2):  # images, labels, partner labels
        assert torch.equal(torch.stack([shares[0][i], shares[1][i]], 1).flatten(0, 1), whole[i])
    assert shares[0][3] == shares[1][3] == whole[3]  # one mixing weight for the global batch
    assert (whole[2] is None) == (not mix)


def bilinear_reference(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """image (H, W, C) sampled at the pixel coordinates ys (rows) x xs (columns), each clamped
    to the image, by bilinear interpolation written out."""
    H, W, _ = image.shape
    ys, xs = np.clip(ys, 0, H - 1), np.clip(xs, 0, W - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


@pytest.mark.parametrize("scale, ratio", [((1.0, 1.0), (1.0, 1.0)), ((0.25, 0.25), (1.0, 1.0)),
                                          ((0.35, 1.0), (3 / 4, 4 / 3))])
def test_random_resized_crop_flip_matches_a_per_image_reference(cifar_train: Split, scale, ratio):
    """Output pixel i of a crop that starts at ``left`` and spans ``w`` (fractions of the
    image) samples the input at pixel coordinate ``left * W + (i + 0.5) * w - 0.5``."""
    x = cifar_train.x[:64]
    w, h, left, top, flip = resized_crop_flip_draws(len(x), torch.Generator().manual_seed(3), scale,
                                                    ratio)
    assert torch.all((w > 0) & (w <= 1) & (h > 0) & (h <= 1))
    assert torch.all((left >= 0) & (left + w <= 1 + 1e-6) & (top >= 0) & (top + h <= 1 + 1e-6))
    assert torch.allclose((w * h).clamp(max=scale[1]), w * h) and 0 < int(flip.sum()) < len(x)
    got = random_resized_crop_flip(x, torch.Generator().manual_seed(3), scale, ratio)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    i = np.arange(32) + 0.5
    for k in range(len(x)):
        ys = top[k].item() * 32 + i * h[k].item() - 0.5
        xs = left[k].item() * 32 + i * w[k].item() - 0.5
        expected = bilinear_reference(x[k].numpy(), ys, xs)
        expected = expected[:, ::-1] if flip[k] else expected
        np.testing.assert_allclose(got[k].numpy(), np.round(expected), atol=1)
    if scale == ratio == (1.0, 1.0):  # the whole image: unchanged, or mirrored
        whole = torch.where(flip[:, None, None, None], x.flip(2), x)
        assert torch.equal(got, whole)


def test_mixup_blends_pairs_with_a_beta_weight():
    x = torch.randn(16, 3, 8, 8)
    lams = []
    for seed in range(400):
        mixed, mix = mix_batch(x, torch.Generator().manual_seed(seed), mixup=0.8)
        assert sorted(mix.perm.tolist()) == list(range(16))
        torch.testing.assert_close(mixed, mix.lam * x + (1 - mix.lam) * x[mix.perm])
        lams.append(mix.lam)
    lams = np.array(lams)  # Beta(0.8, 0.8): mean 1/2, variance 1 / (4 (2 * 0.8 + 1))
    assert abs(lams.mean() - 0.5) < 0.05
    assert abs(lams.var() - 1 / (4 * 2.6)) < 0.015


def test_cutmix_pastes_one_box_and_weighs_labels_by_its_area():
    x = torch.arange(16.0)[:, None, None, None].expand(16, 3, 32, 32).clone()  # image i is all i
    sizes = set()
    for seed in range(50):
        mixed, mix = mix_batch(x, torch.Generator().manual_seed(seed), cutmix=1.0)
        own = (mixed == x).all(dim=1)  # (B, H, W): pixels still from the image itself
        pasted = (mixed == x[mix.perm]).all(dim=1)
        moved = mix.perm != torch.arange(16)
        assert torch.all(own | pasted)
        rows, cols = torch.nonzero(~own[moved][0], as_tuple=True) if moved.any() else ([], [])
        if len(rows):  # one rectangle
            assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        box = int((~own[moved][0]).sum()) if moved.any() else 0
        assert mix.lam == pytest.approx(1 - box / (32 * 32))
        sizes.add(box)
    assert len(sizes) > 10


def test_mixup_or_cutmix_per_batch_when_both_are_on():
    x = torch.arange(16.0)[:, None, None, None].expand(16, 3, 32, 32).clone()
    kinds = set()
    for seed in range(40):
        mixed, mix = mix_batch(x, torch.Generator().manual_seed(seed), mixup=0.8, cutmix=1.0)
        blended = torch.allclose(mixed, mix.lam * x + (1 - mix.lam) * x[mix.perm])
        kinds.add("mixup" if blended and not torch.equal(mixed, x) else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_mixed_batches_train_on_the_mixed_label_loss(cifar_train: Split):
    """One step with cutmix: the trainer's loss is lam * CE(own) + (1 - lam) * CE(partner)."""
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, warmup_epochs=0, cutmix=1.0,
                      label_smoothing=0.1)
    model = tiny_model()
    trainer = Trainer(model, CIFAR10_DATA_CONFIG, cifar_train.subset(torch.arange(64)), cfg)
    x, y, partner, lam = trainer._batch(0)
    with torch.no_grad():
        logits = model(x)
    logp = logits.log_softmax(-1)
    def smoothed_ce(labels):
        return (-(0.9 * logp.gather(1, labels[:, None]).squeeze(1) + 0.1 * logp.mean(-1))).mean()
    expected = lam * smoothed_ce(y) + (1 - lam) * smoothed_ce(partner)
    losses = []
    trainer.callback = lambda p: losses.append(p.loss)
    trainer.end_step = 1
    trainer.run()
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)


def test_ddp_on_two_cpu_processes_matches_one_process(cifar_train: Split, data_dir: str,
                                                       tmp_path: Path):
    """torchrun, 2 gloo ranks of 16 images each == one process on the same 32-image batches.

    Adam magnifies float noise in near-zero gradients (e.g. of the key bias, which cannot
    change the attention): the runs differ by ~2e-6 at lr 1e-3 but ~7e-6 at 3e-3, hence 1e-3."""
    state = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vit_demo", "train", "--preset", TINY, "--train-images", "96", "--val-images", "0",
           "--batch-size", "32", "--epochs", "2", "--max-steps", "4", "--warmup-epochs", "1",
           "--lr", "1e-3", "--threads", "1", "--resume", str(state),
           "--data-dir", data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    tensors, meta = load_tensors(state)
    assert meta["step"] == 4

    cfg = TrainConfig(**meta["config"])
    assert (cfg.batch_size, cfg.max_steps, cfg.augment) == (32, 4, True)
    model = tiny_model(seed=cfg.seed)  # as the command builds it
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    train = train_val_split(cifar_train)[0].subset(torch.arange(96))
    Trainer(model, CIFAR10_DATA_CONFIG, train, cfg).run()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(tensors[f"model.{key}"], value, rtol=0, atol=1e-5, msg=key)
    moved = max((model.state_dict()[k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 5e-4


def flops_formula(cfg: ViTConfig) -> int:
    """Forward FLOPs of one image, 2 per multiply-add: patch conv, per block the q/k/v
    projection, scores q@k^T, weights@v, output projection and the MLP, then the head on [CLS]."""
    rows, cols = cfg.grid_size
    patches, tokens, d = rows * cols, rows * cols + 1, cfg.dim
    hidden = int(d * cfg.mlp_ratio)
    patch_embed = 2 * patches * d * cfg.in_chans * cfg.patch_size ** 2
    block = (2 * tokens * d * 3 * d  # qkv
             + 2 * tokens * tokens * d  # q @ k^T, all heads
             + 2 * tokens * tokens * d  # attention @ v
             + 2 * tokens * d * d  # proj
             + 2 * 2 * tokens * d * hidden)  # fc1 + fc2
    return patch_embed + cfg.depth * block + 2 * d * cfg.num_classes


def test_evaluate_command(overfit: dict, overfit_weights: Path, cifar_test: Split,
                          data_dir: str, tmp_path: Path, capsys):
    png = tmp_path / "confusion.png"
    before = read_card(overfit_weights, "tiny")
    assert main(["evaluate", "--name", "tiny", "--weights-dir", str(overfit_weights),
                 "--limit", "300", "--png", str(png), "--update-card",
                 "--data-dir", data_dir]) == 0
    assert "test accuracy" in capsys.readouterr().out

    card = read_card(overfit_weights, "tiny")
    assert card.tensors == before.tensors
    load_model_tensors(overfit_weights, "tiny")  # the card still vouches for its tensors file
    metrics = card.metrics
    test = metrics.test
    confusion = np.array(test.confusion)
    labels = cifar_test.y[:300].numpy()
    assert test.images == 300
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(labels, minlength=10))
    assert test.accuracy == pytest.approx(np.trace(confusion) / 300)
    np.testing.assert_allclose(test.per_class_accuracy,
                               np.diag(confusion) / confusion.sum(axis=1))
    with torch.inference_mode():
        pred = overfit["model"](preprocess_batch(cifar_test.x[:300], CIFAR10_DATA_CONFIG)).argmax(-1)
    expected = np.zeros((10, 10), dtype=np.int64)
    np.add.at(expected, (labels, pred.numpy()), 1)
    np.testing.assert_array_equal(confusion, expected)

    cfg = overfit["model"].cfg
    assert metrics.params == sum(p.numel() for p in overfit["model"].parameters())
    assert metrics.flops_per_image == pytest.approx(flops_formula(cfg), rel=0.03)
    assert 0 < metrics.cpu_latency_ms < 1000 and metrics.cpu_threads >= 1

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 100


@pytest.mark.parametrize("split", ["train", "val"])
def test_evaluate_command_on_the_training_run_split(split: str, overfit: dict, overfit_weights: Path,
                                                    cifar_train: Split, data_dir: str,
                                                    tmp_path: Path, capsys):
    before = (overfit_weights / "tiny.json").read_bytes()
    with pytest.raises(SystemExit, match="--split test only"):
        main(["evaluate", "--name", "tiny", "--weights-dir", str(overfit_weights),
              "--split", split, "--update-card", "--data-dir", data_dir])
    assert main(["evaluate", "--name", "tiny", "--weights-dir", str(overfit_weights),
                 "--split", split, "--limit", "200", "--png", str(tmp_path / "c.png"),
                 "--data-dir", data_dir]) == 0
    printed = capsys.readouterr().out
    # the training run's split written out: the first 5,000 of the seeded permutation validate
    perm = torch.randperm(len(cifar_train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    rows = perm[5000:] if split == "train" else perm[:5000]
    with torch.inference_mode():
        pred = overfit["model"](preprocess_batch(cifar_train.x[rows[:200]], CIFAR10_DATA_CONFIG))
    expected = (pred.argmax(-1) == cifar_train.y[rows[:200]]).double().mean().item()
    assert f"tiny: {split} accuracy {expected:.4f} (200 images, the first 200 of {len(rows)})" in printed
    assert (overfit_weights / "tiny.json").read_bytes() == before


def test_rewrite_card_refuses_another_tensors_entry(overfit_weights: Path):
    card = read_card(overfit_weights, "tiny")
    forged = dataclasses.replace(card, tensors=dataclasses.replace(card.tensors, sha256="0" * 64))
    with pytest.raises(CheckpointError):
        rewrite_card(overfit_weights, "tiny", forged)
    assert read_card(overfit_weights, "tiny") == card
