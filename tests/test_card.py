"""``ModelCard``: the one card type, its JSON written out field by field, its strict reading, the
recipe words derived from the config, and the shipped card in that format."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from vit_demo.adapters import ModelKind
from vit_demo.card import (SCHEMA_VERSION, AccuracyMetrics, Metrics, ModelCard, Origin, Recipe,
                           Tensors, Training, Validation, read_card)
from vit_demo.checkpoint import CheckpointError, default_weights_dir, sha256
from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES
from vit_demo.model import PRESETS
from vit_demo.registry import SCRATCH_CHECKPOINT
from vit_demo.train import TrainConfig

TINY = PRESETS["cifar10-64x2/4"]


def full_card() -> ModelCard:
    recipe = Recipe.of(TrainConfig(epochs=2, lr=5e-4), 900, 100, "cpu", base="scratch")
    return ModelCard(
        ModelKind.SCRATCH, CLASSES, CIFAR10_DATA_CONFIG, 123, model_config=TINY,
        preset="cifar10-64x2/4",
        origin=Origin("start", "ab" * 32, "cifar10-64x2/4", test_accuracy=0.5, recipe=recipe),
        recipe=recipe,
        training=Training.of("cpu", [{"step": 7, "epoch": 1.0, "val_accuracy": 0.25,
                                      "train_loss": 2.0}], 12.345, steps_last_run=7),
        metrics=Metrics(AccuracyMetrics(0.5, (0.5,) * 10, ((1,) * 10,) * 10, 100), params=123),
        date="2026-01-02", name="m", tensors=Tensors("m.safetensors", "cd" * 32, 3))


def test_json_is_the_fields_written_out_and_reads_back_equal():
    card = full_card()
    data = json.loads(card.to_json())
    assert list(data)[0] == "schema_version" and data["schema_version"] == SCHEMA_VERSION
    assert data["kind"] == "scratch" and data["classes"] == list(CLASSES)
    assert data["data_config"] == {"input_size": [3, 32, 32], "mean": [0.4914, 0.4822, 0.4465],
                                   "std": [0.247, 0.2435, 0.2616], "interpolation": "bicubic",
                                   "crop_pct": 1.0}
    assert data["model_config"]["dim"] == 64 and data["model_config"]["depth"] == 2
    assert data["recipe"]["config"]["lr"] == 5e-4 and "max_steps" not in data["recipe"]["config"]
    assert {k: data["recipe"][k] for k in ("train_images", "val_images", "base", "augment",
                                            "optimizer", "schedule", "precision")} == {
        "train_images": 900, "val_images": 100, "base": "scratch",
        "augment": "random crop (reflect pad 4) + horizontal flip", "optimizer": "AdamW",
        "schedule": "linear warm-up, cosine", "precision": "fp32"}
    assert data["training"] == {"device": "cpu", "history": [{"step": 7, "epoch": 1.0,
                                "val_accuracy": 0.25, "train_loss": 2.0}],
                                "wall_s_last_run": 12.3, "steps_last_run": 7}
    assert data["metrics"]["test"]["confusion"] == [[1] * 10] * 10
    assert data["tensors"] == {"file": "m.safetensors", "sha256": "cd" * 32, "count": 3}
    assert "timm_name" not in data  # None is left out
    assert ModelCard.from_json(card.to_json()) == card
    assert ModelCard.from_json(replace(card, metrics=Metrics()).to_json()).metrics == Metrics()
    assert full_card().training.history == (Validation(7, 1.0, 0.25, 2.0),)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("schema_version"), "schema version None: this code reads cards of schema version 1"),
    (lambda d: d.update(schema_version=2), "schema version 2"),
    (lambda d: d.update(arch="scratch-vit"), r"ModelCard: unknown fields \['arch'\]"),
    (lambda d: d["recipe"]["config"].update(warmup=1), r"TrainConfig: unknown fields \['warmup'\]"),
    (lambda d: d.pop("classes"), "ModelCard: .*classes"),
    (lambda d: d.update(kind="vit"), "'vit' is not a valid ModelKind"),
    (lambda d: d.pop("model_config"), "needs its model_config"),
    (lambda d: d["recipe"]["config"].update(crop="square"), "unknown crop 'square'"),
    (lambda d: d["data_config"].update(mean=[0.5, 0.5]), "expected a list of 3 items"),
    (lambda d: d["model_config"].update(heads=3), "dim \\(64\\) a multiple of heads \\(3\\)"),
])
def test_reading_is_strict(change, message):
    data = json.loads(full_card().to_json())
    change(data)
    with pytest.raises(ValueError, match=message):
        ModelCard.from_json(json.dumps(data))


def test_a_card_names_its_kinds_architecture():
    with pytest.raises(ValueError, match="a timm card needs its timm_name"):
        ModelCard(ModelKind.TIMM, CLASSES, CIFAR10_DATA_CONFIG)


def test_recipe_words_come_from_the_config():
    resized = TrainConfig(crop="resized", crop_scale=0.35, mixup=0.2, cutmix=1.0)
    assert Recipe.of(resized, 1, 0, "cuda").augment == (
        "random-resized crop (area 0.35-1) + horizontal flip, mixup (alpha 0.2) or cutmix "
        "(alpha 1) per batch")
    assert Recipe.of(resized, 1, 0, "cuda").precision == "bf16 autocast"
    assert Recipe.of(replace(resized, mixup=0.0, policy="autoaugment"), 1, 0, "cpu").augment == (
        "random-resized crop (area 0.35-1) + horizontal flip + autoaugment per image, cutmix "
        "(alpha 1) per batch")
    with pytest.raises(ValueError, match="unknown policy 'augmix'"):
        TrainConfig(policy="augmix")
    assert Recipe.of(TrainConfig(augment=False, cutmix=1.0), 1, 0, "cpu").augment == \
        "cutmix (alpha 1) per batch"
    assert Recipe.of(TrainConfig(augment=False), 1, 0, "cpu").augment == "none"


def test_the_shipped_card_is_in_this_format_and_keeps_its_facts():
    weights = default_weights_dir()
    card = read_card(weights, SCRATCH_CHECKPOINT)
    assert card.to_json() == (weights / f"{SCRATCH_CHECKPOINT}.json").read_text()
    assert card.tensors.sha256 == sha256(weights / card.tensors.file)
    assert card.kind is ModelKind.SCRATCH  # trained with drop path 0.1
    assert card.model_config == replace(PRESETS[card.preset], drop_path=0.1)
    assert card.origin.recipe.config.epochs == 30 and card.origin.training.wall_s_total == 5091.6
    assert card.origin.how == "trained further, same architecture"
    for recipe in (card.recipe, card.origin.recipe):
        assert (recipe.augment, recipe.optimizer, recipe.schedule) == tuple(
            recipe.config.describe().values())
    assert card.training.history[-1].step == 1755 and card.training.wall_s_total == 1781.2
    assert card.metrics.test.images == 10_000 and len(card.metrics.test.confusion) == 10
    assert card.metrics.test.accuracy == 0.8544


def test_a_card_from_before_versions_is_refused_with_the_reason(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"arch": "scratch-vit", "classes": ["a"]}))
    with pytest.raises(CheckpointError, match="card old.json: schema version None"):
        read_card(tmp_path, "old")
