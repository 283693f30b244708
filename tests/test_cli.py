"""``python -m vit_demo train``'s options are generated from ``TrainConfig``'s fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import pytest

from vit_demo.cli import add_config_options, build_parser, config_from_args
from vit_demo.train import TrainConfig


@dataclass(frozen=True)
class Throwaway:
    width: int = 3  # how wide, in 100 %
    ratio: float | None = None
    mode: Literal["a", "b"] = "a"  # which mode
    on: bool = False


def test_every_config_field_is_an_option_with_its_default():
    parser = argparse.ArgumentParser()
    add_config_options(parser, Throwaway)
    assert config_from_args(Throwaway, parser.parse_args([])) == Throwaway()
    args = parser.parse_args(["--width", "5", "--ratio", "0.5", "--mode", "b", "--on"])
    assert config_from_args(Throwaway, args) == Throwaway(width=5, ratio=0.5, mode="b", on=True)
    assert config_from_args(Throwaway, parser.parse_args(["--no-on"])).on is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    text = parser.format_help()
    assert "how wide, in 100 %" in text and "which mode" in text


def test_train_options_give_back_the_train_config(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert all(f"--{f.name.replace('_', '-')} " in text for f in fields(TrainConfig))
    assert "reflect-pad 4 px" in text  # the field's comment
    assert config_from_args(TrainConfig, parser.parse_args(["train"])) == TrainConfig()
    args = parser.parse_args(
        "train --preset cifar10-192x9/4 --init-from vit-scratch-cifar10 --epochs 12 "
        "--warmup-epochs 1 --lr 5e-4 --batch-size 128 --crop resized --crop-scale 0.35 "
        "--mixup 0.2 --no-augment --compile --max-steps 9 --threads 2 --data-dir D --out O "
        "--resume R --name N --policy autoaugment --drop-path 0.1 --patch-drop 0.5".split())
    assert config_from_args(TrainConfig, args) == TrainConfig(
        epochs=12, warmup_epochs=1, lr=5e-4, batch_size=128, crop="resized", crop_scale=0.35,
        mixup=0.2, augment=False, compile=True, max_steps=9, policy="autoaugment")
    assert (args.preset, args.init_from, args.threads, args.data_dir, args.out, args.resume,
            args.name, args.drop_path, args.patch_drop) == (
        "cifar10-192x9/4", "vit-scratch-cifar10", 2, "D", Path("O"), Path("R"), "N", 0.1, 0.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--crop", "square"])
