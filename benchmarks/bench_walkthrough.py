"""What the walkthrough costs, on CPU, one image.

For each model (random weights; time depends only on the architecture): the median time of a
plain forward (``model(x)`` under inference mode), of ``walkthrough`` (one traced forward with
the attention, the token PCA, the [CLS] maps and the logit lens) and of ``walkthrough`` plus its
four figures (``walkthrough_pngs``), timed alternately after a warm-up. Targets: the scratch
model's walkthrough within a few forward passes; ViT-B/16's, figures included, under 2 s.

Run: ``python benchmarks/bench_walkthrough.py [--iters N] [--warmup N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

# Run as a script from anywhere: make the repository root (and this folder) importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rollout import time_alternately  # noqa: E402
from vit_demo.adapters import ModelKind  # noqa: E402
from vit_demo.data import CLASSES  # noqa: E402
from vit_demo.model import PRESETS, ViT  # noqa: E402
from vit_demo.walkthrough import walkthrough  # noqa: E402
from vit_demo.walkthrough_plots import walkthrough_pngs  # noqa: E402

TARGET_VITB16_S = 2.0


def _models() -> list[tuple[str, nn.Module, ModelKind, torch.Tensor, float | None]]:
    """(label, model in eval mode with random weights, kind, one input image, target seconds
    with figures or None)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    scratch = ViT(PRESETS["cifar10-192x12/4"]).eval()  # the shipped model's architecture
    import timm  # imports torchvision: only when the timm model is built
    vit_b = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    return [
        ("scratch cifar10-192x12/4 32px", scratch, "scratch", torch.randn(1, 3, 32, 32, generator=gen),
         None),
        ("timm vit_base_patch16_224", vit_b, "timm", torch.randn(1, 3, 224, 224, generator=gen),
         TARGET_VITB16_S),
    ]


def bench_model(model: nn.Module, kind: ModelKind, x: torch.Tensor, warmup: int, iters: int
                ) -> dict[str, float]:
    """Median seconds of a plain forward, the walkthrough, and the walkthrough with figures."""
    picture = np.zeros((x.shape[-2], x.shape[-1], 3), dtype=np.uint8)  # what the figures draw on

    def forward():
        with torch.inference_mode():
            model(x)

    def walk_and_draw():
        walkthrough_pngs(picture, walkthrough(model, kind, x), CLASSES)

    return time_alternately({"forward": forward, "walkthrough": lambda: walkthrough(model, kind, x),
                             "with figures": walk_and_draw}, warmup, iters)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.iters}")
    for label, model, kind, x, target in _models():
        t = bench_model(model, kind, x, args.warmup, args.iters)
        print(f"{label}: forward {t['forward'] * 1000:.1f} ms, walkthrough "
              f"{t['walkthrough'] * 1000:.1f} ms ({t['walkthrough'] / t['forward']:.1f}x the "
              f"forward), with figures {t['with figures'] * 1000:.0f} ms")
        if target is not None:
            verdict = "meets" if t["with figures"] < target else "misses"
            print(f"  {verdict} the target of {target:.0f} s with figures")


if __name__ == "__main__":
    main()
