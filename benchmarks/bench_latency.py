"""Single-image CPU latency: our scratch ViT against timm's VisionTransformer at the same config
(same process, interleaved runs), timm's ViT-B/16 at 224 px, and end-to-end ``/classify``
through gradio_client against a launched app.

    python benchmarks/bench_latency.py [--runs 200] [--threads 2]

Prints a table and returns the figures from ``main()``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from vit_demo.model import PRESETS, ViT, convert_timm_state_dict, timm_kwargs  # noqa: E402


def paired_medians(a, b, x: torch.Tensor, runs: int, warmup: int = 10) -> tuple[float, float]:
    """Median ms of ``a(x)`` and ``b(x)``, alternating so both see the same machine load."""
    ta, tb = [], []
    with torch.inference_mode():
        for i in range(warmup + runs):
            for fn, out in ((a, ta), (b, tb)):
                start = time.perf_counter()
                fn(x)
                if i >= warmup:
                    out.append((time.perf_counter() - start) * 1000)
    return statistics.median(ta), statistics.median(tb)


def model_vs_timm(preset: str, runs: int) -> dict:
    cfg = PRESETS[preset]
    reference = VisionTransformer(**timm_kwargs(cfg)).eval()
    ours = ViT(cfg).eval()
    ours.load_state_dict(convert_timm_state_dict(reference.state_dict(), cfg))
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    ours_ms, timm_ms = paired_medians(ours, reference, x, runs)
    return {"preset": preset, "ours_ms": ours_ms, "timm_ms": timm_ms, "ratio": ours_ms / timm_ms}


def classify_end_to_end(runs: int) -> dict:
    """Median ``/classify`` round trip (scratch model) through gradio_client on loopback."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from vit_demo.adapters import ModelKind
    from vit_demo.card import ModelCard, save_model
    from vit_demo.checkpoint import default_weights_dir
    from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES
    from vit_demo.registry import SCRATCH_CHECKPOINT
    from vit_demo.ui import build_demo, create_context, serve_locally

    weights = default_weights_dir()
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    if not (weights / f"{SCRATCH_CHECKPOINT}.json").is_file():  # no shipped model: a random one
        cfg = PRESETS["cifar10-192x6/4"]
        weights = tmp / "weights"
        save_model(weights, SCRATCH_CHECKPOINT, ViT(cfg).state_dict(),
                   ModelCard(ModelKind.SCRATCH, CLASSES, CIFAR10_DATA_CONFIG, model_config=cfg))
    image = tmp / "image.png"
    Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()).save(image)
    ctx = create_context(weights, allow_hub=False)
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    client = Client(url, verbose=False)
    times = []
    try:
        for i in range(runs + 3):
            start = time.perf_counter()
            client.predict(handle_file(str(image)), "scratch", api_name="/classify")
            if i >= 3:
                times.append((time.perf_counter() - start) * 1000)
    finally:
        client.close()
        demo.close()
    return {"classify_ms_median": statistics.median(times), "runs": runs,
            "weights": "shipped" if weights == default_weights_dir() else "random"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"threads": args.threads,
               "scratch_vs_timm": model_vs_timm("cifar10-192x6/4", args.runs),
               "b16_vs_timm": model_vs_timm("B/16", max(10, args.runs // 10)),
               "classify": classify_end_to_end(max(20, args.runs // 4))}
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, fp32, median of runs")
    print("| model | ours (ms) | timm (ms) | ours / timm |")
    print("| --- | --- | --- | --- |")
    for key in ("scratch_vs_timm", "b16_vs_timm"):
        r = results[key]
        print(f"| {r['preset']} | {r['ours_ms']:.2f} | {r['timm_ms']:.2f} | {r['ratio']:.3f} |")
    c = results["classify"]
    print(f"/classify end to end (gradio_client, {c['weights']} scratch weights): "
          f"{c['classify_ms_median']:.1f} ms median of {c['runs']}")
    return results


if __name__ == "__main__":
    main()
