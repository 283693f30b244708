"""What an attention-rollout map costs on top of the prediction alone, on CPU, batch 1.

For each model: the median time of a plain forward (``model(x)`` under inference mode, timm
with its fused attention) against ``explain(..., method="rollout")`` (forward with explicit
attention, rollout over all layers, [CLS] map). The two are timed alternately, after a warm-up,
so that load from other processes affects both alike. Target: the map costs < 30 % more.

Run: ``python benchmarks/bench_rollout.py [--iters N] [--warmup N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

# Run as a script from anywhere: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_demo.adapters import ModelKind  # noqa: E402
from vit_demo.attention import explain  # noqa: E402
from vit_demo.model import PRESETS, ViT  # noqa: E402

TARGET_OVERHEAD = 0.30


def _models() -> list[tuple[str, nn.Module, ModelKind, torch.Tensor]]:
    """(label, model in eval mode with random weights, kind, one input image)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    scratch = ViT(PRESETS["cifar10-192x6/4"]).eval()
    import timm  # imports torchvision: only when the timm model is built
    vit_b = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    return [
        ("scratch cifar10-192x6/4 32px", scratch, "scratch", torch.randn(1, 3, 32, 32, generator=gen)),
        ("timm vit_base_patch16_224", vit_b, "timm", torch.randn(1, 3, 224, 224, generator=gen)),
    ]


def time_alternately(fns: dict[str, Callable[[], object]], warmup: int, iters: int) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn ``iters`` times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_model(model: nn.Module, kind: ModelKind, x: torch.Tensor, warmup: int, iters: int
                ) -> dict[str, float]:
    """Median ms of a plain forward and of forward + attention + rollout map, and their ratio."""
    def plain() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    def with_map() -> dict:
        return explain(model, kind, x, method="rollout")

    medians = time_alternately({"plain": plain, "map": with_map}, warmup, iters)
    return {"plain_ms": medians["plain"] * 1e3, "map_ms": medians["map"] * 1e3,
            "ratio": medians["map"] / medians["plain"]}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark, print a table, return {model label: {plain_ms, map_ms, ratio}}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50, help="timed calls of each (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls of each first (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    results = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.warmup} warm-up + {args.iters} timed calls, batch 1")
    print(f"{'model':<28} {'forward ms':>11} {'+ map ms':>10} {'ratio':>7}  "
          f"target < {1 + TARGET_OVERHEAD:.2f}")
    for label, model, kind, x in _models():
        r = bench_model(model, kind, x, args.warmup, args.iters)
        results[label] = r
        verdict = "ok" if r["ratio"] < 1 + TARGET_OVERHEAD else "OVER"
        print(f"{label:<28} {r['plain_ms']:>11.2f} {r['map_ms']:>10.2f} {r['ratio']:>7.2f}  {verdict}")
    return results


if __name__ == "__main__":
    main()
