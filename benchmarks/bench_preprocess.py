"""``inference.preprocess`` against timm's eval transform (``timm.data.create_transform``):
the largest pixel difference and the median milliseconds per image of each, in one process,
for both models' input configs and photos of 32, 224, 512 and 1024 px.

    OMP_NUM_THREADS=1 python benchmarks/bench_preprocess.py [--runs 30]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

# Run as a script from anywhere: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_demo.data import CIFAR10_DATA_CONFIG, DataConfig  # noqa: E402
from vit_demo.inference import preprocess  # noqa: E402

SIDES = (32, 224, 512, 1024)


def photo(side: int) -> Image.Image:
    """A smooth photo-like RGB image (gradients plus a little noise), ``side`` px, 4:3."""
    h, w = side, max(1, side * 4 // 3)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([np.sin(6 * xx), np.cos(4 * yy), xx * yy], axis=-1) * 100 + 128
    noise = np.random.default_rng(side).normal(0, 8, rgb.shape)
    return Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8))


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    import timm
    import torch

    torch.set_num_threads(1)
    vitb16 = DataConfig.from_dict(timm.data.resolve_model_data_config(
        timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)))
    results = {}
    for label, cfg in (("scratch 32 px", CIFAR10_DATA_CONFIG), ("ViT-B/16 224 px", vitb16)):
        transform = timm.data.create_transform(**cfg.to_dict())
        for side in SIDES:
            img = photo(side)
            ours, theirs = preprocess(img, cfg), transform(img).unsqueeze(0)
            results[f"{label}, photo {side} px"] = {
                "max_abs_diff": float((ours - theirs).abs().max()),
                "ours_ms": median_ms(lambda: preprocess(img, cfg), args.runs),
                "timm_ms": median_ms(lambda: transform(img).unsqueeze(0), args.runs)}
    print(json.dumps({"torch_threads": 1, "runs": args.runs, "results": results}, indent=2))


if __name__ == "__main__":
    main()
