"""How well does each attention map explain the prediction? Deletion and insertion scores over
CIFAR-10 test images, for any checkpoint and any map method (``vit_demo.faithfulness``).

For each of the first N test images (class-balanced, fixed order), the model's predicted class
is the target; every method's map ranks the patches; the deletion and insertion areas of the
class probability are averaged over the images (lower deletion, higher insertion: better).
``random`` (a seeded random order per image) and ``centre`` (centre-first) are the baselines.

Run:
    python benchmarks/bench_faithfulness.py [--name vit-scratch-cifar10] [--images 500]
        [--methods rollout,rollout-discard-0.9,raw,grad,random,centre] [--steps 8]
        [--weights-dir weights] [--data-dir DIR] [--threads N] [--json out.json]

Prints a Markdown table (method, deletion, insertion, images, seconds).

    python benchmarks/bench_faithfulness.py --cost [--name ...] [--runs 20]

times instead what the attention tab pays per request, alternately so that machine load
affects all alike (medians): one forward pass of one image, the default (gradient-weighted) map,
and the scores of that map with both baselines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

# Run as a script from anywhere: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_demo.attention import explain  # noqa: E402
from vit_demo.checkpoint import default_weights_dir  # noqa: E402
from vit_demo.data import class_balanced_indices, load_cifar10, preprocess_batch  # noqa: E402
from vit_demo.faithfulness import (DEFAULT_STEPS, Scores, area, centre_map, curves,  # noqa: E402
                                   mean_scores, random_map)
from vit_demo.registry import load_checkpoint  # noqa: E402

# method name -> explain() keyword arguments (None: a baseline map, not from the model)
METHODS = {
    "rollout": {"method": "rollout"},
    "rollout-discard-0.9": {"method": "rollout", "discard_ratio": 0.9},
    "raw": {"method": "raw"},  # the last layer's [CLS] attention, heads averaged
    "grad": {"method": "grad"},
    "random": None,
    "centre": None,
}
LABELS = {"rollout": "attention rollout", "rollout-discard-0.9": "rollout, discard ratio 0.9",
          "raw": "raw last-layer [CLS] attention", "grad": "gradient-weighted rollout",
          "random": "random order (baseline)", "centre": "centre-first (baseline)"}


def maps_for(model, kind: str, x: torch.Tensor, methods: list[str], seeds: list[int]
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(method -> (B, rows, cols) maps, predicted classes (B,)) for a batch of inputs."""
    base = explain(model, kind, x)
    grid = base["grid_size"]
    targets = base["logits"].argmax(dim=-1)
    maps = {}
    for name in methods:
        kwargs = METHODS[name]
        if name == "random":
            maps[name] = torch.stack([random_map(*grid, seed=s) for s in seeds])
        elif name == "centre":
            maps[name] = centre_map(*grid).expand(x.shape[0], *grid)
        elif kwargs == {"method": "rollout"}:
            maps[name] = base["map"]
        else:
            maps[name] = explain(model, kind, x, target_class=targets if kwargs["method"] == "grad"
                                 else None, **kwargs)["map"]
    return maps, targets


def run(name: str, images: int, methods: list[str], steps: int, weights_dir: Path,
        data_dir: str | None, batch: int = 50) -> tuple[dict[str, Scores], float]:
    model, kind, data_cfg, _ = load_checkpoint(weights_dir, name)
    test = load_cifar10("test", data_dir)
    order = class_balanced_indices(test.y, (images + 9) // 10)[:images]
    order = order[torch.argsort(order)]  # test-set order, class-balanced
    per_method: dict[str, list[Scores]] = {m: [] for m in methods}
    start = time.perf_counter()
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        x = preprocess_batch(test.x[idx], data_cfg)
        maps, targets = maps_for(model, kind, x, methods, [int(i) for i in idx])
        for j in range(x.shape[0]):
            got = curves(model, x[j], {m: maps[m][j] for m in methods}, int(targets[j]), steps)
            for m in methods:
                per_method[m].append(Scores(area(got[m]["deletion"]), area(got[m]["insertion"])))
        done = min(b + batch, len(order))
        print(f"{done}/{len(order)} images, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return {m: mean_scores(s) for m, s in per_method.items()}, time.perf_counter() - start


def cost(name: str, weights_dir: Path, runs: int) -> dict[str, float]:
    """Median ms of a forward pass, the gradient-weighted map and its scores, for one image."""
    import statistics

    from vit_demo.faithfulness import faithfulness

    model, kind, data_cfg, _ = load_checkpoint(weights_dir, name)
    x = torch.randn(1, *data_cfg.input_size, generator=torch.Generator().manual_seed(0))
    heatmap = explain(model, kind, x, method="grad")["map"][0]

    def forward():
        with torch.inference_mode():
            model(x)

    fns = {"forward pass": forward, "gradient-weighted map": lambda: explain(model, kind, x, method="grad"),
           "deletion + insertion scores": lambda: faithfulness(model, x, heatmap)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(runs + 2):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= 2:  # two warm-up rounds
                times[k].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="vit-scratch-cifar10", help="checkpoint in the weights folder")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--cost", action="store_true", help="time one request's parts instead")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    if args.cost:
        if args.threads:
            torch.set_num_threads(args.threads)
        medians = cost(args.name, args.weights_dir or default_weights_dir(), args.runs)
        print(f"\n{args.name}, one image, {torch.get_num_threads()} threads, median of {args.runs}\n")
        for k, ms in medians.items():
            print(f"- {k}: {ms:.1f} ms")
        return medians
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    scores, seconds = run(args.name, args.images, methods, args.steps,
                          args.weights_dir or default_weights_dir(), args.data_dir)
    print(f"\n{args.name}, {args.images} CIFAR-10 test images, {args.steps} steps, "
          f"{seconds:.0f} s\n")
    print("| map | deletion (lower is better) | insertion (higher is better) |")
    print("| --- | --- | --- |")
    for m, s in scores.items():
        print(f"| {LABELS[m]} | {s.deletion:.3f} | {s.insertion:.3f} |")
    result = {"name": args.name, "images": args.images, "steps": args.steps, "seconds": seconds,
              "scores": {m: {"deletion": s.deletion, "insertion": s.insertion} for m, s in scores.items()}}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
