"""What the shipped scratch model's logit lens shows over the CIFAR-10 test set.

For the first ``--limit`` test images (or all 10,000): per block, the fraction of images whose
lens top-1 (the class the final norm and head read from [CLS] after that block) already is the
model's final answer, the fraction for which it also stays so to the end, the lens's accuracy,
and the mean probability it gives the final answer; and the mean block from which the top-1
stays the final answer (``walkthrough.lens_agreement``).

Run: ``python benchmarks/bench_lens.py [--limit N] [--data-dir DIR] [--name vit-scratch-cifar10]``
(the data folder defaults to ``$VIT_DEMO_DATA_DIR``; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# Run as a script from anywhere: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_demo.adapters import adapter_for  # noqa: E402
from vit_demo.checkpoint import default_weights_dir  # noqa: E402
from vit_demo.data import load_cifar10, preprocess_batch  # noqa: E402
from vit_demo.registry import SCRATCH_CHECKPOINT, load_checkpoint  # noqa: E402
from vit_demo.walkthrough import lens_agreement, logit_lens  # noqa: E402


def lens_over(model, kind, data_cfg, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The lens (B, blocks, classes) of uint8 images (B, H, W, C), in batches."""
    adapter = adapter_for(kind)
    out = []
    with torch.inference_mode():
        for batch in images.split(batch_size):
            trace = adapter.forward_trace(model, preprocess_batch(batch, data_cfg))
            out.append(logit_lens(adapter, model, trace.blocks))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default all)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 arrays (default $VIT_DEMO_DATA_DIR)")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--name", default=SCRATCH_CHECKPOINT)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    model, kind, data_cfg, _ = load_checkpoint(args.weights_dir or default_weights_dir(), args.name)
    test = load_cifar10("test", args.data_dir, download=False)
    images, labels = test.x[:args.limit], test.y[:args.limit]
    start = time.perf_counter()
    lens = lens_over(model, kind, data_cfg, images, args.batch_size)
    stats = lens_agreement(lens, labels)
    print(f"{args.name}: {len(images)} CIFAR-10 test images, {time.perf_counter() - start:.1f} s")
    print("block | lens top-1 = final answer | ... and stays | lens accuracy | p(final answer)")
    for b in range(lens.shape[1]):
        print(f"{b + 1:5d} | {stats['agrees'][b]:25.1%} | {stats['settled'][b]:13.1%} | "
              f"{stats['accuracy'][b]:13.1%} | {stats['final_probability'][b]:.3f}")
    print(f"mean block from which the top-1 stays the final answer: {stats['mean_settled_block']:.2f} "
          f"of {lens.shape[1]}")


if __name__ == "__main__":
    main()
